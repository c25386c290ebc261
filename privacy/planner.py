"""Plan a study's DP training from its budget and each site's public record count.

Placeholder: filled in below.
"""

from __future__ import annotations

import math


def zcdp_budget(target_epsilon: float, delta: float) -> float:
    """The zCDP rho whose (epsilon, delta) conversion is ``target_epsilon`` at ``delta``
    (epsilon = rho + 2 sqrt(rho ln(1/delta)), Bun & Steinke 2016): the scale on which Gaussian
    releases add up, used to split a budget between releases. The accountant still composes
    the releases themselves exactly."""
    log_inverse = math.log(1 / delta)
    return (math.sqrt(log_inverse + target_epsilon) - math.sqrt(log_inverse)) ** 2


def share_noise(share: float, target_epsilon: float, delta: float) -> float:
    """Noise multiplier of a one-shot Gaussian release (sample rate 1) that takes ``share`` of
    the study's zCDP budget: rho = 1 / (2 z^2).

    A share of rho, not of epsilon: epsilon composes sub-additively, so a release calibrated
    to a tenth of epsilon on its own costs DP-SGD almost nothing and is needlessly noisy (at
    epsilon 3, noise 11.6 raises DP-SGD's noise by 0.5%; a tenth of rho, noise 5.4, by 2%)."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    return 1 / math.sqrt(2 * share * zcdp_budget(target_epsilon, delta))
