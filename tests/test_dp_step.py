"""The fast DP-SGD step computes what a plain per-record reference does: per-record gradients
clipped to the bound (against ``torch.func``), Gaussian noise of std noise multiplier x clip norm
from Opacus's secure-mode sampler, fresh at every step, and Opacus's Poisson batches."""

import math

import pytest
import torch
from opacus.optimizers.optimizer import _generate_noise
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.func import functional_call, grad, vmap

from federation.client import noisy_sgd, training
from federation.client.clipping import BIAS_SHARE, clipped_gradient_sum
from federation.client.layers import logit_gradients
from federation.client.noisy_sgd import NoisySGD
from federation.client.training import poisson_batches
from models.registry import build_model

N_FEATURES = 13


def model_of(hidden: tuple[int, ...]) -> nn.Sequential:
    torch.manual_seed(11)
    model = build_model("mlp" if hidden else "logistic", N_FEATURES, hidden).double()
    with torch.no_grad():  # weights away from zero, so that every layer carries gradient
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return model


def rows(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of very different scales, so that a mid-range clip norm clips some records only."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 1, n, dtype=torch.float64).unsqueeze(1)
    features = torch.randn(n, N_FEATURES, generator=generator, dtype=torch.float64) * scales
    labels = (torch.rand(n, generator=generator) < 0.4).double()
    return features, labels


def per_record_gradients(model: nn.Module, features: torch.Tensor, of_loss: torch.Tensor | None):
    """Every record's gradient (name -> tensor with a leading record axis) of its logit, or of
    its logistic loss with labels ``of_loss``, by ``torch.func``: one record at a time."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def logit(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze()

    if of_loss is None:
        return vmap(grad(logit), in_dims=(None, 0))(params, features)

    def loss(p, x, y):
        return nn.functional.binary_cross_entropy_with_logits(logit(p, x), y)

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, features, of_loss)


@pytest.mark.parametrize("hidden", [(), (32,), (16, 8)])
def test_logit_gradients_are_autograds(hidden):
    model = model_of(hidden)
    features, _ = rows(50)
    logits, linears, inputs, grads = logit_gradients(model, features)
    torch.testing.assert_close(logits, model(features).squeeze(-1), rtol=1e-12, atol=1e-12)
    reference = per_record_gradients(model, features, None)
    for index, (layer, a) in enumerate(zip(linears, inputs, strict=True)):
        name = f"{list(model).index(layer)}.weight"
        g = grads[index] if index < len(grads) else torch.ones(len(a), 1, dtype=a.dtype)
        torch.testing.assert_close(
            g.unsqueeze(2) * a.unsqueeze(1), reference[name], rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("hidden", [(), (32,), (16, 8)])
def test_the_clipped_sum_is_the_per_record_gradients_clipped_exactly(hidden):
    """Against ``torch.func``'s per-record gradients, in float64 to 1e-6: the output bias's entry
    scaled by min(1, a C), the rest by min(1, sqrt(1 - a^2) C / |J without the output bias|)."""
    model = model_of(hidden)
    features, labels = rows(64)
    of_loss = per_record_gradients(model, features, labels)
    of_logit = per_record_gradients(model, features, None)
    bias = f"{len(model) - 1}.bias"
    norms = (
        torch.stack([g.flatten(1).square().sum(1) for name, g in of_logit.items() if name != bias])
        .sum(0)
        .sqrt()
    )
    rest = math.sqrt(1 - BIAS_SHARE)
    max_grad_norm = float(norms.median()) / rest
    clipped = norms > rest * max_grad_norm
    assert clipped.any() and not clipped.all()
    factor = (rest * max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    bias_factor = min(1.0, math.sqrt(BIAS_SHARE) * max_grad_norm)

    clipped_gradient_sum(model, features, labels, max_grad_norm)

    for name, param in model.named_parameters():
        scale = bias_factor if name == bias else factor.reshape(-1, *[1] * param.dim())
        expected = (of_loss[name] * scale).sum(0)
        assert param.grad.shape == param.shape
        torch.testing.assert_close(param.grad, expected, rtol=1e-6, atol=1e-9)


def noise_of_steps(steps: int, size: int, seed: int, steps_ahead: int) -> torch.Tensor:
    """What ``NoisySGD`` adds over ``steps`` steps of zero gradients, one row per step, scaled
    back to the summed gradient's scale (learning rate 1, expected batch size 1)."""
    param = nn.Parameter(torch.zeros(size))
    optimizer = NoisySGD(
        [param],
        learning_rate=1.0,
        noise_multiplier=1.5,
        max_grad_norm=2.0,
        expected_batch_size=1,
        steps_ahead=steps_ahead,
        generator=torch.Generator().manual_seed(seed),
    )
    before, rows_ = param.detach().clone(), []
    for _ in range(steps):
        optimizer.zero_grad()
        param.grad = torch.zeros_like(param)
        optimizer.step()
        rows_.append(before - param.detach())
        before = param.detach().clone()
    return torch.stack(rows_)


def test_the_noise_has_the_planned_sd_and_mean_at_every_step():
    """sd = noise multiplier x clip norm (3.0) per coordinate, mean 0, Gaussian: 200,000 draws
    over 50 steps, each step's own."""
    noise = noise_of_steps(steps=50, size=4000, seed=0, steps_ahead=50)
    sd = 1.5 * 2.0
    assert noise.std().item() == pytest.approx(sd, rel=0.01)
    assert abs(noise.mean().item()) < 0.01 * sd
    assert (noise.abs() < sd).double().mean().item() == pytest.approx(0.6827, abs=0.005)
    per_step = noise.std(dim=1)
    assert per_step.min().item() > 0.95 * sd and per_step.max().item() < 1.05 * sd
    correlation = torch.corrcoef(noise)  # steps against each other
    off_diagonal = correlation[~torch.eye(50, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 0.08  # 4000 values: sd of a correlation 0.016


def test_the_noise_is_opacus_secure_mode_sampler_on_the_rounds_generator():
    """The whole block of steps is one call of Opacus's secure-mode sampler (each value the sum
    of four Gaussians, halved) on the generator the round seeded, draw for draw."""
    noise = noise_of_steps(steps=6, size=10, seed=3, steps_ahead=6)
    reference = _generate_noise(
        3.0, torch.empty(6, 10), generator=torch.Generator().manual_seed(3), secure_mode=True
    )
    torch.testing.assert_close(noise, reference, rtol=1e-5, atol=1e-5)


def test_noise_past_a_block_is_fresh(monkeypatch):
    """A round longer than one block (the size cap, or more steps than planned) draws new noise,
    never the old block again."""
    monkeypatch.setattr(noisy_sgd, "MAX_NOISE_VALUES", 3 * 100)
    noise = noise_of_steps(steps=10, size=100, seed=1, steps_ahead=50)
    assert len({tuple(row.tolist()) for row in noise}) == 10
    assert noise.std().item() == pytest.approx(3.0, rel=0.05)
    longer = noise_of_steps(steps=5, size=100, seed=1, steps_ahead=2)
    assert len({tuple(row.tolist()) for row in longer}) == 5


@pytest.mark.parametrize("cap", [10**6, 300, 1])
def test_poisson_batches_drawn_at_once_are_opacus_sampler_draw_for_draw(cap, monkeypatch):
    monkeypatch.setattr(training, "MAX_SAMPLING_DRAWS", cap)  # one call, several, one per step
    ours = [b.tolist() for b in poisson_batches(100, 1 / 7, 20, torch.Generator().manual_seed(4))]
    theirs = list(
        UniformWithReplacementSampler(
            num_samples=100, sample_rate=1 / 7, steps=20, generator=torch.Generator().manual_seed(4)
        )
    )
    assert ours == theirs
    assert len({len(b) for b in ours}) > 1  # Poisson: batch sizes vary


def test_zero_grad_clears_as_torch_optimizers_do():
    params = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, 2))]
    optimizer = NoisySGD(params, 0.1, 1.0, 1.0, expected_batch_size=4, steps_ahead=1)
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)
