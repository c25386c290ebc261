"""One site's noisy counts made consistent: weighted least squares, then non-negativity.

The records make the counts of a release (``privacy.statistics``) obey linear constraints: in
each stratum, every variable's level counts add to the stratum's total (the levels include
``(missing)`` and ``(other)``; a numeric variable's missing and present counts), and with an
overall cell the strata's totals add to it. Independent Gaussian noise of known variance
(``Query.noise_sd``, plus 1/12 for the rounding to whole counts) breaks them. The weighted
least-squares projection onto the constraints is, by Gauss-Markov, the best linear unbiased
estimate of the true counts given the release. Why this method: every cell that bears on a count
is used in proportion to its precision (a stratum's total is estimated at once by its released
total, the overall cell less the other strata and each variable's levels), so the estimate beats
any one of them and no rule of thumb decides which to trust; and it is linear, so its covariance
is known exactly and every pooled count keeps an honest standard error. It is post-processing:
it costs no privacy. Sums and squares have no such constraints and are left as released.

A withheld cell (absent: its noisy count was at or under the site's minimum) is an unknown, not
a zero: the constraints estimate it where they can (a stratum's only withheld level is its total
less its other levels) and its estimate carries the noise of everything it was worked out from.
Where they cannot (two withheld levels of one stratum: only their sum is known), the projection
splits the known sum evenly (its least-norm solution), ``unidentified_variance`` bounds what the
split could be, and a site whose own total is unknown (every count withheld) counts for nothing.

Non-negativity comes after, where the projection made a count negative: the same least squares
with every count at least 0 (a convex quadratic programme, solved exactly by a primal active-set
method), which keeps every constraint. Standard errors are those of the linear projection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.optimize import linprog

from privacy.statistics import COUNT, OVERALL_CELL, TOTAL, Cell, Query

_ROUNDING_VARIANCE = 1 / 12  # released counts are rounded to whole numbers


@dataclass(frozen=True)
class SiteCounts:
    """A site's count cells after the projection: estimates, their covariance, what is known."""

    cells: tuple[Cell, ...]
    estimate: np.ndarray  # consistent and non-negative
    covariance: np.ndarray  # of the linear projection
    unknown: np.ndarray  # orthonormal basis of the directions the release does not determine
    released: frozenset[Cell]
    total: tuple[Cell, ...]  # the cells whose sum is the site's total
    _spreads: dict[tuple[int, ...], float] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @cached_property
    def _position(self) -> dict[Cell, int]:
        return {cell: i for i, cell in enumerate(self.cells)}

    def index(self, cells: Iterable[Cell]) -> np.ndarray:
        return np.array([self._position[c] for c in cells], dtype=int)

    def value(self, cells: Iterable[Cell]) -> float:
        return float(self.estimate[self.index(cells)].sum())

    def covariance_of(self, a: Iterable[Cell], b: Iterable[Cell]) -> float:
        return float(self.covariance[np.ix_(self.index(a), self.index(b))].sum())

    def identifies(self, cells: Iterable[Cell]) -> bool:
        """Whether the release determines the sum of ``cells`` (else only bounds it)."""
        if not self.unknown.shape[1]:
            return True
        direction = self.unknown[self.index(cells)].sum(axis=0)
        return bool(np.abs(direction).max() < 1e-8)

    @property
    def counted(self) -> bool:
        """Whether the site's own total is known: else no count of the site can be estimated."""
        return self.identifies(self.total)

    def unidentified_variance(self, cells: Iterable[Cell]) -> float:
        """The variance of a uniform over the values the sum of ``cells`` can take among the
        non-negative consistent counts that agree with everything the release determines."""
        index = self.index(cells)
        key = tuple(sorted(index.tolist()))
        if key not in self._spreads:
            self._spreads[key] = 0.0 if self.identifies(cells) else self._spread(index)
        return self._spreads[key]

    def _spread(self, index: np.ndarray) -> float:
        direction = self.unknown[index].sum(axis=0)
        # moves phi along the undetermined directions that keep every count non-negative;
        # only the cells those directions touch can bind
        touched = np.abs(self.unknown).max(axis=1) > 1e-12
        bounds = []
        for sign in (1.0, -1.0):
            result = linprog(
                sign * direction,
                A_ub=-self.unknown[touched],
                b_ub=self.estimate[touched],
                bounds=(None, None),
                method="highs",
            )
            if result.status != 0:  # unbounded: nothing caps the sum
                return float("inf")
            bounds.append(sign * result.fun)
        low, high = bounds
        return (high - low) ** 2 / 12


def constraints(query: Query) -> tuple[list[Cell], np.ndarray]:
    """The query's count cells and the matrix ``C`` with ``C @ true_counts == 0``."""
    cells = [cell for cell in query.cells() if cell[3] == COUNT]
    position = {cell: i for i, cell in enumerate(cells)}
    rows = []
    for stratum in query.strata:
        total = position[(stratum, TOTAL, TOTAL, COUNT)]
        for variable in query.variables:
            row = np.zeros(len(cells))
            for level, statistic in variable.cells():
                if statistic == COUNT:
                    row[position[(stratum, variable.name, level, COUNT)]] = 1.0
            row[total] = -1.0
            rows.append(row)
    if query.overall:
        row = np.zeros(len(cells))
        for stratum in query.strata:
            row[position[(stratum, TOTAL, TOTAL, COUNT)]] = 1.0
        row[position[OVERALL_CELL]] = -1.0
        rows.append(row)
    return cells, np.array(rows).reshape(len(rows), len(cells))


def consistent_counts(
    query: Query, released: Mapping[Cell, float], noise_multiplier: float
) -> SiteCounts:
    """Project one site's released counts onto the query's constraints (module docstring)."""
    cells, matrix = constraints(query)
    sds = query.noise_sd(noise_multiplier)
    observed = np.array([cell in released for cell in cells], dtype=bool)
    values = np.array([released[c] for c in cells if c in released], dtype=float)
    weights = np.array(
        [1 / (sds[c[1:]] ** 2 + _ROUNDING_VARIANCE) for c in cells if c in released], dtype=float
    )
    estimate, covariance, unknown = _project(matrix, observed, values, weights)
    if estimate.min() < -1e-9:
        estimate = _non_negative(matrix, observed, values, weights, estimate)
    total = [OVERALL_CELL] if query.overall else [(s, TOTAL, TOTAL, COUNT) for s in query.strata]
    return SiteCounts(
        cells=tuple(cells),
        estimate=np.maximum(estimate, 0.0),
        covariance=covariance,
        unknown=unknown,
        released=frozenset(c for c in cells if c in released),
        total=tuple(total),
    )


def _non_negative(
    matrix: np.ndarray,
    observed: np.ndarray,
    values: np.ndarray,
    weights: np.ndarray,
    estimate: np.ndarray,
) -> np.ndarray:
    """The least-squares counts under ``matrix`` that are also non-negative: a primal
    active-set method (Nocedal and Wright, Algorithm 16.3) over the cells held at zero, started
    from fixing at zero every cell the plain projection makes negative."""
    n = len(estimate)
    held = np.zeros(n, dtype=bool)
    x = estimate
    while (below := (x < -1e-9) & ~held).any():  # a feasible start
        held |= below
        x = _project(_pinned(matrix, held), observed, values, weights)[0]
    x = np.maximum(x, 0.0)
    full_weights = np.zeros(n)
    full_weights[observed] = weights
    full_values = np.zeros(n)
    full_values[observed] = values
    for _ in range(10 * n):
        target = _project(_pinned(matrix, held), observed, values, weights)[0]
        step = target - x
        falling = (step < -1e-12) & ~held
        if falling.any() and (target[falling] < 0).any():  # blocked: go as far as allowed
            ratios = np.full(n, np.inf)
            ratios[falling] = x[falling] / -step[falling]
            blocking = int(np.argmin(ratios))
            x = np.maximum(x + min(ratios[blocking], 1.0) * step, 0.0)
            held[blocking] = True
            continue
        x = np.maximum(target, 0.0)
        # multipliers of the held cells: gradient = C^T lambda + sum over held of mu_i e_i
        gradient = full_weights * (x - full_values)
        system = np.hstack([matrix.T, np.eye(n)[:, held]])
        multipliers = np.linalg.lstsq(system, gradient, rcond=None)[0][matrix.shape[0] :]
        if not held.any() or multipliers.min() >= -1e-9 * max(1.0, np.abs(gradient).max()):
            return x
        held[np.flatnonzero(held)[int(np.argmin(multipliers))]] = False  # it would rather rise
    return x


def _pinned(matrix: np.ndarray, held: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, np.eye(matrix.shape[1])[held]])


def _project(
    matrix: np.ndarray, observed: np.ndarray, values: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares over the counts that satisfy ``matrix``: x = N theta, N an orthonormal
    basis of its null space; the estimate, its covariance, and the undetermined directions."""
    n = matrix.shape[1]
    if matrix.shape[0]:
        _, singular, vt = np.linalg.svd(matrix)
        rank = int((singular > 1e-10 * max(singular.max(), 1.0)).sum())
        basis = vt[rank:].T
    else:
        basis = np.eye(n)
    seen = basis[observed]
    information = seen.T @ (weights[:, None] * seen)
    eigenvalues, vectors = np.linalg.eigh(information)
    known = eigenvalues > 1e-10 * max(eigenvalues.max(initial=0.0), 1e-300)
    inverse = (vectors[:, known] / eigenvalues[known]) @ vectors[:, known].T
    theta = inverse @ (seen.T @ (weights * values))
    return basis @ theta, basis @ inverse @ basis.T, basis @ vectors[:, ~known]
