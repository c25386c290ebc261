"""Record-level privacy accounting for everything a site releases in a run.

A site's releases are Gaussian mechanisms: DP-SGD steps (Poisson-subsampled, rate ``q``) and
noisy sums for standardization (rate 1). Their history is a plain list of
``(noise_multiplier, sample_rate, steps)`` triples, the same shape Opacus's accountants keep, so
it round-trips through JSON and anyone can recompute the epsilon with another accountant.
Opacus's PRV and RDP accountants do the composition; GDP is not offered because it can
under-estimate epsilon.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from opacus.accountants import create_accountant
from opacus.accountants.accountant import IAccountant

ACCOUNTANTS = ("prv", "rdp")
_MAX_NOISE = 1e4
MAX_NOISE_MULTIPLIER = 1e6


@dataclass(frozen=True)
class GaussianRelease:
    """``steps`` compositions of a Gaussian mechanism, Poisson-subsampled at ``sample_rate``.

    ``noise_multiplier`` is the noise standard deviation divided by the L2 sensitivity.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise multiplier must be positive, got {self.noise_multiplier}")
        if self.noise_multiplier > MAX_NOISE_MULTIPLIER:  # the accountants overflow near 1e154
            raise ValueError(
                f"noise multiplier must be at most {MAX_NOISE_MULTIPLIER:g}, got "
                f"{self.noise_multiplier:g} (the planner never needs more than {_MAX_NOISE:g})"
            )
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")

    def as_tuple(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


def make_accountant(name: str, releases: Iterable[GaussianRelease] = ()) -> IAccountant:
    """An Opacus accountant of kind ``name`` that has already composed ``releases``."""
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; expected one of {', '.join(ACCOUNTANTS)}")
    accountant = create_accountant(mechanism=name)
    accountant.history = [release.as_tuple() for release in releases]
    return accountant


def releases_of(accountant: IAccountant) -> list[GaussianRelease]:
    """The releases an Opacus accountant has composed, in order."""
    return [GaussianRelease(float(s), float(q), int(t)) for s, q, t in accountant.history]


def compute_epsilon(releases: Sequence[GaussianRelease], delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` of all ``releases`` composed; 0 when nothing was released.

    PRV returns its upper bound (a guarantee, not an estimate); RDP converts with the
    tighter conversion of Balle et al. (2020), as Opacus does.
    """
    if not releases:
        return 0.0
    return _epsilon(merged(releases), delta, accountant)


def merged(releases: Iterable[GaussianRelease]) -> tuple[GaussianRelease, ...]:
    """The same composition with one entry per mechanism, in a fixed order: T1 then T2 steps of
    one subsampled Gaussian are T1 + T2 steps of it, and composition is commutative. A ledger
    holds an entry per round of every run, and PRV's cost grows with entries (a tenth of a
    second each), not with steps."""
    steps: dict[tuple[float, float], int] = {}
    for release in releases:
        key = (release.noise_multiplier, release.sample_rate)
        steps[key] = steps.get(key, 0) + release.steps
    return tuple(GaussianRelease(s, q, t) for (s, q), t in sorted(steps.items()))


@lru_cache(maxsize=4096)
def _epsilon(releases: tuple[GaussianRelease, ...], delta: float, accountant: str) -> float:
    """``compute_epsilon``'s work, remembered per process: PRV takes a tenth of a second or more,
    the noise calibration's search asks again for points it has seen, and the sites that share
    a simulation's worker processes share plans (a sampling rate is one over a whole number of
    batches). Only public quantities go in; the value is the accountant's, bit for bit."""
    # PRV of an unsampled release takes log(1 - 1); PRV sizes its domain with an RDP bound that
    # warns when its best order is the largest one; at tiny noise its exponentials overflow.
    # None of it affects a finite (upper-bound) epsilon, and a NaN one is no guarantee at all.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        epsilon = float(make_accountant(accountant, releases).get_epsilon(delta=delta))
    return math.inf if math.isnan(epsilon) else epsilon


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    prior: Sequence[GaussianRelease] = (),
    tolerance: float = 0.005,
) -> float:
    """The smallest noise multiplier (to ``tolerance`` in epsilon) whose ``steps`` releases at
    ``sample_rate``, composed after ``prior``, stay within ``target_epsilon``.

    The whole run's steps must be passed at once: calibrating per round and reporting the
    last round's epsilon is how benchmarks end up under-counting their privacy loss.
    """
    if compute_epsilon(prior, delta, accountant) >= target_epsilon:
        raise ValueError("earlier releases already spend the whole target epsilon")

    def spend(noise: float) -> float:
        return compute_epsilon(
            [*prior, GaussianRelease(noise, sample_rate, steps)], delta, accountant
        )

    low, high = _bracket(target_epsilon, delta, sample_rate, steps, accountant, prior)
    while spend(high) > target_epsilon:
        low, high = high, high * 2
        if high > _MAX_NOISE:
            raise ValueError(f"target epsilon {target_epsilon} is unreachable for this plan")
    eps_high = spend(high)
    while target_epsilon - eps_high > tolerance * target_epsilon and high - low > 1e-4:
        middle = (low + high) / 2
        eps_middle = spend(middle)
        if eps_middle <= target_epsilon:
            high, eps_high = middle, eps_middle
        else:
            low = middle
    return high


def _bracket(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    prior: Sequence[GaussianRelease],
) -> tuple[float, float]:
    """Where to search for PRV's noise: below RDP's (a looser bound, so its noise suffices) and
    not under half of it. PRV costs seconds per call at small noise and many steps (0.3 at
    1e5 steps: 33 s), so the search must never go there; RDP's answer costs milliseconds.
    Without an RDP answer (its orders cannot reach some small epsilons): from 1."""
    if accountant != "prv":
        return 0.0, 1.0
    try:
        rdp = calibrate_noise(target_epsilon, delta, sample_rate, steps, "rdp", prior, 0.02)
    except ValueError:
        return 0.0, 1.0
    return rdp / 2, rdp


def dumps_releases(releases: Sequence[GaussianRelease]) -> str:
    """JSON text of a release history (what a site keeps between rounds)."""
    return json.dumps([asdict(release) for release in releases])


def loads_releases(text: str) -> list[GaussianRelease]:
    """Inverse of ``dumps_releases``; exact."""
    return [GaussianRelease(**item) for item in json.loads(text)]
