"""``report.html``: a run's results on one self-contained page that a clinician can read.

Built only from ``summary.json`` and the rows of ``metrics.jsonl``, which hold nothing that the
disclosure rules withhold, so the page cannot show a small count either: withheld cells say
"withheld", never 0 and never "≤20" (a level withheld so that a small one cannot be recovered by
subtraction may be large). Plots are drawn by matplotlib on a bare ``Figure`` (no pyplot state)
and embedded as SVG data URIs, sharp on screen and in print; the page loads nothing from
anywhere else. A plot that
cannot be drawn is logged and replaced by a note, so one bad value never costs the whole report.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from html import escape
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.special import expit, logit

from federation.evaluation import INTERSECTION_JOIN

log = logging.getLogger("allfed.server")

WITHHELD = "withheld"
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_POOLED_COLOR = "#222222"

PAGE_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
  max-width: 1080px; margin: 2em auto; padding: 0 1.5em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid
  #ccc; padding-bottom: 0.2em; } h3 { margin-bottom: 0.3em; }
.lead { font-size: 1.08em; } .muted { color: #555; font-size: 0.92em; }
.status { display: inline-block; padding: 0.15em 0.6em; border-radius: 0.3em; font-weight: 600; }
.completed { background: #e3f4e6; color: #17612a; } .failed { background: #fde5e4; color: #9b1c13; }
.box { border-left: 4px solid #9b1c13; background: #fdf1f0; padding: 0.6em 1em; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 0.4em; padding: 0.6em 1em; flex: 1 1 9em; }
.card .value { font-size: 1.5em; font-weight: 600; } .card .label { color: #555; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.93em; }
th, td { border-bottom: 1px solid #e2e2e2; padding: 0.3em 0.7em; text-align: left;
  vertical-align: top; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; } td.withheld { color: #8a5a00; font-style: italic; }
figure { margin: 1.4em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.93em; max-width: 60em; }
"""


def render_report(summary: dict[str, Any], rounds: list[dict[str, Any]]) -> str:
    """The whole page for one run: who took part, the pooled results, the plots, the tables."""
    metrics = summary.get("metrics") or {}
    pooled = metrics.get("pooled") or {}
    sections = [
        _header(summary),
        _participants(summary, metrics.get("per_site") or {}),
        _headline(pooled),
        _figures(summary, rounds, metrics),
        _group_tables(summary, metrics),
        _representation_table(summary),
        _methods(summary),
    ]
    title = escape(f"{summary.get('study', 'allfed run')}: federated evaluation report")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{PAGE_CSS}</style></head>\n<body>\n"
        + "\n".join(section for section in sections if section)
        + "\n</body></html>\n"
    )


# -- text sections ---------------------------------------------------------------------------


def _header(summary: dict[str, Any]) -> str:
    """What the study is, how the run ended, and what differential privacy means here."""
    sites = summary.get("sites") or {}
    active = sum(1 for s in sites.values() if s.get("status") == "ok")
    status = str(summary.get("status", "unknown"))
    groups = ", ".join(escape(g) for g in summary.get("groups") or []) or "none declared"
    parts = [
        f"<h1>{escape(str(summary.get('study', 'allfed run')))}</h1>",
        f'<p><span class="status {escape(status)}">Run {escape(status)}</span> '
        f"after {summary.get('rounds', 0)} of {summary.get('planned_rounds', '?')} rounds</p>",
        f'<p class="lead">A {escape(_model_name(summary.get("model")))} predicting the risk of '
        f"<b>{escape(str(summary.get('label', 'the outcome')))}</b> was trained jointly by "
        f"{len(sites)} site{'s' if len(sites) != 1 else ''} ({active} took part to the end), "
        f"combining their model updates with {escape(str(summary.get('strategy', '')))}. "
        "Participants' records never left their site: only model updates and summary "
        "statistics did. Every result below is measured on the sites' held-out test records, "
        f"pooled across sites, and broken down by the study's groups ({groups}).</p>",
    ]
    if summary.get("error"):
        parts.append(f'<p class="box"><b>The run failed:</b> {escape(str(summary["error"]))}</p>')
    parts.append(f"<p>{_privacy_sentence(summary.get('privacy') or {})}</p>")
    return "\n".join(parts)


def _model_name(model: Any) -> str:
    return {"logistic": "logistic regression model", "mlp": "small neural network (MLP)"}.get(
        str(model), f"{model} model"
    )


def _privacy_sentence(privacy: dict[str, Any]) -> str:
    if not privacy.get("enabled"):
        return "<b>Privacy:</b> this run was trained <b>without</b> differential privacy."
    return (
        "<b>Privacy:</b> every site trained with differential privacy. Its epsilon (ε) bounds "
        "how much any one participant's record can change what the site released: lower is "
        f"more private, and each site's budget for the whole run was ε = "
        f"{privacy.get('target_epsilon')} (δ = {privacy.get('delta')}, "
        f"{escape(str(privacy.get('accountant')))} accountant)."
    )


def _participants(summary: dict[str, Any], per_site: dict[str, Any]) -> str:
    rows = []
    for name, site in (summary.get("sites") or {}).items():
        status = escape(str(site.get("status")))
        if site.get("reason"):
            status += f": {escape(str(site['reason']))}"
        site_metrics = per_site.get(name) or {}
        rows.append(
            [
                escape(name),
                status,
                _count(site.get("n_train")),
                _count(site.get("n_test")),
                _with_ci(site_metrics.get("auroc"), site_metrics.get("auroc_ci")),
                _num(site_metrics.get("prevalence"), percent=True),
                _num(site.get("epsilon")) if site.get("epsilon") is not None else "no DP",
            ]
        )
    pooled = (summary.get("metrics") or {}).get("pooled") or {}
    sites = (summary.get("sites") or {}).values()
    rows.append(
        [
            "<b>All sites</b>",
            "",
            _count(sum(site.get("n_train") or 0 for site in sites)),
            _count(sum(site.get("n_test") or 0 for site in sites)),
            _with_ci(pooled.get("auroc"), pooled.get("auroc_ci")),
            _num(pooled.get("prevalence"), percent=True),
            "",
        ]
    )
    header = [
        "Site",
        "Status",
        "Training records",
        "Test records",
        "AUROC (95% CI)",
        "Outcome rate",
        "ε spent",
    ]
    return "<h2>Who took part</h2>\n" + html_table(header, rows, numeric_from=2)


_HEADLINE = (
    (
        "auroc",
        "AUROC (95% CI)",
        "Discrimination: the chance that a participant with the outcome gets a higher predicted "
        "risk than one without (0.5 = a coin toss, 1 = perfect).",
    ),
    (
        "auprc",
        "AUPRC",
        "Average precision over all thresholds; compare with the outcome rate, which is what a "
        "model without skill scores.",
    ),
    ("prevalence", "Outcome rate", "Share of test participants with the outcome."),
    ("mean_predicted", "Mean predicted risk", "The model's average predicted risk."),
    ("brier", "Brier score", "Mean squared error of the predicted risks (0 is perfect)."),
    (
        "brier_scaled",
        "Scaled Brier",
        "Improvement over predicting the outcome rate for everyone (0 = none, 1 = perfect).",
    ),
    (
        "calibration_intercept",
        "Calibration intercept",
        "0 is ideal; above 0 the model under-predicts risk on average, below 0 it over-predicts.",
    ),
    (
        "calibration_slope",
        "Calibration slope",
        "1 is ideal; below 1 predicted risks are too extreme, above 1 too cautious.",
    ),
    (
        "calibration_e_avg",
        "E-avg (ICI)",
        "Average absolute gap between predicted and observed (smoothed) risk.",
    ),
    ("calibration_e90", "E90", "90% of participants have a gap below this."),
    ("calibration_e_max", "Emax", "Largest gap between predicted and observed risk."),
    (
        "calibration_observed_expected_ratio",
        "Observed / expected events",
        "1 is ideal; above 1 the model predicts fewer events than happened.",
    ),
)
_AT_THRESHOLD = (
    ("accuracy", "Accuracy", "Share of participants classified correctly."),
    ("sensitivity", "Sensitivity", "Share of participants with the outcome who are flagged."),
    ("specificity", "Specificity", "Share of participants without the outcome not flagged."),
    ("ppv", "Positive predictive value", "Share of flagged participants who had the outcome."),
    ("npv", "Negative predictive value", "Share of unflagged participants without it."),
)
_PERCENT = {"prevalence", "mean_predicted", "accuracy", "sensitivity", "specificity", "ppv", "npv"}


def _headline(pooled: dict[str, Any]) -> str:
    """Headline cards and the full table of pooled metrics, each with a plain explanation."""
    if not pooled:
        return "<h2>Results</h2>\n<p>No evaluation round finished, so there are no results.</p>"
    cards = [
        (_auroc_card_label(pooled), _num(pooled.get("auroc"))),
        ("Calibration slope", _num(pooled.get("calibration_slope"), digits=2)),
        ("Calibration intercept", _num(pooled.get("calibration_intercept"), digits=2)),
        ("Scaled Brier", _num(pooled.get("brier_scaled"))),
        ("Test participants", _count(pooled.get("n"))),
    ]
    card_html = "".join(
        f'<div class="card"><div class="value">{value}</div><div class="label">{label}</div></div>'
        for label, value in cards
    )
    rows = [[label, _metric_value(pooled, key), text] for key, label, text in _HEADLINE]
    threshold = pooled.get("threshold", 0.5)
    withheld = pooled.get("threshold_metrics_withheld")
    rows += [
        [
            f"{label} (risk ≥ {threshold:g})",
            WITHHELD if withheld else _metric_value(pooled, key),
            text
            + (
                " Withheld: at some site 1 to 20 records of a class fall on one side of the "
                "threshold, and those counts may not leave it."
                if withheld
                else ""
            ),
        ]
        for key, label, text in _AT_THRESHOLD
    ]
    return (
        "<h2>Results on all sites' test records</h2>\n"
        f'<div class="cards">{card_html}</div>\n'
        + html_table(["Metric", "Value", "What it means"], rows, numeric_from=1, numeric_to=2)
    )


def _auroc_card_label(pooled: dict[str, Any]) -> str:
    ci = pooled.get("auroc_ci")
    return f"AUROC (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "AUROC"


def _metric_value(metrics: dict[str, Any], key: str) -> str:
    if key == "auroc":
        return _with_ci(metrics.get("auroc"), metrics.get("auroc_ci"))
    return _num(metrics.get(key), percent=key in _PERCENT)


_GROUP_HEADER = [
    "Group",
    "Level",
    "Test records",
    "Outcome rate",
    "AUROC (95% CI)",
    "Calibration intercept",
    "Calibration slope",
    "Sensitivity",
    "Specificity",
    "Note",
]


def _group_tables(summary: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Per-group results with withheld levels as rows, then the released intersections with
    the withheld ones listed after them (most intersections of a small study are withheld)."""
    groups = summary.get("groups") or []
    single = metrics.get("per_group") or {}
    crossed = metrics.get("per_intersection") or {}
    if not single and not crossed:
        return ""
    parts = [
        "<h2>Results by group</h2>\n<p>A level is <i>withheld</i> where it had 1 to 20 test "
        "records, events or non-events (pooled), or where showing it would let a reader recover "
        "such a small count by subtraction. A site with 1 to 20 test records of a level keeps "
        "that level to itself, and the pooled result covers the other sites (see the note). "
        "Sensitivity and specificity are withheld where one of their counts is small.</p>",
        "<h3>By group</h3>",
        html_table(_GROUP_HEADER, _group_rows(single, groups), 2, len(_GROUP_HEADER) - 1),
    ]
    if crossed:
        released = _group_rows(crossed, groups, released_only=True)
        withheld = [
            f"{escape(column)}: {escape(level)}"
            for column in _ordered_columns(crossed, groups)
            for level, entry in crossed[column].items()
            if entry.get("metrics") is None
        ]
        parts.append("<h3>By intersection of two groups</h3>")
        if released:
            parts.append(html_table(_GROUP_HEADER, released, 2, len(_GROUP_HEADER) - 1))
        if withheld:
            parts.append(f"<p><b>Withheld:</b> {'; '.join(withheld)}.</p>")
    return "\n".join(parts)


def _group_rows(
    table: dict[str, Any], groups: list[str], released_only: bool = False
) -> list[list[str]]:
    return [
        [escape(column), escape(level), *_group_cells(entry)]
        for column in _ordered_columns(table, groups)
        for level, entry in table[column].items()
        if not released_only or entry.get("metrics") is not None
    ]


def _group_cells(entry: dict[str, Any]) -> list[str]:
    note = ""
    if entry.get("withheld_at"):
        note = "too few records at " + ", ".join(escape(s) for s in entry["withheld_at"])
    m = entry.get("metrics")
    if m is None:
        return [WITHHELD, *[""] * 6, note]
    return [
        _count(m.get("n")),
        _num(m.get("prevalence"), percent=True),
        _with_ci(m.get("auroc"), m.get("auroc_ci")),
        _num(m.get("calibration_intercept"), digits=2),
        _num(m.get("calibration_slope"), digits=2),
        *(_threshold_metric(m, key) for key in ("sensitivity", "specificity")),
        note,
    ]


def _threshold_metric(metrics: dict[str, Any], key: str) -> str:
    """A released group's threshold metric; None there means withheld (a small cell)."""
    return WITHHELD if metrics.get(key) is None else _num(metrics[key], percent=True)


def _representation_table(summary: dict[str, Any]) -> str:
    representation = summary.get("representation") or {}
    if not representation:
        return ""
    sites = sorted(
        {s for levels in representation.values() for e in levels.values() for s in e["sites"]}
    )
    rows = []
    for column in _ordered_columns(representation, summary.get("groups") or []):
        for level, entry in representation[column].items():
            cells = [_count(entry["sites"].get(site, 0)) for site in sites]
            rows.append([escape(column), escape(level), *cells, _count(entry.get("total"))])
    header = ["Group", "Level", *(escape(s) for s in sites), "All sites"]
    return (
        "<h2>Whom the model was trained on</h2>\n<p>Training records per group level and site. "
        "A site withholds a count from 1 to 20, and also the next smallest levels when its "
        "withheld levels would add up to such a count; a total is shown only where no site "
        "withheld the level.</p>\n" + html_table(header, rows, numeric_from=2)
    )


def _methods(summary: dict[str, Any]) -> str:
    pooled = (summary.get("metrics") or {}).get("pooled") or {}
    return (
        "<h2>How these numbers were computed</h2>\n<ul>"
        "<li>Each site scored its own test records and sent only additive statistics: "
        "histograms of risk scores on a fine grid (4,800 bins), counts at the risk threshold and "
        "sums of errors. The aggregator added them up; no participant's score left a site.</li>"
        f"<li>AUROC and its confidence interval: {escape(str(pooled.get('auroc_ci_method')))} "
        "(ties within a fine bin count half).</li>"
        "<li>Calibration intercept and slope: logistic recalibration of the outcome on the "
        "logit of the predicted risk (intercept with the slope fixed at 1), fitted on the fine "
        "bins. E-avg (the integrated calibration index), E90 and Emax: absolute differences "
        "between each participant's predicted risk and a lowess-smoothed observed risk (span "
        "2/3), as in OHDSI's PatientLevelPrediction.</li>"
        "<li>No count from 1 to 20 is shown anywhere: such groups, calibration bins and "
        "representation cells are withheld, never shown as 0.</li>"
        "</ul>\n"
        '<p class="muted">Generated by allfed from summary.json and metrics.jsonl; rebuild with '
        "<code>allfed report RUN_DIR</code>.</p>"
    )


# -- figures ---------------------------------------------------------------------------------


def _figures(summary: dict[str, Any], rounds: list[dict[str, Any]], metrics: dict[str, Any]) -> str:
    """Every plot with its caption; a plot without data is left out."""
    pooled = metrics.get("pooled") or {}
    groups = summary.get("groups") or []
    target = (summary.get("privacy") or {}).get("target_epsilon")
    plots: list[tuple[str, Callable[[], Figure | None], str]] = [
        (
            "Performance over training rounds",
            lambda: _rounds_figure(rounds),
            "Pooled test AUROC (shaded: its 95% CI), AUPRC and scaled Brier after each round.",
        ),
        (
            "Privacy budget spent per site",
            lambda: _epsilon_figure(rounds, target),
            "Each site's cumulative ε after each round; the dashed line is the budget for the "
            "whole run. A site never goes above it.",
        ),
        (
            "ROC curve",
            lambda: _roc_figure(pooled, metrics.get("per_site") or {}),
            "Sensitivity against 1 − specificity at every risk threshold, pooled (black) and "
            "per site; the diagonal is a model without skill.",
        ),
        (
            "Calibration",
            lambda: _calibration_figure(pooled),
            "Observed against predicted risk, pooled. Dots: the observed rate among participants "
            "whose predicted risk fell in each 10%-wide band (area ∝ participants; a band with a "
            "small count is left out). Solid line: the lowess-smoothed observed risk; dotted: the "
            "fitted recalibration line; the diagonal is perfect calibration. Above the diagonal, "
            "the model under-predicts risk.",
        ),
        (
            "AUROC by group",
            lambda: _forest_figure(metrics.get("per_group") or {}, groups, pooled),
            "AUROC with its 95% CI per group level; the dashed line is the pooled AUROC, the "
            "dotted line chance (0.5). Withheld levels are listed as withheld; the table below "
            "says where a site had too few records.",
        ),
        (
            "AUROC by intersection of two groups",
            lambda: _forest_figure(
                metrics.get("per_intersection") or {}, groups, pooled, released_only=True
            ),
            "As above for intersections of two group columns, those with enough records only; "
            "the table below lists the withheld ones.",
        ),
        (
            "Whom the model was trained on",
            lambda: _representation_figure(summary.get("representation") or {}, groups),
            "Training records per group level at each site. 'withheld' marks a count a site "
            "did not release (1 to 20, or one that would reveal such a count).",
        ),
    ]
    figures = [_figure_html(title, build, caption) for title, build, caption in plots]
    return "<h2>Plots</h2>\n" + "\n".join(f for f in figures if f)


def _figure_html(title: str, build: Callable[[], Figure | None], caption: str) -> str:
    try:
        figure = build()
        if figure is None:
            return ""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    except Exception:
        log.exception("report: could not draw %r", title)
        return f"<h3>{escape(title)}</h3><p class='muted'>This plot could not be drawn.</p>"
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f"<figure><h3>{escape(title)}</h3>"
        f'<img alt="{escape(title)}" src="data:image/svg+xml;base64,{data}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _rounds_figure(rounds: list[dict[str, Any]]) -> Figure | None:
    points = [(r["round"], (r.get("metrics") or {}).get("pooled") or {}) for r in rounds]
    points = [(n, m) for n, m in points if m.get("auroc") is not None]
    if not points:
        return None
    figure = _figure(7.5, 3.6, left=0.7, top=0.45)
    axes = figure.subplots()
    x = [n for n, _ in points]
    ci = [m.get("auroc_ci") or [m["auroc"], m["auroc"]] for _, m in points]
    axes.fill_between(x, [c[0] for c in ci], [c[1] for c in ci], color=_COLORS[0], alpha=0.15)
    for key, label, color in (
        ("auroc", "AUROC", _COLORS[0]),
        ("auprc", "AUPRC", _COLORS[4]),
        ("brier_scaled", "Scaled Brier", _COLORS[2]),
    ):
        values = [np.nan if m.get(key) is None else m[key] for _, m in points]
        axes.plot(x, values, marker="o", color=color, label=label)
    axes.set(xlabel="Round", ylabel="Pooled test metric", ylim=(0, 1))
    _integer_ticks(axes, x)
    figure.legend(loc="upper center", ncols=3, frameon=False)
    axes.grid(alpha=0.3)
    return figure


def _epsilon_figure(rounds: list[dict[str, Any]], target: float | None) -> Figure | None:
    if target is None or not rounds:
        return None
    sites = sorted({name for r in rounds for name in (r.get("epsilon") or {})})
    figure = _figure(7.5, 3.6, left=0.7)
    axes = figure.subplots()
    x = [r["round"] for r in rounds]
    for i, site in enumerate(sites):
        values = [(r.get("epsilon") or {}).get(site) for r in rounds]
        axes.plot(
            x,
            [np.nan if v is None else v for v in values],
            marker=_MARKERS[i % len(_MARKERS)],
            fillstyle="none",
            markersize=max(4, 9 - i),
            color=_COLORS[i % len(_COLORS)],
            label=site,
        )
    axes.axhline(target, color="#555", linestyle="--", label=f"budget ε = {target:g}")
    axes.set(xlabel="Round", ylabel="ε spent so far", ylim=(0, target * 1.15))
    _integer_ticks(axes, x)
    axes.legend(loc="lower right", frameon=False, fontsize="small")
    axes.grid(alpha=0.3)
    return figure


def _roc_figure(pooled: dict[str, Any], per_site: dict[str, Any]) -> Figure | None:
    if not pooled.get("roc_curve"):
        return None
    figure = _figure(5.2, 5.0, left=0.75)
    axes = figure.subplots()
    for i, (site, m) in enumerate(sorted(per_site.items())):
        if m.get("roc_curve"):
            _plot_roc(axes, m, site, _COLORS[i % len(_COLORS)], 1.2)
    _plot_roc(axes, pooled, "pooled", _POOLED_COLOR, 2.4)
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


def _plot_roc(axes, metrics: dict[str, Any], name: str, color: str, width: float) -> None:
    curve = metrics["roc_curve"]
    label = f"{name} (AUROC {_num(metrics.get('auroc'))})"
    axes.plot(
        [p["fpr"] for p in curve], [p["tpr"] for p in curve], color=color, lw=width, label=label
    )


def _calibration_figure(pooled: dict[str, Any]) -> Figure | None:
    bins = [b for b in pooled.get("calibration") or [] if b.get("observed") is not None]
    smoothed = pooled.get("calibration_smoothed") or []
    if not bins and not smoothed:
        return None
    figure = _figure(5.2, 5.0, left=0.75)
    axes = figure.subplots()
    top = max(
        [0.1]
        + [b[key] for b in bins for key in ("mean_predicted", "observed")]
        + [p[key] for p in smoothed for key in ("predicted", "observed")]
    )
    limit = min(1.0, np.ceil(top * 10 + 0.5) / 10)
    axes.plot([0, limit], [0, limit], color="#999", linestyle=":", label="perfect calibration")
    if smoothed:
        axes.plot(
            [p["predicted"] for p in smoothed],
            [p["observed"] for p in smoothed],
            color=_COLORS[0],
            lw=2,
            label="smoothed observed risk (lowess)",
        )
    _plot_recalibration(axes, pooled, smoothed)
    if bins:
        sizes = np.array([b["count"] for b in bins], dtype=float)
        axes.scatter(
            [b["mean_predicted"] for b in bins],
            [b["observed"] for b in bins],
            s=30 + 300 * sizes / sizes.max(),
            color=_COLORS[1],
            alpha=0.8,
            zorder=3,
            label="observed rate per 10% band of predicted risk",
        )
    axes.set(
        xlabel="Predicted risk",
        ylabel="Observed risk",
        xlim=(0, limit),
        ylim=(0, limit),
        aspect="equal",
    )
    axes.legend(loc="upper left", frameon=False, fontsize="small")
    axes.text(
        0.97 * limit,
        0.03 * limit,
        "\n".join(
            f"{label} {_num(pooled.get(key), digits=digits)}"
            for key, label, digits in (
                ("calibration_intercept", "intercept", 2),
                ("calibration_slope", "slope", 2),
                ("calibration_e_avg", "E-avg", 3),
                ("calibration_e90", "E90", 3),
            )
        ),
        ha="right",
        va="bottom",
        fontsize=8.5,
    )
    axes.grid(alpha=0.3)
    return figure


def _plot_recalibration(axes, pooled: dict[str, Any], smoothed: list[dict[str, float]]) -> None:
    """The fitted line logit(observed) = a + b logit(predicted), over the predicted range."""
    a, b = pooled.get("calibration_line_intercept"), pooled.get("calibration_slope")
    if a is None or b is None or not smoothed:
        return
    risk = np.linspace(smoothed[0]["predicted"], smoothed[-1]["predicted"], 100)
    axes.plot(
        risk,
        expit(a + b * logit(risk)),
        color=_COLORS[2],
        linestyle=(0, (1, 1)),
        lw=1.6,
        label=f"recalibration (slope {b:.2f})",
    )


def _forest_figure(
    table: dict[str, Any],
    groups: list[str],
    pooled: dict[str, Any],
    released_only: bool = False,
) -> Figure | None:
    """One row per level: AUROC with its CI, or the word "withheld"."""
    rows: list[tuple[str, dict[str, Any] | None, bool]] = []  # label, metrics, is a heading
    for column in _ordered_columns(table, groups):
        levels = [
            (level, entry.get("metrics"))
            for level, entry in table[column].items()
            if not released_only or (entry.get("metrics") or {}).get("auroc") is not None
        ]
        if levels:
            rows.append((column, None, True))
            rows += [(level, m, False) for level, m in levels]
    if not rows:
        return None
    figure = _figure(7.5, 0.8 + 0.27 * len(rows), left=_label_width([r[0] for r in rows], 8))
    axes = figure.subplots()
    y = np.arange(len(rows))[::-1]
    labels = []
    for position, (label, m, heading) in zip(y, rows, strict=True):
        if heading:
            labels.append(label)
        elif m is None or m.get("auroc") is None:
            labels.append(f"   {label}")
            axes.text(0.505, position, WITHHELD, va="center", color="#8a5a00", fontsize=8.5)
        else:
            labels.append(f"   {label} (n={m['n']})")
            low, high = m.get("auroc_ci") or (m["auroc"], m["auroc"])
            axes.plot([low, high], [position, position], color=_COLORS[0], lw=1.6)
            axes.plot(m["auroc"], position, "s", color=_COLORS[0], ms=5)
    axes.set_yticks(y, labels, fontsize=8.5)
    for tick, (_, _, heading) in zip(axes.get_yticklabels(), rows, strict=True):
        tick.set_fontweight("bold" if heading else "normal")
    if pooled.get("auroc") is not None:
        axes.axvline(pooled["auroc"], color=_POOLED_COLOR, linestyle="--", lw=1, label="pooled")
    axes.axvline(0.5, color="#999", linestyle=":", lw=1)
    axes.set(xlim=(0.5, 1.0), ylim=(-0.7, len(rows) - 0.3), xlabel="AUROC (95% CI)")
    axes.grid(axis="x", alpha=0.3)
    return figure


def _representation_figure(representation: dict[str, Any], groups: list[str]) -> Figure | None:
    """Horizontal bars of training records per level, one colour per site; withheld marked."""
    columns = _ordered_columns(representation, groups)
    if not columns:
        return None
    sites = sorted({s for c in columns for e in representation[c].values() for s in e["sites"]})
    heights = [0.16 * len(representation[c]) * len(sites) + 0.2 for c in columns]
    gap, top, bottom = 0.75, 0.7, 0.55
    figure = _figure(
        7.5,
        top + bottom + sum(heights) + gap * (len(columns) - 1),
        left=_label_width([level for c in columns for level in representation[c]]),
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
        largest = max(
            [v or 0 for level in levels for v in representation[column][level]["sites"].values()]
            + [1]
        )
        for i, site in enumerate(sites):
            for j, level in enumerate(levels):
                count = representation[column][level]["sites"].get(site, 0)
                position = j + (i - (len(sites) - 1) / 2) * width
                color = _COLORS[i % len(_COLORS)]
                if count is None:
                    axes.text(
                        largest * 0.01,
                        position,
                        "withheld",
                        va="center",
                        fontsize=7.5,
                        color=color,
                        style="italic",
                    )
                else:
                    axes.barh(position, count, height=width * 0.9, color=color)
        axes.set_yticks(range(len(levels)), levels, fontsize=8.5)
        axes.set_ylim(len(levels) - 0.5, -0.5)  # first level on top; rows without bars too
        axes.set_title(column, loc="left", fontsize=10, fontweight="bold")
        axes.set_xlim(0, largest * 1.08)
        axes.grid(axis="x", alpha=0.3)
    panels[-1].set_xlabel("Training records")
    handles = [Patch(color=_COLORS[i % len(_COLORS)], label=site) for i, site in enumerate(sites)]
    figure.legend(handles=handles, loc="upper right", frameon=False, fontsize="small")
    return figure


def _figure(
    width: float, height: float, left: float, bottom: float = 0.55, top: float = 0.15
) -> Figure:
    """A figure with fixed margins in inches: a layout engine would draw every plot twice."""
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(
        left=left / width, right=1 - 0.2 / width, bottom=bottom / height, top=1 - top / height
    )
    return figure


def _label_width(labels: list[str], indent: int = 0) -> float:
    """Inches of left margin for tick labels of this many characters (8.5 pt DejaVu Sans)."""
    return 0.25 + 0.068 * (indent + max((len(label) for label in labels), default=0))


def _integer_ticks(axes, rounds: list[int]) -> None:
    step = max(1, int(np.ceil(len(rounds) / 12)))
    axes.set_xticks(rounds[::step])


# -- formatting ------------------------------------------------------------------------------


def _ordered_columns(table: dict[str, Any], groups: list[str]) -> list[str]:
    """The study's own order of group columns (and their pairs), then any others."""
    order = {name: i for i, name in enumerate(groups)}

    def key(column: str) -> tuple[int, ...]:
        parts = [order.get(part, len(order)) for part in column.split(INTERSECTION_JOIN)]
        return (len(parts), *parts)

    return sorted(table, key=lambda column: (key(column), column))


def _num(value: float | None, digits: int = 3, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    return WITHHELD if value is None else f"{value:,}"


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} ({ci[0]:.3f}–{ci[1]:.3f})" if ci else f"{value:.3f}"


def html_table(
    header: list[str], rows: list[list[str]], numeric_from: int = 1, numeric_to: int | None = None
) -> str:
    """A table whose cells are already-escaped HTML; numbers right-aligned, withheld marked."""

    def cell(i: int, text: str) -> str:
        classes = []
        if numeric_from <= i < (numeric_to if numeric_to is not None else len(header)):
            classes.append("num")
        if text == WITHHELD:
            classes.append("withheld")
        attribute = f' class="{" ".join(classes)}"' if classes else ""
        return f"<td{attribute}>{text}</td>"

    head = "".join(f"<th>{h}</th>" for h in header)
    body = "\n".join(
        "<tr>" + "".join(cell(i, text) for i, text in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"
