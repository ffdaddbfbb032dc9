"""PNG plots: accuracy by turn depth per strategy, and metrics against the prompt-loss weight.

Built on `matplotlib.figure.Figure` with the Agg canvas (no pyplot state) and saved without the
`Software` PNG text, so the same numbers give the same bytes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sft_sweeps.metrics import headline_keys, lower_is_better
from sft_sweeps.report.analysis import SettingReport
from sft_sweeps.report.stats import MeanCI

DPI = 110
_PNG_METADATA = {"Software": None}  # matplotlib writes its version here by default


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=DPI, metadata=_PNG_METADATA)
    return path


def _err(points: list[MeanCI]) -> list[float]:
    return [p.half_width or 0.0 for p in points]


def _colors(strategies: list[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {s: palette[i % len(palette)] for i, s in enumerate(strategies)}


def plot_by_depth(setting: SettingReport, metric: str, path: Path) -> Path | None:
    """Mean of `metric` at each turn depth, one line per strategy, 95% CI bars. None if no data."""
    series = setting.by_depth.get(metric) or {}
    if not series:
        return None
    colors = _colors(setting.strategies)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for i, strategy in enumerate(s for s in setting.strategies if s in series):
        depths = sorted(series[strategy])
        points = [series[strategy][d] for d in depths]
        # A small horizontal offset per strategy keeps overlapping error bars readable.
        xs = [d + (i - (len(series) - 1) / 2) * 0.04 for d in depths]
        ax.errorbar(
            xs,
            [p.mean for p in points],
            yerr=_err(points),
            marker="o",
            capsize=3,
            color=colors[strategy],
            label=strategy,
        )
    all_depths = sorted({d for s in series.values() for d in s})
    ax.set_xticks(all_depths)
    ax.set_xlabel("assistant turn (depth in the conversation)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by turn depth\n{setting.name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def prompt_weight_lines(setting: SettingReport) -> dict[str, list[tuple[float, str]]]:
    """Weighted strategies that differ only by prompt weight: line name -> [(weight, strategy)], sorted.

    Only lines with at least two weights are returned: that is when the weight was swept.
    """
    lines: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for strategy in setting.strategies:
        masking = setting.masking[strategy]
        if masking.get("name") != "weighted":
            continue
        rest = ",".join(f"{k}={masking[k]}" for k in sorted(masking) if k not in ("name", "prompt_weight"))
        lines[rest].append((float(masking["prompt_weight"]), strategy))
    return {k: sorted(v) for k, v in sorted(lines.items()) if len(v) >= 2}


def plot_prompt_weight(setting: SettingReport, path: Path) -> Path | None:
    """Key metrics against the prompt-loss weight (mean, 95% CI), with the other strategies as dashed
    reference lines. None when the weight was not swept."""
    lines = prompt_weight_lines(setting)
    metrics = headline_keys(list(setting.summary)) or setting.eval_metrics[:4]
    if not lines or not metrics:
        return None
    colors = _colors(setting.strategies)
    in_lines = {s for pts in lines.values() for _, s in pts}
    references = [s for s in setting.strategies if s not in in_lines]
    fig = Figure(figsize=(4.0 * len(metrics), 3.6), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for j, (name, points) in enumerate(lines.items()):
            pts = [(w, setting.summary[metric][s]) for w, s in points if s in setting.summary[metric]]
            if not pts:
                continue
            ax.errorbar(
                [w for w, _ in pts],
                [m.mean for _, m in pts],
                yerr=_err([m for _, m in pts]),
                marker="o",
                capsize=3,
                color=f"C{j}",
                label=f"weighted {name}" if len(lines) > 1 else "weighted",
            )
        for s in references:
            if s in setting.summary[metric]:
                ax.axhline(
                    setting.summary[metric][s].mean, linestyle="--", linewidth=1, color=colors[s], label=s
                )
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("prompt-loss weight")
        ax.set_ylabel(f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"metrics against prompt-loss weight\n{setting.name}", fontsize=10)
    return _save(fig, path)
