"""The sweep: which points to measure, in what order, which to skip, and the run's JSON lines file.

For every selected implementation and mode (``train``: forward + backward in training mode,
``infer``: forward under ``torch.no_grad`` in eval mode, ``decode``: milliseconds per new token
after a prefilled context) and every length, one point is measured in its own process
(:mod:`.runner`, :mod:`.measure`). Lengths run in increasing order, all implementations at one
length before the next length, so that slow drifts of a shared machine spread over all of them.

**Budget.** Before a point runs, its wall time is predicted from the same implementation's
points at shorter lengths: time per call at the previous length scaled by
``(L / L_prev) ** e``, with ``e`` the local log-log slope of the last two lengths plus 0.2,
clamped to [1, 2] (2 with one previous length), times the calls the point will make. A point
predicted over ``budget_s`` (or over the memory limit) is recorded as ``skipped`` with the
prediction and the reason, and so are the longer lengths of that implementation and mode.

**Noise.** Before each point the harness waits (up to ``quiet_wait_s``) until other
processes leave the CPU alone; inside the point, contended repetitions are repeated
(:mod:`.measure`); a point still contended after that is measured once more when it is cheap.

**Output.** One JSON lines file per run: a ``run`` line (machine, options, wall time), one
``point`` line per point (figures, status, ratios to ``bert_sdpa``, the floor, ``full`` and
the Transformers counterpart at the same length and mode) and one ``slope`` line per
implementation and mode (log-log exponent of time and memory against L over the largest
lengths). While a run is going, points are appended to ``<file>.partial``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .implementations import DTYPES, Implementation, get_implementation, implementations
from .measure import wait_for_quiet
from .runner import ISOLATIONS, PointFailed, run_isolated

MODES = ("train", "infer", "decode")
DEFAULT_RESULTS = Path("benchmarks") / "results"
#: Implementations whose points every other point is divided by, at the same length and mode.
REFERENCES = ("bert_sdpa", "floor", "full")


@dataclass
class Selection:
    """One implementation to measure, with its config settings (``--variant NAME --set K=V``)."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.settings:
            return self.name
        return f"{self.name}({','.join(f'{key}={value}' for key, value in sorted(self.settings.items()))})"


@dataclass
class BenchOptions:
    """Everything a run depends on; the CLI flags map one to one onto these fields."""

    selections: list[Selection] = field(default_factory=list)  # empty: every known implementation
    lengths: list[int] | None = None  # None: min_length doubling up to max_length
    min_length: int = 512
    max_length: int = 16384
    modes: tuple[str, ...] = MODES
    scope: str = "layer"  # "layer" or "model"
    model_layers: int = 4
    decode_contexts: list[int] | None = None  # None: the lengths from 1024 up
    decode_layers: int = 1
    decode_tokens: int = 8
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    batch_size: int = 1
    vocab_size: int = 30522
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None  # None: torch.get_num_threads()
    warmup: int = 1
    repeats: int = 5
    min_repeats: int = 3
    target_s: float = 30.0
    budget_s: float = 300.0
    max_memory_mib: float | None = None  # None: 85 % of the memory available at the start (the GPU's on CUDA)
    contention_threshold: float = 0.10
    quiet_wait_s: float = 5.0
    max_retries: int = 3
    point_retries: int = 1
    slope_from: int = 2048
    seed: int = 0
    isolation: str = "forkserver"
    output: str | None = None
    plots: bool = True

    def resolved_lengths(self) -> list[int]:
        if self.lengths:
            return sorted(set(self.lengths))
        if self.min_length > self.max_length:
            raise ValueError(f"--min-length {self.min_length} is above --max-length {self.max_length}.")
        lengths, length = [], self.min_length
        while length <= self.max_length:
            lengths.append(length)
            length *= 2
        return lengths

    def resolved_decode_contexts(self) -> list[int]:
        if self.decode_contexts:
            return sorted(set(self.decode_contexts))
        lengths = self.resolved_lengths()
        return [length for length in lengths if length >= 1024] or lengths

    def check(self) -> None:
        for name in ("min_length", "max_length", "model_layers", "decode_layers", "decode_tokens", "hidden_size",
                     "num_attention_heads", "intermediate_size", "batch_size", "vocab_size", "repeats",
                     "min_repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("lengths", "decode_contexts"):
            values = getattr(self, name) or []
            if any(not isinstance(value, int) or value <= 0 for value in values):
                raise ValueError(f"{name} must be positive integers, got {values!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"--hidden-size {self.hidden_size} must be a multiple of --heads {self.num_attention_heads}.")
        unknown_modes = sorted(set(self.modes) - set(MODES))
        if unknown_modes or not self.modes:
            raise ValueError(f"modes must be among {', '.join(MODES)}; got {list(self.modes)}.")
        if self.scope not in ("layer", "model"):
            raise ValueError(f"scope must be 'layer' or 'model', got {self.scope!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {self.isolation!r}.")
        if self.warmup < 0 or self.max_retries < 0 or self.point_retries < 0 or self.quiet_wait_s < 0:
            raise ValueError("warmup, max_retries, point_retries and quiet_wait_s must be >= 0.")
        if self.budget_s <= 0 or self.target_s <= 0:
            raise ValueError("budget_s and target_s must be positive.")
        if not 0 < self.contention_threshold <= 1:
            raise ValueError(f"contention_threshold must be in (0, 1], got {self.contention_threshold!r}.")
        check_device(self.device)


def check_device(device: str) -> None:
    """``cpu``, or ``cuda`` / ``cuda:N`` naming a CUDA device this machine has; a ValueError says what to pass."""
    if device == "cpu":
        return
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ValueError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this machine has no CUDA device (torch {torch.__version__}, "
                         f"CUDA {torch.version.cuda or 'not built in'}); use --device cpu.")
    index, count = torch.device(device).index or 0, torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}.")


def memory_limit_mib(options: BenchOptions, machine: dict[str, Any]) -> float:
    """``--max-memory-mib``, else 85 % of the memory available to the device: the GPU's own on CUDA."""
    if options.max_memory_mib:
        return options.max_memory_mib
    if options.device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(options.device))
        return 0.85 * free / 2**20
    return 0.85 * (machine["memory_available_mib"] or float("inf"))


@dataclass
class BenchRun:
    """What a run produced: the JSON lines file, its records, the table and the plots."""

    path: Path
    records: list[dict[str, Any]]
    table: str
    plots: list[Path]
    messages: list[str]

    @property
    def points(self) -> list[dict[str, Any]]:
        return [record for record in self.records if record["type"] == "point"]


def resolve_selections(selections: list[Selection], length: int = 4096) -> list[tuple[Selection, Implementation]]:
    """Check names and settings (at ``length``) before anything runs; unknown names list the known ones."""
    if not selections:
        selections = [Selection(name) for name in implementations()]
    resolved, labels = [], set()
    for selection in selections:
        implementation = get_implementation(selection.name)
        implementation.check_settings(selection.settings, length)
        if selection.label in labels:
            raise ValueError(f"{selection.label!r} is selected twice; give each selection different --set values.")
        labels.add(selection.label)
        resolved.append((selection, implementation))
    return resolved


def machine_info(options: BenchOptions, threads: int) -> dict[str, Any]:
    """CPU model, threads, library versions and the device, for the ``run`` line."""
    import torch
    import transformers

    from .. import __version__

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "effzoo": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": options.device,
        "device_name": (torch.cuda.get_device_name(torch.device(options.device))
                        if options.device.startswith("cuda") else _cpu_model()),
        "dtype": options.dtype,
        "cuda": torch.version.cuda,
        "memory_total_mib": _meminfo("MemTotal"),
        "memory_available_mib": _meminfo("MemAvailable"),
        "loadavg_at_start": _loadavg(),
    }
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo(key: str) -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith(key + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _loadavg() -> list[float] | None:
    try:
        return [float(value) for value in os.getloadavg()]
    except OSError:
        return None


def _output_path(output: str | None, started: _dt.datetime) -> Path:
    stamp = started.strftime("bench-%Y%m%d-%H%M%S")
    if output is None:
        return DEFAULT_RESULTS / f"{stamp}.jsonl"
    path = Path(output)
    return path if path.suffix == ".jsonl" else path / f"{stamp}.jsonl"


# ---------------------------------------------------------------------------------------------
# Budget: predicting a point from the shorter lengths of the same implementation and mode
# ---------------------------------------------------------------------------------------------


def _exponent(history: list[dict[str, Any]], key: str) -> float:
    if len(history) < 2:
        return 2.0
    previous, last = history[-2], history[-1]
    if previous[key] <= 0 or last[key] <= 0:
        return 2.0
    local = math.log(last[key] / previous[key]) / math.log(last["length"] / previous["length"])
    return min(2.0, max(1.0, local + 0.2))


def predict(history: list[dict[str, Any]], length: int, options: BenchOptions) -> tuple[float, float] | None:
    """(seconds for the whole point, peak MiB) predicted from earlier ``ok`` points; None for the first."""
    if not history:
        return None
    last = history[-1]
    scale = length / last["length"]
    memory = last["peak_mem_mib"] * scale ** _exponent(history, "peak_mem_mib") if last["peak_mem_mib"] > 0 else 0.0
    if last["mode"] == "decode":
        return last["point_wall_s"] * scale ** _exponent(history, "point_wall_s"), memory
    per_call = last["time_ms_median"] / 1000 * scale ** _exponent(history, "time_ms_median")
    calls_before = options.warmup + last["repeats"] + last["retried"]
    overhead = max(0.0, last["point_wall_s"] - calls_before * last["time_ms_median"] / 1000)
    fewest = min(options.min_repeats, options.repeats)
    repeats = max(fewest, min(options.repeats, math.floor(options.target_s / max(per_call, 1e-9))))
    return overhead + per_call * (options.warmup + repeats), memory


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _spec(options: BenchOptions, selection: Selection, mode: str, length: int, threads: int) -> dict[str, Any]:
    layers = {"layer": 1, "model": options.model_layers}[options.scope] if mode != "decode" else options.decode_layers
    return {
        "implementation": selection.name, "settings": selection.settings, "mode": mode, "length": length,
        "scope": options.scope, "num_layers": layers, "hidden_size": options.hidden_size,
        "num_attention_heads": options.num_attention_heads, "intermediate_size": options.intermediate_size,
        "vocab_size": options.vocab_size, "batch_size": options.batch_size, "device": options.device,
        "dtype": options.dtype, "threads": threads, "seed": options.seed, "warmup": options.warmup,
        "repeats": options.repeats, "min_repeats": min(options.min_repeats, options.repeats),
        "target_s": options.target_s,
        "budget_s": options.budget_s, "contention_threshold": options.contention_threshold,
        "quiet_wait_s": options.quiet_wait_s, "max_retries": options.max_retries,
        "decode_tokens": options.decode_tokens,
    }


POINT_FIELDS = (
    "time_ms_median", "time_ms_min", "times_ms", "warmup_ms", "repeats", "retried", "set_aside_ms", "contended",
    "contended_repeats", "other_cpu_share", "other_cpu_share_set_aside", "peak_mem_mib", "baseline_mem_mib",
    "mem_method", "point_wall_s", "threads", "note", "prefill_ms", "decode_tokens_per_repeat", "retry_wait_s",
)


def _point_record(selection: Selection, implementation: Implementation, mode: str, length: int,
                  options: BenchOptions) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "point", "implementation": selection.label, "name": selection.name, "kind": implementation.kind,
        "settings": selection.settings, "counterpart": implementation.counterpart,
        "scope": "decoder" if mode == "decode" else options.scope, "mode": mode, "length": length,
        "status": None, "reason": None, "predicted_s": None, "predicted_mem_mib": None, "attempts": 0,
        "quiet_wait_s": None,
    }
    record.update(dict.fromkeys(POINT_FIELDS))
    return record


def _better(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Of two measurements of one point, the less contended (then the faster) one."""
    return min(first, second, key=lambda result: (result["contended_repeats"], result["time_ms_median"]))


def run_benchmark(options: BenchOptions, log: Callable[[str], None] | None = None) -> BenchRun:
    """Run the sweep ``options`` describe; write the JSON lines file, the table and the plots."""
    import torch

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    options.check()
    selected = resolve_selections(options.selections, options.resolved_lengths()[0])
    threads = options.threads or torch.get_num_threads()
    if threads <= 0:
        raise ValueError(f"threads must be a positive integer, got {threads!r}.")
    started_at = _dt.datetime.now().astimezone()
    started = time.perf_counter()
    path = _output_path(options.output, started_at)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    machine = machine_info(options, threads)
    max_memory = memory_limit_mib(options, machine)
    run_record: dict[str, Any] = {
        "type": "run", "schema": 1, "started": started_at.isoformat(timespec="seconds"), "finished": None,
        "wall_s": None, "status": "running", "command": sys.argv, "machine": machine,
        "options": {**asdict(options), "selections": [asdict(selection) for selection in options.selections],
                    "resolved_lengths": options.resolved_lengths(),
                    "resolved_decode_contexts": options.resolved_decode_contexts(),
                    "max_memory_mib": max_memory, "threads": threads},
        "implementations": {selection.label: {"name": selection.name, "kind": implementation.kind,
                                              "description": implementation.description,
                                              "settings": selection.settings,
                                              "counterpart": implementation.counterpart}
                            for selection, implementation in selected},
    }
    plan = []
    for mode in options.modes:
        lengths = options.resolved_decode_contexts() if mode == "decode" else options.resolved_lengths()
        for length in lengths:
            for selection, implementation in selected:
                if mode == "decode" and implementation.build_decoder is None:
                    continue
                plan.append((mode, length, selection, implementation))

    points: list[dict[str, Any]] = []
    history: dict[tuple[str, str], list[dict[str, Any]]] = {}
    stopped: dict[tuple[str, str], str] = {}
    messages: list[str] = []
    with open(partial, "w") as stream:
        stream.write(json.dumps(run_record) + "\n")
        try:
            for index, (mode, length, selection, implementation) in enumerate(plan, 1):
                record = _point_record(selection, implementation, mode, length, options)
                key = (selection.label, mode)
                _run_point(record, options, selection, threads, history.setdefault(key, []), stopped.get(key),
                           max_memory)
                if record["status"] in ("skipped", "timeout") or (
                        record["status"] == "failed" and "killed" in (record["reason"] or "")):
                    stopped.setdefault(key, f"a shorter length was {record['status']} ({length})")
                points.append(record)
                stream.write(json.dumps(record) + "\n")
                stream.flush()
                log(f"[{index}/{len(plan)}] {_progress(record)}")
            run_record["status"] = "complete"
        except KeyboardInterrupt:
            run_record["status"] = "interrupted"
            messages.append("interrupted: the file holds the points measured so far")

    add_ratios(points)
    slopes = slope_records(points, options.slope_from)
    run_record.update(finished=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                      wall_s=round(time.perf_counter() - started, 1))
    records = [run_record, *points, *slopes]
    with open(path, "w") as output:
        for record in records:
            output.write(json.dumps(record) + "\n")
    partial.unlink(missing_ok=True)

    from .report import markdown_report, plot_run

    table = markdown_report(records)
    path.with_suffix(".md").write_text(table + "\n")
    plots: list[Path] = []
    if options.plots:
        try:
            plots = plot_run(records, path.with_suffix(""))
        except ImportError:
            messages.append("plots need matplotlib: pip install 'effzoo[bench]' (the JSON and the table are written)")
    return BenchRun(path, records, table, plots, messages)


def _run_point(record: dict[str, Any], options: BenchOptions, selection: Selection, threads: int,
               history: list[dict[str, Any]], stopped: str | None, max_memory: float) -> None:
    """Fill ``record``: skip it (budget, memory, a shorter length stopped) or measure it."""
    mode, length = record["mode"], record["length"]
    if stopped:
        record.update(status="skipped", reason=stopped)
        return
    prediction = predict(history, length, options)
    if prediction is not None:
        seconds, memory = prediction
        record.update(predicted_s=float(f"{seconds:.4g}"), predicted_mem_mib=float(f"{memory:.4g}"))
        if seconds > options.budget_s:
            record.update(status="skipped",
                          reason=f"predicted {seconds:,.0f} s > budget {options.budget_s:,.0f} s (--budget-s)")
            return
        if memory > max_memory:
            record.update(status="skipped",
                          reason=f"predicted peak {memory:,.0f} MiB > limit {max_memory:,.0f} MiB (--max-memory-mib)")
            return
    spec = _spec(options, selection, mode, length, threads)
    timeout = max(120.0, 3 * options.budget_s)
    result = None
    record["quiet_wait_s"] = 0.0
    for attempt in range(1 + options.point_retries):
        record["quiet_wait_s"] += round(wait_for_quiet(options.contention_threshold, options.quiet_wait_s), 2)
        try:
            measured = run_isolated(spec, options.isolation, timeout)
        except PointFailed as failure:
            record.update(status=failure.status, reason=failure.reason, attempts=attempt + 1)
            return
        result = measured if result is None else _better(result, measured)
        record["attempts"] = attempt + 1
        # A contended point is measured again when that is cheap (under a fifth of the budget).
        if not result["contended"] or measured["point_wall_s"] > options.budget_s / 5:
            break
    record.update({name: result.get(name) for name in POINT_FIELDS})
    record["status"] = "ok"
    if result["contended"]:
        record["reason"] = (f"other processes used up to {result['other_cpu_share']:.0%} of the CPU during kept "
                            f"repetitions ({result['contended_repeats']} of {result['repeats']})")
    history.append(record)


def _progress(record: dict[str, Any]) -> str:
    head = f"{record['implementation']} {record['mode']} L={record['length']}:"
    if record["status"] != "ok":
        return f"{head} {record['status']}: {record['reason']}"
    unit = "ms/token" if record["mode"] == "decode" else "ms"
    text = (f"{head} {record['time_ms_median']:,.1f} {unit} (min {record['time_ms_min']:,.1f}), "
            f"{record['peak_mem_mib']:,.0f} MiB, {record['repeats']} reps")
    if record["retried"]:
        text += f", {record['retried']} contended reps repeated"
    if record["contended"]:
        text += " [contended]"
    return text + f" [{record['point_wall_s']:.0f} s]"


# ---------------------------------------------------------------------------------------------
# Ratios and slopes
# ---------------------------------------------------------------------------------------------


def add_ratios(points: list[dict[str, Any]]) -> None:
    """Time and memory ratios to the references and to the Transformers counterpart, same L and mode."""
    ok = {(point["implementation"], point["scope"], point["mode"], point["length"]): point
          for point in points if point["status"] == "ok"}
    counterpart_of = {point["counterpart"]: point["implementation"] for point in points
                      if point["counterpart"] and not point["settings"]}
    for point in points:
        targets = {reference: reference for reference in REFERENCES}
        targets["counterpart"] = counterpart_of.get(point["name"])
        for suffix, target in targets.items():
            reference = ok.get((target, point["scope"], point["mode"], point["length"])) if target else None
            fine = point["status"] == "ok" and reference is not None
            point[f"ratio_to_{suffix}"] = (
                round(point["time_ms_median"] / reference["time_ms_median"], 4) if fine else None)
            point[f"mem_ratio_to_{suffix}"] = (
                round(point["peak_mem_mib"] / reference["peak_mem_mib"], 4)
                if fine and reference["peak_mem_mib"] > 0 else None)
        point["counterpart_implementation"] = targets["counterpart"]


def _fit(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2 or any(value <= 0 for value in xs + ys):
        return None
    lx, ly = [math.log(value) for value in xs], [math.log(value) for value in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    denominator = sum((x - mx) ** 2 for x in lx)
    return round(sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / denominator, 3) if denominator else None


def slope_records(points: list[dict[str, Any]], slope_from: int) -> list[dict[str, Any]]:
    """Log-log exponent of time (and memory) against L over the lengths from ``slope_from`` up.

    With fewer than two such lengths measured, the largest three measured lengths are used.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for point in points:
        if point["status"] == "ok":
            groups.setdefault((point["implementation"], point["scope"], point["mode"]), []).append(point)
    records = []
    for (label, scope, mode), group in groups.items():
        group.sort(key=lambda point: point["length"])
        chosen = [point for point in group if point["length"] >= slope_from]
        if len(chosen) < 2:
            chosen = group[-3:]
        lengths = [point["length"] for point in chosen]
        records.append({
            "type": "slope", "implementation": label, "scope": scope, "mode": mode, "lengths": lengths,
            "time_exponent": _fit(lengths, [point["time_ms_median"] for point in chosen]),
            "memory_exponent": _fit(lengths, [point["peak_mem_mib"] for point in chosen]),
        })
    return records


def read_run(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's JSON lines file."""
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]
