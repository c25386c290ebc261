"""The site's answer to a descriptive analysis: exact cells, then one OpenDP Gaussian release.

The noise is calibrated at the site for the requested epsilon and delta (one Gaussian release of
sample rate 1, ``privacy.statistics``), recorded in the site's ledger before anything is
computed, and small counts are withheld after the noise. The analysis population is the study's:
consented records after the spec's missing-value rules, training and test rows together.
"""

from __future__ import annotations

import numpy as np

from federation.client.data import SiteTable
from federation.wire.queries import ALL, AnalysisRequest, bin_of, level_names
from federation.wire.spec import StudySpec
from privacy import kaplan_meier
from privacy.accounting import GaussianRelease, compute_epsilon
from privacy.kaplan_meier import KmQuery
from privacy.statistics import Cell, Query, exact_cells, release


def answer(
    request: AnalysisRequest,
    query: Query | KmQuery,
    table: SiteTable,
    spec: StudySpec,
    noise: GaussianRelease,
    min_cell_count: int,
) -> tuple[dict[Cell, float], float]:
    """The released cells (withheld ones absent) and the epsilon the release spent. A
    Kaplan-Meier query's cells leave noisy and unrounded, none withheld: the aggregator applies
    the dissemination rule to the counts it derives (``privacy.kaplan_meier``)."""
    exact = exact_answer(request, query, table, spec)
    if isinstance(query, KmQuery):
        cells = kaplan_meier.release(query, exact, noise.noise_multiplier)
    else:
        cells = release(query, exact, noise.noise_multiplier, min_cell_count)
    return cells, compute_epsilon([noise], request.delta, request.accountant)


def exact_answer(
    request: AnalysisRequest, query: Query | KmQuery, table: SiteTable, spec: StudySpec
) -> dict[Cell, float]:
    """The query's exact cells over the site's records: what the noise then protects."""
    strata = _strata_of(table, spec, request.strata_column)
    if isinstance(query, KmQuery):  # a survival study's table has its time; its label is its event
        return kaplan_meier.exact_counts(query, strata, table.time, table.label)
    return exact_cells(query, strata, _columns(table, spec, query, request))


def _strata_of(table: SiteTable, spec: StudySpec, by: str | None) -> np.ndarray:
    n = len(table.label)
    return np.full(n, ALL, dtype=object) if by is None else _level_column(table, spec, by)


def _columns(
    table: SiteTable, spec: StudySpec, query: Query, request: AnalysisRequest
) -> dict[str, np.ndarray]:
    columns = {}
    for variable in query.variables:
        name = variable.name
        if request.kind == "histogram":
            columns[name] = bin_of(_numeric(table, spec, name), request.bins)
        elif variable.numeric:
            columns[name] = _numeric(table, spec, name)
        else:
            columns[name] = _level_column(table, spec, name)
    return columns


def _numeric(table: SiteTable, spec: StudySpec, column: str) -> np.ndarray:
    return table.numeric[:, spec.features.numeric.index(column)]


def _level_column(table: SiteTable, spec: StudySpec, column: str) -> np.ndarray:
    """Each record's level name in ``column``: the label, a categorical feature (``(missing)``
    where imputed) or a group column (``(other)`` outside its declared levels)."""
    if column == spec.study.label:
        return table.label.astype(int).astype(str).astype(object)
    if column in spec.features.categorical:
        # level_names ends with (missing) where values may be missing: index -1 picks it
        levels = np.array(level_names(spec, column), dtype=object)
        index = table.categorical[:, list(spec.features.categorical).index(column)]
        return levels[index]
    return table.groups[column]  # already a declared level or (other): client.data
