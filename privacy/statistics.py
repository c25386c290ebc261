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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from privacy.disclosure import is_disclosive
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


@dataclass(frozen=True)
class PooledCount:
    """A count summed over released cells, with the noise's standard error."""

    count: int | None  # None: every contributing cell was withheld
    se: float
    withheld: int  # cells (site strata) withheld at their sites

    def as_dict(self) -> dict:
        return {"count": self.count, "count_se": round(self.se, 2), "withheld_cells": self.withheld}


def pool_count(values: Iterable[float | None], sd: float) -> PooledCount:
    """Sum of the released values (None = withheld), its noise SE from the per-cell ``sd``."""
    values = list(values)
    released = [v for v in values if v is not None]
    withheld = len(values) - len(released)
    if not released:
        return PooledCount(None, 0.0, withheld)
    return PooledCount(round(sum(released)), sd * math.sqrt(len(released)), withheld)


@dataclass(frozen=True)
class PooledMean:
    """Sum, mean, SD and variance of a numeric variable from pooled noisy count, sum and
    squares (values clipped to the variable's bounds)."""

    count: int | None
    mean: float | None
    sd: float | None  # None also where the noise swamped the spread
    mean_ci: tuple[float, float] | None  # 95%: sampling and noise together

    def as_dict(self) -> dict:
        def rounded(x):
            return None if x is None else round(x, 4)

        ci = None if self.mean_ci is None else [rounded(x) for x in self.mean_ci]
        total = None if self.mean is None else self.mean * self.count
        variance = None if self.sd is None else self.sd**2
        return {
            "count": self.count,
            "sum": rounded(total),
            "mean": rounded(self.mean),
            "sd": rounded(self.sd),
            "variance": rounded(variance),
            "mean_ci": ci,
        }


def pool_mean(
    variable: Variable,
    released: Iterable[tuple[float, float, float] | None],
    sds: Mapping[tuple[str, str, str], float],
) -> PooledMean:
    """Pool per-cell (count, centred sum, centred squares); None = withheld cell."""
    parts = [r for r in released if r is not None]
    if not parts:
        return PooledMean(None, None, None, None)
    n, total, squares = (sum(part[i] for part in parts) for i in range(3))
    if n < 2:
        return PooledMean(round(n), None, None, None)
    low, high = variable.bounds
    mean_centred = total / n
    variance = min((squares - total**2 / n) / (n - 1), variable.half_range**2)
    sd_count = sds[(variable.name, PRESENT, COUNT)] * math.sqrt(len(parts))
    sd_sum = sds[(variable.name, PRESENT, SUM)] * math.sqrt(len(parts))
    noise_var = (sd_sum**2 + (mean_centred * sd_count) ** 2) / n**2  # delta method
    se = math.sqrt(max(variance, 0.0) / n + noise_var)
    mean = min(max(variable.center + mean_centred, low), high)
    sd = math.sqrt(variance) if variance > 0 else None  # None: the noise swamped the spread
    return PooledMean(round(n), mean, sd, (mean - _Z95 * se, mean + _Z95 * se))
