"""A run's records as markdown tables (for the terminal and the README) and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_TITLES = {
    ("layer", "train"): "One layer, forward + backward (training mode, dropout 0)",
    ("layer", "infer"): "One layer, forward only (eval, torch.no_grad)",
    ("model", "train"): "Whole model ({layers} layers), forward + backward (training mode, dropout 0)",
    ("model", "infer"): "Whole model ({layers} layers), forward only (eval, torch.no_grad)",
    ("decoder", "decode"): "Causal decoding ({layers}-layer LM): ms per new token after a context of L tokens",
}
_ORDER = list(_TITLES)


def _groups(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        if record["type"] == "point":
            groups.setdefault((record["scope"], record["mode"]), []).append(record)
    return dict(sorted(groups.items(), key=lambda item: _ORDER.index(item[0]) if item[0] in _ORDER else 99))


def _title(records: list[dict[str, Any]], scope: str, mode: str) -> str:
    run = next((record for record in records if record["type"] == "run"), {})
    options = run.get("options", {})
    layers = options.get("decode_layers" if mode == "decode" else "model_layers", "?")
    return _TITLES.get((scope, mode), f"{scope}, {mode}").format(layers=layers)


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _length(length: int) -> str:
    return f"{length // 1024}K" if length >= 1024 and length % 1024 == 0 else str(length)


def _cell(point: dict[str, Any] | None, figure: str) -> str:
    if point is None:
        return ""
    if point["status"] != "ok":
        return point["status"]
    if figure == "time":
        text = f"{_number(point['time_ms_median'])} · {_number(point['peak_mem_mib'])}"
    else:
        parts = [point.get(f"ratio_to_{reference}") for reference in figure.split("+")]
        text = " · ".join("–" if value is None else f"{value:.2f}" for value in parts)
    return text + ("~" if point["contended"] else "")


def markdown_report(records: list[dict[str, Any]]) -> str:
    """Per scope and mode: a table of time · memory with the exponent, and a table of ratios."""
    slopes = {(record["implementation"], record["scope"], record["mode"]): record
              for record in records if record["type"] == "slope"}
    sections = []
    for (scope, mode), points in _groups(records).items():
        labels = list(dict.fromkeys(point["implementation"] for point in points))
        lengths = sorted({point["length"] for point in points})
        by_key = {(point["implementation"], point["length"]): point for point in points}
        unit = "ms per token" if mode == "decode" else "ms"
        exponent_lengths = sorted({length for record in slopes.values() if record["scope"] == scope
                                   and record["mode"] == mode for length in record["lengths"]})
        span = f" {_length(exponent_lengths[0])}–{_length(exponent_lengths[-1])}" if exponent_lengths else ""
        header = "| implementation | " + " | ".join(_length(length) for length in lengths) + f" | exponent{span} |"
        rule = "|---|" + "---:|" * (len(lengths) + 1)
        rows = []
        for label in labels:
            slope = slopes.get((label, scope, mode), {}).get("time_exponent")
            cells = [_cell(by_key.get((label, length)), "time") for length in lengths]
            rows.append(f"| {label} | " + " | ".join(cells) + f" | {'' if slope is None else f'{slope:.2f}'} |")
        section = [f"### {_title(records, scope, mode)}", "",
                   f"median {unit} · peak MiB above the baseline", "", header, rule, *rows]

        references = "floor+full" if mode == "decode" else "floor+bert_sdpa"
        if any(point.get(f"ratio_to_{references.split('+')[1]}") is not None
               or point.get("ratio_to_floor") is not None for point in points):
            names = " · ".join(f"÷ {name}" for name in references.split("+"))
            section += ["", f"time {names} at the same L", "",
                        "| implementation | " + " | ".join(_length(length) for length in lengths) + " |",
                        "|---|" + "---:|" * len(lengths)]
            for label in labels:
                cells = [_cell(by_key.get((label, length)), references) for length in lengths]
                section.append(f"| {label} | " + " | ".join(cells) + " |")
        sections.append("\n".join(section))
    legend = ("`~` other processes used the CPU during kept repetitions (after retries); `skipped`: predicted over "
              "the time budget or memory limit, or a shorter length was skipped; `failed` / `timeout`: see the "
              "point's `reason` in the JSON lines file.")
    return "\n\n".join(sections + [legend])


def plot_run(records: list[dict[str, Any]], stem: Path) -> list[Path]:
    """PNG plots next to the JSON: time and memory against L (log-log), decoding ms/token.

    Raises ImportError when matplotlib is missing (``pip install 'effzoo[bench]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(records)
    encoder = [(key, points) for key, points in groups.items() if key[1] != "decode"]
    decode = [(key, points) for key, points in groups.items() if key[1] == "decode"]
    paths = []
    for figure, key, ylabel, groups_ in (("time", "time_ms_median", "median time (ms)", encoder),
                                         ("memory", "peak_mem_mib", "peak memory above baseline (MiB)", encoder),
                                         ("decode", "time_ms_median", "ms per new token", decode)):
        if not groups_:
            continue
        fig, axes = plt.subplots(1, len(groups_), figsize=(6.2 * len(groups_), 4.6), squeeze=False)
        for axis, ((scope, mode), points) in zip(axes[0], groups_):
            _plot_lines(axis, points, key)
            axis.set_title(_title(records, scope, mode), fontsize=9)
            axis.set_xlabel("context length L (tokens)" if mode == "decode" else "sequence length L (tokens)")
            axis.set_ylabel(ylabel)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=7, loc="upper left")
            axis.grid(True, which="both", alpha=0.3)
        run = next((record for record in records if record["type"] == "run"), {})
        machine = run.get("machine", {})
        fig.suptitle(f"effzoo bench · {machine.get('device_name', '')} · {machine.get('torch_threads', '?')} threads "
                     f"· {machine.get('dtype', '')} · {run.get('started', '')} · open markers: CPU contended",
                     fontsize=8)
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}-{figure}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _length_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: _length(int(value)) if value >= 1 else f"{value:g}")


def _plot_lines(axis: Any, points: list[dict[str, Any]], key: str) -> None:
    labels = list(dict.fromkeys(point["implementation"] for point in points))
    for index, label in enumerate(labels):
        mine = sorted((point for point in points if point["implementation"] == label), key=lambda p: p["length"])
        ok = [point for point in mine if point["status"] == "ok" and point[key] and point[key] > 0]
        style: dict[str, Any] = {"marker": "o", "markersize": 3.5, "linewidth": 1.4}
        if label == "floor":
            style.update(color="black", linestyle="--")
        elif label == "bert_sdpa":
            style.update(color="0.45", linewidth=2.2)
        else:
            style.update(color=f"C{index % 10}")
        missing = [_length(point["length"]) for point in mine if point["status"] != "ok"]
        if missing:  # skipped / failed lengths are named in the legend, never silently absent
            label = f"{label} (not run: {', '.join(missing)})"
        if ok:
            lines = axis.plot([point["length"] for point in ok], [point[key] for point in ok], label=label, **style)
            contended = [point for point in ok if point["contended"]]
            if contended:  # measured while other processes used the CPU: open markers
                axis.plot([point["length"] for point in contended], [point[key] for point in contended], "o",
                          markersize=6, markerfacecolor="white", markeredgecolor=lines[0].get_color())
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.xaxis.set_major_formatter(_length_formatter())
