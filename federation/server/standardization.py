"""Pool the sites' standardization sums into one center and scale per numeric column.

Under DP the sums are of values mapped from their declared bounds to [0, 1] and carry Gaussian
noise, so a pooled estimate can come out implausible (a variance at or below zero, a mean
outside the bounds); such a column falls back to the bounds' midpoint and the spread of a
uniform variable on them, which is still identical at every site.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from federation.spec import StudySpec

_MIN_COUNT = 10.0
_MIN_RELATIVE_SD = 0.01


def pooled_scaling(
    spec: StudySpec,
    columns: Sequence[str],
    sums: Sequence[Sequence[float]],
    squares: Sequence[Sequence[float]],
    counts: Sequence[Sequence[float]],
) -> tuple[list[float], list[float]]:
    """Center and scale (in the columns' own units) from per-site sums, one list per site."""
    centers, scales = [], []
    for j, column in enumerate(columns):
        total = sum(site[j] for site in sums)
        total_sq = sum(site[j] for site in squares)
        count = sum(site[j] for site in counts)
        if spec.privacy.enabled:
            low, high = spec.features.bounds[column]
            center, scale = _from_unit_sums(total, total_sq, count)
            centers.append(low + center * (high - low))
            scales.append(scale * (high - low))
        else:
            mean = total / count if count else 0.0
            variance = total_sq / count - mean**2 if count else 0.0
            centers.append(mean)
            scales.append(math.sqrt(variance) if variance > 1e-12 else 1.0)
    return centers, scales


def _from_unit_sums(total: float, total_sq: float, count: float) -> tuple[float, float]:
    """Mean and SD on the [0, 1] scale, or the uniform fallback when noise made them implausible."""
    fallback = (0.5, math.sqrt(1 / 12))
    if count < _MIN_COUNT:
        return fallback
    mean = total / count
    variance = total_sq / count - mean**2
    if not 0.0 <= mean <= 1.0 or variance < _MIN_RELATIVE_SD**2:
        return fallback
    return mean, math.sqrt(min(variance, 0.25))
