"""Turn a checked ``SiteTable`` into the model's input matrix, scaled the same way at every site.

Numeric features are standardized with a federation-wide center and scale when the spec asks for
``scaling = "federated"`` (the default): scaling every site by its own statistics erases real
differences between sites and costs far more accuracy than DP does. Under DP only bounded columns
can be pooled (their sums have a known sensitivity); the others fall back to the site's own
statistics, and the model card says so.
"""

from __future__ import annotations

import numpy as np

from federation.client.data import SiteTable
from federation.spec import StudySpec, federated_columns

_MIN_SCALE = 1e-6


def clipped_numeric(table: SiteTable, spec: StudySpec) -> np.ndarray:
    """Numeric features clipped to their declared bounds (NaN stays NaN)."""
    values = table.numeric.copy()
    for i, column in enumerate(spec.features.numeric):
        if column in spec.features.bounds:
            low, high = spec.features.bounds[column]
            values[:, i] = np.clip(values[:, i], low, high)
    return values


def scaling_sums(table: SiteTable, spec: StudySpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pooled column, over training rows: sum of u, sum of u^2 and count of present values.

    Under DP, u is the value mapped from its bounds to [0, 1], so each record moves each of the
    three sums by at most 1 and the vector's L2 sensitivity is sqrt(3 * columns). Without DP, u
    is the raw value and the sums are exact.
    """
    columns = federated_columns(spec)
    values = clipped_numeric(table, spec)[~table.is_test][:, columns]
    if spec.privacy.enabled:
        for j, i in enumerate(columns):
            low, high = spec.features.bounds[spec.features.numeric[i]]
            values[:, j] = (values[:, j] - low) / (high - low)
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    return filled.sum(axis=0), (filled**2).sum(axis=0), present.sum(axis=0).astype(float)


def scaling_sensitivity(spec: StudySpec) -> float:
    """L2 sensitivity of the concatenated ``scaling_sums`` vector under add/remove of a record."""
    return float(np.sqrt(3 * len(federated_columns(spec))))


def site_scaling(table: SiteTable, spec: StudySpec) -> tuple[np.ndarray, np.ndarray]:
    """Center and scale of every numeric column from this site's training rows."""
    train = clipped_numeric(table, spec)[~table.is_test]
    with np.errstate(all="ignore"):
        center = np.nanmean(train, axis=0) if train.size else np.zeros(train.shape[1])
        scale = np.nanstd(train, axis=0) if train.size else np.ones(train.shape[1])
    center = np.nan_to_num(center, nan=0.0)
    scale = np.where(np.isfinite(scale) & (scale > _MIN_SCALE), scale, 1.0)
    return center, scale


def resolve_scaling(
    table: SiteTable, spec: StudySpec, pooled_center: list[float], pooled_scale: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The scaling this site uses: pooled for federated columns, its own for the rest."""
    center, scale = site_scaling(table, spec)
    columns = federated_columns(spec)
    if len(pooled_center) != len(columns) or len(pooled_scale) != len(columns):
        raise ValueError("the server's scaling does not match the study spec's numeric columns")
    center[columns] = pooled_center
    scale[columns] = pooled_scale
    return center, scale


def encode(
    table: SiteTable, spec: StudySpec, center: np.ndarray, scale: np.ndarray, test: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and labels of the train (or test) rows: standardized numeric columns with
    missing values imputed at the federation's mean (0), then one-hot categorical levels."""
    rows = table.is_test if test else ~table.is_test
    numeric = (clipped_numeric(table, spec)[rows] - center) / scale
    numeric = np.nan_to_num(numeric, nan=0.0)
    blocks = [numeric]
    for j, levels in enumerate(spec.features.categorical.values()):
        codes = table.categorical[rows, j]
        one_hot = np.zeros((len(codes), len(levels)))
        present = codes >= 0
        one_hot[np.flatnonzero(present), codes[present]] = 1.0
        blocks.append(one_hot)
    return np.hstack(blocks).astype(np.float32), table.label[rows]
