"""Local training at a site: Opacus DP-SGD with noise planned for the whole run.

The plan fixes the sampling rate and the noise multiplier once, at the site's first round, for
every noisy step the site will run in the run (rounds x local epochs x steps per epoch), after
any earlier releases (the standardization sums). Each round continues the same accountant, so
the epsilon reported after round r is the true epsilon of everything released so far and the
last round lands at (not above) the target.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privacy.accounting import GaussianRelease, calibrate_noise, make_accountant, releases_of


@dataclass(frozen=True)
class DPPlan:
    """The noise a site adds to every DP-SGD step of a run, and at what sampling rate."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_steps: int


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

    The sampling rate is what Opacus's Poisson loader uses (one over the number of batches), and
    an epoch is that many steps, so the plan and the accountant count the same steps.
    """
    per_epoch = batches_per_epoch(n_records, batch_size)
    sample_rate = 1.0 / per_epoch
    steps_per_round = epochs * int(1 / sample_rate)
    steps = rounds * steps_per_round
    noise = calibrate_noise(target_epsilon, delta, sample_rate, steps, accountant, prior)
    return DPPlan(noise, sample_rate, steps_per_round, steps)


def train_dp(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: LocalSettings,
    plan: DPPlan,
    accountant: str,
    history: list[GaussianRelease],
) -> list[GaussianRelease]:
    """Train ``model`` in place with DP-SGD; return the accountant's history after this round."""
    engine = PrivacyEngine(accountant=accountant)
    engine.accountant = make_accountant(accountant, history)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=settings.batch_size
    )
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate)
    with warnings.catch_warnings():
        # Opacus warns about its non-cryptographic RNG and torch about full backward hooks on
        # every round; both are known and documented in the README.
        warnings.simplefilter("ignore")
        private_model, optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            poisson_sampling=True,
        )
        if abs(private_loader.sample_rate - plan.sample_rate) > 1e-12:
            raise RuntimeError("the data loader's sampling rate differs from the privacy plan")
        _run_epochs(private_model, optimizer, private_loader, settings)
    return releases_of(engine.accountant)


def train_plain(model: nn.Module, x: np.ndarray, y: np.ndarray, settings: LocalSettings) -> None:
    """Non-private local training (``[privacy] enabled = false``), same schedule."""
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=settings.batch_size,
        shuffle=True,
        generator=generator,
    )
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate)
    _run_epochs(model, optimizer, loader, settings)


def _run_epochs(model: nn.Module, optimizer, loader, settings: LocalSettings) -> None:
    """SGD on the mean logistic loss. FedProx's proximal pull towards the round's starting
    weights is applied after each step as a data-independent update (no privacy cost): inside
    the loss it would bypass Opacus's per-record gradients and be silently dropped."""
    loss_fn = nn.BCEWithLogitsLoss()
    anchor = [p.detach().clone() for p in model.parameters()]
    for _ in range(settings.epochs):
        for features, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            # An empty Poisson batch still runs forward and backward: Opacus then adds noise
            # to a zero gradient, so an empty batch looks like any other step.
            loss_fn(model(features).squeeze(-1), labels).backward()
            optimizer.step()
            if settings.proximal_mu > 0:
                with torch.no_grad():
                    for param, start in zip(model.parameters(), anchor, strict=True):
                        param -= settings.learning_rate * settings.proximal_mu * (param - start)
