"""A descriptive analysis request and the query it means, shared by the aggregator and the sites.

The request travels in the run config (``analysis``, JSON text) and in every query message, so
the server and each site derive the very same cells from it and the study spec: variables with
their declared levels or bounds, strata by an optional group column, one noisy release per site
(``privacy.statistics``); for ``km``, a survival study's exit counts per stratum and public
interval (``privacy.kaplan_meier``). Like the spec, it is public: it says what is asked, never an
answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np

from federation.errors import SpecError
from federation.wire.spec import StudySpec
from privacy.accounting import ACCOUNTANTS, GaussianRelease, calibrate_noise
from privacy.kaplan_meier import KmQuery
from privacy.limits import EPSILON_RANGE
from privacy.statistics import MISSING, Query, Variable

KINDS = ("table1", "count", "mean", "histogram", "crosstab", "km")
KM = "km"
MAX_KM_INTERVALS = 100
OTHER = "(other)"  # a group value outside its declared levels, or missing
ALL = "(all)"  # the stratum of an unstratified query


@dataclass(frozen=True)
class AnalysisRequest:
    """What the central team asks every site: a kind, its columns, the privacy of the answer."""

    kind: str
    epsilon: float
    delta: float
    accountant: str = "prv"
    columns: tuple[str, ...] = ()  # mean: numeric columns; histogram: one; crosstab: two
    by: str | None = None  # stratify by this group or categorical column
    bins: tuple[float, ...] = ()  # histogram edges
    intervals: tuple[float, ...] = ()  # km: interval ends in days (default: the spec's)

    @property
    def strata_column(self) -> str | None:
        """The column whose levels are the strata: a crosstab's second column, else ``by``."""
        if self.kind == "crosstab" and len(self.columns) == 2:
            return self.columns[1]
        return self.by

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AnalysisRequest:
        raw = json.loads(text)
        raw["columns"], raw["bins"] = tuple(raw["columns"]), tuple(raw["bins"])
        raw["intervals"] = tuple(raw.get("intervals", ()))
        return cls(**raw)


def build_query(request: AnalysisRequest, spec: StudySpec) -> Query | KmQuery:
    """The cells ``request`` asks for under ``spec``; SpecError names what cannot be asked."""
    _check_request(request)
    if request.kind in ("table1", "count", KM) and request.columns:
        raise SpecError(f"{request.kind} takes no columns")
    if request.bins and request.kind != "histogram":
        raise SpecError("--bins applies to histogram only")
    if request.intervals and request.kind != KM:
        raise SpecError("--intervals applies to km only")
    if request.kind == KM:
        return _km_query(request, spec)
    if len(set(request.columns)) != len(request.columns):
        raise SpecError("a column is named twice; name each once")
    variables = _variables(request, spec)
    column = request.strata_column
    return Query(_strata(spec, column), variables, overall=column is not None)


def _variables(request: AnalysisRequest, spec: StudySpec) -> tuple[Variable, ...]:
    """The variables counted in every stratum, by the request's kind."""
    if request.kind == "crosstab":
        if len(request.columns) + (request.by is not None) != 2:
            raise SpecError(
                "crosstab needs two columns: ROW COLUMN (or ROW with --by COLUMN); one "
                "column's levels alone are in table1"
            )
        return (_levels_variable(spec, request.columns[0]),)
    if request.kind == "count":
        return ()
    if request.kind == "mean":
        if not request.columns:
            raise SpecError("mean needs at least one numeric column")
        return tuple(_numeric_variable(spec, c) for c in request.columns)
    if request.kind == "histogram":
        if len(request.columns) != 1:
            raise SpecError("histogram takes one numeric column")
        return (_histogram_variable(spec, request.columns[0], request.bins),)
    return tuple(_table1_variables(spec, exclude=request.by))


def planned_release(request: AnalysisRequest) -> GaussianRelease:
    """The query's one Gaussian release (sample rate 1), calibrated to the requested epsilon;
    the sites add this noise and the aggregator knows its size from the request alone."""
    noise = calibrate_noise(request.epsilon, request.delta, 1.0, 1, request.accountant)
    return GaussianRelease(noise, 1.0, 1)


def table1_columns(spec: StudySpec) -> tuple[list[str], list[str]]:
    """Table 1's level and numeric columns; numeric columns without bounds are left out (their
    sums have no sensitivity under DP)."""
    levels = [spec.study.label, *spec.features.categorical]
    levels += [g for g in spec.study.groups if g not in levels and g in spec.study.group_levels]
    numeric = [c for c in spec.features.numeric if c in spec.features.bounds]
    return levels, numeric


def bin_labels(edges: tuple[float, ...]) -> list[str]:
    """``[a, b)`` per bin, the last closed: values outside the edges are clipped into them."""
    labels = [f"[{a:g}, {b:g})" for a, b in pairwise(edges)]
    labels[-1] = labels[-1][:-1] + "]"
    return labels


def bin_of(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Each value's bin label (``(missing)`` for NaN)."""
    labels = np.array(bin_labels(edges), dtype=object)
    index = np.clip(
        np.searchsorted(np.asarray(edges), values, side="right") - 1, 0, len(labels) - 1
    )
    return np.where(np.isnan(values), MISSING, labels[index])


def level_names(spec: StudySpec, column: str) -> tuple[str, ...]:
    """The declared levels of a level column, in the order records are counted into them."""
    if column == spec.study.label:
        return ("0", "1")
    if column in spec.features.categorical:
        return (*spec.features.categorical[column], *_missing_level(spec, column))
    if column in spec.study.group_levels:
        return (*spec.study.group_levels[column], OTHER)
    if column in spec.study.groups:
        raise SpecError(
            f"group column {column!r} has no declared levels; add them to [study] group-levels "
            "(a DP table needs its cells fixed before any data is seen)"
        )
    raise SpecError(f"{column!r} is not the label, a categorical feature or a group column")


def _km_query(request: AnalysisRequest, spec: StudySpec) -> KmQuery:
    """Kaplan-Meier counts per level of ``by`` on the request's interval ends, or the spec's."""
    if spec.study.task != "survival":
        raise SpecError(
            f'km needs a survival study (task = "survival", with time and event columns); '
            f"this study's task is {spec.study.task!r}"
        )
    cuts = request.intervals or tuple(spec.study.intervals or ())
    if (
        not cuts
        or not all(math.isfinite(c) and c > 0 for c in cuts)
        or any(not b > a for a, b in pairwise(cuts))
    ):
        raise SpecError(
            "--intervals must be increasing, positive, finite interval ends in days, e.g. "
            "182,365,730 (the first interval starts at day 0)"
        )
    if len(cuts) > MAX_KM_INTERVALS:
        raise SpecError(
            f"--intervals: {len(cuts)} intervals, at most {MAX_KM_INTERVALS} (each adds noise "
            "to the number at risk before it)"
        )
    return KmQuery(_strata(spec, request.by), tuple(float(c) for c in cuts))


def _strata(spec: StudySpec, by: str | None) -> tuple[str, ...]:
    if by is None:
        return (ALL,)
    if by == spec.study.label:
        raise SpecError("stratify by a group or categorical column, not by the label")
    return level_names(spec, by)


def _levels_variable(spec: StudySpec, column: str) -> Variable:
    return Variable(column, levels=level_names(spec, column))


def _numeric_variable(spec: StudySpec, column: str) -> Variable:
    if column not in spec.features.numeric:
        raise SpecError(f"{column!r} is not a numeric feature of the study spec")
    if column not in spec.features.bounds:
        raise SpecError(
            f"numeric column {column!r} has no declared bounds; add them to [features] bounds "
            "(each record's contribution is clipped to them)"
        )
    return Variable(
        column,
        bounds=spec.features.bounds[column],
        may_be_missing=bool(_missing_level(spec, column)),
    )


def _histogram_variable(spec: StudySpec, column: str, edges: tuple[float, ...]) -> Variable:
    if column not in spec.features.numeric:
        raise SpecError(f"{column!r} is not a numeric feature of the study spec")
    if (
        len(edges) < 2
        or any(not b > a for a, b in pairwise(edges))
        or not all(math.isfinite(e) for e in edges)
    ):
        raise SpecError(
            "histogram bins must be at least two increasing, finite edges, e.g. 18,40,65,90"
        )
    return Variable(column, levels=(*bin_labels(edges), *_missing_level(spec, column)))


def _missing_level(spec: StudySpec, column: str) -> tuple[str, ...]:
    """``(missing)`` for a feature whose missing values are kept (imputed), else nothing."""
    return (MISSING,) if spec.features.missing.get(column) == "impute" else ()


def _table1_variables(spec: StudySpec, exclude: str | None) -> list[Variable]:
    levels, numeric = table1_columns(spec)
    variables = [_levels_variable(spec, c) for c in levels if c != exclude]
    return variables + [_numeric_variable(spec, c) for c in numeric]


def _check_request(request: AnalysisRequest) -> None:
    if request.kind not in KINDS:
        raise SpecError(f"unknown analysis {request.kind!r}; expected one of {', '.join(KINDS)}")
    if not (math.isfinite(request.epsilon) and request.epsilon > 0):
        raise SpecError("--target-epsilon must be a positive number")
    if request.epsilon > EPSILON_RANGE[1]:
        raise SpecError(
            f"--target-epsilon {request.epsilon:g} is above {EPSILON_RANGE[1]:g}, where a DP "
            "guarantee means nothing"
        )
    if not 0 < request.delta < 1:
        raise SpecError("--delta must be between 0 and 1")
    if request.accountant not in ACCOUNTANTS:
        raise SpecError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}")
