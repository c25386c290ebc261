"""The pooled table of a descriptive analysis as ``<kind>.json`` and ``<kind>.html``.

The HTML reads like the first table of a clinical paper: one row per level (count and percent)
or per numeric variable (mean and SD), an overall column, then a column per site and per
stratum, each value with its 95% CI underneath. A value the n/a rule holds back reads ``n/a``
with a numbered note giving the reason; a small count reads ``withheld``; a count that includes
cells some site withheld (estimated from that site's totals) says how many. The page fills
``analysis_page``'s skeleton.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from federation.server.analysis_page import note_number, page_template, render_page, write_analysis
from federation.server.style import NA, WITHHELD
from privacy.statistics import SMALL_COUNT

_LABELS = {"count": "count", "percent": "percentage", "mean": "mean", "sd": "SD"}
_BODY = page_template(
    """{% for name, reason in left_out.items() %}
<p class="box">Site {{ name }} is left out of every column: {{ reason }}.</p>
{% endfor %}
<table><thead><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in rows %}
<tr><td>{{ row.variable }}</td><td>{{ row.level }}</td>
{%- for cell in row.cells %}
<td class="num{% if cell.withheld %} withheld{% endif %}">{{ cell.text }}
{%- for note in cell.notes %}<sup>{{ note }}</sup>{% endfor %}
{%- if cell.detail %}<small>{{ cell.detail }}</small>{% endif %}</td>
{%- endfor %}</tr>
{% endfor %}
</tbody></table>
"""
)


def write_tables(out: Path, kind: str, result: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out/<kind>.json`` and ``out/<kind>.html``; return their paths."""
    return write_analysis(out, kind, result, render_table(result))


def render_table(result: dict[str, Any]) -> str:
    notes: list[str] = []  # numbered reasons, each once
    columns = [("overall", None)]
    columns += [("sites", name) for name in result["sites"]]
    columns += [("groups", level) for level in result["groups"]]
    by = result.get("by")
    totals = result["totals"]
    header = ["Variable", "Level", f"Overall (N = {_n(totals['overall'])})"]
    header += [f"{name} (N = {_n(totals['sites'].get(name))})" for name in result["sites"]]
    header += [f"{by}: {level} (N = {_n(totals['groups'][level])})" for level in result["groups"]]
    rows = []
    for row in result["rows"]:
        cells = []
        for scope, key in columns:
            entry = row if scope == "overall" else row.get(scope, {}).get(key)
            cells.append(_cell(entry, notes))
        rows.append({"variable": row["variable"], "level": row["level"], "cells": cells})
    privacy = (
        f"Differentially private: every site released its cells once with Gaussian noise "
        f"(OpenDP) at epsilon {result['epsilon']:g}, delta {result['delta']:g}; counts at or "
        "under a site's minimum cell count were withheld there, after the noise. "
        f"The overall total carries a noise SE of {result['total_se']:g} records."
    )
    method = (
        "Each site's counts were made consistent (weighted least squares with the known noise, "
        "then non-negative), so levels add to their column's total and strata to the overall "
        "total; a cell a site withheld is estimated from that site's totals, never taken as 0. "
        "Under each value: its 95% CI (noise and sampling). A value whose CI spans more than "
        f"{result['method']['max_ci_share']:.0%} of the range it can take is n/a (see the notes); "
        "a count from 1 to 20 is withheld."
    )
    return render_page(
        _BODY,
        title=f"{result['study']}: {result['analysis']}",
        privacy=privacy,
        method=method,
        notes=notes,
        left_out=result.get("left_out", {}),
        header=header,
        rows=rows,
    )


def _cell(entry: dict[str, Any] | None, notes: list[str]) -> dict[str, Any]:
    """A cell's text, its CI line and its note numbers."""
    if entry is None:
        return {"text": WITHHELD, "withheld": True, "notes": [], "detail": None}
    withheld_reasons = entry.get("withheld_reason", {})
    reasons = withheld_reasons | entry.get("na_reason", {})
    if "mean" in entry:
        (text, detail), shown = _mean_text(entry), ("mean", "sd")
    else:
        (text, detail), shown = _count_text(entry), ("count", "percent")
        if "count" in reasons:  # its percent goes with it
            shown = ("count",)
    marks = [  # a small count is explained above the table; every other reason in a note
        note_number(notes, f"{_LABELS[field]}: {reasons[field]}")
        for field in shown
        if field in reasons and reasons[field] != SMALL_COUNT
    ]
    withheld = shown[0] in withheld_reasons
    if entry.get("withheld_cells") and not withheld:
        detail = f"{detail}; " if detail else ""
        detail += f"includes {entry['withheld_cells']} withheld cell(s), estimated"
    return {"text": text, "withheld": withheld, "notes": sorted(set(marks)), "detail": detail}


def _count_text(entry: dict[str, Any]) -> tuple[str, str | None]:
    if entry["count"] is None:
        return _left_out(entry, "count"), None
    percent = entry.get("percent")
    if percent is None:
        text = f"{entry['count']} ({_left_out(entry, 'percent')})"
        return text, _interval(entry.get("count_ci"), "{:.0f}")
    ci = entry.get("percent_ci")
    return f"{entry['count']} ({percent:.1f}%)", _interval(ci, "{:.1f}%")


def _mean_text(entry: dict[str, Any]) -> tuple[str, str | None]:
    if entry.get("mean") is None:
        return _left_out(entry, "mean"), None
    sd = NA if entry.get("sd") is None else f"{entry['sd']:.1f}"
    detail = _interval(entry.get("mean_ci"), "{:.1f}")
    if entry.get("sd_ci"):
        detail += f"; SD {_interval(entry['sd_ci'], '{:.1f}')}"
    return f"{entry['mean']:.1f} ({sd})", detail


def _left_out(entry: dict[str, Any], field: str) -> str:
    """What a value left out reads: withheld (the dissemination rule) or n/a."""
    return WITHHELD if field in entry.get("withheld_reason", {}) else NA


def _interval(ci: list[float] | None, fmt: str) -> str | None:
    return None if ci is None else f"{fmt.format(ci[0])} to {fmt.format(ci[1])}"


def _n(total: dict[str, Any] | None) -> str:
    """A column's N; a site left out (every count withheld there) has no total."""
    if total is None or "count" in total["withheld_reason"]:
        return WITHHELD
    return NA if total["count"] is None else str(total["count"])
