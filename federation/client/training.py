"""Local training at a site: DP-SGD with noise planned for the whole run.

The plan fixes the sampling rate and the noise multiplier once, at the site's first round, for
every noisy step the site will run in the run (rounds x local epochs x steps per epoch), after
any earlier releases (the standardization sums). The site's ledger records each round's
release before it runs, so the epsilon reported after round r is the true epsilon of everything
released so far and the last round lands at (not above) the target.

A step costs about what a non-private one does: the per-record clipping is in closed form
(``clipping``), the noise is Opacus's secure-mode noise drawn for the round's steps at once
(``noisy_sgd``), and the round's Poisson batches are drawn at once too.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from federation.client.clipping import check_supported, clipped_gradient_sum
from federation.client.hazard import hazard_gradient_sum, mean_hazard_loss
from federation.client.noisy_sgd import NoisySGD
from models.survival import DiscreteTimeHazard
from privacy.accounting import GaussianRelease
from privacy.planner import SitePlan, plan_site

# Most Poisson draws (one per record and step) held at once: 16 MB of float32.
MAX_SAMPLING_DRAWS = 1 << 22


@dataclass(frozen=True)
class DPPlan:
    """The noise a site adds to every DP-SGD step of a run, and at what sampling rate."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_steps: int
    # The accountant's epsilon after each planned round, prior releases included: worked out
    # once, at planning, so a round's reply does not wait on the accountant (a PRV call takes
    # a few tenths of a second, seconds on a busy node).
    epsilon_by_round: tuple[float, ...] = ()

    def epsilon_after(self, steps_done: int) -> float | None:
        """The planned epsilon once ``steps_done`` DP-SGD steps have run; None off the plan."""
        rounds, rest = divmod(steps_done, self.steps_per_round)
        if rest or not 1 <= rounds <= len(self.epsilon_by_round):
            return None
        return self.epsilon_by_round[rounds - 1]


@dataclass(frozen=True)
class LocalSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    max_grad_norm: float
    proximal_mu: float = 0.0


def batches_per_epoch(n_records: int, batch_size: int) -> int:
    return math.ceil(n_records / batch_size)


def plan_dp(
    n_records: int,
    batch_size: int,
    epochs: int,
    rounds: int,
    target_epsilon: float,
    delta: float,
    accountant: str,
    prior: list[GaussianRelease],
) -> DPPlan:
    """Sampling rate and noise for all ``rounds`` of this site's training.

    The sampling rate is what Opacus's Poisson loader would use (one over the number of
    batches), and an epoch is that many steps, so the plan and the accountant count the same
    steps (``privacy.planner.plan_site``, which the study planner uses too).
    """
    site = plan_site(
        n_records, batch_size, epochs, rounds, target_epsilon, delta, accountant, prior
    )
    return dp_plan_of(site)


def dp_plan_of(site: SitePlan) -> DPPlan:
    """The node's plan from a site's entry in the study planner's ``StudyPlan``."""
    return DPPlan(
        site.noise_multiplier,
        site.sample_rate,
        site.steps_per_round,
        site.steps,
        site.epsilon_by_round,
    )


def train_dp(
    model: nn.Module, x: np.ndarray, y: np.ndarray, settings: LocalSettings, plan: DPPlan
) -> None:
    """Train ``model`` in place with one round of ``plan``'s DP-SGD steps. The site's ledger,
    not an accountant object here, records the round: it admitted it before this runs."""
    if abs(1.0 / batches_per_epoch(len(y), settings.batch_size) - plan.sample_rate) > 1e-12:
        raise RuntimeError("the site's record count no longer matches its privacy plan")
    survival = isinstance(model, DiscreteTimeHazard)  # y: rows of (time, event)
    check_supported(model.score if survival else model)
    clipped_sum = hazard_gradient_sum if survival else clipped_gradient_sum
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    rng = noise_generator()
    optimizer = dp_optimizer(model, settings, plan, len(y), generator=rng)
    anchor = [p.detach().clone() for p in model.parameters()]
    model.train()
    for batch in poisson_batches(len(y), plan.sample_rate, plan.steps_per_round, rng):
        # An empty batch is a step like any other: a zero sum plus the same noise.
        optimizer.zero_grad()
        clipped_sum(
            model,
            features.index_select(0, batch),
            labels.index_select(0, batch),
            settings.max_grad_norm,
        )
        optimizer.step()
        _proximal_step(model, anchor, settings)


def train_plain(model: nn.Module, x: np.ndarray, y: np.ndarray, settings: LocalSettings) -> None:
    """Non-private local training (``[privacy] enabled = false``): shuffled epochs of
    ``batch_size`` records, the last batch shorter, in a seeded order."""
    generator = torch.Generator().manual_seed(0)
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()

    def loss(batch: torch.Tensor) -> torch.Tensor:
        if isinstance(model, DiscreteTimeHazard):  # y: rows of (time, event)
            return mean_hazard_loss(model, features[batch], labels[batch])
        return loss_fn(model(features[batch]).squeeze(-1), labels[batch])

    anchor = [p.detach().clone() for p in model.parameters()]
    model.train()
    for _ in range(settings.epochs):
        for batch in torch.randperm(len(y), generator=generator).split(settings.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss(batch).backward()
            optimizer.step()
            _proximal_step(model, anchor, settings)


def noise_generator() -> torch.Generator:
    """A generator for one round's sampling and noise, seeded from the OS's CSPRNG.

    Never torch's global generator: a deployed node forks a child per task from one parent, so
    every child would start from the same global state and draw the same batches and noise
    round after round (the noise of two rounds would cancel in their difference)."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def poisson_batches(
    n_records: int, sample_rate: float, steps: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index tensors of ``steps`` batches, each record in each independently with probability
    ``sample_rate``: Opacus's ``UniformWithReplacementSampler``, draw for draw, but many steps'
    draws in one call (``MAX_SAMPLING_DRAWS`` at most) and without its round trip through
    Python lists."""
    steps_at_once = max(1, MAX_SAMPLING_DRAWS // max(1, n_records))
    for first in range(0, steps, steps_at_once):
        taken = torch.rand(min(steps_at_once, steps - first), n_records, generator=generator)
        taken = taken < sample_rate
        yield from taken.nonzero()[:, 1].split(taken.sum(1).tolist())


def dp_optimizer(
    model: nn.Module,
    settings: LocalSettings,
    plan: DPPlan,
    n_records: int,
    generator: torch.Generator | None = None,
) -> NoisySGD:
    """SGD with DP noise as ``make_private`` sets it up: ``expected_batch_size`` is
    ``int(n_records * sample_rate)``; the round's noise drawn ahead (``noisy_sgd``) from the
    round's own generator (``noise_generator``)."""
    return NoisySGD(
        model.parameters(),
        learning_rate=settings.learning_rate,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        expected_batch_size=int(n_records * plan.sample_rate),
        steps_ahead=plan.steps_per_round,
        generator=generator,
    )


def _proximal_step(model: nn.Module, anchor: list[torch.Tensor], settings: LocalSettings) -> None:
    """FedProx's pull towards the round's starting weights, applied after each step as a
    data-independent update (no privacy cost): inside the loss it would bypass the per-record
    gradients and be silently dropped."""
    if settings.proximal_mu > 0:
        with torch.no_grad():
            for param, start in zip(model.parameters(), anchor, strict=True):
                param -= settings.learning_rate * settings.proximal_mu * (param - start)
