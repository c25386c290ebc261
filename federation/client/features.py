"""Turn a checked ``SiteTable`` into the model's input matrix, scaled the same way at every site.

Numeric features are standardized with a federation-wide center and scale when the spec asks for
``scaling = "federated"`` (the default): scaling every site by its own statistics erases real
differences between sites and costs far more accuracy than DP does. Under DP only bounded columns
can be pooled (their sums have a known sensitivity): bounds declared in the spec, or estimated
privately before (``privacy.bounds``, passed here as ``bounds``); the others fall back to the
site's own statistics, and the model card says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from federation.client.data import SiteTable
from federation.wire.encoding import categorical_inputs
from federation.wire.spec import StudySpec, estimated_columns, federated_columns
from privacy.bounds import bin_counts

_MIN_SCALE = 1e-6
Bounds = tuple[float, float]


def clipped_numeric(
    table: SiteTable, spec: StudySpec, bounds: Mapping[str, Bounds] | None = None
) -> np.ndarray:
    """A table's numeric features clipped to their bounds (``clip_to_bounds``)."""
    return clip_to_bounds(table.numeric, spec, bounds)


def clip_to_bounds(
    numeric: np.ndarray, spec: StudySpec, bounds: Mapping[str, Bounds] | None = None
) -> np.ndarray:
    """Numeric features clipped to their bounds (NaN stays NaN): the declared ones, or
    ``bounds`` (declared and privately estimated, ``privacy.bounds``) when given."""
    bounds = spec.features.bounds if bounds is None else bounds
    values = np.array(numeric, dtype=float)
    for i, column in enumerate(spec.features.numeric):
        if column in bounds:
            low, high = bounds[column]
            values[:, i] = np.clip(values[:, i], low, high)
    return values


def scaling_sums(
    table: SiteTable, spec: StudySpec, bounds: Mapping[str, Bounds] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pooled column, over training rows: sum of u, sum of u^2 and count of present values.

    Under DP, u is the value clipped to its bounds and mapped to [-1/2, 1/2] (the bounds'
    midpoint to 0, their range to 1), so a record moves a column's count by at most 1, its sum
    by 1/2 and its sum of squares by 1/4 (``privacy.scaling.release_scaling_sums``). Centring on
    the midpoint makes the variance ``Q/N - (S/N)^2`` the difference of two small numbers
    rather than of two numbers near the mean's square. Without DP, u is the raw value and the
    sums are exact.
    """
    bounds = spec.features.bounds if bounds is None else bounds
    columns = federated_columns(spec, bounds)
    values = clipped_numeric(table, spec, bounds)[~table.is_test][:, columns]
    if spec.privacy.enabled:
        for j, i in enumerate(columns):
            values[:, j] = to_unit(values[:, j], bounds[spec.features.numeric[i]])
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    return filled.sum(axis=0), (filled**2).sum(axis=0), present.sum(axis=0).astype(float)


def bounds_counts(table: SiteTable, spec: StudySpec) -> np.ndarray:
    """Counts of the training values of each column whose bounds are estimated, per bin of the
    fixed grid (``privacy.bounds.bin_counts``; columns in ``estimated_columns`` order)."""
    index = [spec.features.numeric.index(c) for c in estimated_columns(spec)]
    return bin_counts(table.numeric[~table.is_test][:, index])


def to_unit(values: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Values (already within ``bounds``) on the centred unit scale [-1/2, 1/2]."""
    low, high = bounds
    return (np.asarray(values, dtype=float) - (low + high) / 2) / (high - low)


def site_scaling(
    table: SiteTable, spec: StudySpec, bounds: Mapping[str, Bounds] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Center and scale of every numeric column from this site's training rows."""
    train = clipped_numeric(table, spec, bounds)[~table.is_test]
    with warnings.catch_warnings():  # a column with no value here: NaN, replaced below
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nanmean(train, axis=0) if train.size else np.zeros(train.shape[1])
        scale = np.nanstd(train, axis=0) if train.size else np.ones(train.shape[1])
    center = np.nan_to_num(center, nan=0.0)
    scale = np.where(np.isfinite(scale) & (scale > _MIN_SCALE), scale, 1.0)
    return center, scale


def resolve_scaling(
    table: SiteTable,
    spec: StudySpec,
    pooled_center: list[float],
    pooled_scale: list[float],
    bounds: Mapping[str, Bounds] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The scaling this site uses: pooled for federated columns, its own for the rest
    (``bounds``: the declared and estimated bounds the pooled sums were taken with)."""
    center, scale = site_scaling(table, spec, bounds)
    columns = federated_columns(spec, bounds)
    if len(pooled_center) != len(columns) or len(pooled_scale) != len(columns):
        raise ValueError("the server's scaling does not match the study spec's numeric columns")
    center[columns] = pooled_center
    scale[columns] = pooled_scale
    return center, scale


def encode(
    table: SiteTable,
    spec: StudySpec,
    center: np.ndarray,
    scale: np.ndarray,
    test: bool,
    bounds: Mapping[str, Bounds] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and labels of the train (or test) rows (``encode_features``); a survival
    study's labels are rows of (time in days, event)."""
    rows = table.is_test if test else ~table.is_test
    x = encode_features(table.numeric[rows], table.categorical[rows], spec, center, scale, bounds)
    if table.time is not None:
        return x, np.column_stack([table.time[rows], table.label[rows]]).astype(np.float32)
    return x, table.label[rows]


def encode_features(
    numeric: np.ndarray,
    categorical: np.ndarray,
    spec: StudySpec,
    center: np.ndarray,
    scale: np.ndarray,
    bounds: Mapping[str, Bounds] | None = None,
) -> np.ndarray:
    """Model inputs of checked rows (raw numeric values, categorical level indices): numeric
    columns clipped to their bounds and standardized, missing values imputed at the
    federation's mean (0), then each categorical in centred reference coding
    (``categorical_inputs``)."""
    scaled = (clip_to_bounds(numeric, spec, bounds) - center) / scale
    blocks = [np.nan_to_num(scaled, nan=0.0)]
    for j, levels in enumerate(spec.features.categorical.values()):
        blocks.append(categorical_inputs(categorical[:, j], len(levels)))
    return np.hstack(blocks).astype(np.float32)
