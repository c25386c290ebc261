"""The pooled table of a descriptive analysis: every site's consistent counts, summed per column.

The columns are overall, each site and each stratum. Each site's released counts are first made
consistent (``privacy.consistency``: weighted least squares onto what the records make true,
then non-negativity), so a column's count is the sum of its (site, stratum) cells, where a cell
the site withheld enters as its estimate from that site's totals (never as 0) and is counted in
``withheld_cells``; a site whose own total is unknown (it withheld every count) is left out of
every column and named. Standard errors come from the projection's covariance (sites are
independent), plus, for a sum the releases only bound, the spread of what it can be.

Whole counts are apportioned by largest remainder, so that a column's levels add to its total
and the sites' and the strata's totals to the overall total; percentages are of those same
counts. Then the n/a rule of ``privacy.statistics`` decides what is shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from federation.wire.queries import ALL, AnalysisRequest
from federation.wire.spec import StudySpec
from privacy.consistency import SiteCounts, consistent_counts
from privacy.disclosure import DEFAULT_MIN_CELL_COUNT
from privacy.statistics import (
    COUNT,
    MAX_CI_SHARE,
    NO_SUMS,
    OVERALL_CELL,
    PRESENT,
    SMALL_COUNT,
    SQUARES,
    SUM,
    TOTAL,
    Cell,
    PooledCount,
    Query,
    Variable,
    pool_count,
    pool_mean,
    pool_percentages,
    reason_keys,
)

LEFT_OUT = "every count withheld at the site (its records number at or under its minimum)"
NO_SITE = "no site counts in this column"
_MEAN_FIELDS = ("mean_n", "sum", "mean", "mean_ci", "sd", "sd_ci", "variance", "variance_ci")
METHOD = {
    "consistency": (
        "each site's noisy counts projected by weighted least squares (known noise variances) "
        "onto the constraints the records satisfy (levels add to their stratum's total, strata "
        "to the overall total), then made non-negative; withheld cells estimated from their "
        "totals, never taken as 0"
    ),
    "rounding": "largest remainder: levels add to their column's total, percentages to 100",
    "confidence": 0.95,
    "max_ci_share": MAX_CI_SHARE,
    "na_rule": (
        "a value is n/a when its 95% CI (noise and sampling) spans more than max_ci_share of "
        "the range it can take: a count within its column's total, a percentage within 0-100 "
        "(a variable's percentages in a column go together), a mean within the declared bounds, "
        "an SD within 0 and the half-range; an SD also when the noisy sums give an impossible "
        f"variance or its CI reaches 0. Counts from 1 to {DEFAULT_MIN_CELL_COUNT} are withheld."
    ),
}

Quantity = dict[str, list[Cell]]  # per site, the cells whose sum it is


@dataclass(frozen=True)
class _Column:
    scope: str  # "overall", "sites" or "groups"
    key: str | None
    parts: tuple[tuple[str, str], ...]  # (site, stratum)


class _Pool:
    """Sums of cells over sites, with their variances and covariances."""

    def __init__(self, counts: Mapping[str, SiteCounts]) -> None:
        self.counts = counts

    def value(self, q: Quantity) -> float:
        return sum(self.counts[site].value(cells) for site, cells in q.items())

    def covariance(self, a: Quantity, b: Quantity) -> float:
        return sum(
            self.counts[site].covariance_of(cells, b[site])
            for site, cells in a.items()
            if site in b
        )

    def variance(self, q: Quantity) -> float:
        """The noise variance, plus the spread of any part the releases only bound."""
        bounded = sum(self.counts[site].unidentified_variance(cells) for site, cells in q.items())
        return self.covariance(q, q) + bounded

    def withheld(self, q: Quantity) -> int:
        return sum(c not in self.counts[site].released for site, cells in q.items() for c in cells)


@dataclass(frozen=True)
class _Total:
    """A column's total: its cells, estimate, whole count (apportioned) and shown entry."""

    cells: Quantity
    estimate: float
    whole: int
    entry: PooledCount


def pooled_tables(
    spec: StudySpec,
    request: AnalysisRequest,
    query: Query,
    answers: Mapping[str, Mapping[Cell, float]],
    noise_multiplier: float,
) -> dict[str, Any]:
    """The pooled table from the released cells of the sites that answered (name: cells)."""
    projected = {
        name: consistent_counts(query, cells, noise_multiplier) for name, cells in answers.items()
    }
    counted = {name: c for name, c in projected.items() if c.counted}
    pool = _Pool(counted)
    overall = _Column("overall", None, tuple((n, s) for n in counted for s in query.strata))
    sites = [_Column("sites", n, tuple((n, s) for s in query.strata)) for n in counted]
    strata = [s for s in query.strata if s != ALL] if query.variables else []
    groups = [_Column("groups", s, tuple((n, s) for n in counted)) for s in strata]
    totals = _totals(pool, query, overall, sites, groups)
    rows: list[dict[str, Any]] = []
    for name, variable, levels in _level_sets(request, query):
        rows += _variable_rows(
            pool, query, answers, noise_multiplier, (overall, sites, groups), totals,
            name, variable, levels,
        )  # fmt: skip
    left_out = {name: LEFT_OUT for name in projected if name not in counted}
    total = totals[overall].entry
    return {
        "analysis": request.kind,
        "study": spec.study.name,
        "by": request.strata_column,
        "epsilon": request.epsilon,
        "delta": request.delta,
        "total": total.count,
        "total_se": round(total.se, 2),
        "total_ci": total.as_dict()["count_ci"],
        "sites": {c.key: totals[c].entry.count for c in sites} | dict.fromkeys(left_out),
        "groups": {c.key: totals[c].entry.count for c in groups},
        "totals": {
            "overall": total.as_dict(),
            "sites": {c.key: totals[c].entry.as_dict() for c in sites},
            "groups": {c.key: totals[c].entry.as_dict() for c in groups},
        },
        "left_out": left_out,
        "method": METHOD,
        "rows": rows,
    }


def _totals(
    pool: _Pool, query: Query, overall: _Column, sites: list[_Column], groups: list[_Column]
) -> dict[_Column, _Total]:
    """Every column's total; the sites' and the strata's whole totals add to the overall's."""
    cells = {col: _total(query, col) for col in (overall, *sites, *groups)}
    estimate = {col: pool.value(q) for col, q in cells.items()}
    whole = {overall: round(estimate[overall])}
    for part in (sites, groups):
        shares = _apportion([estimate[c] for c in part], whole[overall])
        whole |= dict(zip(part, shares, strict=True))
    entries = {
        col: pool_count(whole[col], pool.variance(q), pool.withheld(q))
        if col.parts
        else PooledCount(None, 0.0, None, 0, NO_SITE)
        for col, q in cells.items()
    }
    return {col: _Total(q, estimate[col], whole[col], entries[col]) for col, q in cells.items()}


def _level_sets(request: AnalysisRequest, query: Query):
    """(row variable name, Variable or None for a count's strata, its count levels)."""
    if not query.variables:  # a count: its rows are the strata's totals
        yield request.strata_column or TOTAL, None, list(query.strata)
    for v in query.variables:
        yield v.name, v, [level for level, statistic in v.cells() if statistic == COUNT]


def _variable_rows(
    pool: _Pool,
    query: Query,
    answers: Mapping[str, Mapping[Cell, float]],
    noise_multiplier: float,
    columns: tuple[_Column, list[_Column], list[_Column]],
    totals: dict[_Column, _Total],
    name: str,
    variable: Variable | None,
    levels: list[str],
) -> list[dict[str, Any]]:
    """A variable's rows in every column. The strata go first: the overall whole counts are
    their sums, so that the strata add to the overall count exactly."""
    overall, sites, groups = columns
    rows = [
        {
            "variable": name,
            "level": "mean (SD)" if variable and variable.numeric and lvl == PRESENT else lvl,
        }
        for lvl in levels
    ]
    by_group: list[list[int]] = []
    for col in (*groups, overall, *sites):
        whole = [sum(column) for column in zip(*by_group, strict=True)] if col is overall else None
        whole, entries = _level_entries(pool, col, variable, levels, totals[col], whole)
        if col.scope == "groups":
            by_group.append(whole)
        if variable is not None and variable.numeric:
            count, entry = entries[levels.index(PRESENT)]
            mean = _mean_entry(pool, query, col, variable, answers, noise_multiplier, count)
            _add_reasons(entry, mean.pop("reasons"))
            entry |= mean
        for row, (_, entry) in zip(rows, entries, strict=True):
            if col.scope == "overall":
                row.update(entry)
            else:
                row.setdefault(col.scope, {})[col.key] = entry
    return rows


def _total(query: Query, column: _Column) -> Quantity:
    """A column's total: the released overall cell where it covers the column, else strata."""
    q: Quantity = {}
    for site, stratum in column.parts:
        if query.overall and column.scope != "groups":
            q[site] = [OVERALL_CELL]
        else:
            q.setdefault(site, []).append((stratum, TOTAL, TOTAL, COUNT))
    return q


def _level_quantity(column: _Column, variable: Variable | None, level: str) -> Quantity:
    q: Quantity = {}
    for site, stratum in column.parts:
        if variable is None:  # a count's level is a stratum
            if stratum == level:
                q.setdefault(site, []).append((stratum, TOTAL, TOTAL, COUNT))
        else:
            q.setdefault(site, []).append((stratum, variable.name, level, COUNT))
    return q


def _level_entries(
    pool: _Pool,
    column: _Column,
    variable: Variable | None,
    levels: Sequence[str],
    total: _Total,
    whole: list[int] | None = None,
) -> tuple[list[int], list[tuple[PooledCount, dict[str, Any]]]]:
    """One variable's level counts and percentages in one column: the whole counts (``whole``,
    else apportioned to the column's total) and each level's count and entry."""
    quantities = [_level_quantity(column, variable, lvl) for lvl in levels]
    estimates = [pool.value(q) for q in quantities]
    variances = [pool.variance(q) for q in quantities]
    if whole is None or not whole:
        whole = _apportion(estimates, total.whole)
    span = total.estimate if len(levels) > 1 else None  # a lone level is its column's total
    counts = [
        pool_count(w, v, pool.withheld(q), span)
        if column.parts
        else PooledCount(None, 0.0, None, 0, NO_SITE)
        for w, v, q in zip(whole, variances, quantities, strict=True)
    ]
    total_variance = pool.covariance(total.cells, total.cells)
    share_variances = []  # of count / total, from the noise (delta method)
    for q, value, variance in zip(quantities, estimates, variances, strict=True):
        if total.estimate <= 0:
            share_variances.append(math.inf)
            continue
        p = value / total.estimate
        noise = variance - 2 * p * pool.covariance(q, total.cells) + p**2 * total_variance
        share_variances.append(noise / total.estimate**2)
    percentages = pool_percentages(counts, total.entry, share_variances)
    entries = []
    for count, percent, ci in zip(counts, percentages.percents, percentages.cis, strict=True):
        entry = count.as_dict()
        entry["percent"] = percent
        entry["percent_ci"] = None if ci is None else [round(x, 1) for x in ci]
        if percent is None:
            _add_reasons(entry, {"percent": percentages.reason or count.reason})
        entries.append((count, entry))
    return whole, entries


def _mean_entry(
    pool: _Pool,
    query: Query,
    column: _Column,
    variable: Variable,
    answers: Mapping[str, Mapping[Cell, float]],
    noise_multiplier: float,
    count: PooledCount,
) -> dict[str, Any]:
    """Mean, SD and variance over the (site, stratum) cells whose sums were released, and under
    ``reasons`` why a value is not shown; withheld with the row's count when that is small."""
    sds = query.noise_sd(noise_multiplier)
    parts = [(n, s) for n, s in column.parts if (s, variable.name, PRESENT, SUM) in answers[n]]
    reason = count.reason if count.reason in (SMALL_COUNT, NO_SITE) else None
    reason = reason or (None if parts else NO_SUMS)
    if reason is not None:
        return {**dict.fromkeys(_MEAN_FIELDS), "reasons": dict.fromkeys(("mean", "sd"), reason)}
    n_q: Quantity = {}
    for site, s in parts:
        n_q.setdefault(site, []).append((s, variable.name, PRESENT, COUNT))

    def summed(statistic: str) -> tuple[float, float]:
        value = sum(answers[site][(s, variable.name, PRESENT, statistic)] for site, s in parts)
        return value, len(parts) * sds[(variable.name, PRESENT, statistic)] ** 2

    n = (pool.value(n_q), pool.covariance(n_q, n_q))
    pooled = pool_mean(variable, n, summed(SUM), summed(SQUARES))
    return {**pooled.as_dict(), "reasons": pooled.reasons}


def _add_reasons(entry: dict[str, Any], reasons: Mapping[str, str]) -> None:
    """File each field's reason under the entry's ``withheld_reason`` or ``na_reason``."""
    for key, filed in reason_keys(reasons).items():
        entry[key] = {**entry.get(key, {}), **filed}


def _apportion(values: Sequence[float], total: int) -> list[int]:
    """Whole numbers adding to ``total`` (largest remainder); ``values`` add to about it."""
    floors = [math.floor(v) for v in values]
    order = sorted(range(len(values)), key=lambda i: floors[i] - values[i])
    extra = total - sum(floors)
    for i in order[: max(extra, 0)]:
        floors[i] += 1
    return floors
