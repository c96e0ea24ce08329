"""``effzoo bench --device``: the CUDA sweep where a GPU is present, clear errors where it is not."""

from __future__ import annotations

import pytest
import torch

from effzoo.bench import BenchOptions, Selection, run_benchmark
from effzoo.bench.cli import options_from_args
from effzoo.bench.harness import memory_limit_mib
from effzoo.cli import build_parser, main
from tests.bench.test_harness import TINY

TINY_FLAGS = ["--lengths", "32", "--modes", "infer", "--hidden-size", "32", "--heads", "2", "--ffn", "64",
              "--vocab-size", "100", "--repeats", "1", "--min-repeats", "1", "--quiet-wait-s", "0",
              "--point-retries", "0", "--threads", "1", "--isolation", "inline", "--no-plots"]


def bench_error(capsys, device: str, tmp_path) -> str:
    code = main(["bench", "full", "--device", device, *TINY_FLAGS, "--output", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2 and not list(tmp_path.glob("*.jsonl")), captured.out
    return captured.err


def test_the_device_flag_reaches_the_options():
    assert options_from_args(build_parser().parse_args(["bench", "--device", "cuda:1"])).device == "cuda:1"
    assert options_from_args(build_parser().parse_args(["bench"])).device == "cpu"


def test_cuda_asked_for_without_a_gpu_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    error = bench_error(capsys, "cuda", tmp_path)
    assert error.startswith("effzoo bench: error: --device cuda: this machine has no CUDA device")
    assert "use --device cpu" in error and "Traceback" not in error


def test_a_cuda_index_beyond_the_devices_names_those_there_are(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "has 1 CUDA device(s), cuda:0 to cuda:0" in bench_error(capsys, "cuda:3", tmp_path)


@pytest.mark.parametrize("device", ["gpu", "cuda0", "cuda:x", "mps"])
def test_an_unknown_device_names_the_accepted_ones(capsys, tmp_path, device):
    assert f"--device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}" in bench_error(capsys, device, tmp_path)


def test_the_memory_limit_is_the_gpus_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000 * 2**20, 4000 * 2**20))
    assert memory_limit_mib(BenchOptions(device="cuda"), {"memory_available_mib": 9999.0}) == pytest.approx(850)
    assert memory_limit_mib(BenchOptions(), {"memory_available_mib": 2000.0}) == pytest.approx(1700)
    assert memory_limit_mib(BenchOptions(device="cuda", max_memory_mib=10.0), {}) == 10.0


def test_a_tiny_sweep_measures_on_the_device(device, tmp_path):
    options = BenchOptions(selections=[Selection("full"), Selection("performer")], lengths=[32],
                           modes=("train", "infer"), plots=False, output=str(tmp_path),
                           **{**TINY, "device": str(device)})
    run = run_benchmark(options, log=lambda message: None)
    assert [point["status"] for point in run.points] == ["ok"] * 4, [point["reason"] for point in run.points]
    assert run.records[0]["machine"]["device"] == str(device)
    on_cuda = device.type == "cuda"
    assert all(("torch.cuda.max_memory_allocated" in point["mem_method"]) == on_cuda for point in run.points)
    if on_cuda:
        assert run.records[0]["machine"]["device_name"] == torch.cuda.get_device_name(device)
