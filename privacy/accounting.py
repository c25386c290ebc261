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
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    discretize,
)
from scipy import special

ACCOUNTANTS = ("prv", "rdp")
_MAX_NOISE = 1e4
_ORDERS = tuple(RDPAccountant.DEFAULT_ALPHAS)  # Opacus's RDP orders, for both accountants
_PRV_EPS_ERROR = 0.01  # Opacus's PRV defaults: epsilon error, and delta error = delta / 1000
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


def epsilon_trajectory(
    prior: Sequence[GaussianRelease],
    per_round: GaussianRelease,
    rounds: int,
    delta: float,
    accountant: str,
) -> tuple[float, ...]:
    """The epsilon after each of ``rounds`` rounds of ``per_round``, composed after ``prior``:
    exactly ``compute_epsilon`` of ``[*prior, r x per_round]`` for r = 1 .. rounds, the value a
    site's ledger recomputes for what it recorded. (Reading every round on the last round's PRV
    domain would discretize once, but moves the early rounds' values by up to 1e-5: no longer
    the ledger's.) Cheap because the RDP vectors behind PRV's domains are shared
    (``_rdp_of_step``), and the values stay in ``compute_epsilon``'s cache for the ledger."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    s, q, t = per_round.as_tuple()
    return tuple(
        compute_epsilon([*prior, GaussianRelease(s, q, r * t)], delta, accountant)
        for r in range(1, rounds + 1)
    )


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


EPSILONS: dict[tuple[tuple[GaussianRelease, ...], float, str], float] = {}
"""``compute_epsilon``'s values in this process, by their (public) arguments: the noise
calibration's search asks again for points it has seen, the sites that share a simulation's
worker processes share plans (a sampling rate is one over a whole number of batches), and a
deployment's warm executor hands the entries its forked tasks add to the tasks after them."""
MAX_EPSILONS = 8192  # the oldest entry goes first beyond this


def _epsilon(releases: tuple[GaussianRelease, ...], delta: float, accountant: str) -> float:
    """``compute_epsilon``'s work, remembered in ``EPSILONS``. Only public quantities go in;
    the value is Opacus's, bit for bit (``tests/test_accounting.py`` compares)."""
    key = (releases, delta, accountant)
    if key not in EPSILONS:
        if len(EPSILONS) >= MAX_EPSILONS:
            del EPSILONS[next(iter(EPSILONS))]
        EPSILONS[key] = _composed_epsilon(releases, delta, accountant)
    return EPSILONS[key]


def _composed_epsilon(
    releases: tuple[GaussianRelease, ...], delta: float, accountant: str
) -> float:
    if accountant not in ACCOUNTANTS:
        raise ValueError(
            f"unknown accountant {accountant!r}; expected one of {', '.join(ACCOUNTANTS)}"
        )
    history = tuple(release.as_tuple() for release in releases)
    # PRV of an unsampled release takes log(1 - 1); PRV sizes its domain with an RDP bound that
    # warns when its best order is the largest one; at tiny noise its exponentials overflow.
    # None of it affects a finite (upper-bound) epsilon, and a NaN one is no guarantee at all.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if accountant == "rdp":
            epsilon = _rdp_epsilon(history, delta)
        else:
            epsilon = _prv_epsilon(history, delta)
    return math.inf if math.isnan(epsilon) else epsilon


@lru_cache(maxsize=1024)
def _rdp_of_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """The RDP of one subsampled Gaussian step at each of Opacus's orders: Opacus multiplies
    this by the steps, so one vector serves a release of any length (and PRV's domain sizing,
    which asks for it again at every call). Read-only: it is shared.

    The fractional orders (90 of the 151) are Opacus's series summed for all orders at once
    (``_log_a_fractional``); the integer orders and unsampled releases are Opacus's own."""
    orders = np.asarray(_ORDERS, dtype=float)
    if sample_rate == 1.0:
        rdp = rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=_ORDERS
        )
    else:
        fractional = orders != np.floor(orders)
        rdp = np.empty_like(orders)
        rdp[~fractional] = [
            rdp_analysis._compute_rdp(sample_rate, noise_multiplier, order)
            for order in orders[~fractional]
        ]
        alphas = orders[fractional]
        rdp[fractional] = _log_a_fractional(sample_rate, noise_multiplier, alphas) / (alphas - 1)
    rdp.flags.writeable = False
    return rdp


def _log_a_fractional(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """Opacus's ``_compute_log_a_for_frac_alpha`` (Mironov et al. 2019, section 3.3) at each
    order of ``alphas``: the same two series with the same terms, up to where Opacus's loop
    stops (both terms below e^-30), each summed at once instead of term by term (a thousand
    terms at the smallest orders and moderate noise)."""
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log_a = np.empty(alphas.shape)
    with np.errstate(all="ignore"):
        for k, alpha in enumerate(alphas):
            terms = 64
            while True:
                i = np.arange(terms, dtype=float)
                coef = special.binom(alpha, i)
                log_coef = np.log(np.abs(coef))
                j = alpha - i
                log_s0 = (
                    log_coef + i * math.log(q) + j * math.log(1 - q) + (i * i - i) / (2 * sigma**2)
                ) + (math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma)))
                log_s1 = (
                    log_coef + j * math.log(q) + i * math.log(1 - q) + (j * j - j) / (2 * sigma**2)
                ) + (math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma)))
                done = np.maximum(log_s0, log_s1) < -30
                if done.any():
                    last = int(np.argmax(done)) + 1  # Opacus adds the first small term too
                    break
                terms *= 4
            positive = coef[:last] > 0
            log_a[k] = np.logaddexp(
                _signed_log_sum(log_s0[:last], positive), _signed_log_sum(log_s1[:last], positive)
            )
    return log_a


def _log_erfc(x: np.ndarray) -> np.ndarray:
    return math.log(2) + special.log_ndtr(-x * 2**0.5)


def _signed_log_sum(log_terms: np.ndarray, positive: np.ndarray) -> float:
    """log(sum of +-e^t), the signs ``positive``; as Opacus, a negative sum is an error."""
    top = float(np.max(log_terms))
    if top == -math.inf:
        return -math.inf
    total = float(np.sum(np.where(positive, 1.0, -1.0) * np.exp(log_terms - top)))
    if total < 0:
        raise ValueError("The result of subtraction must be non-negative.")
    return top + math.log(total) if total > 0 else -math.inf


def _rdp_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """``RDPAccountant.get_epsilon`` of ``history``, the same arithmetic in the same order,
    with each step's RDP vector computed once."""
    rdp = sum([_rdp_of_step(noise, rate) * steps for noise, rate, steps in history])
    epsilon, _order = rdp_analysis.get_privacy_spent(orders=_ORDERS, rdp=rdp, delta=delta)
    return float(epsilon)


def _prv_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """``PRVAccountant.get_epsilon`` of ``history`` (its upper bound) at Opacus's default errors:
    Opacus's own PRVs, domain, discretization and composition; only the RDP bounds that size
    the domain (most of the time) come from ``_rdp_of_step``."""
    eps_error, delta_error = _PRV_EPS_ERROR, delta / 1000
    counts = [steps for _, _, steps in history]
    size = _prv_domain_size(history, eps_error, delta_error)
    mesh = eps_error / np.sqrt(sum(counts) * np.log(12 / delta_error) / 2)
    domain = Domain.create_aligned(-size, size, mesh)
    dprvs = [
        discretize(
            TruncatedPrivacyRandomVariable(
                PoissonSubsampledGaussianPRV(rate, noise), domain.t_min, domain.t_max
            ),
            domain,
        )
        for noise, rate, _ in history
    ]
    composed = compose_heterogeneous(dprvs=dprvs, num_self_compositions=counts)
    _, _, upper = composed.compute_epsilon(delta, delta_error, eps_error)
    return float(upper)


def _prv_domain_size(
    history: Sequence[tuple[float, float, int]], eps_error: float, delta_error: float
) -> float:
    """``opacus.accountants.analysis.prv.compute_safe_domain_size`` (Gopi et al., remark 5.6),
    line for line."""
    total = sum(steps for _, _, steps in history)
    size = _rdp_epsilon(history, delta_error / 4)
    for noise, rate, _ in history:
        size = max(size, _rdp_epsilon([(noise, rate, 1)], delta_error / (8 * total)))
    return max(size, eps_error) + 3


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
    Remembered per process, keyed by every argument: sites of one size share their plan.
    """
    return _calibrated(
        target_epsilon, delta, sample_rate, steps, accountant, tuple(prior), tolerance
    )


@lru_cache(maxsize=1024)
def _calibrated(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    prior: tuple[GaussianRelease, ...],
    tolerance: float,
) -> float:
    """``calibrate_noise``'s search (a bisection on the accountant's epsilon)."""
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
