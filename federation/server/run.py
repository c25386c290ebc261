"""One federated training run, driven from the aggregator.

Setup (sites check their data and release standardization sums), then rounds of train and
evaluate. Per-site facts (status, epsilon and the accounting behind it) are kept per site and
never averaged; only updates that pass validation reach the Flower strategy; pooled metrics are
computed from the sites' additive statistics. The run ends by writing ``summary.json`` and then
``report.html``; a report that cannot be written is logged and never fails the run.

After every completed round a checkpoint is written (model, round, strategy state, pooled
scaling, per-site records and the rounds' rows); a resumed run restores it, sends the run's key
and the rounds done in the setup config, and the sites continue their plans from their ledgers.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation.server.evaluator import Evaluator
from federation.server.grid import wait_for_nodes
from federation.server.model_card import build_model_card, scaling_rows
from federation.server.outputs import CHECKPOINT_FORMAT, REPORT, RunDirectory, checkpoint_state
from federation.server.standardization import pooled_scaling
from federation.server.strategy import aggregate, build_strategy
from federation.server.validation import validate_updates
from federation.wire import protocol as p
from federation.wire.spec import StudySpec, estimated_columns, feature_names, federated_columns
from models.registry import build_model
from privacy.bounds import N_BINS, estimate_bounds, histogram_sensitivity

log = logging.getLogger("allfed.server")

RoundCallback = Callable[[int, int, dict[str, Any]], None]  # round, planned rounds, its row
DIVERGED_WEIGHT = 100.0  # on standardized inputs, a weight this large saturates every score
_STRATEGY_STATE = ("m_t", "v_t")  # what Flower's FedOpt strategies (FedAdam) carry across rounds


class RunFailed(Exception):
    """The run could not go on (too few sites left); the summary says why."""


class RunStopped(Exception):
    """The run stopped on purpose after a round (``stop_after``), leaving a checkpoint."""


@dataclass
class SiteRecord:
    """What the aggregator knows about one site; only whitelisted facts ever get here."""

    name: str
    status: str = p.OK
    reason: str | None = None
    n_train: int = 0
    n_test: int | None = None  # noisy, from the evaluation release; None: not published
    epsilon: float | None = None  # the training partition's
    evaluation_epsilon: float | None = None  # the test partition's
    delta: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int = 0
    other_releases: list[dict[str, float]] = field(default_factory=list)
    epsilon_by_round: list[dict[str, Any]] = field(default_factory=list)  # the trajectory
    rejected_updates: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, state: str, reason: str) -> None:
        self.status, self.reason = state, reason
        log.warning("site %s %s: %s", self.name, state, reason)


class StudyRun:
    """Runs ``spec`` over the nodes of ``grid`` and writes the run directory ``out``."""

    def __init__(
        self,
        grid: Grid,
        spec: StudySpec,
        out: Path,
        on_round: RoundCallback | None = None,
        expected_sites: int | None = None,
        checkpoint: dict[str, Any] | None = None,
        stop_after: int | None = None,
    ) -> None:
        """``checkpoint`` (from ``outputs.load_checkpoint`` of ``out``) resumes that run;
        ``stop_after`` ends the run after that round as a crash would (its checkpoint written,
        nothing more): a test hook, the summary says ``stopped``."""
        self.grid, self.spec, self.on_round = grid, spec, on_round
        self.expected_sites = expected_sites
        self.checkpoint, self.stop_after = checkpoint, stop_after
        self.outputs = RunDirectory(out, resume=checkpoint is not None)
        self.sites: dict[int, SiteRecord] = {}
        self.metrics: dict[str, Any] = {}
        self.representation: dict[str, Any] = {}
        self.diagnostics: list[str] = []
        self.evaluated_round: int | None = None
        self.rounds_done = 0
        self.rows: list[dict[str, Any]] = []
        self.scaling: tuple[list[float], list[float]] = ([], [])
        self.scaling_warnings: dict[str, str] = {}  # column -> why its noisy sums were replaced
        self.estimated_bounds: dict[str, tuple[float, float]] = {}  # privately, for the run
        self.run_key = str(checkpoint["run_key"]) if checkpoint else secrets.token_hex(8)
        self.study_text = spec.to_toml()  # the spec as given; ``_census`` plans its training
        self.smallest_n_train = 0

    def run(self) -> dict[str, Any]:
        self.outputs.start_log()
        try:
            arrays = self._run_rounds()
            self._finish(arrays)
            return self._conclude("completed", None)
        except RunStopped as stop:
            return self._conclude("stopped", str(stop))
        except RunFailed as error:
            self._conclude("failed", str(error))
            raise
        except Exception as error:
            self._conclude("failed", f"{type(error).__name__}: {error}")
            raise
        finally:
            self.outputs.stop_log()

    def _conclude(self, status: str, error: str | None) -> dict[str, Any]:
        """Write the summary, then the report: the summary must not wait on (or die with) it."""
        summary = self._summary(status, error)
        self.outputs.write_summary(summary)
        started = time.perf_counter()
        try:
            self.outputs.write_report(summary)
        except Exception:
            log.exception("could not write %s; summary.json is complete", REPORT)
        else:
            log.info("wrote %s in %.2f s", REPORT, time.perf_counter() - started)
        return summary

    def _run_rounds(self) -> ArrayRecord:
        nodes = self._census()
        spec = self.spec  # planned now: every training setting is set
        strategy = build_strategy(spec)
        if self.checkpoint is None:
            self._setup(nodes)
            model = initial_model(spec, len(feature_names(spec)))
            arrays = ArrayRecord(model.state_dict())
        else:
            arrays = self._restore(strategy)
            self._setup(nodes)
        evaluator = Evaluator(spec, self._exchange, self._reject)
        evaluation_rounds = set(spec.training.evaluation_rounds())
        for server_round in range(self.rounds_done + 1, spec.training.rounds + 1):
            started = time.perf_counter()
            config = self._scaling_config()
            config[p.RUN_KEY] = self.run_key
            train_messages = strategy.configure_train(server_round, arrays, config, self.grid)
            replies = self._exchange(_only(train_messages, self._active()))
            accepted = [r for r in replies if self._accept_update(r, arrays)]
            accepted, rejected = self._validate_updates(server_round, accepted, arrays)
            self._require_sites(f"round {server_round}")
            arrays = aggregate(strategy, server_round, accepted, arrays)
            self._check_weights(arrays, server_round)
            evaluated = server_round in evaluation_rounds
            if evaluated:
                self._evaluate(evaluator, arrays, server_round)
            self.rounds_done = server_round
            row = {
                "round": server_round,
                "seconds": round(time.perf_counter() - started, 3),
                "epsilon": self._record_epsilons(server_round),
                "rejected": rejected,
                "metrics": self.metrics if evaluated else None,
            }
            self.rows.append(row)
            self._write_checkpoint(arrays, strategy)  # before the row: resume rewrites the rows
            self.outputs.append_round(row)
            log.info(
                "round %d/%d%s",
                server_round,
                spec.training.rounds,
                f": pooled AUROC {self.metrics['pooled'].get('auroc')}" if evaluated else "",
            )
            if self.on_round:
                self.on_round(server_round, spec.training.rounds, row)
            if server_round == self.stop_after:
                raise RunStopped(f"stopped after round {server_round} (stop_after)")
        return arrays

    # -- checkpoint and resume -------------------------------------------------------------

    def _write_checkpoint(self, arrays: ArrayRecord, strategy: Any) -> None:
        """Everything a resume needs after a completed round; the sites keep their own side."""
        moments = {}
        for name in _STRATEGY_STATE:  # FedAdam's (FedOpt's) moments; the others keep none
            value = getattr(strategy, name, None)
            if value:
                moments[name] = {k: torch.from_numpy(np.array(v)) for k, v in value.items()}
        self.outputs.write_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "spec": self.study_text,
                "run_key": self.run_key,
                "round": self.rounds_done,
                "arrays": arrays.to_torch_state_dict(),
                "strategy": moments,
                "state": checkpoint_state(
                    scaling=list(self.scaling),
                    sites=[asdict(site) for site in self.sites.values()],
                    metrics=self.metrics,
                    representation=self.representation,
                    diagnostics=self.diagnostics,
                    evaluated_round=self.evaluated_round,
                    rows=self.rows,
                    smallest_n_train=self.smallest_n_train,
                    estimated_bounds=self.estimated_bounds,
                ),
            }
        )

    def _restore(self, strategy: Any) -> ArrayRecord:
        """The model, strategy state, scaling, metrics and rounds of the checkpoint."""
        checkpoint = self.checkpoint
        state = checkpoint["state"]
        self.rounds_done = int(checkpoint["round"])
        center, scale = state["scaling"]
        self.scaling = (list(center), list(scale))
        self.estimated_bounds = {
            c: (float(low), float(high)) for c, (low, high) in state["estimated_bounds"].items()
        }
        self.metrics, self.rows = state["metrics"], list(state["rows"])
        self.representation = state["representation"]
        self.diagnostics = list(state["diagnostics"])
        self.evaluated_round = state["evaluated_round"]
        for name, value in checkpoint["strategy"].items():
            setattr(strategy, name, {k: t.numpy() for k, t in value.items()})
        self.outputs.rewrite_rounds(self.rows)
        log.info("resuming run %s after round %d", self.run_key, self.rounds_done)
        return ArrayRecord(dict(checkpoint["arrays"]))

    def _rejoin(self) -> None:
        """Match the nodes that answered the resumed setup to the checkpoint's sites by name:
        a site keeps its record (failed stays failed), one not in the run or not back fails."""
        saved = {s["name"]: SiteRecord(**s) for s in self.checkpoint["state"]["sites"]}
        joined, self.sites = self.sites, {}
        for node, site in joined.items():
            record = saved.pop(site.name, None)
            if record is None:
                site.fail(p.FAILED, "not a site of the run being resumed")
                record = site
            elif record.status == p.OK and site.status != p.OK:
                record.fail(site.status, site.reason or "")
            self.sites[node] = record
        for missing, record in enumerate(saved.values(), start=1):
            if record.status == p.OK:
                record.fail(p.FAILED, "did not rejoin the resumed run")
            self.sites[-missing] = record  # no node: never sent anything

    def _record_epsilons(self, server_round: int) -> dict[str, float | None]:
        """Each site's epsilon so far after this round (None without DP or before training),
        kept per site for ``summary.json`` and returned for ``metrics.jsonl``."""
        epsilons = {}
        for site in self.sites.values():
            epsilons[site.name] = site.epsilon
            if site.epsilon is not None and site.status == p.OK:
                site.epsilon_by_round.append({"round": server_round, "epsilon": site.epsilon})
        return epsilons

    # -- census and setup --------------------------------------------------------------------

    def _census(self) -> list[int]:
        """Ask every node for its public training-record count and plan the training settings
        the spec leaves out for the smallest site (a resume keeps the run's first plan). The
        nodes that answered go on to setup."""
        nodes = self._wait_for_nodes()
        for node in nodes:
            self.sites[node] = SiteRecord(name=f"node-{node}")
        config = ConfigRecord({p.RUN_KEY: self.run_key})
        messages = [
            Message(RecordDict({p.CONFIG: config}), message_type=p.CENSUS, dst_node_id=n)
            for n in nodes
        ]
        counted = {}
        for reply in self._exchange(messages):
            site = self.sites[reply.metadata.src_node_id]
            status = reply.content.config_records.get(p.STATUS)
            metrics = reply.content.metric_records.get(p.METRICS)
            count = metrics.get(p.N_TRAIN) if status is not None and metrics is not None else None
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                site.fail(p.FAILED, "census reply rejected: n-train must be a positive count")
                continue
            site.name = str(status[p.STATUS_SITE])
            counted[reply.metadata.src_node_id] = site.n_train = count
        self._require_sites("census")
        saved = self.checkpoint["state"].get("smallest_n_train") if self.checkpoint else None
        self.smallest_n_train = int(saved) if saved else min(counted.values())
        self.spec = self.spec.planned(self.smallest_n_train)
        return sorted(counted)

    def _setup(self, nodes: list[int]) -> None:
        config = {
            p.RUN_KEY: self.run_key,
            p.RESUME_AFTER: self.rounds_done,
            p.SMALLEST_N_TRAIN: self.smallest_n_train,
        }
        messages = [
            Message(
                content=RecordDict({p.CONFIG: ConfigRecord(config)}),
                message_type=p.SETUP,
                dst_node_id=n,
            )
            for n in nodes
        ]
        released: dict[int, Any] = {}  # node -> its setup release
        for reply in self._exchange(messages):
            site = self.sites[reply.metadata.src_node_id]
            status = reply.content.config_records.get(p.STATUS)
            if status is None:
                site.fail(p.FAILED, "setup reply without a status")
                continue
            site.name = str(status[p.STATUS_SITE])
            if status[p.STATUS_STATE] != p.OK:
                site.fail(str(status[p.STATUS_STATE]), str(status[p.STATUS_REASON]))
                continue
            metrics = reply.content[p.METRICS]
            problem = _setup_problem(
                metrics, len(federated_columns(self.spec)), len(estimated_columns(self.spec))
            )
            if problem:
                site.fail(p.FAILED, f"setup reply rejected: {problem}")
                continue
            site.n_train = int(metrics[p.N_TRAIN])
            _note_release(site, metrics, p.BOUNDS_NOISE)
            _note_release(site, metrics, p.STANDARDIZATION_NOISE)
            released[reply.metadata.src_node_id] = metrics
        _reject_duplicate_names(self.sites.values())
        if self.checkpoint is not None:
            self._rejoin()
        self._require_sites("setup")
        if self.checkpoint is not None:  # the checkpoint holds the run's scaling and bounds
            return
        if estimated_columns(self.spec):
            released = self._estimate_bounds(released)
        self._pool_scaling(released)

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """The bounds the run clips and pools with: declared, and privately estimated."""
        return {**self.spec.features.bounds, **self.estimated_bounds}

    def _estimate_bounds(self, released: dict[int, Any]) -> dict[int, Any]:
        """Bounds for the columns the spec declares none for, from the sites' pooled noisy
        histograms (``privacy.bounds``, post-processing), then the scaling message: every
        site's sums clipped to them. Returns the sums by node."""
        names = estimated_columns(self.spec)
        counts = {
            node: m
            for node, m in released.items()
            if node in self._active() and p.BOUNDS_HISTOGRAMS in m
        }
        if not counts:
            return {}
        pooled = sum(np.reshape(m[p.BOUNDS_HISTOGRAMS], (len(names), -1)) for m in counts.values())
        noise_sd = math.sqrt(
            sum(
                (m[p.BOUNDS_NOISE] * histogram_sensitivity(len(names))) ** 2
                for m in counts.values()
            )
        )
        n_records = sum(self.sites[node].n_train for node in counts)
        for column, found in zip(names, estimate_bounds(pooled, noise_sd, n_records), strict=True):
            if found is None:
                self.scaling_warnings[column] = (
                    "no private bounds: too few of its values stand out of the histograms' "
                    "noise; scaled by each site's own statistics"
                )
                log.warning("pooled scaling of %s: %s", column, self.scaling_warnings[column])
            else:
                self.estimated_bounds[column] = found
        if not federated_columns(self.spec, self.bounds):
            return {}
        config = {p.RUN_KEY: self.run_key}
        for column, (low, high) in self.estimated_bounds.items():
            config[f"{p.BOUNDS}.{p.encode_name(column)}"] = [low, high]
        messages = [
            Message(RecordDict({p.CONFIG: ConfigRecord(config)}), node, p.SCALING)
            for node in sorted(self._active())
        ]
        sums = {}
        columns = len(federated_columns(self.spec, self.bounds))
        for reply in self._exchange(messages):
            site = self.sites[reply.metadata.src_node_id]
            metrics = reply.content.metric_records.get(p.METRICS)
            problem = "no sums" if metrics is None else _sums_problem(metrics, columns)
            if problem:
                site.fail(p.FAILED, f"scaling reply rejected: {problem}")
                continue
            _note_release(site, metrics, p.STANDARDIZATION_NOISE)
            sums[reply.metadata.src_node_id] = metrics
        self._require_sites("scaling")
        return sums

    def _pool_scaling(self, released: dict[int, Any]) -> None:
        """The federation's center and scale of every pooled column from the sites' sums."""
        columns = [self.spec.features.numeric[i] for i in federated_columns(self.spec, self.bounds)]
        sites = [m for node, m in released.items() if node in self._active() and p.SUM in m]
        if not columns or not sites:
            return
        pooled = pooled_scaling(
            self.spec,
            columns,
            [list(m[p.SUM]) for m in sites],
            [list(m[p.SUM_SQUARES]) for m in sites],
            [list(m[p.COUNT]) for m in sites],
            noise_multipliers=(
                [float(m.get(p.STANDARDIZATION_NOISE, 0.0)) for m in sites]
                if self.spec.privacy.enabled
                else ()
            ),
            n_train=[s.n_train for s in self.sites.values() if s.status == p.OK],
            bounds=self.bounds,
        )
        self.scaling = (pooled.center, pooled.scale)
        self.scaling_warnings.update(pooled.warnings)
        for column, problem in pooled.warnings.items():
            log.warning("pooled scaling of %s: %s", column, problem)

    def _wait_for_nodes(self) -> list[int]:
        wanted = self.expected_sites or self.spec.training.min_sites
        return wait_for_nodes(self.grid, wanted, self.spec.training.round_timeout)

    # -- rounds ----------------------------------------------------------------------------

    def _active(self) -> set[int]:
        return {node for node, site in self.sites.items() if site.status == p.OK}

    def _require_sites(self, stage: str) -> None:
        active = len(self._active())
        if active < self.spec.training.min_sites:
            raise RunFailed(
                f"{stage}: only {active} site(s) left, the study needs min-sites = "
                f"{self.spec.training.min_sites}"
            )

    def _scaling_config(self) -> ConfigRecord:
        center, scale = self.scaling
        return ConfigRecord({p.SCALING_CENTER: list(center), p.SCALING_SCALE: list(scale)})

    def _exchange(self, messages: list[Message]) -> list[Message]:
        """Send, wait up to the round timeout, and mark sites that did not answer as failed."""
        if not messages:
            return []
        timeout = self.spec.training.round_timeout
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        answered = {r.metadata.src_node_id for r in replies}
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in answered and node in self.sites:
                self.sites[node].fail(p.FAILED, f"no reply within {timeout:g} s")
        usable = []
        for reply in replies:
            site = self.sites.get(reply.metadata.src_node_id)
            if site is None:
                continue
            if reply.has_error():
                site.fail(p.FAILED, f"node error: {_node_error(reply.error.reason)}")
            elif _declined(reply):
                status = reply.content[p.STATUS]
                site.name = str(status[p.STATUS_SITE])
                site.fail(str(status[p.STATUS_STATE]), str(status[p.STATUS_REASON]))
            else:
                usable.append(reply)
        return usable

    def _accept_update(self, reply: Message, global_arrays: ArrayRecord) -> bool:
        """Record the site's accounting facts; keep the update only if it is well formed."""
        site = self.sites[reply.metadata.src_node_id]
        problem = _update_problem(reply.content, global_arrays, self.spec.privacy.enabled)
        if problem:
            site.fail(p.FAILED, f"update rejected: {problem}")
            return False
        metrics = reply.content[p.METRICS]
        if self.spec.privacy.enabled:
            site.epsilon = float(metrics[p.EPSILON])
            site.delta = float(metrics[p.DELTA])
            site.noise_multiplier = float(metrics[p.NOISE_MULTIPLIER])
            site.sample_rate = float(metrics[p.SAMPLE_RATE])
            site.steps = int(metrics[p.STEPS])
            if site.epsilon > self.spec.privacy.target_epsilon * 1.0001:
                log.warning(
                    "site %s reports epsilon %.4f above the target", site.name, site.epsilon
                )
        return True

    def _validate_updates(
        self, server_round: int, replies: list[Message], global_arrays: ArrayRecord
    ) -> tuple[list[Message], dict[str, str]]:
        """Leave out of this round the updates ``validation`` rejects; the sites stay in."""
        verdict = validate_updates(
            {r.metadata.src_node_id: r.content[p.ARRAYS] for r in replies},
            global_arrays,
            self.spec.training.max_update_ratio,
            {node: site.name for node, site in self.sites.items()},
        )
        rejected = {}
        for node, reason in verdict.rejected.items():
            site = self.sites[node]
            site.rejected_updates.append({"round": server_round, "reason": reason})
            rejected[site.name] = reason
        keep = set(verdict.accepted)
        return [r for r in replies if r.metadata.src_node_id in keep], rejected

    def _evaluate(self, evaluator: Evaluator, arrays: ArrayRecord, server_round: int) -> None:
        """Both evaluation releases of the global model at every active site, pooled."""
        config = self._scaling_config()
        config[p.RUN_KEY] = self.run_key
        config[p.SERVER_ROUND] = server_round
        active = sorted(self._active())
        names = {node: self.sites[node].name for node in active}
        result = evaluator.evaluate(arrays, config, active, names)
        self.metrics, self.representation = result.metrics, result.representation
        self.evaluated_round = server_round
        for node, count in result.n_test.items():
            self.sites[node].n_test = count
        for node, epsilon in result.epsilon.items():
            self.sites[node].evaluation_epsilon = epsilon
        pooled = self.metrics.get("pooled") or {}
        self.diagnostics = sorted({*self.diagnostics, *(pooled.get("diagnostics") or [])})

    def _reject(self, node: int, reason: str) -> None:
        self.sites[node].fail(p.FAILED, _short(reason))

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
            if not any(d.startswith("the model diverged: a weight") for d in self.diagnostics):
                self.diagnostics.append(finding)
                log.warning(finding)

    # -- outputs ---------------------------------------------------------------------------

    def _finish(self, arrays: ArrayRecord) -> None:
        """The final model and its card, with the evaluation the sites released of it."""
        spec = self.spec
        state_dict = arrays.to_torch_state_dict()
        card = build_model_card(
            spec,
            state_dict,
            rounds=self.rounds_done,
            scaling=scaling_rows(spec, *self.scaling, self.scaling_warnings, self.estimated_bounds),
            privacy=self._privacy_header(),
            sites={s.name: self._site_summary(s) for s in self.sites.values()},
            metrics=self.metrics,
            evaluated_round=self.evaluated_round,
            diagnostics=self.diagnostics,
        )
        self.outputs.write_model(state_dict, card)

    def _privacy_header(self) -> dict[str, Any]:
        privacy = self.spec.privacy
        return {
            "enabled": privacy.enabled,
            "target_epsilon": privacy.target_epsilon if privacy.enabled else None,
            "delta": privacy.delta if privacy.enabled else None,
            "accountant": privacy.accountant if privacy.enabled else None,
        }

    def _site_summary(self, site: SiteRecord) -> dict[str, Any]:
        privacy = self.spec.privacy
        return {
            "status": site.status,
            "reason": site.reason,
            "epsilon": site.epsilon if privacy.enabled else None,
            "delta": site.delta if privacy.enabled else None,
            "noise_multiplier": site.noise_multiplier,
            "sample_rate": site.sample_rate,
            "steps": site.steps,
            "other_releases": site.other_releases,
            "accountant": privacy.accountant if privacy.enabled else None,
            "n_train": site.n_train,
            "n_test": site.n_test,
            "evaluation_epsilon": site.evaluation_epsilon,
            "participant_epsilon": _participant_epsilon(site) if privacy.enabled else None,
            "epsilon_by_round": site.epsilon_by_round,
            "rejected_updates": site.rejected_updates,
        }

    def _summary(self, status: str, error: str | None) -> dict[str, Any]:
        study = self.spec.study
        return {
            "study": study.name,
            "task": study.task,
            "label": study.label,
            "groups": list(study.groups),
            "status": status,
            "error": error,
            "rounds": self.rounds_done,
            "planned_rounds": self.spec.training.rounds,
            "strategy": self.spec.training.strategy,
            "model": self.spec.model.name,
            "privacy": self._privacy_header(),
            "sites": {s.name: self._site_summary(s) for s in self.sites.values()},
            "representation": self.representation,
            "evaluated_round": self.evaluated_round,
            "diagnostics": self.diagnostics,
            "scaling_warnings": self.scaling_warnings,
            "metrics": self.metrics,
        }


def initial_model(spec: StudySpec, n_features: int) -> torch.nn.Module:
    """Deterministic start: zeros for logistic regression, seeded weights for an MLP."""
    with torch.random.fork_rng():  # the seed stays here, out of the process's global RNG
        torch.manual_seed(spec.study.seed)
        model = build_model(spec.model.name, n_features, spec.model.hidden)
    if spec.model.name == "logistic":
        with torch.no_grad():
            for param in model.parameters():
                param.zero_()
    return model


def _update_problem(content: RecordDict, global_arrays: ArrayRecord, dp: bool) -> str | None:
    """Why a train reply breaks the wire contract (the site is dropped), or None. The weights
    themselves are checked against the model and the other sites in ``validation``."""
    if set(content.keys()) != {p.ARRAYS, p.METRICS}:
        return f"unexpected records {sorted(content.keys())}"
    arrays, metrics = content[p.ARRAYS], content[p.METRICS]
    if not isinstance(arrays, ArrayRecord):
        return "the weights are not an ArrayRecord"
    expected_metrics = set(p.TRAIN_METRICS) if dp else {p.NUM_EXAMPLES}
    if set(metrics.keys()) != expected_metrics:
        return f"metrics {sorted(metrics.keys())} are not the whitelist {sorted(expected_metrics)}"
    if int(metrics[p.NUM_EXAMPLES]) < 1:
        return "num-examples must be positive"
    return None


def _setup_problem(metrics: Any, columns: int, estimated: int) -> str | None:
    """Why a setup reply breaks the wire contract, or None (``columns``: the pooled columns
    with declared bounds, ``estimated``: those whose bounds are estimated)."""
    count = metrics.get(p.N_TRAIN)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return "n-train must be a positive whole number"
    histograms = metrics.get(p.BOUNDS_HISTOGRAMS)
    if histograms is not None:
        if not _finite_list(histograms, estimated * N_BINS):
            return f"the bounds histograms must be {estimated * N_BINS} finite numbers"
        if not _positive(metrics.get(p.BOUNDS_NOISE)):
            return "the bounds histograms need their positive noise multiplier"
    if any(k in metrics for k in (p.SUM, p.SUM_SQUARES, p.COUNT)):
        return _sums_problem(metrics, columns)
    return None


def _sums_problem(metrics: Any, columns: int) -> str | None:
    """Why a reply's standardization sums break the wire contract, or None."""
    sums = [metrics.get(k) for k in (p.SUM, p.SUM_SQUARES, p.COUNT)]
    if not all(_finite_list(s, columns) for s in sums):
        return f"the standardization sums must be {columns} finite numbers each"
    noise = metrics.get(p.STANDARDIZATION_NOISE)
    if noise is not None and not _positive(noise):
        return "the standardization noise multiplier must be positive"
    return None


def _finite_list(value: Any, length: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == length
        and all(isinstance(v, float | int) and math.isfinite(v) for v in value)
    )


def _positive(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and 0 < value < math.inf


def _note_release(site: SiteRecord, metrics: Any, noise_key: str) -> None:
    """A one-shot release a reply says it made (its noise multiplier), for the summary."""
    if noise_key in metrics:
        site.other_releases.append(
            {"noise_multiplier": float(metrics[noise_key]), "sample_rate": 1.0, "steps": 1}
        )


def _participant_epsilon(site: SiteRecord) -> float | None:
    """A participant is in the training or the test partition, never both: the larger of the
    two partitions' epsilons."""
    spent = [e for e in (site.epsilon, site.evaluation_epsilon) if e is not None]
    return max(spent) if spent else None


def _declined(reply: Message) -> bool:
    """A reply in which the site says it failed or refused (with its reason)."""
    status = reply.content.config_records.get(p.STATUS)
    return status is not None and status[p.STATUS_STATE] != p.OK


def _only(messages: Iterable[Message], nodes: set[int]) -> list[Message]:
    return [m for m in messages if m.metadata.dst_node_id in nodes]


def _reject_duplicate_names(sites: Iterable[SiteRecord]) -> None:
    seen: set[str] = set()
    for site in sites:
        if site.name in seen:
            raise RunFailed(f"two nodes call themselves {site.name!r}; site names must be unique")
        seen.add(site.name)


def _node_error(reason: str) -> str:
    """The exception's own message out of the engine's report (Ray wraps it in a traceback)."""
    messages = re.findall(r"Message: (.+?)(?:\n|$)", str(reason))
    return _short(messages[-1].rstrip("'>\" ") if messages else reason)


def _short(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
