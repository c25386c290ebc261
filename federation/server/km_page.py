"""A DP Kaplan-Meier analysis as ``km.json`` and ``km.html``.

The page shows the pooled curves in one plot and the sites' own curves in another (the survival
at each interval's end with its 95% band, drawn only where shown) and, per curve, a life table:
each interval's number at risk, events and censored (noisy, small counts withheld) and the
survival at its end with its 95% CI; a value held back reads ``withheld`` or ``n/a`` with a
numbered note giving the reason. The page fills ``analysis_page``'s skeleton; the plots are
embedded SVGs.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from federation.server.analysis_page import note_number, page_template, render_page, write_analysis
from federation.server.report_figures import COLORS, POOLED_COLOR, new_figure
from federation.server.style import NA, WITHHELD
from privacy.statistics import SMALL_COUNT

_BODY = page_template(
    """{% for figure in figures %}<figure>
<img alt="{{ figure.title }}" src="data:image/svg+xml;base64,{{ figure.svg }}">
<figcaption>{{ figure.title }}: survival at each interval's end (points) with its 95% CI
(shaded: sampling and DP noise), up to where the curve is held back.</figcaption></figure>
{% endfor %}
{% for table in tables %}
<h2>{{ table.title }}</h2>
<table><thead><tr><th>Interval (days)</th><th>At risk</th><th>Events</th><th>Censored</th>
<th>Survival at its end</th><th>95% CI</th></tr></thead><tbody>
{% for row in table.rows %}<tr><td>{{ row.interval }}</td>
{%- for cell in row.cells %}
<td class="num{% if cell.withheld %} withheld{% endif %}">{{ cell.text }}
{%- for note in cell.notes %}<sup>{{ note }}</sup>{% endfor %}</td>
{%- endfor %}</tr>
{% endfor %}
</tbody></table>
{% endfor %}
"""
)


def write_km(out: Path, result: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out/km.json`` and ``out/km.html``; return their paths."""
    return write_analysis(out, "km", result, render_km(result))


def render_km(result: dict[str, Any]) -> str:
    notes: list[str] = []
    curves = [*result["curves"], *result.get("site_curves", [])]
    tables = [
        {"title": curve_title(curve, result), "rows": [_row(p, notes) for p in curve["points"]]}
        for curve in curves
    ]
    figures = [
        {"title": title, "svg": svg}
        for title, shown in (("Pooled", result["curves"]), ("Per site", result.get("site_curves")))
        if shown and (svg := _figure(shown, result["cuts"])) is not None
    ]
    privacy = (
        "Differentially private: every site released its counts of events and of censored "
        "records per interval once, with Gaussian noise (OpenDP) at epsilon "
        f"{result['epsilon']:g}, delta {result['delta']:g}, SD {result['noise_sd']:.3g} on each "
        "count; the numbers at risk are sums of those counts. Counts from 1 to 20 are withheld."
    )
    method = (
        "Life-table Kaplan-Meier estimate: the survival at an interval's end is the product of "
        "1 - events / (at risk - censored / 2) over the intervals up to it, made monotone "
        "(isotonic regression of its logarithm). Its 95% CI includes the sampling (Greenwood) "
        "and the DP noise. The curve is held back from the first interval whose number at "
        "risk is withheld or whose CI spans more than half of [0, 1]."
    )
    return render_page(
        _BODY,
        title=f"{result['study']}: Kaplan-Meier"
        + (f" by {result['by']}" if result.get("by") else ""),
        privacy=privacy,
        method=method,
        notes=notes,
        figures=figures,
        tables=tables,
    )


def curve_title(curve: dict[str, Any], result: dict[str, Any]) -> str:
    """``overall``, ``COLUMN: LEVEL`` or ``site NAME``, with the number at the start."""
    name = _name(curve)
    first = curve["points"][0]
    n = WITHHELD if first["at_risk"] is None else str(first["at_risk"])
    return f"{name} (N = {n})"


def _row(point: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    reasons = point["withheld_reason"] | point["na_reason"]
    cells = [_count(point, field, notes) for field in ("at_risk", "events", "censored")]
    if point["survival"] is None:
        cells.append(_held(point, "survival", reasons, notes))
        cells.append({"text": "", "withheld": False, "notes": []})
    else:
        low, high = point["survival_ci"]
        cells.append({"text": f"{point['survival']:.3f}", "withheld": False, "notes": []})
        cells.append({"text": f"{low:.3f} to {high:.3f}", "withheld": False, "notes": []})
    return {"interval": point["interval"], "cells": cells}


def _count(point: dict[str, Any], field: str, notes: list[str]) -> dict[str, Any]:
    if point[field] is None:
        return _held(point, field, point["withheld_reason"] | point["na_reason"], notes)
    return {"text": str(point[field]), "withheld": False, "notes": []}


def _held(
    point: dict[str, Any], field: str, reasons: dict[str, str], notes: list[str]
) -> dict[str, Any]:
    """``withheld`` (the dissemination rule) or ``n/a``, with a note unless a small count."""
    withheld = field in point["withheld_reason"]
    marks = [] if reasons[field] == SMALL_COUNT else [note_number(notes, reasons[field])]
    return {"text": WITHHELD if withheld else NA, "withheld": withheld, "notes": marks}


def _name(curve: dict[str, Any]) -> str:
    if "site" in curve:
        return f"site {curve['site']}"
    return curve["level"] if curve["column"] is None else f"{curve['column']}: {curve['level']}"


def _figure(curves: list[dict[str, Any]], cuts: list[float]) -> str | None:
    """The shown part of ``curves`` as steps with shaded CIs (base64 SVG); None when no curve
    shows a single point."""
    curves = [c for c in curves if c["points"][0]["survival"] is not None]
    if not curves:
        return None
    figure = new_figure(7.5, 4.0, left=0.7, top=0.2)
    axes = figure.subplots()
    for i, curve in enumerate(curves):
        shown = [p for p in curve["points"] if p["survival"] is not None]
        x = [0.0] + [p["end"] for p in shown]
        y = [1.0] + [p["survival"] for p in shown]
        low = [1.0] + [p["survival_ci"][0] for p in shown]
        high = [1.0] + [p["survival_ci"][1] for p in shown]
        pooled = curve["column"] is None and "site" not in curve
        color = POOLED_COLOR if pooled else COLORS[i % len(COLORS)]
        axes.plot(x, y, marker="o", markersize=3, color=color, label=_name(curve))
        axes.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)
    axes.set(xlabel="Days", ylabel="Survival", ylim=(0, 1.02), xlim=(0, cuts[-1]))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", frameon=False, fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")
