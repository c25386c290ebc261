"""DP-SGD at a site: the closed-form clipped sums are Opacus's, and so are noise and accounting."""

import copy
import math

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import FedProx
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from federation.client.clipping import BIAS_SHARE, check_supported, clipped_gradient_sum
from federation.client.training import (
    DPPlan,
    LocalSettings,
    dp_optimizer,
    plan_dp,
    poisson_batches,
    train_dp,
    train_plain,
)
from federation.server.strategy import build_strategy
from federation.wire import protocol as p
from federation.wire.spec import parse_spec
from models.registry import build_model
from privacy.accounting import GaussianRelease, compute_epsilon

N_FEATURES = 13


def batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of very different scales, so that a mid-range norm clips some records only."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 1, n).unsqueeze(1) if n else torch.ones(0, 1)
    features = torch.randn(n, N_FEATURES, generator=generator) * scales
    labels = (torch.rand(n, generator=generator) < 0.4).float()
    return features, labels


def model_of(name: str) -> nn.Sequential:
    torch.manual_seed(3)
    model = build_model(name, N_FEATURES, (16, 8) if name == "mlp" else ())
    with torch.no_grad():  # weights away from zero, so that every layer carries gradient
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return model


def per_record(model: nn.Module, features, labels=None):
    """Opacus's per-sample hooks: every record's gradient (flattened) of its loss, or of its
    logit when ``labels`` is None."""
    module = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    logits = module(features).squeeze(-1)
    if labels is None:
        logits.sum().backward()
    else:
        nn.BCEWithLogitsLoss(reduction="sum")(logits, labels).backward()
    return torch.cat([p.grad_sample.flatten(1) for p in module.parameters()], dim=1)


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", ["logistic", "mlp"])
@pytest.mark.parametrize("n", [64, 1])
def test_clipped_sum_is_the_records_gradients_clipped_by_their_logit_gradient(name, n):
    """Against Opacus's per-sample gradients g_i of the loss and J_i of the logit: record i
    contributes its output-bias entry times min(1, a C) and the rest of g_i times
    min(1, sqrt(1 - a^2) C / |J_i without the output bias|), a^2 = BIAS_SHARE."""
    model = model_of(name)
    features, labels = batch(n)
    grads = per_record(model, features, labels)
    logit_norms = per_record(model, features)[:, :-1].norm(dim=1)  # the output bias is last
    rest = math.sqrt(1 - BIAS_SHARE)
    max_grad_norm = float(logit_norms.median()) / rest if n > 1 else 0.5
    if n == 64:  # about half the records are clipped
        clipped = logit_norms > rest * max_grad_norm
        assert clipped.any() and not clipped.all()
    factor = (rest * max_grad_norm / (logit_norms + 1e-6)).clamp(max=1.0)
    expected = grads * factor.unsqueeze(1)
    expected[:, -1] = grads[:, -1] * min(1.0, math.sqrt(BIAS_SHARE) * max_grad_norm)
    expected = expected.sum(0)

    clipped_gradient_sum(model, features, labels, max_grad_norm)

    for param in model.parameters():
        assert param.grad.shape == param.shape
    torch.testing.assert_close(flat_grad(model), expected, rtol=1e-4, atol=1e-6)


def test_an_empty_batch_has_a_zero_sum():
    model = model_of("mlp")
    clipped_gradient_sum(model, torch.zeros(0, N_FEATURES), torch.zeros(0), 1.0)
    assert all((p.grad == 0).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["logistic", "mlp"])
def test_one_record_moves_the_clipped_sum_by_at_most_the_clip_norm(name):
    """The privacy claim: whatever the record (features of any scale, either label), its
    contribution to the sum has norm at most max_grad_norm, the sensitivity the noise is for."""
    model = model_of(name)
    features, _ = batch(64, seed=2)
    features[:8] *= 1e3  # far past any clip norm
    norms = []
    for i in range(64):
        for label in (0.0, 1.0):
            clipped_gradient_sum(model, features[i : i + 1], torch.tensor([label]), 0.7)
            norms.append(flat_grad(model).norm().item())
    assert max(norms) <= 0.7 * (1 + 1e-5)
    assert max(norms) > 0.6  # the bound is met, not far above what records contribute


@pytest.mark.parametrize("name", ["logistic", "mlp"])
def test_the_clip_factor_does_not_depend_on_the_label(name):
    """A record's clipped gradient is (p - y) times a factor of its features alone, so a rare
    class is not clipped harder than the common one (flat clipping of the loss gradient cuts
    the large residuals, which are the rare class's, and under-predicts it)."""
    model = model_of(name)
    features, _ = batch(32, seed=3)
    with torch.no_grad():
        risk = torch.sigmoid(model(features).squeeze(-1))
    per_label = []
    for label in (0.0, 1.0):
        rows = []
        for i in range(32):
            clipped_gradient_sum(model, features[i : i + 1], torch.tensor([label]), 0.5)
            rows.append(flat_grad(model) / (risk[i] - label))
        per_label.append(torch.stack(rows))
    torch.testing.assert_close(per_label[0], per_label[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["logistic", "mlp"])
def test_a_noiseless_step_equals_opacus_hooks_step(name):
    """The whole step: the sum, divided by the expected batch size, SGD update. The clip norm is
    above every record's gradient, so neither side clips and the sums agree."""
    model, reference = model_of(name), model_of(name)
    features, labels = batch(40, seed=1)
    settings = LocalSettings(epochs=1, batch_size=64, learning_rate=0.5, max_grad_norm=1e4)
    plan = DPPlan(noise_multiplier=0.0, sample_rate=1 / 8, steps_per_round=8, planned_steps=8)
    optimizer = dp_optimizer(model, settings, plan, n_records=500)
    optimizer.zero_grad()
    clipped_gradient_sum(model, features, labels, settings.max_grad_norm)
    optimizer.step()

    module = GradSampleModule(reference, loss_reduction="mean")
    opacus_optimizer = DPOptimizer(
        torch.optim.SGD(module.parameters(), lr=0.5),
        noise_multiplier=0.0,
        max_grad_norm=1e4,
        expected_batch_size=int(500 * plan.sample_rate),
    )
    nn.BCEWithLogitsLoss()(module(features).squeeze(-1), labels).backward()
    opacus_optimizer.step()

    for param, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(param, expected, rtol=1e-5, atol=1e-6)


def test_an_empty_batch_is_a_noisy_step_with_the_planned_noise():
    """Noise of std noise_multiplier * max_grad_norm on the (zero) sum, over the expected
    batch size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4000, 1))
    start = [p.detach().clone() for p in model.parameters()]
    settings = LocalSettings(epochs=1, batch_size=50, learning_rate=1.0, max_grad_norm=2.0)
    plan = DPPlan(noise_multiplier=1.5, sample_rate=0.1, steps_per_round=10, planned_steps=10)
    optimizer = dp_optimizer(model, settings, plan, n_records=500)
    optimizer.zero_grad()
    clipped_gradient_sum(model, torch.zeros(0, 4000), torch.zeros(0), settings.max_grad_norm)
    optimizer.step()
    update = model[0].weight.detach() - start[0]
    expected_std = 1.5 * 2.0 / 50
    assert update.std().item() == pytest.approx(expected_std, rel=0.05)
    assert abs(update.mean().item()) < 0.1 * expected_std


def test_the_noise_does_not_follow_the_process_random_state():
    """A deployed node forks every task from one parent, so each child starts from the same
    global random state: a round's batches and noise must not come from it."""
    x, y = site_data()
    settings = LocalSettings(epochs=1, batch_size=50, learning_rate=0.5, max_grad_norm=1.0)
    plan = plan_dp(len(y), 50, 1, 3, 3.0, 1e-5, "rdp", [])
    updates = []
    for _ in range(2):
        torch.manual_seed(0)  # as two forked children would both start
        model = nn.Sequential(nn.Linear(N_FEATURES, 1))
        torch.manual_seed(0)
        train_dp(model, x, y, settings, plan)
        updates.append(model[0].weight.detach().clone())
    assert not torch.equal(updates[0], updates[1])


def test_poisson_batches_are_opacus_sampler_draw_for_draw():
    torch.manual_seed(5)
    ours = [b.tolist() for b in poisson_batches(300, 1 / 7, 20)]
    torch.manual_seed(5)
    theirs = list(UniformWithReplacementSampler(num_samples=300, sample_rate=1 / 7, steps=20))
    assert ours == theirs
    assert len({len(b) for b in ours}) > 1  # Poisson: batch sizes vary


def site_data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    return x, y


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_the_planned_epsilons_are_the_accountants_for_the_rounds_the_ledger_records(accountant):
    """The ledger records one release of ``steps_per_round`` steps per round; the epsilon the
    plan reports after each round is the accountant's for exactly those releases."""
    prior = [GaussianRelease(10.0, 1.0, 1)]
    rounds = 3
    plan = plan_dp(300, 64, 2, rounds, 3.0, 1e-5, accountant, prior)
    assert plan.sample_rate == 1 / 5 and plan.steps_per_round == 10
    history = list(prior)
    for done in range(1, rounds + 1):
        history.append(GaussianRelease(plan.noise_multiplier, plan.sample_rate, 10))
        planned = plan.epsilon_after(done * plan.steps_per_round)
        assert planned == compute_epsilon(history, 1e-5, accountant)
    assert plan.epsilon_after(plan.planned_steps + plan.steps_per_round) is None
    assert plan.epsilon_by_round[-1] <= 3.0


def test_dp_training_learns_and_a_changed_site_is_refused():
    x, y = site_data(600)
    settings = LocalSettings(epochs=3, batch_size=64, learning_rate=0.5, max_grad_norm=1.0)
    plan = DPPlan(noise_multiplier=0.5, sample_rate=1 / 10, steps_per_round=30, planned_steps=30)
    model = build_model("logistic", N_FEATURES)
    train_dp(model, x, y, settings, plan)
    with torch.no_grad():
        accuracy = ((model(torch.from_numpy(x)).squeeze(-1) > 0).float() == torch.tensor(y)).float()
    assert accuracy.mean() > 0.75
    with pytest.raises(RuntimeError, match="no longer matches"):
        train_dp(model, x[:500], y[:500], settings, plan)


def test_a_model_outside_the_closed_form_is_refused():
    check_supported(build_model("mlp", N_FEATURES, (8,)))
    with pytest.raises(ValueError, match="Sequential model of Linear and ReLU layers"):
        check_supported(nn.Sequential(nn.Linear(N_FEATURES, 8), nn.LayerNorm(8), nn.Linear(8, 1)))
    with pytest.raises(ValueError, match="Sequential model of Linear and ReLU layers"):
        check_supported(nn.Bilinear(N_FEATURES, N_FEATURES, 1))
    shared = nn.Linear(N_FEATURES, N_FEATURES)
    with pytest.raises(ValueError, match="Sequential model of Linear and ReLU layers"):
        check_supported(nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(N_FEATURES, 1)))


def test_plain_training_is_seeded_and_learns():
    x, y = site_data(600)
    settings = LocalSettings(epochs=3, batch_size=64, learning_rate=0.5, max_grad_norm=1.0)
    first, second = build_model("mlp", N_FEATURES), build_model("mlp", N_FEATURES)
    second.load_state_dict(first.state_dict())
    train_plain(first, x, y, settings)
    train_plain(second, x, y, settings)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        accuracy = ((first(torch.from_numpy(x)).squeeze(-1) > 0).float() == torch.tensor(y)).float()
    assert accuracy.mean() > 0.8


def far_start() -> nn.Module:
    """A logistic model whose round-start ("global") weights are far from zero and from the
    data's optimum: a pull towards zero would move it away from its start, not back."""
    model = build_model("logistic", N_FEATURES)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(3.0)
    return model


def distance_moved(model: nn.Module, start: nn.Module) -> float:
    return math.sqrt(
        sum(
            float(((a - b) ** 2).sum())
            for a, b in zip(model.parameters(), start.parameters(), strict=True)
        )
    )


@pytest.mark.parametrize("private", [False, True])
def test_fedprox_pulls_the_local_weights_towards_the_global_model(private, monkeypatch):
    """Same data, batches and noise; only mu differs: mu > 0 ends nearer the round's start, and
    the larger mu the nearer."""
    x, y = site_data(600)
    plan = DPPlan(noise_multiplier=0.5, sample_rate=1 / 10, steps_per_round=30, planned_steps=30)
    # One seed for every run's batches and noise (the node's own generator is unseedable).
    monkeypatch.setattr(
        "federation.client.training.noise_generator", lambda: torch.Generator().manual_seed(7)
    )
    moved = {}
    for mu in (0.0, 0.1, 1.0):
        model = far_start()
        settings = LocalSettings(
            epochs=3, batch_size=64, learning_rate=0.5, max_grad_norm=1.0, proximal_mu=mu
        )
        if private:
            train_dp(model, x, y, settings, plan)
        else:
            train_plain(model, x, y, settings)
        moved[mu] = distance_moved(model, far_start())
    assert moved[0.0] > 1.0  # training does move the weights
    assert moved[1.0] < moved[0.1] < 0.95 * moved[0.0]


def test_fedprox_sends_its_mu_under_the_key_the_site_reads():
    spec = parse_spec(
        '[study]\nlabel = "y"\n[features]\nnumeric = ["x"]\n'
        '[training]\nstrategy = "fedprox"\nproximal-mu = 0.3\n'
    )
    strategy = build_strategy(spec)
    assert isinstance(strategy, FedProx) and strategy.proximal_mu == 0.3
    assert p.PROXIMAL_MU == "proximal-mu"  # flwr's FedProx.configure_train writes this key
