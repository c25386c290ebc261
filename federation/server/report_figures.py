"""The plots of a run's report (and of ``allfed console``): matplotlib on a bare ``Figure`` (no
pyplot state), each drawn with the uncertainty of what it shows: the DP noise and sampling.

Every function takes what ``summary.json`` and ``metrics.jsonl`` hold and returns a figure, or
None when there is nothing to draw.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.special import expit, logit

from federation.server.style import NA, WITHHELD
from federation.wire.evaluation import INTERSECTION_JOIN

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
POOLED_COLOR = "#222222"


def rounds_figure(
    rounds: list[dict[str, Any]], metric: str = "auroc", label: str = "AUROC"
) -> Figure | None:
    """The pooled ``metric`` (AUROC, or a survival run's C-index; shaded: its 95% interval)
    after each evaluated round; None with fewer than two evaluations (the default evaluates
    the final model only)."""
    points = [(r["round"], (r.get("metrics") or {}).get("pooled") or {}) for r in rounds]
    points = [(n, m) for n, m in points if m.get(metric) is not None]
    if len(points) < 2:
        return None
    figure = new_figure(7.5, 3.6, left=0.7, top=0.45)
    axes = figure.subplots()
    x = [n for n, _ in points]
    ci = [m.get(f"{metric}_ci") or [m[metric], m[metric]] for _, m in points]
    axes.fill_between(x, [c[0] for c in ci], [c[1] for c in ci], color=COLORS[0], alpha=0.15)
    axes.plot(x, [m[metric] for _, m in points], marker="o", color=COLORS[0], label=label)
    axes.set(xlabel="Round", ylabel=f"Pooled test {label}", ylim=(0.4, 1))
    integer_ticks(axes, x)
    figure.legend(loc="upper center", ncols=3, frameon=False)
    axes.grid(alpha=0.3)
    return figure


def epsilon_figure(rounds: list[dict[str, Any]], target: float | None) -> Figure | None:
    """Each site's training-partition epsilon after each round against the run's budget."""
    if target is None or not rounds:
        return None
    sites = sorted({name for r in rounds for name in (r.get("epsilon") or {})})
    figure = new_figure(7.5, 3.6, left=0.7)
    axes = figure.subplots()
    x = [r["round"] for r in rounds]
    for i, site in enumerate(sites):
        values = [(r.get("epsilon") or {}).get(site) for r in rounds]
        axes.plot(
            x,
            [np.nan if v is None else v for v in values],
            marker=MARKERS[i % len(MARKERS)],
            fillstyle="none",
            markersize=max(4, 9 - i),
            color=COLORS[i % len(COLORS)],
            label=site,
        )
    axes.axhline(target, color="#555", linestyle="--", label=f"budget ε = {target:g}")
    axes.set(xlabel="Round", ylabel="ε spent so far", ylim=(0, target * 1.15))
    integer_ticks(axes, x)
    axes.legend(loc="lower right", frameon=False, fontsize="small")
    axes.grid(alpha=0.3)
    return figure


def roc_figure(pooled: dict[str, Any]) -> Figure | None:
    """The pooled ROC curve with its pointwise 95% band of the sensitivity."""
    curve = pooled.get("roc_curve") or []
    if not curve:
        return None
    figure = new_figure(5.2, 5.0, left=0.75)
    axes = figure.subplots()
    fpr = [p["fpr"] for p in curve]
    axes.fill_between(
        fpr,
        [p["tpr_low"] for p in curve],
        [p["tpr_high"] for p in curve],
        step=None,
        color=COLORS[0],
        alpha=0.18,
        label="95% band (DP noise and sampling)",
    )
    auroc = pooled.get("auroc")
    label = "pooled" + (f" (AUROC {auroc:.3f})" if auroc is not None else "")
    axes.plot(fpr, [p["tpr"] for p in curve], color=POOLED_COLOR, lw=2.2, label=label)
    axes.plot([0, 1], [0, 1], color="#999", linestyle=":", label="no skill")
    axes.set(
        xlabel="1 − specificity (false positive rate)",
        ylabel="Sensitivity (true positive rate)",
        xlim=(0, 1),
        ylim=(0, 1),
        aspect="equal",
    )
    axes.legend(loc="lower right", frameon=False, fontsize="small")
    axes.grid(alpha=0.3)
    return figure


def calibration_figure(pooled: dict[str, Any]) -> Figure | None:
    """Observed against predicted risk per group of score bins, with 95% intervals of the
    observed risk, and the fitted recalibration line."""
    bins = [b for b in pooled.get("calibration") or [] if b.get("observed") is not None]
    if not bins:
        return None
    figure, axes, limit = _calibration_axes(bins)
    predicted = _observed_with_intervals(
        axes, bins, fmt="o", color=COLORS[1], label="observed risk per score group (95% interval)"
    )
    a, b = pooled.get("calibration_line_intercept"), pooled.get("calibration_slope")
    if a is not None and b is not None:
        risk = np.linspace(max(predicted.min(), 1e-3), min(predicted.max(), 1 - 1e-3), 100)
        axes.plot(
            risk,
            expit(a + b * logit(risk)),
            color=COLORS[2],
            linestyle=(0, (1, 1)),
            lw=1.6,
            label=f"recalibration (slope {b:.2f})",
        )
    axes.set(
        xlabel="Predicted risk", ylabel="Observed risk", xlim=(0, limit), ylim=(0, limit),
        aspect="equal",
    )  # fmt: skip
    axes.legend(loc="upper left", frameon=False, fontsize="small")
    axes.grid(alpha=0.3)
    return figure


def survival_calibration_figure(pooled: dict[str, Any]) -> Figure | None:
    """A survival model's calibration: at each horizon, the observed risk (1 - Kaplan-Meier,
    with its 95% interval) against the mean predicted risk per risk group of score bins."""

    def shown(group: dict[str, Any]) -> bool:
        return group.get("observed") is not None and group.get("mean_predicted") is not None

    horizons = [
        (entry["horizon"], [g for g in entry["groups"] if shown(g)])
        for entry in pooled.get("calibration") or []
    ]
    horizons = [(h, groups) for h, groups in horizons if groups]
    if not horizons:
        return None
    figure, axes, limit = _calibration_axes([g for _, groups in horizons for g in groups])
    for i, (horizon, groups) in enumerate(horizons):
        _observed_with_intervals(
            axes,
            groups,
            fmt=MARKERS[i % len(MARKERS)] + "-",
            color=COLORS[i % len(COLORS)],
            label=f"by day {horizon:g}",
        )
    axes.set(
        xlabel="Predicted risk", ylabel="Observed risk (1 − Kaplan-Meier)", xlim=(0, limit),
        ylim=(0, limit), aspect="equal",
    )  # fmt: skip
    axes.legend(loc="upper left", frameon=False, fontsize="small")
    axes.grid(alpha=0.3)
    return figure


def _calibration_axes(points: list[dict[str, Any]]) -> tuple[Figure, Any, float]:
    """A calibration plot's square axes, up to the largest predicted risk or interval end
    (rounded up to a tenth), with the diagonal of perfect calibration."""
    figure = new_figure(5.2, 5.0, left=0.75)
    axes = figure.subplots()
    top = max([0.1] + [max(p["mean_predicted"], p["observed_ci"][1]) for p in points])
    limit = min(1.0, np.ceil(top * 10 + 0.5) / 10)
    axes.plot([0, limit], [0, limit], color="#999", linestyle=":", label="perfect calibration")
    return figure, axes, limit


def _observed_with_intervals(axes, points: list[dict[str, Any]], **style: Any) -> np.ndarray:
    """Observed against mean predicted risk with the observed risk's 95% interval; returns the
    predicted risks."""
    predicted = np.array([p["mean_predicted"] for p in points])
    observed = np.array([p["observed"] for p in points])
    low = observed - np.array([p["observed_ci"][0] for p in points])
    high = np.array([p["observed_ci"][1] for p in points]) - observed
    yerr = np.vstack([np.maximum(low, 0), np.maximum(high, 0)])
    axes.errorbar(predicted, observed, yerr=yerr, capsize=3, zorder=3, **style)
    return predicted


def forest_figure(
    table: dict[str, Any],
    groups: list[str],
    pooled: dict[str, Any],
    released_only: bool = False,
    metric: str = "auroc",
    label: str = "AUROC",
) -> Figure | None:
    """One row per level: ``metric`` (AUROC, or a survival run's C-index) with its 95%
    interval, "withheld" for a level the dissemination rule holds back, "n/a" for a value the
    noise makes meaningless."""
    rows: list[tuple[str, dict[str, Any] | None, bool]] = []  # label, metrics, is a heading
    for column in ordered_columns(table, groups):
        levels = [
            (level, entry.get("metrics"))
            for level, entry in table[column].items()
            if not released_only or (entry.get("metrics") or {}).get(metric) is not None
        ]
        if levels:
            rows.append((column, None, True))
            rows += [(level, m, False) for level, m in levels]
    if not rows:
        return None
    figure = new_figure(7.5, 0.8 + 0.27 * len(rows), left=label_width([r[0] for r in rows], 8))
    axes = figure.subplots()
    y = np.arange(len(rows))[::-1]
    labels = []
    for position, (name, m, heading) in zip(y, rows, strict=True):
        if heading:
            labels.append(name)
        elif m is None or m.get(metric) is None:
            labels.append(f"   {name}")
            word = WITHHELD if m is None else NA
            axes.text(0.505, position, word, va="center", color="#8a5a00", fontsize=8.5)
        else:
            labels.append(f"   {name} (n≈{m['n']})")
            low, high = m.get(f"{metric}_ci") or (m[metric], m[metric])
            axes.plot([low, high], [position, position], color=COLORS[0], lw=1.6)
            axes.plot(m[metric], position, "s", color=COLORS[0], ms=5)
    axes.set_yticks(y, labels, fontsize=8.5)
    for tick, (_, _, heading) in zip(axes.get_yticklabels(), rows, strict=True):
        tick.set_fontweight("bold" if heading else "normal")
    if pooled.get(metric) is not None:
        axes.axvline(pooled[metric], color=POOLED_COLOR, linestyle="--", lw=1, label="pooled")
    axes.axvline(0.5, color="#999", linestyle=":", lw=1)
    axes.set(xlim=(0.3, 1.0), ylim=(-0.7, len(rows) - 0.3), xlabel=f"{label} (95% interval)")
    axes.grid(axis="x", alpha=0.3)
    return figure


def representation_figure(representation: dict[str, Any], groups: list[str]) -> Figure | None:
    """Horizontal bars of (noisy) test records per level, one colour per site."""
    columns = ordered_columns(representation, groups)
    if not columns:
        return None
    sites = sorted({s for c in columns for e in representation[c].values() for s in e["sites"]})
    heights = [0.16 * len(representation[c]) * len(sites) + 0.2 for c in columns]
    gap, top, bottom = 0.75, 0.7, 0.55
    figure = new_figure(
        7.5,
        top + bottom + sum(heights) + gap * (len(columns) - 1),
        left=label_width([level for c in columns for level in representation[c]]),
        bottom=bottom,
        top=top,
    )
    panels = figure.subplots(
        len(columns),
        1,
        squeeze=False,
        height_ratios=heights,
        gridspec_kw={"hspace": gap / np.mean(heights)},
    )[:, 0]
    width = 0.8 / len(sites)
    for axes, column in zip(panels, columns, strict=True):
        levels = list(representation[column])
        counts = [v or 0 for lv in levels for v in representation[column][lv]["sites"].values()]
        largest = max([*counts, 1])
        for i, site in enumerate(sites):
            for j, level in enumerate(levels):
                count = representation[column][level]["sites"].get(site)
                position = j + (i - (len(sites) - 1) / 2) * width
                color = COLORS[i % len(COLORS)]
                if count is None:
                    axes.text(
                        largest * 0.01, position, WITHHELD, va="center", fontsize=7.5,
                        color=color, style="italic",
                    )  # fmt: skip
                else:
                    axes.barh(position, count, height=width * 0.9, color=color)
        axes.set_yticks(range(len(levels)), levels, fontsize=8.5)
        axes.set_ylim(len(levels) - 0.5, -0.5)  # first level on top; rows without bars too
        axes.set_title(column, loc="left", fontsize=10, fontweight="bold")
        axes.set_xlim(0, largest * 1.08)
        axes.grid(axis="x", alpha=0.3)
    panels[-1].set_xlabel("Test records (DP counts)")
    handles = [Patch(color=COLORS[i % len(COLORS)], label=site) for i, site in enumerate(sites)]
    figure.legend(handles=handles, loc="upper right", frameon=False, fontsize="small")
    return figure


def new_figure(
    width: float, height: float, left: float, bottom: float = 0.55, top: float = 0.15
) -> Figure:
    """A figure with fixed margins in inches: a layout engine would draw every plot twice."""
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(
        left=left / width, right=1 - 0.2 / width, bottom=bottom / height, top=1 - top / height
    )
    return figure


def label_width(labels: list[str], indent: int = 0) -> float:
    """Inches of left margin for tick labels of this many characters (8.5 pt DejaVu Sans)."""
    return 0.25 + 0.068 * (indent + max((len(label) for label in labels), default=0))


def integer_ticks(axes, rounds: list[int]) -> None:
    step = max(1, int(np.ceil(len(rounds) / 12)))
    axes.set_xticks(rounds[::step])


def ordered_columns(table: dict[str, Any], groups: list[str]) -> list[str]:
    """The study's own order of group columns (and their pairs), then any others."""
    order = {name: i for i, name in enumerate(groups)}

    def key(column: str) -> tuple[int, ...]:
        parts = [order.get(part, len(order)) for part in column.split(INTERSECTION_JOIN)]
        return (len(parts), *parts)

    return sorted(table, key=lambda column: (key(column), column))
