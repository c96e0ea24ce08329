"""One measurement point, run inside its own process: build, warm up, time, read the peak memory.

:func:`measure_point` takes a plain dict (the *spec*, JSON-serialisable so that it crosses a
process boundary) and returns a plain dict (the *result*). The harness runs it in a fresh
process per point (:mod:`.runner`), so one point's memory never leaks into the next.

- **Time.** ``warmup`` untimed calls, then timed repetitions: the median and the minimum are
  reported. On CPU a repetition is timed with ``time.perf_counter``; on CUDA with CUDA events
  (synchronised). The number of repetitions is ``repeats``, lowered to no fewer than
  ``min_repeats`` when the warm-up shows that ``repeats`` would take more than ``target_s``.
- **Memory.** The *baseline* is the process's resident memory once the module, its
  parameters and the inputs exist, just before the first call (imports, weights and inputs are
  in it). The peak-RSS watermark is reset there (``/proc/self/clear_refs``), so the reported
  peak is what running the workload adds: activations, gradients, workspaces. On CUDA,
  ``torch.cuda.max_memory_allocated`` above the allocation at the same moment.
- **Contention.** Around each repetition the busy CPU time of the whole machine
  (``/proc/stat``) is compared with this process's own (``/proc/self/stat``); the share of the
  machine's capacity that other processes used is recorded. A repetition over
  ``contention_threshold`` is set aside and run again, up to ``max_retries`` times and while
  the point stays within ``budget_s``, each time after waiting (up to ``quiet_wait_s / 5``)
  for the machine to be quiet; the point is flagged ``contended`` when contended repetitions
  had to be kept.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..modeling.outputs import CACHE_FIELD
from .implementations import Task, get_implementation

#: /proc/stat and /proc/PID/stat count CPU time in these ticks.
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_MIB = 1024 * 1024


class CpuShareMeter:
    """Share of the machine's CPU capacity that *other* processes used during a timed section."""

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/stat") and os.path.exists("/proc/self/stat")
        self.cpus = os.cpu_count() or 1

    @staticmethod
    def _machine_busy() -> int:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest time is already inside user).
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]) - idle

    @staticmethod
    def _own_busy() -> int:
        with open("/proc/self/stat") as stat:
            after_name = stat.read().rsplit(")", 1)[1].split()
        return int(after_name[11]) + int(after_name[12])  # utime, stime: fields 14 and 15

    def start(self) -> None:
        if self.available:
            self._start = (self._machine_busy(), self._own_busy())

    def stop(self, wall_s: float) -> float | None:
        """Other processes' CPU time over the capacity (cpus x wall); None where /proc is missing."""
        if not self.available:
            return None
        machine, own = self._machine_busy() - self._start[0], self._own_busy() - self._start[1]
        # Tick accounting is sampled: allow one tick per CPU at each end of the section.
        others = max(0, machine - own - 2 * self.cpus)
        return others / max(1e-9, self.cpus * wall_s * _TICKS_PER_S)


def wait_for_quiet(threshold: float, max_wait_s: float, window_s: float = 0.5) -> float:
    """Wait until other processes use at most ``threshold`` of the CPU over a ``window_s`` window.

    Gives up after ``max_wait_s``; returns the seconds waited. A point (or a repeated
    repetition) starts on a quiet machine when the machine becomes quiet within that time.
    """
    meter = CpuShareMeter()
    if not meter.available or max_wait_s <= 0:
        return 0.0
    begin = time.perf_counter()
    while True:
        meter.start()
        time.sleep(window_s)
        share = meter.stop(window_s)
        waited = time.perf_counter() - begin
        if share is not None and share <= threshold or waited >= max_wait_s:
            return waited


class PeakMemory:
    """Peak memory above the baseline (see the module docstring for what the baseline is)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def start(self) -> None:
        gc.collect(1)  # the young generations hold what setup built; a full pass over the imports is slow
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated above the allocation after setup"
            return
        self.baseline = _current_rss()
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # reset the peak-RSS watermark (Linux >= 4.0)
            self.method = "peak RSS (ru_maxrss, watermark reset after setup) above the RSS after setup"
        except OSError:
            self.method = "peak RSS (ru_maxrss, process lifetime: includes setup) above the RSS after setup"

    def peak_bytes(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return max(0, torch.cuda.max_memory_allocated() - self.baseline)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.baseline)


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Timer:
    """Wall time of one call: perf_counter on CPU, CUDA events (synchronised) on a GPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __call__(self, step: Callable[[], Any]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0
        begin = time.perf_counter()
        step()
        return time.perf_counter() - begin


def _timed_repetitions(step: Callable[[], Any], spec: dict[str, Any], started: float,
                       per_call: int = 1) -> dict[str, Any]:
    """Warm up, then time repetitions, retrying contended ones (see the module docstring)."""
    timer, meter = Timer(spec["device"]), CpuShareMeter()
    warm = [timer(step) for _ in range(spec["warmup"])]
    repeats = spec["repeats"]
    if warm and warm[-1] > 0:
        repeats = max(spec["min_repeats"], min(repeats, math.floor(spec["target_s"] / warm[-1])))
    kept: list[tuple[float, float | None]] = []
    set_aside: list[tuple[float, float | None]] = []
    retries, waited = 0, 0.0
    while len(kept) < repeats:
        meter.start()
        seconds = timer(step)
        share = meter.stop(seconds)
        contended = share is not None and share > spec["contention_threshold"]
        remaining = repeats - len(kept)
        time_left = spec["budget_s"] - (time.perf_counter() - started) >= seconds * remaining
        if contended and retries < spec["max_retries"] and time_left:
            set_aside.append((seconds, share))
            retries += 1
            waited += wait_for_quiet(spec["contention_threshold"], spec["quiet_wait_s"] / 5)
            continue
        kept.append((seconds, share))
    times = [seconds / per_call for seconds, _ in kept]
    shares = [share for _, share in kept if share is not None]
    contended_kept = sum(1 for share in shares if share > spec["contention_threshold"])
    return {
        "time_ms_median": 1000 * statistics.median(times),
        "time_ms_min": 1000 * min(times),
        "times_ms": [round(1000 * value, 4) for value in times],
        "warmup_ms": [round(1000 * value / per_call, 4) for value in warm],
        "repeats": len(times),
        "retried": retries,
        "set_aside_ms": [round(1000 * seconds / per_call, 4) for seconds, _ in set_aside],
        "contended": contended_kept > 0,
        "contended_repeats": contended_kept,
        "other_cpu_share": round(max(shares), 4) if shares else None,
        "other_cpu_share_set_aside": [round(share, 4) for _, share in set_aside if share is not None],
        "retry_wait_s": round(waited, 2),
    }


def _train_step(workload: Any) -> Callable[[], None]:
    parameters = list(workload.module.parameters())

    def step() -> None:
        output = workload.forward()
        output.float().sum().backward()
        for tensor in parameters + list(workload.grad_inputs):
            tensor.grad = None  # as optimizer.zero_grad(set_to_none=True)

    return step


def _infer_step(workload: Any) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            workload.forward()

    return step


def measure_point(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the spec's workload and measure it; returns the figures as a plain dict."""
    started = time.perf_counter()
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    implementation = get_implementation(spec["implementation"])
    mode = spec["mode"]
    scope = "decoder" if mode == "decode" else spec["scope"]
    builder = implementation.builder(scope)
    if builder is None:
        raise ValueError(f"{implementation.name!r} has no {scope} builder (mode {mode!r}).")
    tokens_per_repeat = spec["decode_tokens"]
    extra = 0
    if mode == "decode":
        extra = (spec["warmup"] + spec["repeats"] + spec["max_retries"]) * tokens_per_repeat + 1
    task = Task(
        scope=scope, length=spec["length"], hidden_size=spec["hidden_size"],
        num_attention_heads=spec["num_attention_heads"], intermediate_size=spec["intermediate_size"],
        num_layers=spec["num_layers"], vocab_size=spec["vocab_size"], batch_size=spec["batch_size"],
        extra_positions=extra, device=spec["device"], dtype=spec["dtype"], settings=dict(spec["settings"]),
    )
    workload = builder(task)
    memory = PeakMemory(spec["device"])
    result: dict[str, Any] = {"note": workload.note}

    if mode == "train":
        workload.module.train()
        for tensor in workload.grad_inputs:
            tensor.requires_grad_(True)
        memory.start()
        result.update(_timed_repetitions(_train_step(workload), spec, started))
    elif mode == "infer":
        workload.module.eval()
        memory.start()
        result.update(_timed_repetitions(_infer_step(workload), spec, started))
    elif mode == "decode":
        result.update(_decode(workload.module, task, spec, memory, started))
    else:
        raise ValueError(f"mode must be one of train, infer, decode; got {mode!r}.")
    peak = memory.peak_bytes()
    result.update(
        peak_mem_mib=round(peak / _MIB, 2),
        baseline_mem_mib=round(memory.baseline / _MIB, 2),
        mem_method=memory.method,
        point_wall_s=round(time.perf_counter() - started, 3),
        threads=torch.get_num_threads(),
    )
    return result


def _decode(model: torch.nn.Module, task: Task, spec: dict[str, Any], memory: PeakMemory,
            started: float) -> dict[str, Any]:
    """Prefill a context of ``task.length`` tokens once, then time greedy steps of one token.

    A repetition is ``decode_tokens`` consecutive steps (long enough for the contention meter);
    the reported figures are milliseconds per token.
    """
    model.eval()
    tokens = spec["decode_tokens"]
    context = torch.randint(5, task.vocab_size, (task.batch_size, task.length), device=task.device)
    memory.start()
    timer = Timer(spec["device"])
    state: dict[str, Any] = {}

    def prefill() -> None:
        with torch.no_grad():
            output = model(input_ids=context, use_cache=True, logits_to_keep=1)
        state["cache"] = getattr(output, CACHE_FIELD)
        state["next"] = output.logits[:, -1:].argmax(-1)

    prefill_s = timer(prefill)

    def steps() -> None:
        with torch.no_grad():
            for _ in range(tokens):
                output = model(input_ids=state["next"], past_key_values=state["cache"], use_cache=True)
                state["cache"] = getattr(output, CACHE_FIELD)
                state["next"] = output.logits[:, -1:].argmax(-1)

    figures = _timed_repetitions(steps, spec, started, per_call=tokens)
    figures.update(prefill_ms=round(1000 * prefill_s, 3), decode_tokens_per_repeat=tokens)
    return figures
