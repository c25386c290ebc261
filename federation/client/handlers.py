"""What a site node does for each message the monitor lets through: census, setup, train, evaluate
(two releases) and analyze. Every handler returns the reply's content or raises ``Refused``; the
monitor (``client.monitor``) has already checked the message's shape and the site's policy.

Training and evaluation happen only inside a run the site's ledger admitted, for the same study
spec (its digest is bound to the run key at admission) and within the plan the ledger holds;
every release is recorded in the ledger before it is computed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from federation.client.data import SiteTable
from federation.client.evaluation import histogram_release, members_of, rank_release
from federation.client.features import (
    Bounds,
    bounds_counts,
    encode,
    resolve_scaling,
    scaling_sums,
)
from federation.client.plan import (
    DP_SGD,
    SETUP_SUMS,
    SitePlan,
    partition_epsilon,
    recorded,
    site_plan,
)
from federation.client.queries import answer
from federation.client.scoring import risks
from federation.client.site import SiteSettings, site_partition, site_table
from federation.client.survival_evaluation import concordance_release, survival_release
from federation.client.training import LocalSettings, train_dp, train_plain
from federation.errors import AllfedError, SpecError
from federation.wire import protocol as p
from federation.wire.evaluation import layout, rank_requests_from_config
from federation.wire.queries import AnalysisRequest, build_query, planned_release
from federation.wire.spec import StudySpec, estimated_columns, federated_columns, model_cuts
from federation.wire.survival_evaluation import (
    concordance_requests_from_config,
    linear_predictors,
    score_edges,
)
from models.registry import build_model
from privacy.bounds import release_histograms
from privacy.ledger import ALL, TEST, TRAIN, Ledger, PlannedRelease, RunPlan
from privacy.limits import delta_too_weak
from privacy.refusal import Refusal
from privacy.scaling import release_scaling_sums

log = logging.getLogger("allfed.site")

_STATE = "allfed"  # this node's ConfigRecord in context.state: the run it serves, a plan cache
# A run's settings in the ledger: the training settings it was planned with, the bounds it
# pooled its scaling with and the scaling reply (sent again if asked again).
TRAINING, BOUNDS, SCALING_REPLY = "training", "bounds", "scaling-reply"


class Refused(Exception):
    """The site declines this message; only ``refusal.public()`` leaves the site."""

    def __init__(self, refusal: Refusal, state: str = p.REFUSED) -> None:
        super().__init__(refusal.detail or refusal.check)
        self.refusal, self.state = refusal, state


@dataclass(frozen=True)
class Request:
    """One message the monitor admitted, with the site it is for and the site's ledger."""

    kind: str
    message: Message
    context: Context
    site: SiteSettings
    ledger: Ledger

    @property
    def config(self) -> ConfigRecord:
        content = self.message.content
        return content[p.CONFIG] if p.CONFIG in content else ConfigRecord()

    @property
    def spec(self) -> StudySpec:
        return self.site.spec


def spec_digest(spec: StudySpec) -> str:
    return hashlib.sha256(spec.to_toml().encode("utf-8")).hexdigest()


# -- census and setup ----------------------------------------------------------------------------


def census(request: Request) -> RecordDict:
    """The site's public training-record count, which the aggregator's planner needs from every
    site before setup; the same data checks as setup, and no release."""
    table = _checked_table(request)
    return _ok(request.site.name, MetricRecord({p.N_TRAIN: table.n_train}))


def _checked_table(request: Request) -> SiteTable:
    """The site's checked table, refused when the study's delta is too weak for its size."""
    spec, site = request.spec, request.site
    table = site_table(site, site_partition(site, request.ledger))
    if spec.privacy.enabled and delta_too_weak(spec.privacy.delta, table.n_train):
        raise Refused(
            Refusal(
                "delta-too-weak",
                "delta",
                f"delta {spec.privacy.delta:g} is too weak for {table.n_train} records",
            )
        )
    return table


def setup(request: Request) -> RecordDict:
    """Admit the run: check the data, plan the training settings the spec leaves out and the
    releases, let the ledger admit them (and record setup's release first), then release this
    site's noisy sums, or, where the study leaves bounds to estimate, its noisy bounds
    histograms (the sums follow in the scaling message). A repeated setup of an admitted run
    answers what the first one released and plans, resets and releases nothing."""
    site, ledger = request.site, request.ledger
    run_key = str(request.config.get(p.RUN_KEY, "") or "")
    resume_after = int(request.config.get(p.RESUME_AFTER, 0) or 0)
    if run_key and (known := ledger.run(run_key)) is not None:
        return _repeated_setup(request, run_key, known, resume_after)
    if resume_after > 0:
        raise Refused(Refusal("resume-refused", None, f"run {run_key!r} is not in the ledger"))
    table = _checked_table(request)
    spec = request.spec.planned(_smallest_n_train(request, table.n_train))
    with_sums = bool(federated_columns(spec) or estimated_columns(spec))
    plan = _site_plan(spec, table.n_train, with_sums)
    run_key = run_key or f"{request.context.run_id}-{secrets.token_hex(4)}"
    refusal = ledger.admit(
        RunPlan(
            run_key,
            spec.study.name,
            spec.privacy.accountant,
            spec.privacy.delta,
            spec.privacy.target_epsilon,
            plan.releases(),
            spec_digest(request.spec),
            settings={TRAINING: planned_settings(spec)},
        ),
        site.budget(),
        first=plan.setup_releases(),  # recorded before it is computed
    )
    if refusal:
        raise Refused(refusal)
    metrics = MetricRecord({p.N_TRAIN: table.n_train})
    if plan.bounds_noise is not None:
        counts = release_histograms(bounds_counts(table, spec), plan.bounds_noise)
        metrics[p.BOUNDS_HISTOGRAMS] = counts.ravel().tolist()
        metrics[p.BOUNDS_NOISE] = plan.bounds_noise
    elif with_sums:
        metrics.update(_released_sums(table, spec, plan.setup_noise, spec.features.bounds))
    ledger.store_setup_reply(run_key, dict(metrics))
    _bind(request.context, run_key, plan)
    return _ok(site.name, metrics)


def _released_sums(
    table: SiteTable, spec: StudySpec, noise: float | None, bounds: Mapping[str, Bounds]
) -> dict[str, list[float] | float]:
    """The standardization sums of the pooled columns, noisy under DP (``noise``)."""
    sums = scaling_sums(table, spec, bounds)
    released: dict[str, list[float] | float] = {}
    if noise is not None:
        sums = release_scaling_sums(sums, noise)
        released[p.STANDARDIZATION_NOISE] = noise
    released[p.SUM], released[p.SUM_SQUARES], released[p.COUNT] = (s.tolist() for s in sums)
    return released


def scaling(request: Request) -> RecordDict:
    """The sums, after the aggregator pooled the bounds histograms: clipped to the bounds it
    sends for the estimated columns (any bounds keep the sums' sensitivity, so a crafted pair
    costs only utility), recorded by the ledger first, and kept with the bounds, which every
    later message of the run then encodes with. Asked again, the site answers the same."""
    run = bound_run(request)
    planned = run.plan.scaling_release()
    if planned is None:
        raise Refused(Refusal("plan-exhausted", None, "the run plans no scaling release"))
    settings = run.settings  # read once, by bound_run
    if SCALING_REPLY in settings:
        return _ok(request.site.name, MetricRecord(settings[SCALING_REPLY]))
    estimated = _estimated_bounds(request.config, run.spec)
    refusal = request.ledger.record_release(run.key, 0, planned, request.site.budget())
    if refusal:
        raise Refused(refusal)
    bounds = {**run.spec.features.bounds, **estimated}
    released = _released_sums(run.table, run.spec, planned.release.noise_multiplier, bounds)
    request.ledger.update_settings(
        run.key, {**settings, BOUNDS: estimated, SCALING_REPLY: released}
    )
    return _ok(request.site.name, MetricRecord(released))


def _estimated_bounds(config: ConfigRecord, spec: StudySpec) -> dict[str, Bounds]:
    """The aggregator's bounds for columns whose bounds the study estimates: finite, low below
    high; a column it sends none for stays scaled by each site."""
    estimated = set(estimated_columns(spec))
    bounds = {}
    for key, value in config.items():
        if key == p.RUN_KEY:
            continue
        try:
            column = p.decode_name(key.removeprefix(f"{p.BOUNDS}."))
        except ValueError:
            raise Refused(Refusal("bad-config-value", None, f"key {key!r}")) from None
        if column not in estimated:
            raise Refused(Refusal("bad-config-value", None, f"no bounds to estimate: {key!r}"))
        pair = list(value) if isinstance(value, list) else []
        if (
            len(pair) != 2
            or not all(isinstance(v, float | int) and not isinstance(v, bool) for v in pair)
            or not all(math.isfinite(v) for v in pair)
            or not pair[0] < pair[1]
        ):
            raise Refused(Refusal("bad-config-value", None, f"bounds of {key!r}"))
        bounds[column] = (float(pair[0]), float(pair[1]))
    return bounds


def _smallest_n_train(request: Request, n_train: int) -> int:
    """The smallest site's training-record count the aggregator says its census found. It only
    sizes the settings the spec leaves out, and the site's noise meets its budget whatever they
    are; a count above the site's own cannot be the smallest, so the site's own caps it."""
    value = request.config.get(p.SMALLEST_N_TRAIN, n_train)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Refused(Refusal("bad-config-value", p.SMALLEST_N_TRAIN, f"value {value!r}"))
    return min(value, n_train)


def planned_settings(spec: StudySpec) -> dict[str, int | float | None]:
    """The training settings a run was planned with, as the ledger keeps them."""
    training = spec.training
    return {
        "rounds": training.rounds,
        "local_epochs": training.local_epochs,
        "batch_size": training.batch_size,
        "steps_per_round": training.steps_per_round,
        "learning_rate": training.learning_rate,
    }


def _planned_spec(spec: StudySpec, run: dict, n_train: int) -> StudySpec:
    """The run's spec with the training settings the ledger admitted it with (a run admitted
    before the ledger kept them is planned as if its site were the smallest: the plan check
    then refuses it if that is not what was admitted)."""
    settings = run.get("settings")
    if settings is None:
        return spec.planned(n_train)
    return spec.with_overrides(training=settings[TRAINING], source="the ledger's planned run")


def _run_bounds(spec: StudySpec, run: dict) -> dict[str, Bounds]:
    """The bounds the run's scaling was pooled with: declared, and estimated once sent."""
    estimated = (run.get("settings") or {}).get(BOUNDS, {})
    return {**spec.features.bounds, **{c: tuple(b) for c, b in estimated.items()}}


def _repeated_setup(request: Request, run_key: str, known: dict, resume_after: int) -> RecordDict:
    """A second setup under a recorded run key: the same spec, an admitted run and the same
    plan, or a refusal; the reply is the first one's (without the sums on a resume: the
    aggregator kept its pooled scaling)."""
    spec, site = request.spec, request.site
    if known["spec_digest"] != spec_digest(spec) or known["kind"] != "training":
        raise Refused(Refusal("run-key-in-use", None, f"run {run_key} has another spec"))
    if known["status"] != "admitted" or known["setup_reply"] is None:
        raise Refused(Refusal("no-admitted-run", None, f"run {run_key} was {known['status']}"))
    table = site_table(site, site_partition(site, request.ledger))
    plan = _checked_plan(request, table, known)
    done = sum(1 for r in request.ledger.run_releases(run_key) if r["mechanism"] == DP_SGD)
    if resume_after and done > resume_after:
        log.warning(
            "site %s: %d round(s) recorded but not completed by the server count as spent",
            site.name,
            done - resume_after,
        )
    _bind(request.context, run_key, plan)
    metrics = MetricRecord(dict(known["setup_reply"]))
    if resume_after:
        for name in (*p.SCALING_METRICS, p.BOUNDS_HISTOGRAMS, p.BOUNDS_NOISE):
            metrics.pop(name, None)
    return _ok(site.name, metrics)


def _checked_plan(request: Request, table: SiteTable, run: dict) -> SitePlan:
    """The run's plan worked out again; it must be the plan the ledger admitted (the same spec,
    settings and training-record count)."""
    state = request.context.state.get(_STATE)
    if state is not None and state.get("run-key") == run["run_id"] and "plan" in state:
        return SitePlan.from_json(str(state["plan"]))
    with_sums = any(item[0] == SETUP_SUMS for item in run["planned"])
    plan = _site_plan(_planned_spec(request.spec, run, table.n_train), table.n_train, with_sums)
    if [r.as_list() for r in plan.releases()] != run["planned"]:
        raise Refused(
            Refusal("spec-changed", None, "the site's data changed since the run was admitted")
        )
    return plan


def _site_plan(spec: StudySpec, n_train: int, with_sums: bool) -> SitePlan:
    """The site's plan, or a refusal when no noise meets the budget (the detail, with the
    site's size, stays at the site)."""
    try:
        return site_plan(spec, n_train, with_sums)
    except ValueError as error:
        raise Refused(
            Refusal("plan-infeasible", "target-epsilon", f"{error} ({n_train} training records)")
        ) from None


def _bind(context: Context, run_key: str, plan: SitePlan) -> None:
    """This Flower run's node state remembers the run it serves and its plan (a cache: the
    ledger is the authority)."""
    context.state[_STATE] = ConfigRecord({"run-key": run_key, "plan": plan.to_json()})


@dataclass(frozen=True)
class BoundRun:
    """An admitted training run a train or evaluate message belongs to."""

    key: str
    plan: SitePlan
    table: SiteTable
    spec: StudySpec  # the message's spec with the training settings the run was planned with
    bounds: dict[str, Bounds]  # declared and estimated: what the run clips and pools with
    settings: dict[str, Any]  # the ledger's settings of the run, as read for this message


def bound_run(request: Request) -> BoundRun:
    """The admitted run of this message: its key from the message or this node's state, in the
    ledger as admitted, of this very spec, with the plan the ledger holds."""
    state = request.context.state.get(_STATE)
    key = str(request.config.get(p.RUN_KEY, "") or "") or (
        str(state["run-key"]) if state is not None and "run-key" in state else ""
    )
    if not key:
        raise Refused(Refusal("no-admitted-run", None, "no setup admitted a run for this message"))
    run = request.ledger.run(key)
    if run is None or run["status"] != "admitted" or run["kind"] != "training":
        raise Refused(Refusal("no-admitted-run", None, f"run {key} is not admitted"))
    if run["spec_digest"] != spec_digest(request.spec):
        raise Refused(Refusal("spec-changed", None, f"run {key} was admitted for another spec"))
    table = site_table(request.site, site_partition(request.site, request.ledger))
    plan = _checked_plan(request, table, run)
    _bind(request.context, key, plan)
    spec = _planned_spec(request.spec, run, table.n_train)
    return BoundRun(key, plan, table, spec, _run_bounds(spec, run), run.get("settings") or {})


# -- train ---------------------------------------------------------------------------------------


def train(request: Request) -> RecordDict:
    """One round of local training: the ledger records the round's release first (refusing one
    the plan or the budgets no longer hold), then DP-SGD from the message's weights."""
    config = request.config
    run = bound_run(request)
    spec = run.spec
    x, y, model = _inputs(request, run, test=False)
    settings = LocalSettings(
        epochs=spec.training.local_epochs,
        batch_size=spec.training.batch_size_for(run.table.n_train),
        learning_rate=spec.training.learning_rate,
        max_grad_norm=spec.privacy.max_grad_norm,
        proximal_mu=float(config.get(p.PROXIMAL_MU, 0.0)),
    )
    server_round = int(config.get(p.SERVER_ROUND, 0))
    kept = request.ledger.kept_reply(run.key, server_round, "train")
    if kept is not None:  # released already (the server lost it): the same release again
        return _unpacked(kept)
    metrics = MetricRecord({p.NUM_EXAMPLES: len(y)})
    if run.plan.dp is None:
        done = request.ledger.message_count(run.key, "train", p.OK)
        if done >= spec.training.rounds:
            raise Refused(Refusal("plan-exhausted", None, "every planned round was trained"))
        train_plain(model, x, y, settings)
        return RecordDict({p.ARRAYS: ArrayRecord(model.state_dict()), p.METRICS: metrics})
    refusal = request.ledger.record_release(
        run.key, server_round, run.plan.round_release(), request.site.budget()
    )
    if refusal:
        raise Refused(refusal)
    dp = run.plan.dp
    train_dp(model, x, y, settings, dp)
    releases = recorded(request.ledger.run_releases(run.key))
    steps = sum(r.release.steps for r in releases if r.mechanism == DP_SGD)
    epsilon = dp.epsilon_after(steps)
    if epsilon is None:
        epsilon = partition_epsilon(releases, TRAIN, spec.privacy.delta, spec.privacy.accountant)
    metrics[p.EPSILON] = epsilon
    metrics[p.DELTA] = spec.privacy.delta
    metrics[p.NOISE_MULTIPLIER] = dp.noise_multiplier
    metrics[p.SAMPLE_RATE] = dp.sample_rate
    metrics[p.STEPS] = steps
    reply = RecordDict({p.ARRAYS: ArrayRecord(model.state_dict()), p.METRICS: metrics})
    request.ledger.keep_reply(run.key, server_round, "train", _packed(reply))
    return reply


def _packed(reply: RecordDict) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {"arrays": reply[p.ARRAYS].to_torch_state_dict(), "metrics": dict(reply[p.METRICS])},
        buffer,
    )
    return buffer.getvalue()


def _unpacked(content: bytes) -> RecordDict:
    kept = torch.load(io.BytesIO(content), weights_only=True)
    return RecordDict(
        {p.ARRAYS: ArrayRecord(kept["arrays"]), p.METRICS: MetricRecord(kept["metrics"])}
    )


# -- evaluate ------------------------------------------------------------------------------------


def evaluate(request: Request) -> RecordDict:
    """Release 1 of an evaluation (``federation.wire.evaluation``): the test partition's noisy
    histograms and sums of the message's model, admitted by the ledger first."""
    return _evaluation(request, ranks=False)


def evaluate_ranks(request: Request) -> RecordDict:
    """Release 2 of an evaluation: the noisy rank sums the aggregator's CDFs ask for."""
    return _evaluation(request, ranks=True)


def _evaluation(request: Request, ranks: bool) -> RecordDict:
    spec = request.spec
    run = bound_run(request)
    survival = spec.study.task == "survival"
    cells, cuts = layout(spec), model_cuts(spec)
    requests = {}
    if ranks:
        try:
            if survival:
                requests = concordance_requests_from_config(
                    request.config, cells.rank_cells(), len(cuts) + 1
                )
            else:
                requests = rank_requests_from_config(request.config, cells.rank_cells())
        except ValueError as error:
            raise Refused(Refusal("bad-config-value", "ranks", str(error))) from None
    x, y, model = _inputs(request, run, test=True)
    planned = run.plan.evaluation_release(ranks)
    refusal = request.ledger.record_release(
        run.key, int(request.config.get(p.SERVER_ROUND, 0)), planned, request.site.budget()
    )
    if refusal:
        raise Refused(refusal)
    members = members_of(run.table, spec)
    noise = planned.release.noise_multiplier
    if survival:
        scores, edges = linear_predictors(model, x), score_edges(spec, model)
        if ranks:
            released = concordance_release(y, scores, members, cells, cuts, edges, requests, noise)
        else:
            released = survival_release(y, scores, members, cells, cuts, edges, noise)
    elif ranks:
        released = rank_release(y, risks(model, x), members, cells, requests, noise)
    else:
        released = histogram_release(y, risks(model, x), members, cells, noise)
    releases = recorded(request.ledger.run_releases(run.key))
    metrics = MetricRecord(released)
    metrics[p.EPSILON] = partition_epsilon(
        releases, TEST, spec.privacy.delta, spec.privacy.accountant
    )
    metrics[p.NOISE_MULTIPLIER] = noise
    return RecordDict({p.METRICS: metrics})


def _inputs(request: Request, run: BoundRun, test: bool):
    """The train (or test) rows encoded with the aggregator's scaling and the run's bounds, and
    the model the message carries, checked against the study's model (names, shapes, finite
    values)."""
    spec, config, table = request.spec, request.config, run.table
    try:
        center = [float(v) for v in config[p.SCALING_CENTER]]
        scale = [float(v) for v in config[p.SCALING_SCALE]]
    except (KeyError, TypeError, ValueError):
        raise Refused(Refusal("bad-config-value", p.SCALING_CENTER, "no scaling")) from None
    if not all(np.isfinite(center)) or not all(np.isfinite(scale)) or min(scale, default=1) <= 0:
        raise Refused(Refusal("bad-config-value", p.SCALING_SCALE, "a non-finite scaling"))
    try:
        center_all, scale_all = resolve_scaling(table, spec, center, scale, run.bounds)
    except ValueError:
        raise Refused(Refusal("bad-config-value", p.SCALING_CENTER, "scaling length")) from None
    x, y = encode(table, spec, center_all, scale_all, test=test, bounds=run.bounds)
    model = build_model(spec.model.name, x.shape[1], spec.model.hidden, model_cuts(spec))
    expected = model.state_dict()
    try:
        weights = request.message.content[p.ARRAYS].to_torch_state_dict()
    except Exception:  # whatever Flower raises for a malformed ArrayRecord
        raise Refused(Refusal("bad-model", p.ARRAYS, "unreadable arrays")) from None
    if list(weights) != list(expected) or any(
        weights[k].shape != expected[k].shape
        or weights[k].dtype != expected[k].dtype
        or not torch.isfinite(weights[k]).all()
        for k in expected
    ):
        raise Refused(Refusal("bad-model", p.ARRAYS, "arrays differ from the study's model"))
    model.load_state_dict(weights)
    return x, y, model


# -- analyze -------------------------------------------------------------------------------------


def analyze(request: Request) -> RecordDict:
    """A descriptive analysis: its one release on all the site's records, admitted by the ledger
    before anything is computed, then the noisy cells with small counts withheld."""
    spec, site, ledger = request.spec, request.site, request.ledger
    try:
        analysis = AnalysisRequest.from_json(str(request.config[p.ANALYSIS_REQUEST]))
        query = build_query(analysis, spec)
    except SpecError as error:
        raise Refused(Refusal("analysis-invalid", None, str(error)), p.FAILED) from None
    except (KeyError, TypeError, ValueError):
        raise Refused(Refusal("analysis-invalid", None, "malformed request"), p.FAILED) from None
    refusal = site.policy.refusal(spec.study.name, None, True, analysis.epsilon, analysis.delta)
    if refusal:
        raise Refused(refusal)
    try:
        noise = planned_release(analysis)
    except ValueError as error:  # an epsilon no noise can reach
        raise Refused(Refusal("analysis-invalid", "epsilon", str(error)), p.FAILED) from None
    table = site_table(site, site_partition(site, ledger), trainable=False)
    if delta_too_weak(analysis.delta, len(table.label)):
        raise Refused(Refusal("delta-too-weak", "delta", "delta too weak for the site's records"))
    run_key = str(request.config.get(p.RUN_KEY, "") or "") or (
        f"{request.context.run_id}-{secrets.token_hex(4)}"
    )
    planned = PlannedRelease(f"analysis-{analysis.kind}", ALL, noise)
    refusal = ledger.admit(
        RunPlan(
            run_key,
            spec.study.name,
            analysis.accountant,
            analysis.delta,
            analysis.epsilon,
            (planned,),
            spec_digest(spec),
            kind="analysis",
        ),
        site.budget(),
        first=[planned],  # recorded before it is computed
    )
    if refusal:
        raise Refused(refusal)
    cells, epsilon = answer(analysis, query, table, spec, noise, site.policy.min_cell_count)
    metrics = MetricRecord(
        {p.EPSILON: epsilon, p.DELTA: analysis.delta, p.NOISE_MULTIPLIER: noise.noise_multiplier}
    )
    for (stratum, variable, level, statistic), value in cells.items():
        key = ".".join((p.CELL, *map(p.encode_name, (stratum, variable, level)), statistic))
        metrics[key] = int(value) if statistic == "count" else value
    request.context.state[_STATE] = ConfigRecord({"run-key": run_key})
    return _ok(site.name, metrics)


def _ok(site: str, metrics: MetricRecord) -> RecordDict:
    return RecordDict({p.STATUS: status(site, p.OK, ""), p.METRICS: metrics})


def status(site: str, state: str, reason: str) -> ConfigRecord:
    return ConfigRecord({p.STATUS_SITE: site, p.STATUS_STATE: state, p.STATUS_REASON: reason})


def data_error(error: AllfedError) -> Refused:
    """A user mistake at the site (its data, its configuration) as a refusal that names only
    the check and the column."""
    return Refused(error.refusal(), p.FAILED)
