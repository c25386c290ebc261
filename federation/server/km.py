"""A DP Kaplan-Meier analysis's result: the sites' noisy exit counts pooled into curves.

Every answering site released each cell of the query once with the request's Gaussian noise
(``privacy.kaplan_meier``), so a pooled cell is the sum of the sites' and its noise variance
is the number of sites times the noise multiplier squared (the aggregator knows the noise from
the request alone). One curve per stratum, and with ``--by`` an overall curve from the strata's
sums; beside them one curve per site, from that site's own cells summed over its strata (the
same release, post-processed: a site's noise variance is its strata times the multiplier
squared). What is shown and what is held back follows ``privacy.kaplan_meier.curve``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from federation.wire.queries import ALL, AnalysisRequest
from federation.wire.spec import StudySpec
from privacy.kaplan_meier import KmQuery, curve, interval_labels, stratum_cells
from privacy.statistics import Cell

OVERALL = "overall"
METHOD = {
    "estimator": (
        "life-table Kaplan-Meier: S at an interval's end is the product of 1 - d / n' over the "
        "intervals up to it, n' the number at risk at the interval's start less half those "
        "censored in it; log S then made non-increasing and at most 0 (isotonic regression)"
    ),
    "at_risk": "the DP total of the stratum less the exits before the interval (no extra release)",
    "confidence": 0.95,
    "ci": (
        "log scale; variance of log S: Greenwood's (sampling) plus the DP noise's, by the "
        "delta method through every cell"
    ),
    "held_back": (
        "from the first interval where the noisy number at risk is a count from 1 to 20, or the "
        "CI spans more than half of [0, 1]; every later interval with it"
    ),
}


def pooled_km(
    spec: StudySpec,
    request: AnalysisRequest,
    query: KmQuery,
    released: Mapping[str, Mapping[Cell, float]],
    noise: float,
) -> dict[str, Any]:
    """The analysis's result (``km.json``): one curve per stratum, and overall when stratified;
    one curve per site (``site_curves``)."""
    variance, cuts = len(released) * noise**2, query.cuts  # variance: of each pooled cell
    pooled = {
        stratum: np.array(
            [sum(site[c] for site in released.values()) for c in stratum_cells(stratum, cuts)]
        )
        for stratum in query.strata
    }
    curves = []
    if request.by is not None:
        total = np.sum(list(pooled.values()), axis=0)
        curves.append(_curve(OVERALL, None, total, query, variance * len(pooled), spec))
    for stratum, cells in pooled.items():
        label = OVERALL if stratum == ALL else stratum
        curves.append(_curve(label, request.by, cells, query, variance, spec))
    site_curves = []
    for name, site in released.items():
        cells = np.sum(
            [[site[c] for c in stratum_cells(stratum, cuts)] for stratum in query.strata], axis=0
        )
        site_variance = len(query.strata) * noise**2
        site_curves.append({"site": name, **_curve(name, None, cells, query, site_variance, spec)})
    return {
        "study": spec.study.name,
        "analysis": "km",
        "by": request.by,
        "epsilon": request.epsilon,
        "delta": request.delta,
        "sites": list(released),
        "noise_sd": noise,  # of each cell at each site
        "cuts": list(query.cuts),
        "intervals": interval_labels(query.cuts),
        "total": curves[0]["points"][0]["at_risk"] if curves else None,
        "curves": curves,
        "site_curves": site_curves,
        "method": METHOD,
    }


def _curve(
    level: str,
    by: str | None,
    cells: np.ndarray,
    query: KmQuery,
    variance: float,
    spec: StudySpec,
) -> dict[str, Any]:
    points = [p.as_dict() for p in curve(cells, query.cuts, variance)]
    ends = {p["end"]: p for p in points}
    horizons = [h for h in spec.study.horizons or () if h in ends]
    return {
        "level": level,
        "column": by if level != OVERALL else None,
        "noise_sd": round(float(np.sqrt(variance)), 4),  # of each pooled cell
        "points": points,
        "horizons": {f"{h:g}": _at(ends[h]) for h in horizons},
    }


def _at(point: dict[str, Any]) -> dict[str, Any]:
    """A horizon's survival, CI and, where held back, the reason (its counts' are not its)."""
    shown = {k: point[k] for k in ("survival", "survival_ci", "survival_se")}
    for key in ("withheld_reason", "na_reason"):
        shown[key] = {f: r for f, r in point[key].items() if f == "survival"}
    return shown
