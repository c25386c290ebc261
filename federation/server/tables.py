"""The pooled table of a descriptive analysis as ``<kind>.json`` and ``<kind>.html``.

The HTML reads like the first table of a clinical paper: one row per level (count and percent)
or per numeric variable (mean and SD), an overall column, then a column per site and per
stratum. A cell that some site withheld says so: its count is a sum over the sites that
released it.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from federation.server.outputs import clean_json
from federation.server.report import PAGE_CSS, WITHHELD, html_table


def write_tables(out: Path, kind: str, result: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out/<kind>.json`` and ``out/<kind>.html``; return their paths."""
    json_path, html_path = out / f"{kind}.json", out / f"{kind}.html"
    for path, text in (
        (json_path, json.dumps(clean_json(result), indent=2) + "\n"),
        (html_path, render_table(result)),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return json_path, html_path


def render_table(result: dict[str, Any]) -> str:
    columns = [("overall", None)]
    columns += [("sites", name) for name in result["sites"]]
    columns += [("groups", level) for level in result["groups"]]
    by = result.get("by")
    header = ["Variable", "Level", f"Overall (N = {_n(result['total'])})"]
    header += [f"{escape(name)} (N = {_n(n)})" for name, n in result["sites"].items()]
    header += [
        f"{escape(str(by))}: {escape(level)} (N = {_n(n)})" for level, n in result["groups"].items()
    ]
    rows = []
    for row in result["rows"]:
        cells = [escape(row["variable"]), escape(row["level"])]
        for scope, key in columns:
            entry = row if scope == "overall" else row.get(scope, {}).get(key, {})
            cells.append(_cell(entry))
        rows.append(cells)
    title = escape(f"{result['study']}: {result['analysis']}")
    note = (
        f"Differentially private: every site released its cells once with Gaussian noise "
        f"(OpenDP) at epsilon {result['epsilon']:g}, delta {result['delta']:g}; counts at or "
        "under a site's minimum cell count were withheld there, after the noise. "
        f"The overall total carries a noise SE of {result['total_se']:g} records."
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{PAGE_CSS}</style></head>\n<body>\n<h1>{title}</h1>\n"
        f'<p class="muted">{escape(note)}</p>\n'
        f"{html_table(header, rows, numeric_from=2)}\n</body></html>\n"
    )


def _cell(entry: dict[str, Any]) -> str:
    if "mean" in entry:
        if entry.get("mean") is None:
            return WITHHELD
        sd = "n/a" if entry.get("sd") is None else f"{entry['sd']:.1f}"
        text = f"{entry['mean']:.1f} ({sd})"
    elif entry.get("count") is None:
        return WITHHELD
    else:
        percent = entry.get("percent")
        text = f"{entry['count']}" + (f" ({percent:.1f}%)" if percent is not None else "")
    if entry.get("withheld_cells"):
        text += f" <small>+{entry['withheld_cells']} withheld</small>"
    return text


def _n(count: int | None) -> str:
    return WITHHELD if count is None else str(count)
