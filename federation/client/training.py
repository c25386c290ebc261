"""Local training at a site: DP-SGD with noise planned for the whole run.

The plan fixes the sampling rate and the noise multiplier once, at the site's first round, for
every noisy step the site will run in the run (rounds x local epochs x steps per epoch), after
any earlier releases (the standardization sums). The site's ledger records each round's
release before it runs, so the epsilon reported after round r is the true epsilon of everything
released so far and the last round lands at (not above) the target.

Per-record clipping costs one backward pass. The models are stacks of Linear layers on tabular
rows, and a record's gradient of a Linear layer is the outer product of the gradient at the
layer's output (``g``) and the layer's input (``a``): its squared norm is ``|g|^2 (|a|^2 + 1)``
with the bias, and the sum of the clipped gradients is one matrix product per layer. Opacus's
per-sample hooks materialize every record's gradient and cost several times a non-private step.
The clip factor is taken from the norm of the record's logit gradient, so it does not depend on
the label (``clipped_gradient_sum`` says why: flat clipping of the loss gradient under-predicts
the rare class); the clipped sum goes to Opacus's optimizer, which adds the noise, divides by
the expected batch size exactly as ``make_private`` would set it up.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from torch import nn

from federation.client.hazard import hazard_gradient_sum, mean_hazard_loss
from federation.client.layers import forward_through_linears
from models.survival import DiscreteTimeHazard
from privacy.accounting import GaussianRelease
from privacy.planner import SitePlan, plan_site

# Share of the clip norm's square kept for the output bias, which every record then moves alike.
BIAS_SHARE = 0.25


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
        optimizer.zero_grad(set_to_none=True)
        clipped_sum(model, features[batch], labels[batch], settings.max_grad_norm)
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
    ``sample_rate``: Opacus's ``UniformWithReplacementSampler``, draw for draw, without its
    round trip through Python lists."""
    for _ in range(steps):
        yield (torch.rand(n_records, generator=generator) < sample_rate).nonzero().reshape(-1)


def check_supported(model: nn.Module) -> None:
    """Refuse a model outside the shape the closed-form per-record norms hold for: a Sequential
    whose parameters all belong to its Linear layers, each used once (other layers
    parameter-free, and, like Opacus, none may mix the records of a batch)."""
    layers = list(model.children())
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    owned = {id(p) for layer in linears for p in layer.parameters()}
    if (
        not isinstance(model, nn.Sequential)
        or not linears
        or len(layers) != len(model)
        or any(id(p) not in owned for p in model.parameters())
    ):
        raise ValueError(
            "DP training needs a Sequential model of Linear layers and parameter-free "
            f"activations; got {type(model).__name__}"
        )


class ClippedSumOptimizer(DPOptimizerFastGradientClipping):
    """Opacus's optimizer for gradients that already are sums of clipped per-record gradients:
    it adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` to the sum, divides by the
    expected batch size. Unchanged but for one copy: Opacus
    deep-copies ``.grad`` into the sum (a fifth of a small model's step), and here the clipped sum
    is a fresh tensor every step, so it is taken as it is."""

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad = p.grad.detach()
            else:
                p.summed_grad.add_(p.grad)


def dp_optimizer(
    model: nn.Module,
    settings: LocalSettings,
    plan: DPPlan,
    n_records: int,
    generator: torch.Generator | None = None,
) -> ClippedSumOptimizer:
    """SGD with DP noise as ``make_private`` sets it up: ``expected_batch_size`` is
    ``int(n_records * sample_rate)``. Opacus's ``secure_mode`` noise (each draw the scaled sum
    of four Gaussians) resists the floating-point attacks on naive Gaussian samples; the
    generator is the round's own (``noise_generator``)."""
    return ClippedSumOptimizer(
        torch.optim.SGD(model.parameters(), lr=settings.learning_rate),
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        expected_batch_size=int(n_records * plan.sample_rate),
        generator=generator,
        secure_mode=True,
    )


def clipped_gradient_sum(
    model: nn.Sequential, features: torch.Tensor, labels: torch.Tensor, max_grad_norm: float
) -> None:
    """Set each parameter's ``.grad`` to the sum over the batch of the records' logistic-loss
    gradients, clipped by factors that depend on the record's features, never on its label.

    A record's loss gradient is ``(p - y) J``, where ``J`` is the gradient of its logit, and
    ``|p - y| < 1``. Its output-bias entry (1 in ``J``) is scaled by ``min(1, a C)`` with
    ``a^2 = BIAS_SHARE``, the rest of ``J`` to norm at most ``sqrt(1 - a^2) C``, so the clipped
    gradient has norm at most ``C = max_grad_norm``: the sensitivity Opacus's noise is
    calibrated to, as with flat clipping. Flat clipping scales by ``C / |(p - y) J|`` instead,
    which depends on the label: under class imbalance the rare class has the large residuals,
    its gradients are the ones cut, and the model under-predicts it (the demo at its defaults:
    mean risk 14% where 21% have the outcome). Here the expected clipped gradient at the true
    risk is zero for every weight (a weighted maximum-likelihood fit), and the intercept's
    factor is the same for every record, so at convergence the training rows' mean predicted
    risk is their observed risk.
    """
    logits, linears, inputs, outputs = forward_through_linears(model, features)
    logits = logits.squeeze(-1)
    logit_grads = torch.autograd.grad(logits.sum(), outputs)
    output = linears[-1]
    squared_norms = sum(
        g.square().sum(1) * (a.square().sum(1) + int(layer.bias is not None))
        for layer, a, g in zip(linears, inputs, logit_grads, strict=True)
    )
    if output.bias is not None:
        squared_norms = squared_norms - 1.0  # the output bias's entry of J is 1: apart
        bias_factor = min(1.0, math.sqrt(BIAS_SHARE) * max_grad_norm)
        rest = math.sqrt(1 - BIAS_SHARE) * max_grad_norm
    else:
        bias_factor, rest = 0.0, max_grad_norm
    factor = (rest / (squared_norms.clamp(min=0).sqrt() + 1e-6)).clamp(max=1.0)
    residuals = (torch.sigmoid(logits) - labels).detach()
    weight = (residuals * factor).unsqueeze(1)
    for layer, a, g in zip(linears, inputs, logit_grads, strict=True):
        clipped = g * weight
        layer.weight.grad = clipped.T @ a
        if layer.bias is not None:
            layer.bias.grad = clipped.sum(0)
    if output.bias is not None:
        output.bias.grad = (residuals.sum() * bias_factor).reshape(output.bias.shape)


def _proximal_step(model: nn.Module, anchor: list[torch.Tensor], settings: LocalSettings) -> None:
    """FedProx's pull towards the round's starting weights, applied after each step as a
    data-independent update (no privacy cost): inside the loss it would bypass the per-record
    gradients and be silently dropped."""
    if settings.proximal_mu > 0:
        with torch.no_grad():
            for param, start in zip(model.parameters(), anchor, strict=True):
                param -= settings.learning_rate * settings.proximal_mu * (param - start)
