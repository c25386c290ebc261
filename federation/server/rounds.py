"""The round loop: train at every active site, keep the well-formed and valid updates,
aggregate them with the Flower strategy, evaluate on the evaluation rounds, and checkpoint.

Per-site facts (epsilon and the accounting behind it) are kept per site and never averaged;
only updates that pass validation reach the strategy; pooled metrics come from the sites'
additive statistics (``Evaluator``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import Strategy

from federation.server.checkpoint import write_checkpoint
from federation.server.evaluator import Evaluator
from federation.server.exchange import SiteExchange, only_to
from federation.server.outputs import RunDirectory
from federation.server.replies import update_problem
from federation.server.state import RunState
from federation.server.strategy import aggregate
from federation.server.survival_evaluator import SurvivalEvaluator
from federation.server.validation import validate_updates
from federation.wire import protocol as p
from federation.wire.spec import StudySpec, model_cuts
from models.registry import build_model

log = logging.getLogger("allfed.server")

RoundCallback = Callable[[int, int, dict[str, Any]], None]  # round, planned rounds, its row
DIVERGED_WEIGHT = 100.0  # on standardized inputs, a weight this large saturates every score


def initial_model(spec: StudySpec, n_features: int) -> torch.nn.Module:
    """Deterministic start: zeros for logistic regression, seeded weights for an MLP (a
    survival model's baseline hazards at their prior, ``models.survival``)."""
    with torch.random.fork_rng():  # the seed stays here, out of the process's global RNG
        torch.manual_seed(spec.study.seed)
        model = build_model(spec.model.name, n_features, spec.model.hidden, model_cuts(spec))
    if spec.model.name == "logistic":
        with torch.no_grad():
            for param in getattr(model, "score", model).parameters():
                param.zero_()
    return model


class RoundLoop:
    """Runs the rounds after ``state.rounds_done`` up to the planned rounds of ``state.spec``;
    after each, the checkpoint is written, then the round's row, then ``on_round`` is told."""

    def __init__(
        self,
        state: RunState,
        exchange: SiteExchange,
        strategy: Strategy,
        outputs: RunDirectory,
        on_round: RoundCallback | None = None,
    ) -> None:
        self.state, self.exchange, self.strategy = state, exchange, strategy
        self.outputs, self.on_round = outputs, on_round
        self.survival = state.spec.study.task == "survival"
        self.headline = "cindex" if self.survival else "auroc"  # the metric the log shows
        evaluator = SurvivalEvaluator if self.survival else Evaluator
        self.evaluator = evaluator(state.spec, exchange, exchange.reject)

    def run(self, arrays: ArrayRecord) -> ArrayRecord:
        """The global model after the last round, from ``arrays``."""
        state, training = self.state, self.state.spec.training
        evaluation_rounds = set(training.evaluation_rounds())
        for server_round in range(state.rounds_done + 1, training.rounds + 1):
            started = time.perf_counter()
            arrays, rejected = self._train(server_round, arrays)
            evaluated = server_round in evaluation_rounds
            if evaluated:
                self._evaluate(arrays, server_round)
            state.rounds_done = server_round
            row = {
                "round": server_round,
                "seconds": round(time.perf_counter() - started, 3),
                "epsilon": self._record_epsilons(server_round),
                "rejected": rejected,
                "metrics": state.metrics if evaluated else None,
            }
            state.rows.append(row)
            # Before the row: a resume rewrites the rows from the checkpoint.
            write_checkpoint(self.outputs, state, arrays, self.strategy)
            self.outputs.append_round(row)
            log.info(
                "round %d/%d%s",
                server_round,
                training.rounds,
                f": pooled {self.headline} {state.metrics['pooled'].get(self.headline)}"
                if evaluated
                else "",
            )
            if self.on_round:
                self.on_round(server_round, training.rounds, row)
        return arrays

    def _train(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, dict[str, str]]:
        """One round of training: the aggregated model, and the sites whose update this round
        left out (name -> why)."""
        config = self._model_config()
        messages = self.strategy.configure_train(server_round, arrays, config, self.exchange.grid)
        replies = self.exchange(only_to(messages, self.state.sites.active()))
        accepted = [r for r in replies if self._accept_update(r)]
        accepted, rejected = self._validate_updates(server_round, accepted, arrays)
        self.state.require_sites(f"round {server_round}")
        arrays = aggregate(self.strategy, server_round, accepted, arrays)
        self._check_weights(arrays, server_round)
        return arrays, rejected

    def _model_config(self) -> ConfigRecord:
        """What every site needs with the model: the run's key and the pooled scaling."""
        center, scale = self.state.scaling
        return ConfigRecord(
            {
                p.SCALING_CENTER: list(center),
                p.SCALING_SCALE: list(scale),
                p.RUN_KEY: self.state.run_key,
            }
        )

    def _accept_update(self, reply: Message) -> bool:
        """Record the site's accounting facts; keep the update only if it is well formed."""
        privacy = self.state.spec.privacy
        site = self.state.sites[reply.metadata.src_node_id]
        problem = update_problem(reply.content, privacy.enabled)
        if problem:
            site.fail(p.FAILED, f"update rejected: {problem}")
            return False
        metrics = reply.content[p.METRICS]
        if privacy.enabled:
            site.epsilon = float(metrics[p.EPSILON])
            site.delta = float(metrics[p.DELTA])
            site.noise_multiplier = float(metrics[p.NOISE_MULTIPLIER])
            site.sample_rate = float(metrics[p.SAMPLE_RATE])
            site.steps = int(metrics[p.STEPS])
            if site.epsilon > privacy.target_epsilon * 1.0001:
                log.warning(
                    "site %s reports epsilon %.4f above the target", site.name, site.epsilon
                )
        return True

    def _validate_updates(
        self, server_round: int, replies: list[Message], global_arrays: ArrayRecord
    ) -> tuple[list[Message], dict[str, str]]:
        """Leave out of this round the updates ``validation`` rejects; the sites stay in."""
        sites = self.state.sites
        verdict = validate_updates(
            {r.metadata.src_node_id: r.content[p.ARRAYS] for r in replies},
            global_arrays,
            self.state.spec.training.max_update_ratio,
            {node: site.name for node, site in sites.items()},
        )
        rejected = {}
        for node, reason in verdict.rejected.items():
            site = sites[node]
            site.rejected_updates.append({"round": server_round, "reason": reason})
            rejected[site.name] = reason
        keep = set(verdict.accepted)
        return [r for r in replies if r.metadata.src_node_id in keep], rejected

    def _check_weights(self, arrays: ArrayRecord, server_round: int) -> None:
        """Updates that blew up are a finding of the run, not a score."""
        largest = max(
            (float(t.abs().max()) for t in arrays.to_torch_state_dict().values() if t.numel()),
            default=0.0,
        )
        if not np.isfinite(largest) or largest > DIVERGED_WEIGHT:
            finding = (
                f"the model diverged: a weight reached {largest:.3g} by round {server_round} "
                "(the updates blew up; lower the learning rate)"
            )
            diagnostics = self.state.diagnostics
            if not any(d.startswith("the model diverged: a weight") for d in diagnostics):
                diagnostics.append(finding)
                log.warning(finding)

    def _evaluate(self, arrays: ArrayRecord, server_round: int) -> None:
        """Both evaluation releases of the global model at every active site, pooled."""
        state = self.state
        config = self._model_config()
        config[p.SERVER_ROUND] = server_round
        active = sorted(state.sites.active())
        names = {node: state.sites[node].name for node in active}
        result = self.evaluator.evaluate(arrays, config, active, names)
        state.metrics, state.representation = result.metrics, result.representation
        state.evaluated_round = server_round
        for node, count in result.n_test.items():
            state.sites[node].n_test = count
        for node, epsilon in result.epsilon.items():
            state.sites[node].evaluation_epsilon = epsilon
        pooled = state.metrics.get("pooled") or {}
        state.diagnostics = sorted({*state.diagnostics, *(pooled.get("diagnostics") or [])})

    def _record_epsilons(self, server_round: int) -> dict[str, float | None]:
        """Each site's epsilon so far after this round (None without DP or before training),
        kept per site for ``summary.json`` and returned for ``metrics.jsonl``."""
        epsilons = {}
        for site in self.state.sites.values():
            epsilons[site.name] = site.epsilon
            if site.epsilon is not None and site.status == p.OK:
                site.epsilon_by_round.append({"round": server_round, "epsilon": site.epsilon})
        return epsilons
