"""Running one point in isolation: a fresh process per point, its result back as a dict.

Three ways, one interface (:func:`run_isolated`):

- ``forkserver`` (default): a fork server that has imported torch, Transformers and effzoo once
  forks a fresh process per point; a point starts in milliseconds instead of seconds of imports.
  The fork server runs no torch operations, so every point process starts with clean thread
  pools and allocator state.
- ``subprocess``: ``python -m effzoo.bench.point SPEC_JSON`` per point, the JSON result on
  the last line of its stdout (slower to start; the same command reproduces one point by hand).
- ``inline``: in this process, for the harness's own tests only (no isolation of memory).
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import traceback
from typing import Any

ISOLATIONS = ("forkserver", "subprocess", "inline")


class PointFailed(Exception):
    """The point's process raised, died or ran out of time; ``status`` says which."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _child(spec: dict[str, Any], connection: Any) -> None:
    from .measure import measure_point

    try:
        connection.send(("ok", measure_point(spec)))
    except BaseException as error:  # noqa: BLE001 - everything goes back to the harness as data
        connection.send(("error", f"{type(error).__name__}: {error}", traceback.format_exc()))
    finally:
        connection.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else str(-exitcode)
        hint = " (the kernel's out-of-memory killer, most likely)" if -exitcode == signal.SIGKILL else ""
        return f"the point's process was killed by {name}{hint}"
    return f"the point's process exited with status {exitcode} without a result"


_context: Any = None


def _forkserver() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        # "__main__" too: the fork server imports the main script once, instead of every point's
        # process importing it again (slow, and fragile while the source tree is being edited).
        _context.set_forkserver_preload(["__main__", "effzoo.bench.measure"])
    return _context


def run_isolated(spec: dict[str, Any], isolation: str, timeout_s: float) -> dict[str, Any]:
    """Measure ``spec`` in a fresh process; raises :class:`PointFailed` when no result comes back."""
    if isolation == "inline":
        from .measure import measure_point

        try:
            return measure_point(spec)
        except Exception as error:
            raise PointFailed("failed", f"{type(error).__name__}: {error}") from error
    if isolation == "subprocess":
        return _run_subprocess(spec, timeout_s)
    if isolation != "forkserver":
        raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}; got {isolation!r}.")

    context = _forkserver()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(spec, sender), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            process.kill()
            raise PointFailed("timeout", f"no result after {timeout_s:.0f} s; the point's process was stopped")
        try:
            message = receiver.recv()
        except EOFError:
            process.join()
            raise PointFailed("failed", _death(process.exitcode)) from None
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()
    if message[0] == "error":
        raise PointFailed("failed", message[1])
    return message[1]


def _run_subprocess(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "effzoo.bench.point", json.dumps(spec)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise PointFailed("timeout", f"no result after {timeout_s:.0f} s; the point's process was stopped") from None
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        error = completed.stderr.strip().splitlines()
        if completed.returncode < 0 or not error:
            raise PointFailed("failed", _death(completed.returncode))
        raise PointFailed("failed", error[-1])
    return json.loads(lines[-1])
