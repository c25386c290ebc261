"""``report.html``: a run's results on one self-contained page that a clinician can read.

Built only from ``summary.json`` and the rows of ``metrics.jsonl``. Every number on the page
came out of the sites' DP releases, so it is shown with its 95% interval (DP noise and sampling
together), and a number the noise makes meaningless is shown as ``n/a`` with the reason, never
as a precise value. Findings that make the scores unusable (a diverged model, everyone given the
same risk) are said first. The page is a Jinja2 template with autoescaping (every value from a
run is escaped by the engine) kept in this module: a Flower app bundle carries Python files, so
the ServerApp can render it wherever it runs. Plots (``report_figures``) are embedded as SVG data
URIs; the page loads nothing from anywhere else. A plot that cannot be drawn is logged and
replaced by a note.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from typing import Any

from jinja2 import Environment
from matplotlib.figure import Figure

from federation.server import report_figures as plots
from federation.server.style import NA, PAGE_CSS

log = logging.getLogger("allfed.server")

_METRICS = (
    ("auroc", "AUROC", False, "Discrimination: the chance that a participant with the outcome "
     "gets a higher predicted risk than one without (0.5 = a coin toss, 1 = perfect)."),
    ("auprc", "AUPRC", False, "Average precision over all thresholds; compare with the outcome "
     "rate, which is what a model without skill scores."),
    ("prevalence", "Outcome rate", True, "Share of test participants with the outcome."),
    ("calibration_in_the_large_observed_minus_predicted", "Calibration-in-the-large", True,
     "Observed minus predicted risk on average: above 0 the model under-predicts."),
    ("calibration_slope", "Calibration slope", False,
     "1 is ideal; below 1 predicted risks are too extreme, above 1 too cautious."),
    ("calibration_intercept", "Calibration intercept", False,
     "0 is ideal (with the slope fixed at 1); above 0 the model under-predicts."),
    ("brier", "Brier score", False, "Mean squared error of the predicted risks (0 is perfect)."),
    ("calibration_e_avg", "E-avg (ICI)", False,
     "Average absolute gap between predicted and (lowess-smoothed) observed risk."),
    ("calibration_e90", "E90", False, "90% of participants have a gap below this."),
    ("accuracy", "Accuracy at risk ≥ 0.5", True, "Share classified correctly."),
    ("sensitivity", "Sensitivity at risk ≥ 0.5", True, "Share with the outcome who are flagged."),
    ("specificity", "Specificity at risk ≥ 0.5", True, "Share without the outcome not flagged."),
    ("ppv", "Positive predictive value", True, "Share of flagged participants with the outcome."),
    ("npv", "Negative predictive value", True, "Share of unflagged participants without it."),
)  # fmt: skip
_GROUP_METRICS = (  # (key, shown as a percent, column header)
    ("prevalence", True, "Outcome rate"),
    ("auroc", False, "AUROC"),
    ("calibration_in_the_large_observed_minus_predicted", True, "Calibration-in-the-large"),
    ("calibration_slope", False, "Calibration slope"),
)
Rows = tuple[tuple[str, str, bool, str], ...]  # (key, label, shown as a percent, what it means)


def _survival_metrics(horizons: list[float]) -> tuple[Rows, tuple[tuple[str, bool, str], ...]]:
    """A survival run's metric rows and group columns (``server.survival_evaluation``)."""
    days = [f"{h:g}" for h in horizons] or ["?"]
    last = days[-1]
    rows = (
        ("cindex", "C-index (Harrell)", False, "Discrimination over time: of two participants "
         "whose order of events is known, the chance that the one with the earlier event has "
         "the higher risk score (0.5 = a coin toss, 1 = perfect)."),
        ("uno_cindex", "C-index (Uno)", False, f"The same, weighted for censoring up to day "
         f"{last}: less dependent on how long the sites followed their participants."),
        *((f"auc_{d}", f"AUC at day {d}", False, f"Time-dependent AUC: those with the event by "
           f"day {d} against those followed past it without one.") for d in days),
        ("integrated_brier", "Integrated Brier score", False, f"Mean squared error of the "
         f"predicted survival up to day {last}, censoring-weighted (0 is perfect)."),
        *((f"observed_risk_{d}", f"Observed risk by day {d}", True, "1 − Kaplan-Meier of the "
           "pooled test participants; compare with the mean predicted risk below.")
          for d in days),
        *((f"predicted_risk_{d}", f"Mean predicted risk by day {d}", True, "The model's risk "
           "by then, averaged over the test participants.") for d in days),
    )  # fmt: skip
    groups = (
        ("cindex", False, "C-index"),
        (f"auc_{last}", False, f"AUC at day {last}"),
        (f"observed_risk_{last}", True, f"Observed risk by day {last}"),
        (f"predicted_risk_{last}", True, f"Predicted risk by day {last}"),
    )
    return rows, groups


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ study }}: federated evaluation report</title><style>{{ css }}</style></head>
<body>
<h1>{{ study }}</h1>
<p><span class="status {{ status }}">Run {{ status }}</span> after {{ summary.rounds }} of
{{ summary.planned_rounds }} rounds{% if summary.evaluated_round %}; the model of round
{{ summary.evaluated_round }} was evaluated{% endif %}</p>
<p class="lead">A {{ model }} predicting the risk of <b>{{ outcome }}</b> was trained
jointly by {{ sites|length }} site{{ "s" if sites|length != 1 }} ({{ active }} took part to the
end), combining their model updates with {{ summary.strategy }}. Participants' records never
left their site: only model updates and differentially private statistics did. Every result is
measured on the sites' held-out test records, pooled across sites{% if groups %}, and by
{{ groups|join(", ") }}{% endif %}.</p>
{% if summary.error %}<p class="box"><b>The run failed:</b> {{ summary.error }}</p>{% endif %}
{% if findings %}<div class="box"><b>Findings: read the results below with these in mind.</b>
<ul>{% for finding in findings %}<li>{{ finding }}</li>{% endfor %}</ul>
A model that diverged or gives everyone the same score does not discriminate, whatever an
interval says; retrain it (a lower learning rate, fewer rounds).</div>{% endif %}
<p><b>Privacy.</b> {{ privacy_sentence }}</p>
<h2>What differential privacy does to these numbers</h2>
<p>Each site released its test records' statistics once per evaluation, with Gaussian noise
calibrated to its evaluation budget; the aggregator pooled them. Every figure is therefore an
estimate: it is shown with a 95% interval that covers the DP noise as well as the sampling of
test participants, and counts are approximate (≈). A figure whose interval is wider than
{{ width }} of its scale is shown as <i>n/a</i> with the reason; a group level with
{{ threshold }} or fewer (noisy) records, events or non-events is not shown at all, whatever its
noise (the program's dissemination rule). Small sites and small groups have the widest
intervals; more test records, or a larger evaluation budget, narrow them.</p>
<h2>Who took part</h2>
<table><thead><tr><th>Site</th><th>Status</th><th>Training records</th>
<th>Test records (≈)</th><th>{{ discrimination }} (95% interval)</th><th>ε training</th>
<th>ε evaluation</th>
</tr></thead><tbody>
{% for row in site_rows %}<tr><td>{{ row.name }}</td><td>{{ row.status }}</td>
<td class="num">{{ row.n_train }}</td><td class="num">{{ row.n_test }}</td>
<td class="num">{{ row.auroc }}</td><td class="num">{{ row.epsilon }}</td>
<td class="num">{{ row.evaluation_epsilon }}</td></tr>
{% endfor %}</tbody></table>
<h2>Results on all sites' test records</h2>
{% if not pooled %}<p>{{ no_results }}</p>{% else %}
<div class="cards">{% for card in cards %}<div class="card"><div class="value">{{ card.value }}
</div><div class="label">{{ card.label }}</div></div>{% endfor %}</div>
<table><thead><tr><th>Metric</th><th>Value</th><th>95% interval</th><th>What it means</th></tr>
</thead><tbody>{% for row in metric_rows %}<tr><td>{{ row.label }}</td>
<td class="num{{ ' na' if row.na_reason }}">{{ row.value }}</td>
<td class="num">{{ row.ci }}</td><td>{{ row.text }}{% if row.na_reason %} <i>n/a: {{
row.na_reason }}.</i>{% endif %}</td></tr>{% endfor %}</tbody></table>{% endif %}
<h2>Plots</h2>
{% for figure in figures %}<figure><h3>{{ figure.title }}</h3>{% if figure.data %}
<img alt="{{ figure.title }}" src="data:image/svg+xml;base64,{{ figure.data }}">
<figcaption>{{ figure.caption }}</figcaption>{% else %}
<p class="muted">This plot could not be drawn.</p>{% endif %}</figure>
{% endfor %}
{% for table in group_tables %}<h2>{{ table.title }}</h2>
<table><thead><tr><th>Group</th><th>Level</th><th>Test records (≈)</th>
{% for header in group_headers %}<th>{{ header }}</th>{% endfor %}<th>Note</th></tr>
</thead><tbody>{% for row in table.rows %}<tr><td>{{ row.column }}</td><td>{{ row.level }}</td>
{% for cell in row.cells %}<td class="num">{{ cell }}</td>{% endfor %}
<td class="withheld">{{ row.note }}</td></tr>{% endfor %}</tbody></table>
{% endfor %}
{% if representation_rows %}<h2>Whom the model was evaluated on</h2>
<p>Test records per group level and site, from the evaluation release (DP counts, rounded); a
count of {{ threshold }} or fewer is not shown.</p>
<table><thead><tr><th>Group</th><th>Level</th>{% for site in representation_sites %}
<th>{{ site }}</th>{% endfor %}<th>All sites</th></tr></thead><tbody>
{% for row in representation_rows %}<tr><td>{{ row.column }}</td><td>{{ row.level }}</td>
{% for cell in row.cells %}<td class="num">{{ cell }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table>{% endif %}
<h2>How these numbers were computed</h2>
{% if survival %}<ul>
<li>Each site scored its own test records with the model's risk score and released, per cell
(the site, every group level, every intersection of two groups), the records by status (an
event, or censored), by time interval (the study's hazard intervals) and by risk-score bin (10
bins at quantiles of the model's scores on public probe inputs), the records and the events:
one Gaussian release, recorded in the site's ledger before it was computed.</li>
<li>Harrell's C-index of the pooled records and of each group level comes from a second release:
each site summed, over its records, its share of concordant comparable pairs against the pooled
histograms of the first release, less the pooled C-index times its share of comparable pairs.
Its interval adds that release's noise, the uncertainty of the histograms and the sampling
variance. Where a site did not answer it, the C-index is read from the histograms.</li>
<li>The noisy histograms are made non-negative by an isotonic fit of their cumulative counts;
group levels are reconciled with the pooled totals. Two records in one score bin are read from
the pairs one bin apart, and two times in one interval as ordered either way, half the time
each.</li>
<li>Uno's C-index and the time-dependent (cumulative/dynamic) AUC weight events by the inverse
of the censoring distribution's Kaplan-Meier curve; the integrated Brier score (IPCW) uses each
score bin's predicted survival from the model's baseline hazards; observed risks are
1 − Kaplan-Meier. Their intervals come from a parametric bootstrap over the release's noise and
Poisson sampling.</li>
</ul>{% else %}<ul>
<li>Each site scored its own test records and released, per cell (the site, every group level,
every intersection of two groups), histograms of the risk scores of each class on fixed bins
(0.5 wide on the logit scale), the records, the events, and the sums of residuals and squared
errors: one Gaussian release, recorded in the site's ledger before it was computed.</li>
<li>The AUROC of the pooled records and of each group level comes from a second release: each
site summed, over its records of the rarer class, the other class's pooled distribution from
the first release. Its interval adds that release's noise, the uncertainty of the distribution
and DeLong's sampling variance.</li>
<li>The noisy histograms are made non-negative by an isotonic fit of their cumulative counts;
group levels are reconciled with the pooled totals. Other intervals come from a parametric
bootstrap over the release's noise and Poisson sampling.</li>
<li>Calibration intercept and slope: logistic recalibration on the bins' logits. E-avg and E90:
gaps to a lowess-smoothed observed risk (span 2/3), as in OHDSI's PatientLevelPrediction.</li>
</ul>{% endif %}
<p class="muted">Generated by allfed from summary.json and metrics.jsonl; rebuild with
<code>allfed report RUN_DIR</code>.</p>
</body></html>
"""

_PAGE = Environment(autoescape=True).from_string(_TEMPLATE)


def render_report(summary: dict[str, Any], rounds: list[dict[str, Any]]) -> str:
    """The whole page for one run."""
    from federation.server.evaluation import MAX_CI_WIDTH, MIN_PUBLISHED_COUNT

    metrics = summary.get("metrics") or {}
    pooled = metrics.get("pooled") or {}
    survival = summary.get("task") == "survival"
    if "withheld_reason" in pooled:
        pooled = {}
    rows, group_metrics = _METRICS, _GROUP_METRICS
    if survival:
        rows, group_metrics = _survival_metrics(summary.get("horizons") or [])
    sites = summary.get("sites") or {}
    groups = summary.get("groups") or []
    return _PAGE.render(
        study=summary.get("study", "allfed run"),
        summary=summary,
        status=str(summary.get("status", "unknown")),
        model=_model_name(summary.get("model")),
        sites=sites,
        active=sum(1 for s in sites.values() if s.get("status") == "ok"),
        groups=groups,
        findings=summary.get("diagnostics") or [],
        privacy_sentence=_privacy_sentence(summary),
        width=f"{MAX_CI_WIDTH:g}",
        threshold=MIN_PUBLISHED_COUNT,
        site_rows=_site_rows(summary, metrics.get("per_site") or {}, rows[0][0]),
        pooled=pooled,
        outcome=summary.get("label") or summary.get("event"),
        no_results="No evaluation finished, so there are no results.",
        cards=_cards(pooled, survival),
        metric_rows=[_metric_row(pooled, *item) for item in rows] if pooled else [],
        figures=_figures(summary, rounds, metrics, pooled, survival),
        group_tables=_group_tables(metrics, groups, group_metrics),
        group_headers=[header for _, _, header in group_metrics],
        discrimination=rows[0][1],
        survival=survival,
        representation_sites=_representation_sites(summary),
        representation_rows=_representation_rows(summary),
        css=PAGE_CSS,
    )


def _model_name(model: Any) -> str:
    return {"logistic": "logistic regression model", "mlp": "small neural network (MLP)"}.get(
        str(model), f"{model} model"
    )


def _privacy_sentence(summary: dict[str, Any]) -> str:
    privacy = summary.get("privacy") or {}
    if not privacy.get("enabled"):
        return (
            "This run was trained without differential privacy; its evaluation was still a DP "
            "release of each site's test records."
        )
    return (
        "Every site trained with differential privacy (DP-SGD) on its training records, within "
        f"ε = {privacy.get('target_epsilon')} for the whole run (δ = {privacy.get('delta')}, "
        f"{privacy.get('accountant')} accountant), and released its evaluation of the test "
        "records within a budget of its own. Training and test records are different "
        "participants, so a participant's ε is the larger of the two, never their sum. ε bounds "
        "how much any one participant's record can change what a site released: lower is more "
        "private."
    )


def _site_rows(
    summary: dict[str, Any], per_site: dict[str, Any], discrimination: str
) -> list[dict[str, str]]:
    rows = []
    for name, site in (summary.get("sites") or {}).items():
        status = str(site.get("status"))
        if site.get("reason"):
            status += f": {site['reason']}"
        metrics = per_site.get(name) or {}
        rows.append(
            {
                "name": name,
                "status": status,
                "n_train": _count(site.get("n_train")),
                "n_test": _count(site.get("n_test")),
                "auroc": _with_ci(metrics.get(discrimination), metrics.get(f"{discrimination}_ci")),
                "epsilon": _num(site.get("epsilon")) if site.get("epsilon") is not None else "–",
                "evaluation_epsilon": _num(site.get("evaluation_epsilon")),
            }
        )
    return rows


def _cards(pooled: dict[str, Any], survival: bool) -> list[dict[str, str]]:
    if not pooled:
        return []
    citl = "calibration_in_the_large_observed_minus_predicted"

    def card(label: str, key: str, **style: Any) -> dict[str, str]:
        return {
            "label": label,
            "value": _with_ci(pooled.get(key), pooled.get(f"{key}_ci"), **style),
        }

    if survival:
        return [
            card("C-index (95% interval)", "cindex"),
            card("C-index (Uno)", "uno_cindex"),
            card("Integrated Brier score", "integrated_brier"),
            {"label": "Test participants", "value": f"≈ {_count(pooled.get('n'))}"},
        ]
    return [
        card("AUROC (95% interval)", "auroc"),
        card("Calibration-in-the-large", citl, percent=True),
        card("Calibration slope", "calibration_slope", digits=2),
        {"label": "Test participants", "value": f"≈ {_count(pooled.get('n'))}"},
    ]


def _metric_row(
    pooled: dict[str, Any], key: str, label: str, percent: bool, text: str
) -> dict[str, Any]:
    reason = (pooled.get("na_reason") or {}).get(key)
    ci = pooled.get(f"{key}_ci")
    return {
        "label": label,
        "value": NA if pooled.get(key) is None else _num(pooled[key], percent=percent),
        "ci": _interval(ci, percent=percent) if ci else "–",
        "text": text,
        "na_reason": reason,
    }


def _survival_figures(
    rounds: list[dict[str, Any]], metrics: dict[str, Any], pooled: dict, groups: list[str]
) -> list[tuple[str, Callable[[], Figure | None], str]]:
    """A survival run's own plots: calibration by horizon, the C-index over rounds and by
    group."""
    per_group, per_intersection = metrics.get("per_group") or {}, metrics.get("per_intersection")
    c_index = {"metric": "cindex", "label": "C-index"}
    return [
        ("Calibration by horizon", lambda: plots.survival_calibration_figure(pooled),
         "Observed risk (1 − Kaplan-Meier of the pooled test participants, with its 95% "
         "interval: DP noise and sampling) against the mean predicted risk, in risk groups of "
         "neighbouring score bins, at each horizon; a group whose interval is too wide is left "
         "out. The diagonal is perfect calibration; above it, the model under-predicts."),
        ("Pooled C-index over the evaluated rounds",
         lambda: plots.rounds_figure(rounds, **c_index),
         "Pooled test C-index (Harrell; shaded: its 95% interval) at each evaluation."),
        ("C-index by group",
         lambda: plots.forest_figure(per_group, groups, pooled, **c_index),
         "Harrell's C-index with its 95% interval per group level; dashed: the pooled one, "
         "dotted: chance."),
        ("C-index by intersection of two groups",
         lambda: plots.forest_figure(per_intersection or {}, groups, pooled, True, **c_index),
         "As above, for the intersections with enough records."),
    ]  # fmt: skip


def _figures(
    summary: dict[str, Any],
    rounds: list[dict[str, Any]],
    metrics: dict[str, Any],
    pooled: dict,
    survival: bool,
) -> list[dict[str, str]]:
    """The page's plots (a survival run's: those that do not read binary metrics)."""
    groups = summary.get("groups") or []
    target = (summary.get("privacy") or {}).get("target_epsilon")
    candidates: list[tuple[str, Callable[[], Figure | None], str]] = [
        ("ROC curve", lambda: plots.roc_figure(pooled),
         "Sensitivity against 1 − specificity at every bin edge of the risk score, pooled; the "
         "band is the pointwise 95% interval of the sensitivity (DP noise and sampling). The "
         "diagonal is a model without skill."),
        ("Calibration", lambda: plots.calibration_figure(pooled),
         "Observed against predicted risk in groups of neighbouring score bins (each holding "
         "enough records), with 95% intervals of the observed risk; a group whose interval is "
         "too wide is left out. Dotted: the fitted recalibration line; the diagonal is perfect "
         "calibration. Above the diagonal, the model under-predicts risk."),
        ("Pooled AUROC over the evaluated rounds", lambda: plots.rounds_figure(rounds),
         "Pooled test AUROC (shaded: its 95% interval) at each evaluation."),
        ("Privacy budget spent per site", lambda: plots.epsilon_figure(rounds, target),
         "Each site's training ε after each round; the dashed line is the run's budget."),
        ("AUROC by group",
         lambda: plots.forest_figure(metrics.get("per_group") or {}, groups, pooled),
         "AUROC with its 95% interval per group level; dashed: the pooled AUROC, dotted: chance."),
        ("AUROC by intersection of two groups",
         lambda: plots.forest_figure(metrics.get("per_intersection") or {}, groups, pooled, True),
         "As above, for the intersections with enough records."),
        ("Whom the model was evaluated on",
         lambda: plots.representation_figure(summary.get("representation") or {}, groups),
         "Test records per group level and site (DP counts)."),
    ]  # fmt: skip
    if survival:
        shown = ("Privacy budget spent per site", "Whom the model was evaluated on")
        candidates = _survival_figures(rounds, metrics, pooled, groups) + [
            c for c in candidates if c[0] in shown
        ]
    figures = []
    for title, build, caption in candidates:
        try:
            figure = build()
            if figure is None:
                continue
            buffer = io.BytesIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None})
            data = base64.b64encode(buffer.getvalue()).decode("ascii")
        except Exception:
            log.exception("report: could not draw %r", title)
            data = ""
        figures.append({"title": title, "data": data, "caption": caption})
    return figures


def _group_tables(
    metrics: dict[str, Any], groups: list[str], group_metrics: tuple[tuple[str, bool, str], ...]
) -> list[dict[str, Any]]:
    tables = []
    titles = {
        "per_group": "Results by group",
        "per_intersection": "Results by intersection of two groups",
    }
    for key, title in titles.items():
        table = metrics.get(key) or {}
        rows = []
        for column in plots.ordered_columns(table, groups):
            for level, entry in table[column].items():
                m = entry.get("metrics")
                if m is None:
                    cells, note = ["–"] * (1 + len(group_metrics)), entry.get("withheld_reason")
                else:
                    cells = [_count(m.get("n"))] + [
                        _with_ci(m.get(name), m.get(f"{name}_ci"), percent=percent)
                        for name, percent, _ in group_metrics
                    ]
                    note = "; ".join(
                        f"{name.replace('_', ' ')}: n/a"
                        for name in (m.get("na_reason") or {})
                        if name in {key for key, _, _ in group_metrics}
                    )
                rows.append({"column": column, "level": level, "cells": cells, "note": note})
        if rows:
            tables.append({"title": title, "rows": rows})
    return tables


def _representation_sites(summary: dict[str, Any]) -> list[str]:
    table = summary.get("representation") or {}
    return sorted({s for levels in table.values() for e in levels.values() for s in e["sites"]})


def _representation_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    table = summary.get("representation") or {}
    sites = _representation_sites(summary)
    return [
        {
            "column": column,
            "level": level,
            "cells": [_count(entry["sites"].get(site)) for site in sites]
            + [_count(entry.get("total"))],
        }
        for column in plots.ordered_columns(table, summary.get("groups") or [])
        for level, entry in table[column].items()
    ]


def _num(value: float | None, digits: int = 3, percent: bool = False) -> str:
    if value is None:
        return NA
    return f"{100 * value:.1f}%" if percent else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _interval(ci: list[float], digits: int = 3, percent: bool = False) -> str:
    return f"{_num(ci[0], digits, percent)} to {_num(ci[1], digits, percent)}"


def _with_ci(
    value: float | None, ci: list[float] | None, digits: int = 3, percent: bool = False
) -> str:
    if value is None:
        return NA
    text = _num(value, digits, percent)
    return f"{text} ({_interval(ci, digits, percent)})" if ci else text
