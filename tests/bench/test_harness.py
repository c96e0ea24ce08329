"""The benchmark harness itself, at tiny sizes (seconds): never the sweep."""

from __future__ import annotations

import json

import pytest
import torch

from effzoo.bench import BenchOptions, Selection, get_implementation, read_run, run_benchmark
from effzoo.bench.harness import POINT_FIELDS, predict
from effzoo.bench.implementations import NoTokenMixing, Task, implementations
from effzoo.cli import build_parser, main

TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=100, warmup=1, repeats=2,
            min_repeats=1, max_retries=0, point_retries=0, quiet_wait_s=0.0, isolation="inline", threads=1)
RUN_FIELDS = ("cpu_model", "logical_cpus", "torch_threads", "torch", "transformers", "effzoo", "device", "dtype")
RATIO_FIELDS = tuple(f"{prefix}ratio_to_{reference}" for prefix in ("", "mem_")
                     for reference in ("bert_sdpa", "floor", "full", "counterpart"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run shared by the tests that only read it: three implementations, all three modes."""
    output = tmp_path_factory.mktemp("bench")
    options = BenchOptions(selections=[Selection("bert_sdpa"), Selection("floor"), Selection("full")],
                           lengths=[32, 64], modes=("train", "infer", "decode"), slope_from=32,
                           decode_tokens=2, output=str(output), **TINY)
    return run_benchmark(options, log=lambda message: None)


def test_run_writes_json_lines_with_every_field(tiny_run):
    records = read_run(tiny_run.path)
    assert records == json.loads(json.dumps(tiny_run.records))
    run, points = records[0], [record for record in records if record["type"] == "point"]
    assert run["type"] == "run" and run["status"] == "complete" and run["wall_s"] > 0
    assert all(run["machine"][name] is not None for name in RUN_FIELDS)
    # 2 lengths x 3 implementations x (train + infer), and decoding for the two causal ones.
    assert len(points) == 2 * 3 * 2 + 2 * 2
    for point in points:
        assert point["status"] == "ok", point["reason"]
        for name in ("implementation", "kind", "scope", "mode", "length", *POINT_FIELDS, *RATIO_FIELDS):
            assert name in point
        assert point["time_ms_min"] <= point["time_ms_median"]
        assert len(point["times_ms"]) == point["repeats"] >= 1
        assert point["peak_mem_mib"] >= 0 and point["baseline_mem_mib"] > 0
    sdpa = [point for point in points if point["implementation"] == "bert_sdpa"]
    assert all(point["ratio_to_bert_sdpa"] == 1.0 for point in sdpa)
    decode = [point for point in points if point["mode"] == "decode"]
    assert {point["implementation"] for point in decode} == {"floor", "full"}
    assert all(point["ratio_to_full"] is not None and point["ratio_to_bert_sdpa"] is None for point in decode)
    assert all(point["prefill_ms"] > 0 for point in decode)
    slopes = [record for record in records if record["type"] == "slope"]
    assert len(slopes) == 3 * 2 + 2
    assert all(slope["lengths"] == [32, 64] and slope["time_exponent"] is not None for slope in slopes)
    assert tiny_run.path.with_suffix(".md").read_text().strip() == tiny_run.table.strip()


def test_table_has_a_section_per_mode_with_times_and_ratios(tiny_run):
    table = tiny_run.table
    assert "### One layer, forward + backward" in table
    assert "### One layer, forward only" in table
    assert "### Causal decoding" in table
    assert "÷ floor · ÷ bert_sdpa" in table and "÷ floor · ÷ full" in table
    assert "| floor | 1.00 · " in table


def test_plots_are_png_files_next_to_the_json(tiny_run):
    pytest.importorskip("matplotlib")
    names = sorted(path.name for path in tiny_run.plots)
    stem = tiny_run.path.with_suffix("").name
    assert names == sorted(f"{stem}-{kind}.png" for kind in ("time", "memory", "decode"))
    for path in tiny_run.plots:
        assert path.parent == tiny_run.path.parent
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_the_floor_is_recognised(tiny_run):
    floor = get_implementation("floor")
    assert floor.kind == "floor" and floor.build_decoder is not None
    points = [point for point in tiny_run.points if point["implementation"] == "floor"]
    assert points and all(point["kind"] == "floor" and point["ratio_to_floor"] == 1.0 for point in points)
    others = [point for point in tiny_run.points if point["implementation"] != "floor"]
    assert all(point["ratio_to_floor"] is not None for point in others)


def test_the_floor_mixes_no_tokens_but_keeps_every_projection_in_the_backward():
    workload = get_implementation("floor").build_layer(Task(length=16, hidden_size=32, num_attention_heads=2,
                                                            intermediate_size=64))
    hidden = workload.grad_inputs[0].requires_grad_(True)
    output = workload.forward()
    output.sum().backward()
    self_attention = workload.module.attention.self
    for projection in (self_attention.query, self_attention.key, self_attention.value):
        assert projection.weight.grad is not None
    assert torch.count_nonzero(self_attention.query.weight.grad) == 0  # zero, yet computed
    # No token mixing: changing one token changes only that token's output.
    with torch.no_grad():
        changed = hidden.detach().clone()
        changed[0, 3] += 1.0
        difference = (workload.module(changed) - workload.module(hidden.detach())).abs().sum(-1)[0]
    assert torch.nonzero(difference).flatten().tolist() == [3]
    mechanism = NoTokenMixing(get_implementation("floor").make_config(Task(hidden_size=32, num_attention_heads=2)))
    q, k, v = (torch.randn(1, 2, 5, 16) for _ in range(3))
    assert torch.equal(mechanism(q, k, v), v)


def test_a_point_over_the_budget_is_recorded_as_skipped(tmp_path):
    options = BenchOptions(selections=[Selection("floor")], lengths=[32, 64, 128], modes=("infer",),
                           budget_s=1e-6, output=str(tmp_path / "run.jsonl"), plots=False, **TINY)
    run = run_benchmark(options, log=lambda message: None)
    first, second, third = run.points
    assert first["status"] == "ok" and first["predicted_s"] is None
    assert second["status"] == "skipped" and second["predicted_s"] > 0 and "budget" in second["reason"]
    assert third["status"] == "skipped" and "shorter length" in third["reason"]
    assert second["time_ms_median"] is None
    assert run.path == tmp_path / "run.jsonl"
    assert [point["status"] for point in read_run(run.path)[1:4]] == ["ok", "skipped", "skipped"]
    assert "| floor | " in run.table and "skipped" in run.table


def test_an_unknown_implementation_lists_the_known_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match="Unknown implementation 'nope'. Known implementations: bert_sdpa, floor"):
        run_benchmark(BenchOptions(selections=[Selection("nope")], output=str(tmp_path)))
    assert main(["bench", "nope", "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "effzoo bench: error: Unknown implementation 'nope'" in error
    assert all(name in error for name in implementations())
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_settings_are_checked_against_the_config():
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['bogus'\] for 'full'. Valid keys: .*layer_norm_eps"):
        run_benchmark(BenchOptions(selections=[Selection("full", {"bogus": 1})]))
    with pytest.raises(ValueError, match="harness sets these itself"):
        get_implementation("full").check_settings({"hidden_size": 64})
    get_implementation("hf_longformer").check_settings({"attention_window": 64})
    with pytest.raises(ValueError, match="attention_window"):
        get_implementation("hf_longformer").check_settings({"attention_window": 3})


def test_cli_binds_set_to_the_preceding_variant(tmp_path, capsys):
    args = build_parser().parse_args(["bench", "floor", "--variant", "full", "--set", "layer_norm_eps=1e-6",
                                      "--variant", "hf_longformer", "--set", "attention_window=64"])
    from effzoo.bench.cli import options_from_args

    options = options_from_args(args)
    assert [(selection.label, selection.settings) for selection in options.selections] == [
        ("floor", {}), ("full(layer_norm_eps=1e-06)", {"layer_norm_eps": 1e-6}),
        ("hf_longformer(attention_window=64)", {"attention_window": 64})]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--set", "num_random_features=4"])
    assert "put --variant NAME before --set" in capsys.readouterr().err


def test_cli_end_to_end_prints_the_table(tmp_path, capsys):
    code = main(["bench", "--variant", "full", "--set", "layer_norm_eps=1e-6", "--lengths", "32", "--modes",
                 "infer", "--hidden-size", "32", "--heads", "2", "--ffn", "64", "--vocab-size", "100",
                 "--repeats", "1", "--min-repeats", "1", "--quiet-wait-s", "0", "--point-retries", "0",
                 "--threads", "1",
                 "--isolation", "inline", "--no-plots", "--output", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| full(layer_norm_eps=1e-06) | " in out and "results: " in out
    (path,) = tmp_path.glob("*.jsonl")
    point = read_run(path)[1]
    assert point["settings"] == {"layer_norm_eps": 1e-6} and point["status"] == "ok"
    assert main(["bench", "--report", str(path), "--no-plots"]) == 0  # the table again, from the file
    assert "| full(layer_norm_eps=1e-06) | " in capsys.readouterr().out


def test_transformers_built_ins_run_at_tiny_sizes(tmp_path):
    options = BenchOptions(selections=[Selection(name) for name in ("hf_longformer", "hf_bigbird", "hf_reformer",
                                                                    "hf_nystromformer")],
                           lengths=[64], modes=("train",), plots=False, output=str(tmp_path), **TINY)
    run = run_benchmark(options, log=lambda message: None)
    assert {point["implementation"]: point["status"] for point in run.points} == dict.fromkeys(
        ("hf_longformer", "hf_bigbird", "hf_reformer", "hf_nystromformer"), "ok")
    notes = {point["implementation"]: point["note"] for point in run.points}
    assert "512" in notes["hf_longformer"]  # padded to the attention window, as LongformerModel does
    assert "original_full" in notes["hf_bigbird"]  # too short for block-sparse: BigBirdModel's fallback
    assert "reversible" in notes["hf_reformer"]
    assert {point["counterpart"] for point in run.points} == {"longformer", "bigbird", "reformer", "nystrom"}


def test_each_point_runs_in_its_own_process(tmp_path):
    options = BenchOptions(selections=[Selection("floor")], lengths=[32], modes=("train",), plots=False,
                           output=str(tmp_path), **{**TINY, "isolation": "forkserver"})
    (point,) = run_benchmark(options, log=lambda message: None).points
    assert point["status"] == "ok" and point["peak_mem_mib"] >= 0
    assert point["mem_method"].startswith("peak RSS")


def test_a_failing_point_is_recorded_with_its_reason(tmp_path):
    options = BenchOptions(selections=[Selection("hf_nystromformer")], lengths=[96], modes=("infer",),
                           plots=False, output=str(tmp_path), **TINY)
    (point,) = run_benchmark(options, log=lambda message: None).points
    assert point["status"] == "failed" and "multiple of num_landmarks" in point["reason"]


def test_missing_matplotlib_still_writes_json_and_table(tmp_path, monkeypatch):
    from effzoo.bench import report

    def no_matplotlib(*args, **kwargs):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report, "plot_run", no_matplotlib)
    options = BenchOptions(selections=[Selection("floor")], lengths=[32], modes=("infer",), output=str(tmp_path),
                           **TINY)
    run = run_benchmark(options, log=lambda message: None)
    assert run.plots == [] and run.path.exists() and run.path.with_suffix(".md").exists()
    assert any("pip install 'effzoo[bench]'" in message for message in run.messages)


def test_prediction_scales_from_the_previous_lengths():
    options = BenchOptions(warmup=1, repeats=3, min_repeats=3, target_s=1000)
    first = {"mode": "train", "length": 1024, "time_ms_median": 1000.0, "repeats": 3, "retried": 0,
             "point_wall_s": 4.0, "peak_mem_mib": 100.0}
    assert predict([], 2048, options) is None
    seconds, memory = predict([first], 2048, options)  # one point: quadratic, conservatively
    assert seconds == pytest.approx(4 * 4.0) and memory == pytest.approx(400.0)
    second = dict(first, length=2048, time_ms_median=2000.0, point_wall_s=8.0, peak_mem_mib=200.0)
    seconds, memory = predict([first, second], 4096, options)  # linear so far: exponent 1 + 0.2
    assert seconds == pytest.approx(4 * 2.0 * 2 ** 1.2) and memory == pytest.approx(200.0 * 2 ** 1.2)


def test_json_records_are_plain_json(tiny_run):
    for line in tiny_run.path.read_text().splitlines():
        assert json.loads(line)["type"] in ("run", "point", "slope")


def test_a_whole_small_model_is_measured_with_the_model_flag(tmp_path):
    options = BenchOptions(selections=[Selection("floor"), Selection("full"), Selection("hf_reformer")],
                           lengths=[64], modes=("train",), scope="model", model_layers=2, plots=False,
                           output=str(tmp_path), **TINY)
    run = run_benchmark(options, log=lambda message: None)
    assert [(point["scope"], point["status"]) for point in run.points] == [("model", "ok")] * 3
    assert "### Whole model (2 layers), forward + backward" in run.table


def test_backbone_options_reach_the_measured_layer():
    """``--set num_experts=…`` measures the backbone's mixture-of-experts layer, built by its own factory."""
    from effzoo.modeling.layers import EffzooLayer
    from effzoo.modeling.moe import EffzooMoELayer

    sizes = dict(length=16, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    dense = get_implementation("full").build_layer(Task(**sizes))
    moe = get_implementation("full").build_layer(Task(**sizes, settings={"num_experts": 4, "encoder_sparse_step": 2}))
    assert type(dense.module) is EffzooLayer and isinstance(moe.module, EffzooMoELayer)
    assert len(moe.module.experts) == 4 and moe.module.attention.self.mechanism.layer_idx == 1
    output = moe.forward()
    assert output.shape == (1, 16, 32)
    output.sum().backward()
    assert any(expert.intermediate.dense.weight.grad is not None for expert in moe.module.experts)


def test_a_reversible_layer_is_refused_in_layer_scope_and_measured_as_a_model(tmp_path):
    selections = [Selection("full", {"reversible": True})]
    layer = BenchOptions(selections=selections, lengths=[32], modes=("train",), plots=False,
                         output=str(tmp_path / "layer"), **TINY)
    (point,) = run_benchmark(layer, log=lambda message: None).points
    assert point["status"] == "failed" and "add --model" in point["reason"]
    model = BenchOptions(selections=selections, lengths=[32], modes=("train",), scope="model", model_layers=2,
                         plots=False, output=str(tmp_path / "model"), **TINY)
    (point,) = run_benchmark(model, log=lambda message: None).points
    assert point["status"] == "ok"
