"""Gaussian noise on released numbers, sampled by OpenDP rather than by a floating-point RNG.

Naive floating-point Gaussian noise leaks through the low bits of its samples (Mironov 2012).
OpenDP's Gaussian mechanism samples the discrete Gaussian exactly on a fine lattice, so its
output is what the proof assumes. It satisfies the same zero-concentrated DP as a continuous
Gaussian of the same scale, rho = sensitivity^2 / (2 scale^2) (Canonne, Kamath & Steinke 2020),
hence the same Renyi-DP curve: the accountants compose it as a Gaussian release with noise
multiplier ``scale / sensitivity`` and sample rate 1.
"""

from __future__ import annotations

import math

import numpy as np
from opendp.domains import atom_domain, vector_domain
from opendp.measurements import make_gaussian
from opendp.metrics import l2_distance
from opendp.mod import enable_features

# The modules themselves, not opendp.prelude: the prelude imports scikit-learn and costs a
# ClientApp process most of a second at start-up.
enable_features("contrib")


def gaussian_release(values: np.ndarray, sensitivity: float, noise_multiplier: float) -> np.ndarray:
    """``values`` (a vector whose L2 sensitivity is ``sensitivity``) plus Gaussian noise of
    standard deviation ``noise_multiplier * sensitivity`` on every entry.

    Raises ValueError when OpenDP's privacy map disagrees with the release the accountants
    record (rho = 1 / (2 noise_multiplier^2)): then the accounting would not describe the noise.
    """
    vector = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(vector).all():
        raise ValueError("a released value is not finite")
    if not (sensitivity > 0 and noise_multiplier > 0):
        raise ValueError("sensitivity and noise multiplier must be positive")
    measurement = make_gaussian(
        vector_domain(atom_domain(T=float, nan=False), size=len(vector)),
        l2_distance(T=float),
        scale=noise_multiplier * sensitivity,
    )
    rho = measurement.map(float(sensitivity))
    if not math.isclose(rho, 1 / (2 * noise_multiplier**2), rel_tol=1e-6):
        raise ValueError(f"OpenDP's rho {rho} differs from the recorded release's")
    return np.asarray(measurement(vector.tolist()), dtype=float).reshape(np.shape(values))
