"""Differentially private descriptive statistics: one noisy release per query per site.

A query is a set of variables counted in strata (the site, or the levels of a group column).
Each record lies in exactly one stratum and, per variable, adds to one *alternative*: a level's
count, or for a numeric variable either its missing count or the trio (present count, sum, sum of
squares) of its value clipped to declared bounds and centred on their midpoint. So, per variable,
one record moves the cells by at most ``Variable.sensitivity`` in L2 (1 for levels, sqrt(3) for a
numeric variable, after dividing the sum by the half-range and the squares by its square), and
strata do not add up (parallel composition).

The budget: the whole query is one Gaussian release with noise multiplier ``z`` (zCDP rho =
1 / (2 z^2)), of which the total counts get ``TOTAL_SHARE`` (a stratified query also releases
the total over all strata, which each record adds 1 to as well) and the variables equal parts
of the rest. A block with share ``s`` gets noise ``z * sensitivity / sqrt(s)``: the weighted
concatenation has L2 sensitivity 1, which is exactly the release the accountants record.

Counts at or below the site's minimum cell count are withheld after the noise (post-processing
costs no privacy); so are a numeric variable's sum and squares when its present count is.

The aggregator's side is at the end: pooled counts, percentages, means and SDs, each with its
95% CI or held back by a stated n/a rule (the counts made consistent first,
``privacy.consistency``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from privacy.disclosure import DEFAULT_MIN_CELL_COUNT, is_disclosive
from privacy.noise import gaussian_release

COUNT, SUM, SQUARES = "count", "sum", "sumsq"
TOTAL, PRESENT, MISSING, OVERALL = "(total)", "(present)", "(missing)", "(overall)"
TOTAL_SHARE = 0.25  # of the query's rho, when it has variables besides the total
_Z95 = 1.959963984540054

Cell = tuple[str, str, str, str]  # (stratum, variable, level, statistic)
OVERALL_CELL: Cell = (OVERALL, TOTAL, OVERALL, COUNT)  # the total over every stratum


@dataclass(frozen=True)
class Variable:
    """A variable of a query: counts per level, or (with ``bounds``) a numeric summary, with a
    missing count when the variable ``may_be_missing``."""

    name: str
    levels: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None
    may_be_missing: bool = True

    @property
    def numeric(self) -> bool:
        return self.bounds is not None

    @property
    def sensitivity(self) -> float:
        return math.sqrt(3.0) if self.numeric else 1.0

    @property
    def half_range(self) -> float:
        low, high = self.bounds
        return (high - low) / 2

    @property
    def center(self) -> float:
        low, high = self.bounds
        return (low + high) / 2

    def cells(self) -> list[tuple[str, str]]:
        """(level, statistic) pairs of this variable's cells, in a fixed order."""
        if self.numeric:
            present = [(PRESENT, COUNT), (PRESENT, SUM), (PRESENT, SQUARES)]
            return [(MISSING, COUNT), *present] if self.may_be_missing else present
        return [(level, COUNT) for level in self.levels]

    def unit(self, statistic: str) -> float:
        """How far one record can move a cell of this statistic (natural units)."""
        if statistic == SUM:
            return self.half_range
        if statistic == SQUARES:
            return self.half_range**2
        return 1.0


@dataclass(frozen=True)
class Query:
    """The cells a site releases: the total and every variable's cells, in every stratum; with
    ``overall`` (a stratified query), also the total over all strata in a cell of its own, so
    that a small stratum withheld at a site does not take its records out of the overall count."""

    strata: tuple[str, ...]
    variables: tuple[Variable, ...] = ()
    overall: bool = False

    def shares(self) -> dict[str, float]:
        """Each block's share of rho: the totals (``TOTAL``, and ``OVERALL`` when asked for)
        split ``TOTAL_SHARE``, the variables split the rest equally."""
        totals = (TOTAL, OVERALL) if self.overall else (TOTAL,)
        total_share = TOTAL_SHARE if self.variables else 1.0
        shares = dict.fromkeys(totals, total_share / len(totals))
        for variable in self.variables:
            shares[variable.name] = (1 - TOTAL_SHARE) / len(self.variables)
        return shares

    def cells(self) -> list[Cell]:
        cells: list[Cell] = []
        for stratum in self.strata:
            cells.append((stratum, TOTAL, TOTAL, COUNT))
            for variable in self.variables:
                cells += [(stratum, variable.name, lvl, stat) for lvl, stat in variable.cells()]
        if self.overall:
            cells.append(OVERALL_CELL)
        return cells

    def noise_sd(self, noise_multiplier: float) -> dict[tuple[str, str, str], float]:
        """Noise standard deviation per (variable, level, statistic), natural units."""
        shares = self.shares()
        sds = {(TOTAL, TOTAL, COUNT): noise_multiplier / math.sqrt(shares[TOTAL])}
        if self.overall:
            sds[OVERALL_CELL[1:]] = noise_multiplier / math.sqrt(shares[OVERALL])
        for variable in self.variables:
            per_unit = noise_multiplier / math.sqrt(shares[variable.name])
            for level, statistic in variable.cells():
                sds[(variable.name, level, statistic)] = (
                    per_unit * variable.sensitivity * variable.unit(statistic)
                )
        return sds


def release(
    query: Query, exact: Mapping[Cell, float], noise_multiplier: float, min_cell_count: int
) -> dict[Cell, float]:
    """The released cells: ``exact`` plus OpenDP Gaussian noise, then small counts withheld
    (absent from the result). ``exact`` sums are of values already clipped to the bounds."""
    cells = query.cells()
    sds = query.noise_sd(noise_multiplier)
    # One vector of unit L2 sensitivity: each cell divided by its noise sd / noise multiplier.
    weights = np.array([noise_multiplier / sds[cell[1:]] for cell in cells])
    values = np.array([float(exact.get(cell, 0.0)) for cell in cells])
    noisy = gaussian_release(values * weights, 1.0, noise_multiplier) / weights
    released = dict(zip(cells, noisy.tolist(), strict=True))
    for cell, value in list(released.items()):
        if cell[3] == COUNT:
            released[cell] = count = float(round(value))
            if count <= 0 or is_disclosive(int(count), min_cell_count):
                del released[cell]
    for cell in cells:  # a numeric summary leaves only with its present count
        if cell[2] == PRESENT and cell[3] != COUNT and (*cell[:3], COUNT) not in released:
            released.pop(cell, None)
    return released


def exact_cells(
    query: Query,
    strata: Sequence[str],
    columns: Mapping[str, np.ndarray],
) -> dict[Cell, float]:
    """The exact cells of ``query`` over records: ``strata`` (one stratum name per record) and
    ``columns`` (per variable: level names, or numeric values with NaN for missing)."""
    strata_array = np.asarray(strata)
    exact: dict[Cell, float] = {}
    if query.overall:
        exact[OVERALL_CELL] = float(len(strata_array))
    for stratum in query.strata:
        rows = strata_array == stratum
        exact[(stratum, TOTAL, TOTAL, COUNT)] = float(rows.sum())
        for variable in query.variables:
            values = np.asarray(columns[variable.name])[rows]
            if not variable.numeric:
                for level in variable.levels:
                    exact[(stratum, variable.name, level, COUNT)] = float((values == level).sum())
                continue
            values = values.astype(float)
            present = ~np.isnan(values)
            low, high = variable.bounds
            centred = np.clip(values[present], low, high) - variable.center
            key = (stratum, variable.name)
            if variable.may_be_missing:
                exact[(*key, MISSING, COUNT)] = float((~present).sum())
            exact[(*key, PRESENT, COUNT)] = float(present.sum())
            exact[(*key, PRESENT, SUM)] = float(centred.sum())
            exact[(*key, PRESENT, SQUARES)] = float((centred**2).sum())
    return exact


# -- pooled statistics: each with its 95% CI, or n/a with the reason ------------------------
#
# The rule for n/a: a value is shown only when its 95% CI (noise and sampling together) spans at
# most MAX_CI_SHARE of the range the value can take: a count within its column's total, a
# percentage within 0-100 (a variable's percentages in one column are shown together or not at
# all, so that those shown add to 100), a mean within the declared bounds, an SD within 0 and the
# bounds' half-range. An SD is n/a also when the noisy sums give a variance that values within the
# bounds cannot have, or when the variance's 95% CI reaches 0 (the noise swamps the spread). A
# whole count from 1 to 20 is withheld (the dissemination rule), with what rests on it.

MAX_CI_SHARE = 0.5
SMALL_COUNT = f"1 to {DEFAULT_MIN_CELL_COUNT} records: no such count is published"
# What the dissemination rule holds back: a small count, or a figure that rests on one. An
# output names these under ``withheld_reason``; any other reason a value is not shown is n/a
# (undefined, or too uncertain to mean anything), under ``na_reason``, as in the run summary.
TOTAL_WITHHELD = "its column's total is withheld"
NO_SUMS = "every site withheld this column's sums (their counts were small)"
WITHHELD_REASONS = frozenset({SMALL_COUNT, TOTAL_WITHHELD, NO_SUMS})


def reason_keys(reasons: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """An entry's reasons (field: reason) under the two keys of the outputs:
    ``withheld_reason`` (the dissemination rule) and ``na_reason`` (undefined or too
    uncertain)."""
    return {
        "withheld_reason": {f: r for f, r in reasons.items() if r in WITHHELD_REASONS},
        "na_reason": {f: r for f, r in reasons.items() if r not in WITHHELD_REASONS},
    }


@dataclass(frozen=True)
class PooledCount:
    """A pooled whole count with its noise SE and 95% CI; ``count`` is None when withheld (a
    small count) or n/a (too uncertain), and ``reason`` says which."""

    count: int | None
    se: float
    ci: tuple[float, float] | None
    withheld: int  # cells (site strata) withheld at their sites, estimated from their totals
    reason: str | None = None

    @property
    def na(self) -> bool:
        """Not shown because too uncertain (as opposed to withheld as a small count)."""
        return self.reason is not None and self.reason not in WITHHELD_REASONS

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "count_se": round(self.se, 2),
            "count_ci": None if self.ci is None else [round(x, 1) for x in self.ci],
            "withheld_cells": self.withheld,
            **reason_keys({} if self.reason is None else {"count": self.reason}),
        }


def pool_count(
    count: int, variance: float, withheld: int, column_total: float | None = None
) -> PooledCount:
    """The shown ``count`` (already rounded) with SE from the projection's ``variance``; n/a
    when its CI spans more than ``MAX_CI_SHARE`` of ``column_total`` (None: a total itself)."""
    se = math.sqrt(max(variance, 0.0))
    if is_disclosive(count):
        return PooledCount(None, se, None, withheld, SMALL_COUNT)
    if column_total is not None and 2 * _Z95 * se > MAX_CI_SHARE * column_total:
        reason = f"its 95% CI spans more than {MAX_CI_SHARE:.0%} of its column's total"
        return PooledCount(None, se, None, withheld, reason)
    return PooledCount(count, se, (max(count - _Z95 * se, 0.0), count + _Z95 * se), withheld)


@dataclass(frozen=True)
class PooledPercentages:
    """A variable's percentages in one column, in level order, with 95% CIs; all None with
    ``reason`` when n/a, one None where its count is withheld as small."""

    percents: list[float | None]
    cis: list[tuple[float, float] | None]
    reason: str | None = None


def pool_percentages(
    counts: Sequence[PooledCount], total: PooledCount, noise_variances: Sequence[float]
) -> PooledPercentages:
    """Percent of ``total`` from the same whole counts that are shown, rounded (largest
    remainder) to add to exactly 100 when every level is shown. ``noise_variances``: of each
    count's share of the total, from the noise (the projection's covariances); the CIs add the
    sampling variance of a proportion."""
    reason = None
    if total.count == 0:
        reason = "no records"
    elif total.count is None:
        reason = "its column's total is n/a" if total.na else TOTAL_WITHHELD
    elif any(c.na for c in counts):
        reason = "a count of this variable in this column is n/a"
    if reason is None:
        shares = [None if c.count is None else c.count / total.count for c in counts]
        half = [
            None if p is None else _Z95 * math.sqrt(max(v, 0.0) + p * (1 - p) / total.count)
            for p, v in zip(shares, noise_variances, strict=True)
        ]
        if any(h is not None and 2 * h > MAX_CI_SHARE for h in half):
            reason = f"a 95% CI spans more than {MAX_CI_SHARE * 100:.0f} percentage points"
    if reason is not None:
        return PooledPercentages([None] * len(counts), [None] * len(counts), reason)
    percents = _rounded_percents(shares)
    cis = [
        None if p is None else (100 * max(p - h, 0.0), 100 * min(p + h, 1.0))
        for p, h in zip(shares, half, strict=True)
    ]
    return PooledPercentages(percents, cis)


def _rounded_percents(shares: Sequence[float | None]) -> list[float | None]:
    """Percentages to one decimal; by largest remainder, so they add to 100.0, when none is
    withheld."""
    if any(s is None for s in shares) or not math.isclose(sum(shares), 1.0, abs_tol=1e-9):
        return [None if s is None else round(100 * s, 1) for s in shares]
    tenths = [1000 * s for s in shares]
    floors = [math.floor(t) for t in tenths]
    order = sorted(range(len(tenths)), key=lambda i: floors[i] - tenths[i])
    for i in order[: 1000 - sum(floors)]:
        floors[i] += 1
    return [f / 10 for f in floors]


@dataclass(frozen=True)
class PooledMean:
    """Mean, SD and variance of a numeric variable from pooled noisy count, sum and squares
    (values clipped to the variable's bounds, centred), each with its 95% CI (noise and
    sampling); a value is None where ``reasons`` says why."""

    n: float
    mean: float | None
    mean_ci: tuple[float, float] | None
    sd: float | None
    sd_ci: tuple[float, float] | None
    variance: float | None
    variance_ci: tuple[float, float] | None
    reasons: dict[str, str]

    def as_dict(self) -> dict:
        def rounded(x):
            return None if x is None else round(x, 4)

        def interval(ci):
            return None if ci is None else [rounded(x) for x in ci]

        return {
            "mean_n": round(self.n) if self.n is not None else None,
            "sum": rounded(None if self.mean is None else self.mean * self.n),
            "mean": rounded(self.mean),
            "mean_ci": interval(self.mean_ci),
            "sd": rounded(self.sd),
            "sd_ci": interval(self.sd_ci),
            "variance": rounded(self.variance),
            "variance_ci": interval(self.variance_ci),
        }


def pool_mean(
    variable: Variable,
    n: tuple[float, float],
    total: tuple[float, float],
    squares: tuple[float, float],
) -> PooledMean:
    """From pooled (estimate, noise variance) of the present count, the centred sum and the
    centred squares. Noise variances by the delta method; sampling: var/n for the mean and the
    normal-theory 2 var^2 / (n - 1) for the variance. The mean's sampling part uses the largest
    variance bounded values can have where the variance itself is n/a."""
    (count, count_var), (s, s_var), (q, q_var) = n, total, squares
    if count < 2 or is_disclosive(round(count)):
        reason = SMALL_COUNT if is_disclosive(round(count)) else "fewer than 2 records"
        reasons = dict.fromkeys(("mean", "sd"), reason)
        return PooledMean(count, None, None, None, None, None, None, reasons)
    low, high = variable.bounds
    h = variable.half_range
    centred = s / count
    variance = (q - s**2 / count) / (count - 1)
    largest = h**2 * count / (count - 1)  # of values within the bounds
    reasons: dict[str, str] = {}
    noise = (q_var + (2 * centred) ** 2 * s_var + (centred**2 - variance) ** 2 * count_var) / (
        count - 1
    ) ** 2
    variance_ci = sd_ci = None
    if not 0 < variance <= largest:
        reasons["sd"] = (
            f"the noisy sums give a variance that values within [{low:g}, {high:g}] cannot "
            "have (at or below 0, or above the half-range squared)"
        )
    else:
        half = _Z95 * math.sqrt(noise + 2 * variance**2 / (count - 1))
        variance_ci = (max(variance - half, 0.0), min(variance + half, largest))
        sd_ci = (math.sqrt(variance_ci[0]), math.sqrt(variance_ci[1]))
        if variance - half <= 0:
            reasons["sd"] = "the 95% CI of the variance reaches 0: the noise swamps the spread"
        elif sd_ci[1] - sd_ci[0] > MAX_CI_SHARE * h:
            reasons["sd"] = (
                f"its 95% CI spans more than {MAX_CI_SHARE:.0%} of what an SD within the bounds "
                f"can be (0 to {h:g})"
            )
    spread = largest if "sd" in reasons else variance
    se = math.sqrt(spread / count + (s_var + centred**2 * count_var) / count**2)
    mean = min(max(variable.center + centred, low), high)
    mean_ci = (max(mean - _Z95 * se, low), min(mean + _Z95 * se, high))
    if mean_ci[1] - mean_ci[0] > MAX_CI_SHARE * (high - low):
        reasons["mean"] = (
            f"its 95% CI spans more than {MAX_CI_SHARE:.0%} of the declared range "
            f"[{low:g}, {high:g}]"
        )
    if "sd" in reasons:
        variance, variance_ci = None, None
    return PooledMean(
        count,
        None if "mean" in reasons else mean,
        None if "mean" in reasons else mean_ci,
        None if "sd" in reasons else math.sqrt(variance),
        None if "sd" in reasons else sd_ci,
        variance,
        variance_ci,
        reasons,
    )
