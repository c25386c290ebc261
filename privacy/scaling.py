"""The DP release of a site's standardization sums, and the noise it puts on each of them.

A site sends, per pooled numeric column, the count of present values, the sum of u and the sum
of u^2, where u is the value clipped to its bounds and mapped to [-1/2, 1/2]
(``federation.client.features.scaling_sums``). They leave as one Gaussian release of unit L2
sensitivity (OpenDP noise), with most of the budget on the sums and the squares, which the
center and the scale depend on far more than on the count. The server needs the noise on each
sum to tell a plausible pooled estimate from noise (``federation.server.standardization``).
"""

from __future__ import annotations

import numpy as np

from privacy.noise import gaussian_release

# Shares of the release's unit L2 sensitivity, per column: sum, sum of squares, count. The
# squares get most: the scale rests on them and their noise is the largest on the unit scale,
# while the count is near the public training-record count (measured on Fed-Heart-Disease at
# epsilon 1: pooled AUROC 0.804 with 0.4/0.4/0.2, 0.838 with these; ``benchmarks/heart.py``).
SUM_SHARE, SQUARES_SHARE, COUNT_SHARE = 0.3, 0.6, 0.1


def scaling_weights(n_columns: int) -> np.ndarray:
    """Per entry of ``(sums, squares, counts)`` concatenated, the factor that gives the vector
    unit L2 sensitivity (see ``release_scaling_sums``)."""
    per_column = np.array(
        [2 * np.sqrt(SUM_SHARE), 4 * np.sqrt(SQUARES_SHARE), np.sqrt(COUNT_SHARE)]
    ) / np.sqrt(max(n_columns, 1))
    return np.repeat(per_column, n_columns)


def scaling_noise_sd(n_columns: int, noise_multiplier: float) -> tuple[float, float, float]:
    """Standard deviation of the noise on one site's (sum, sum of squares, count) of a column."""
    weights = scaling_weights(n_columns)[:: max(n_columns, 1)]
    sd_sum, sd_squares, sd_count = (noise_multiplier / w for w in weights)
    return float(sd_sum), float(sd_squares), float(sd_count)


def release_scaling_sums(
    sums: tuple[np.ndarray, np.ndarray, np.ndarray], noise_multiplier: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sums, squares, counts)`` plus noise: one Gaussian mechanism (OpenDP) of unit L2
    sensitivity, composed by the accountants as ``GaussianRelease(noise_multiplier, 1.0, 1)``.

    Sensitivity: adding or removing one record changes, for each of the J pooled columns where
    its value is present, the count by 1, the sum by u in [-1/2, 1/2] and the sum of squares by
    u^2 in [0, 1/4], and nothing where it is missing. With the weights ``w_s = 2 sqrt(a_s / J)``,
    ``w_q = 4 sqrt(a_q / J)``, ``w_c = sqrt(a_c / J)`` (the shares, a_s + a_q + a_c = 1), the
    weighted change of one column has squared norm at most
    ``w_s^2 / 4 + w_q^2 / 16 + w_c^2 = (a_s + a_q + a_c) / J = 1 / J``, so the whole weighted
    vector moves by at most 1 in L2. Noise of standard deviation ``noise_multiplier`` on the
    weighted vector is noise of ``noise_multiplier / w`` on each sum (``scaling_noise_sd``).
    """
    total, squares, counts = (np.asarray(part, dtype=float) for part in sums)
    weights = scaling_weights(len(total))
    vector = np.concatenate([total, squares, counts]) * weights
    noisy = gaussian_release(vector, 1.0, noise_multiplier) / weights
    noisy_sums, noisy_squares, noisy_counts = np.split(noisy, 3)
    return noisy_sums, noisy_squares, noisy_counts
