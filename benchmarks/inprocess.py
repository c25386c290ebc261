"""Federated training in one process, with the node's own functions and no Flower.

What a node does is called here directly: the bounds release where the spec declares none
(``estimated_bounds``), the standardization release (``scaling_sums`` plus OpenDP noise, pooled
by ``pooled_scaling``), ``encode``, ``plan_dp`` and ``train_dp`` or
``train_plain``; the updates are averaged as FedAvg does (weighted by training records). It is
the same computation as a simulated run, minus the messaging, so benchmarks can repeat it many
times and swap a piece (a training variant) to find what decides the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scoring import score
from sklearn.linear_model import LogisticRegression
from torch import nn

from federation.client.data import SiteTable, load_site_table, read_table
from federation.client.features import bounds_counts, encode, resolve_scaling, scaling_sums
from federation.client.partition import fresh_partition
from federation.client.training import (
    DPPlan,
    LocalSettings,
    plan_dp,
    train_dp,
    train_plain,
)
from federation.server.rounds import initial_model
from federation.server.site_setup import NO_PRIVATE_BOUNDS
from federation.server.standardization import pooled_scaling
from federation.wire.spec import StudySpec, estimated_columns, federated_columns, model_cuts
from models.registry import build_model
from privacy.accounting import GaussianRelease
from privacy.bounds import BOUNDS_SHARE, pooled_bounds, release_histograms
from privacy.planner import share_noise
from privacy.scaling import release_scaling_sums


@dataclass(frozen=True)
class SiteData:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Federation:
    """Encoded sites of one run and the releases each made before training."""

    spec: StudySpec
    sites: tuple[SiteData, ...]
    prior: tuple[GaussianRelease, ...]  # the standardization release (under DP)
    scaling: tuple[list[float], list[float]]
    scaling_warnings: dict[str, str]

    def test_rows(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.concatenate([s.x_test for s in self.sites]),
            np.concatenate([s.y_test for s in self.sites]),
        )

    def train_rows(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.concatenate([s.x_train for s in self.sites]),
            np.concatenate([s.y_train for s in self.sites]),
        )


def load_tables(spec: StudySpec, paths: dict[str, Path]) -> dict[str, SiteTable]:
    """Each site's checked table under a fresh partition of its own (the spec's split column
    where it names one, as the node's would)."""
    return {
        name: load_site_table(path, spec, fresh_partition(spec, list(read_table(path).columns)))
        for name, path in paths.items()
    }


def standardization_noise(spec: StudySpec) -> float:
    """The node's noise multiplier of the standardization sums (a share of the budget)."""
    privacy = spec.privacy
    return share_noise(privacy.standardization_share, privacy.target_epsilon, privacy.delta)


def estimated_bounds(
    spec: StudySpec, tables: dict[str, SiteTable]
) -> tuple[dict[str, tuple[float, float]], dict[str, str], tuple[GaussianRelease, ...]]:
    """The private bounds of the columns the spec declares none for, as a run estimates them:
    each site's noisy histograms (``bounds_counts``, ``release_histograms`` at ``BOUNDS_SHARE``
    of the budget), pooled and read by ``pooled_bounds``; a column without bounds is scaled
    per site, with a warning. Returns the bounds, the warnings and the release (none without
    DP or without such columns)."""
    names = estimated_columns(spec)
    privacy = spec.privacy
    if not names or not privacy.enabled:
        return {}, {}, ()
    noise = share_noise(BOUNDS_SHARE, privacy.target_epsilon, privacy.delta)
    found = pooled_bounds(
        [release_histograms(bounds_counts(t, spec), noise) for t in tables.values()],
        [noise] * len(tables),
        sum(t.n_train for t in tables.values()),
    )
    bounds, warnings = {}, {}
    for column, pair in zip(names, found, strict=True):
        if pair is None:
            warnings[column] = NO_PRIVATE_BOUNDS
        else:
            bounds[column] = pair
    return bounds, warnings, (GaussianRelease(noise, 1.0, 1),)


def federate(
    spec: StudySpec, tables: dict[str, SiteTable], exact_scaling: bool = False
) -> Federation:
    """Estimate the bounds the spec leaves out and pool the scaling as the run's setup does
    (noisy histograms and sums under DP), then encode each site. ``exact_scaling`` (diagnosis
    only, not private): the exact pooled sums of the same columns."""
    estimated, warnings, prior = estimated_bounds(spec, tables)
    bounds = {**spec.features.bounds, **estimated}
    columns = [spec.features.numeric[i] for i in federated_columns(spec, bounds)]
    sums, squares, counts = [], [], []
    if columns:
        noise = standardization_noise(spec) if spec.privacy.enabled else None
        for table in tables.values():
            site_sums = scaling_sums(table, spec, bounds)
            if noise is not None and not exact_scaling:
                site_sums = release_scaling_sums(site_sums, noise)
            sums.append(list(site_sums[0]))
            squares.append(list(site_sums[1]))
            counts.append(list(site_sums[2]))
        if noise is not None:
            prior = (*prior, GaussianRelease(noise, 1.0, 1))
    center, scale = [], []
    if columns:
        pooled = pooled_scaling(
            spec, columns, sums, squares, counts,
            noise_multipliers=[1e-12 if exact_scaling else noise] * len(sums) if noise else (),
            n_train=[t.n_train for t in tables.values()], bounds=bounds,
        )  # fmt: skip
        center, scale, warnings = pooled.center, pooled.scale, {**warnings, **pooled.warnings}
    sites = []
    for name, table in tables.items():
        c, s = resolve_scaling(table, spec, center, scale, bounds)
        x_train, y_train = encode(table, spec, c, s, test=False, bounds=bounds)
        x_test, y_test = encode(table, spec, c, s, test=True, bounds=bounds)
        sites.append(SiteData(name, x_train, y_train, x_test, y_test))
    return Federation(spec, tuple(sites), prior, (list(center), list(scale)), warnings)


Trainer = Callable[..., None]


def node_trainer(model, x, y, settings, plan) -> None:
    """The node's own training: ``train_dp`` under DP (its plan covers the whole run), else
    ``train_plain``."""
    if plan is None:
        train_plain(model, x, y, settings)
    else:
        train_dp(model, x, y, settings, plan)


@dataclass(frozen=True)
class SiteRun:
    settings: LocalSettings
    plan: DPPlan | None


def spec_runs(federation: Federation, spec: StudySpec) -> tuple[int, dict[str, SiteRun]]:
    """Rounds and per-site settings as the node runs them: the spec's, and the planner's where
    it leaves them out (``TrainingSection.planned`` for the smallest site)."""
    training = spec.planned(min(len(site.y_train) for site in federation.sites)).training
    privacy = spec.privacy
    runs = {}
    for site in federation.sites:
        batch = training.batch_size_for(len(site.y_train))
        settings = LocalSettings(
            training.local_epochs, batch, training.learning_rate, privacy.max_grad_norm
        )
        plan = None
        if privacy.enabled:
            plan = plan_dp(
                len(site.y_train), batch, training.local_epochs, training.rounds,
                privacy.target_epsilon, privacy.delta, privacy.accountant, list(federation.prior),
            )  # fmt: skip
        runs[site.name] = SiteRun(settings, plan)
    return training.rounds, runs


def planned_runs(federation: Federation, spec: StudySpec) -> tuple[int, dict[str, SiteRun]]:
    """Rounds and per-site settings all chosen by the planner: the spec's own dropped."""
    chosen = ("rounds", "local_epochs", "batch_size", "steps_per_round", "learning_rate")
    return spec_runs(federation, spec.with_overrides(training=dict.fromkeys(chosen)))


def fedavg(
    federation: Federation,
    trainer: Trainer = node_trainer,
    spec: StudySpec | None = None,
    planned: bool = False,
) -> nn.Module:
    """FedAvg (weighted by training records) with the spec's settings, or the planner's."""
    spec = spec or federation.spec
    rounds, runs = (planned_runs if planned else spec_runs)(federation, spec)
    n_features = federation.sites[0].x_train.shape[1]
    model = initial_model(spec, n_features)
    for _ in range(rounds):
        states, weights = [], []
        for site in federation.sites:
            local = build_model(spec.model.name, n_features, spec.model.hidden, model_cuts(spec))
            local.load_state_dict(model.state_dict())
            run = runs[site.name]
            trainer(local, site.x_train, site.y_train, run.settings, run.plan)
            states.append(local.state_dict())
            weights.append(len(site.y_train))
        total = float(sum(weights))
        model.load_state_dict(
            {
                key: sum(w * state[key] for w, state in zip(weights, states, strict=True)) / total
                for key in states[0]
            }
        )
    return model


def centralized(spec: StudySpec, tables: dict[str, SiteTable]) -> dict[str, float]:
    """Non-private logistic regression on the pooled training rows, scaled by their exact
    pooled statistics, scored on the pooled test rows: the reference a federation aims at
    (``tables``: the federation's own, so that both are scored on one split)."""
    federation = federate(with_privacy(spec, None), tables)
    x, y = federation.train_rows()
    x_test, y_test = federation.test_rows()
    model = LogisticRegression(C=1e6, max_iter=10_000).fit(x, y)
    return score(y_test, model.predict_proba(x_test)[:, 1])


def risks(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(x)).squeeze(-1)).numpy().astype(float)


def with_privacy(spec: StudySpec, epsilon: float | None, **training) -> StudySpec:
    """``spec`` at ``epsilon`` (None: no DP), with training settings replaced."""
    privacy = (
        {"enabled": False}
        if epsilon is None
        else {"enabled": True, "target_epsilon": float(epsilon)}
    )
    return spec.with_overrides(privacy=privacy, training=training)
