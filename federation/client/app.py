"""The site node: a Flower ClientApp that answers setup, train and evaluate messages.

What leaves the site is fixed here: a setup reply (site name, status, record counts, training
records per group level with small cells withheld and, under DP, noisy standardization sums), a
train reply (model weights plus the whitelisted metrics in ``protocol.TRAIN_METRICS``) and an
evaluate reply (additive score statistics, per group level and per intersection of two group
columns too, coarsened and with small groups withheld). Across the rounds of a run the node keeps
its privacy plan and its accountant's history in ``context.state``, which never leaves the node.

Governance (``privacy``): the site's policy is checked before anything is computed and wins over
the run config; with a ledger, the run is admitted only if its whole plan fits the site's budgets,
every noisy release is committed to the ledger before it is computed, and every round is checked
again (the hard stop). Every reply passes the disclosure guard and is written to the ledger's
audit trail before it is returned to Flower.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federation import protocol as p
from federation.client.data import SiteTable, load_site_table
from federation.client.features import encode, resolve_scaling, scaling_sums
from federation.client.queries import answer
from federation.client.training import DPPlan, LocalSettings, plan_dp, train_dp, train_plain
from federation.errors import AllfedError, SpecError
from federation.queries import AnalysisRequest, build_query, planned_release
from federation.scorestats import (
    ScoreStats,
    counts_to_record,
    encode_name,
    group_stats,
    groups_to_record,
    intersect_groups,
    level_counts,
)
from federation.spec import StudySpec, spec_from_run_config
from models.registry import build_model
from privacy.accounting import (
    GaussianRelease,
    compute_epsilon,
    dumps_releases,
    loads_releases,
    merged,
)
from privacy.disclosure import is_disclosive
from privacy.guard import DisclosureError, Whitelist, check_message
from privacy.ledger import Budget, Ledger, RunPlan
from privacy.planner import share_noise
from privacy.policy import PolicyError, SitePolicy, load_policy, permissive_policy
from privacy.scaling import release_scaling_sums
from privacy.statistics import COUNT

log = logging.getLogger("allfed.site")

_STATE = "allfed"  # key of this node's ConfigRecord in context.state


@dataclass(frozen=True)
class SiteSettings:
    """Who this node is, where its data lives, and the study it is asked to join."""

    name: str
    data: Path
    spec: StudySpec
    policy: SitePolicy = field(default_factory=permissive_policy)
    ledger: Path | None = None

    def budget(self) -> Budget:
        policy = self.policy
        return Budget(
            policy.lifetime_epsilon,
            policy.lifetime_delta,
            policy.accountant,
            policy.max_epsilon_per_run,
        )


def site_policy(path: str | Path | None) -> SitePolicy:
    """The policy file's rules, or only the dissemination rule when the site has none."""
    if not path:
        return permissive_policy()
    try:
        return load_policy(path)
    except PolicyError as error:
        raise AllfedError(str(error)) from None


def settings_from_context(context: Context) -> SiteSettings:
    """Deployment: data and site name from ``--node-config``, the study from the run config."""
    node, run = context.node_config, context.run_config
    if p.NODE_DATA in node:
        data, name = str(node[p.NODE_DATA]), str(node.get(p.NODE_SITE) or f"node-{context.node_id}")
    elif "partition-id" in node and run.get(p.RUN_SITES):
        name, data = _site_of_partition(p.site_entries(run), int(node["partition-id"]))
    else:
        raise AllfedError("the SuperNode needs --node-config 'data=\"PATH\"' (its site data file)")
    ledger = str(node.get(p.NODE_LEDGER) or "")
    return SiteSettings(
        name=name,
        data=Path(data),
        spec=spec_from_run_config(run),
        policy=site_policy(str(node.get(p.NODE_POLICY) or "")),
        ledger=Path(ledger) if ledger else None,
    )


def _site_of_partition(entries: list[tuple[str, str]], partition: int) -> tuple[str, str]:
    """``flwr run`` on the local simulation engine: run config ``sites = "A=PATH,B=PATH"``."""
    if partition >= len(entries):
        raise AllfedError(
            f"run config 'sites' names {len(entries)} sites; node {partition} has none"
        )
    return entries[partition]


def make_client_app(
    resolve: Callable[[Context], SiteSettings] = settings_from_context,
    mods: list[Callable] | None = None,
) -> ClientApp:
    """A ClientApp whose site settings come from ``resolve`` (deployment or simulation), with
    optional Flower ``mods`` around every handler (fault-injection tests use them)."""
    client_app = ClientApp(mods=mods)

    @client_app.query("setup")
    def setup(msg: Message, context: Context) -> Message:
        return _send("setup", msg, context, _resolved(resolve, context), _setup)

    @client_app.query("analyze")
    def analyze(msg: Message, context: Context) -> Message:
        return _send("analyze", msg, context, _resolved(resolve, context), _analyze)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        return _send("train", msg, context, _resolved(resolve, context), _train)

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _send("evaluate", msg, context, _resolved(resolve, context), _evaluate)

    return client_app


def _resolved(resolve, context: Context) -> SiteSettings | AllfedError:
    try:
        return resolve(context)
    except AllfedError as error:
        return error


_WHITELISTS = {
    kind: Whitelist(p.REPLY_RECORDS[kind], p.REPLY_KEYS[kind], p.COUNT_KEYS)
    for kind in p.REPLY_RECORDS
}


def _send(kind: str, msg: Message, context: Context, site, handler) -> Message:
    """Every reply's one way out: compute it, pass the disclosure guard, write the audit trail,
    and only then hand it to Flower."""
    if isinstance(site, AllfedError):
        return _reply(msg, _status(_safe_name(context), p.FAILED, str(site)))
    content = handler(msg, context, site)
    declared = None
    if kind == "train" and p.ARRAYS in msg.content:
        declared = {k: tuple(a.shape) for k, a in msg.content[p.ARRAYS].items()}
    try:
        check_message(_described(content), _WHITELISTS[kind], site.policy.min_cell_count, declared)
    except DisclosureError as error:
        log.error("site %s: the disclosure guard stopped a %s reply: %s", site.name, kind, error)
        content = _status(site.name, p.FAILED, f"the site's disclosure guard withheld it: {error}")
    if site.ledger is not None:
        state = context.state.get(_STATE)
        run_key = str(state["run-key"]) if state and "run-key" in state else str(context.run_id)
        status = content.config_records.get(p.STATUS)
        arrays = content.array_records.get(p.ARRAYS)
        Ledger(site.ledger).record_message(
            run_key,
            int(msg.content[p.CONFIG].get(p.SERVER_ROUND, 0)) if p.CONFIG in msg.content else 0,
            kind,
            str(status[p.STATUS_STATE]) if status is not None else p.OK,
            [f"{name}/{key}" for name, record in content.items() for key in record],
            {k: list(a.shape) for k, a in arrays.items()} if arrays is not None else {},
        )
    return _reply(msg, content)


def _described(content: RecordDict) -> dict[str, tuple[str, dict]]:
    """A reply as plain data for the guard: array shapes, metric and config values."""
    described: dict[str, tuple[str, dict]] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            described[name] = ("arrays", {k: tuple(a.shape) for k, a in record.items()})
        elif isinstance(record, MetricRecord):
            described[name] = ("metrics", dict(record))
        else:
            described[name] = ("config", dict(record))
    return described


def _setup(msg: Message, context: Context, site: SiteSettings) -> RecordDict:
    """Check the policy and the data, plan the run's privacy, ask the ledger to admit it and,
    when scaling is pooled, release this site's (noisy) sums."""
    spec = site.spec
    refusal = _policy_refusal(
        site,
        spec.model.name,
        spec.privacy.enabled,
        spec.privacy.target_epsilon,
        spec.privacy.delta,
    )
    if refusal:
        log.warning("site %s refuses the run: %s", site.name, refusal)
        return _status(site.name, p.REFUSED, refusal)
    try:
        table = _load(site)
    except AllfedError as error:
        log.error("site %s cannot join: %s", site.name, error)
        return _status(site.name, p.FAILED, str(error))
    config = msg.content[p.CONFIG] if p.CONFIG in msg.content else ConfigRecord()
    run_key = str(config.get(p.RUN_KEY, "") or "") or f"{context.run_id}-{secrets.token_hex(4)}"
    if spec.privacy.enabled and spec.privacy.delta * table.n_train >= 1:
        return _status(site.name, p.REFUSED, _weak_delta(spec.privacy.delta, table.n_train))
    min_cell = site.policy.min_cell_count
    metrics = MetricRecord({p.N_TRAIN: table.n_train})
    if not is_disclosive(table.n_test, min_cell):  # a small test split is withheld, not refused
        metrics[p.N_TEST] = table.n_test
    training_groups = {g: values[~table.is_test] for g, values in table.groups.items()}
    metrics.update(counts_to_record(level_counts(training_groups, min_cell), p.REPRESENTATION))
    resume_after = int(config.get(p.RESUME_AFTER, 0) or 0)
    if resume_after > 0:
        refusal = _resume(site, context, table.n_train, run_key, resume_after)
        if refusal:
            log.warning("site %s cannot resume the run: %s", site.name, refusal)
            return _status(site.name, p.REFUSED, refusal)
        content = _status(site.name, p.OK, "")
        content[p.METRICS] = metrics  # no sums again: the server kept the pooled scaling
        return content
    sums = scaling_sums(table, spec)
    standardization = None
    if len(sums[0]) and spec.privacy.enabled:
        standardization = GaussianRelease(_standardization_noise(spec), 1.0, 1)
    releases = [standardization] if standardization else []
    plan = None
    if spec.privacy.enabled:
        plan = _plan(spec, table.n_train, releases)
    _save_state(context, releases=[], plan=plan, run_key=run_key)
    if site.ledger is not None and spec.privacy.enabled:
        planned = [
            *releases,
            GaussianRelease(plan.noise_multiplier, plan.sample_rate, plan.planned_steps),
        ]
        refusal = Ledger(site.ledger).admit(
            RunPlan(
                run_key,
                spec.study.name,
                spec.privacy.accountant,
                spec.privacy.delta,
                spec.privacy.target_epsilon,
                merged(planned),
            ),
            site.budget(),
            first=[("gaussian-sums", r) for r in releases],  # recorded before they are computed
        )
        if refusal:
            log.warning("site %s refuses the run: %s", site.name, refusal)
            return _status(site.name, p.REFUSED, refusal)
    if len(sums[0]):
        if standardization is not None:
            noise = standardization.noise_multiplier
            sums = release_scaling_sums(sums, noise)
            metrics[p.STANDARDIZATION_NOISE] = noise
        metrics[p.SUM], metrics[p.SUM_SQUARES], metrics[p.COUNT] = (s.tolist() for s in sums)
    _save_state(context, releases=releases, plan=plan, run_key=run_key)
    content = _status(site.name, p.OK, "")
    content[p.METRICS] = metrics
    return content


def _policy_refusal(
    site: SiteSettings, model: str | None, dp: bool, epsilon: float, delta: float
) -> str | None:
    """Why the site's policy refuses this run (``model`` None: an analysis), or None."""
    refusal = site.policy.refusal(site.spec.study.name, model, dp, epsilon, delta)
    if refusal is None and site.policy.lifetime_epsilon is not None and site.ledger is None:
        refusal = "the site policy sets a lifetime-epsilon but the node has no ledger"
    return refusal


def _weak_delta(delta: float, records: int | None = None) -> str:
    """Why ``delta`` is refused; the record count only where the site releases it anyway."""
    what = f"{records} records" if records is not None else "this site's records"
    return (
        f"delta {delta:g} is too weak for {what}: delta must stay well below 1/records "
        "(lower the run's delta)"
    )


def _resume(
    site: SiteSettings, context: Context, n_train: int, run_key: str, rounds_done: int
) -> str | None:
    """Continue run ``run_key`` from this site's ledger, or say why the site cannot.

    ``context.state`` does not survive a restart, so the ledger is the site's memory: its
    releases for the run are the accountant's history (a round recorded but never received by
    the server counts as spent) and the plan is worked out again from the same inputs and must
    match the plan the ledger admitted. Without a ledger a DP site cannot prove what it spent.
    """
    spec = site.spec
    if not spec.privacy.enabled:
        _save_state(context, releases=[], plan=None, run_key=run_key)
        return None
    if site.ledger is None:
        return "a DP run can only be resumed by a site with a ledger (it records what was spent)"
    ledger = Ledger(site.ledger)
    run = ledger.run(run_key)
    if run is None or run["status"] != "admitted":
        return f"run {run_key} was not admitted by this site's ledger; nothing to resume"
    if (run["study"], run["accountant"], run["delta"], run["target_epsilon"]) != (
        spec.study.name,
        spec.privacy.accountant,
        spec.privacy.delta,
        spec.privacy.target_epsilon,
    ):
        return f"run {run_key} in the site's ledger is of another study or privacy target"
    rows = ledger.run_releases(run_key)
    history = [GaussianRelease(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
    prior = [h for h, r in zip(history, rows, strict=True) if r["mechanism"] != "dp-sgd"]
    plan = _plan(spec, n_train, prior)
    planned = merged([*prior, GaussianRelease(plan.noise_multiplier, plan.sample_rate, 1)])
    admitted = {(float(s), float(q)) for s, q, _ in run["planned"]}
    if {(r.noise_multiplier, r.sample_rate) for r in planned} != admitted:
        return "the site's data changed since the run began: its privacy plan no longer matches"
    recorded = sum(1 for r in rows if r["mechanism"] == "dp-sgd")
    if recorded > rounds_done:
        log.warning(
            "site %s: %d round(s) recorded but not completed by the server count as spent",
            site.name,
            recorded - rounds_done,
        )
    _save_state(context, releases=history, plan=plan, run_key=run_key)
    return None


def _plan(spec: StudySpec, n_train: int, prior: list[GaussianRelease]) -> DPPlan:
    """The whole run's DP-SGD plan after ``prior`` releases (see ``training.plan_dp``)."""
    return plan_dp(
        n_train,
        spec.training.batch_size,
        spec.training.local_epochs,
        spec.training.rounds,
        spec.privacy.target_epsilon,
        spec.privacy.delta,
        spec.privacy.accountant,
        prior,
    )


def _train(msg: Message, context: Context, site: SiteSettings) -> RecordDict:
    spec = site.spec
    config = msg.content[p.CONFIG]
    try:
        _, x, y, model = _inputs(msg, site, test=False)
    except AllfedError as error:
        return _status(site.name, p.FAILED, str(error))
    settings = LocalSettings(
        epochs=spec.training.local_epochs,
        batch_size=spec.training.batch_size,
        learning_rate=spec.training.learning_rate,
        max_grad_norm=spec.privacy.max_grad_norm,
        proximal_mu=float(config.get(p.PROXIMAL_MU, 0.0)),
    )
    metrics = MetricRecord({p.NUM_EXAMPLES: len(y)})
    if spec.privacy.enabled:
        state = _load_state(context)
        plan = state["plan"] or _plan(spec, len(y), state["releases"])
        refusal = _hard_stop(site, state, plan, int(config.get(p.SERVER_ROUND, 0)))
        if refusal:
            log.warning("site %s stops: %s", site.name, refusal)
            return _status(site.name, p.REFUSED, refusal)
        history = train_dp(model, x, y, settings, plan, spec.privacy.accountant, state["releases"])
        _save_state(context, releases=history, plan=plan, run_key=state["run-key"])
        steps = _steps_done(history, plan)
        epsilon = plan.epsilon_after(steps)
        if epsilon is None:
            epsilon = compute_epsilon(history, spec.privacy.delta, spec.privacy.accountant)
        metrics[p.EPSILON] = epsilon
        metrics[p.DELTA] = spec.privacy.delta
        metrics[p.NOISE_MULTIPLIER] = plan.noise_multiplier
        metrics[p.SAMPLE_RATE] = plan.sample_rate
        metrics[p.STEPS] = steps
    else:
        train_plain(model, x, y, settings)
    return RecordDict({p.ARRAYS: ArrayRecord(model.state_dict()), p.METRICS: metrics})


def _steps_done(releases: list[GaussianRelease], plan: DPPlan) -> int:
    """DP-SGD steps of ``plan`` among ``releases`` (the standardization release is not one)."""
    key = (plan.noise_multiplier, plan.sample_rate)
    return sum(r.steps for r in releases if (r.noise_multiplier, r.sample_rate) == key)


def _hard_stop(site: SiteSettings, state: dict, plan: DPPlan, server_round: int) -> str | None:
    """Before a round: refuse once the plan's steps are used up, and with a ledger record this
    round's release first (and refuse if it no longer fits the site's budgets)."""
    done = _steps_done(state["releases"], plan)
    if done + plan.steps_per_round > plan.planned_steps:
        return "the run's planned rounds are used up; more would exceed its privacy plan"
    if site.ledger is None:
        return None
    if not state["run-key"]:
        return "no run admitted by the site's ledger (the setup step did not happen)"
    release = GaussianRelease(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
    return Ledger(site.ledger).record_release(
        state["run-key"], server_round, "dp-sgd", release, site.budget()
    )


def _evaluate(msg: Message, context: Context, site: SiteSettings) -> RecordDict:
    try:
        table, x, y, model = _inputs(msg, site, test=True)
    except AllfedError as error:
        return _status(site.name, p.FAILED, str(error))
    model.eval()
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.from_numpy(x)).squeeze(-1)).numpy().astype(float)
    groups = {g: values[table.is_test] for g, values in table.groups.items()}
    min_cell = site.policy.min_cell_count
    stats = ScoreStats.released(y, scores, min_cell)
    if stats is None:
        return _status(
            site.name,
            p.WITHHELD,
            f"evaluation withheld: the test rows' events or non-events number 1 to {min_cell}",
        )
    record = MetricRecord({p.NUM_EXAMPLES: len(y)})
    record.update(stats.to_record(p.SITE_STATS))
    for prefix, columns in (
        (p.GROUP_STATS, groups),
        (p.INTERSECTION_STATS, intersect_groups(groups)),
    ):
        record.update(groups_to_record(group_stats(y, scores, columns, min_cell), prefix))
    return RecordDict({p.METRICS: record})


def _analyze(msg: Message, context: Context, site: SiteSettings) -> RecordDict:
    """A descriptive analysis: policy first, the ledger admits its one release before anything
    is computed, then the noisy cells with small counts withheld (``client.queries``)."""
    config = msg.content[p.CONFIG] if p.CONFIG in msg.content else ConfigRecord()
    try:
        request = AnalysisRequest.from_json(str(config[p.ANALYSIS_REQUEST]))
        query = build_query(request, site.spec)
    except SpecError as error:
        return _status(site.name, p.FAILED, f"analysis request rejected: {error}")
    except (KeyError, TypeError, ValueError):
        return _status(site.name, p.FAILED, "analysis request rejected: malformed request")
    refusal = _policy_refusal(site, None, True, request.epsilon, request.delta)
    if refusal:
        log.warning("site %s refuses the analysis: %s", site.name, refusal)
        return _status(site.name, p.REFUSED, refusal)
    try:
        table = _load(site, trainable=False)
        noise = planned_release(request)
    except AllfedError as error:
        return _status(site.name, p.FAILED, str(error))
    except ValueError as error:  # an epsilon no noise can reach
        return _status(site.name, p.FAILED, f"cannot plan the analysis: {error}")
    if request.delta * len(table.label) >= 1:
        return _status(site.name, p.REFUSED, _weak_delta(request.delta))
    run_key = str(config.get(p.RUN_KEY, "") or "") or f"{context.run_id}-{secrets.token_hex(4)}"
    _save_state(context, releases=[], run_key=run_key)
    if site.ledger is not None:
        refusal = Ledger(site.ledger).admit(
            RunPlan(
                run_key,
                site.spec.study.name,
                request.accountant,
                request.delta,
                request.epsilon,
                (noise,),
            ),
            site.budget(),
            first=[(f"analysis-{request.kind}", noise)],  # recorded before it is computed
        )
        if refusal:
            log.warning("site %s refuses the analysis: %s", site.name, refusal)
            return _status(site.name, p.REFUSED, refusal)
    cells, epsilon = answer(request, query, table, site.spec, noise, site.policy.min_cell_count)
    _save_state(context, releases=[noise], run_key=run_key)
    metrics = MetricRecord(
        {p.EPSILON: epsilon, p.DELTA: request.delta, p.NOISE_MULTIPLIER: noise.noise_multiplier}
    )
    for (stratum, variable, level, statistic), value in cells.items():
        key = ".".join((p.CELL, *map(encode_name, (stratum, variable, level)), statistic))
        metrics[key] = int(value) if statistic == COUNT else value
    content = _status(site.name, p.OK, "")
    content[p.METRICS] = metrics
    return content


# path -> (file version, spec and trainable check, table)
_TABLES: dict[str, tuple[tuple, SiteTable]] = {}


def _load(site: SiteSettings, trainable: bool = True) -> SiteTable:
    """The site's checked table, read once per file version and spec in this process. One entry
    per file: a simulation's worker process serves many sites in turn."""
    try:
        stat = site.data.stat()
        version = (stat.st_mtime_ns, stat.st_size, site.spec.to_toml(), trainable)
    except OSError:
        version = (None, None, site.spec.to_toml(), trainable)
    path = str(site.data)
    if path not in _TABLES or _TABLES[path][0] != version:
        _TABLES[path] = (version, load_site_table(site.data, site.spec, trainable))
    return _TABLES[path][1]


def _inputs(msg: Message, site: SiteSettings, test: bool):
    """The site's table, its train (or test) rows encoded with the server's scaling, and the
    global model loaded from the message."""
    spec, config = site.spec, msg.content[p.CONFIG]
    table = _load(site)
    center, scale = resolve_scaling(
        table, spec, list(config[p.SCALING_CENTER]), list(config[p.SCALING_SCALE])
    )
    x, y = encode(table, spec, center, scale, test=test)
    model = build_model(spec.model.name, x.shape[1], spec.model.hidden)
    model.load_state_dict(msg.content[p.ARRAYS].to_torch_state_dict())
    return table, x, y, model


def _standardization_noise(spec: StudySpec) -> float:
    """Noise multiplier of the standardization sums: ``standardization-share`` of the run's
    zCDP budget (``privacy.planner.share_noise``); DP-SGD's noise is then calibrated for what
    remains after it."""
    privacy = spec.privacy
    return share_noise(privacy.standardization_share, privacy.target_epsilon, privacy.delta)


def _load_state(context: Context) -> dict:
    record = context.state.get(_STATE)
    if record is None:
        return {"releases": [], "plan": None, "run-key": ""}
    plan = None
    if "plan-noise" in record:
        plan = DPPlan(
            float(record["plan-noise"]),
            float(record["plan-rate"]),
            int(record["plan-steps-per-round"]),
            int(record["plan-steps"]),
            tuple(float(e) for e in record.get("plan-epsilons", [])),
        )
    return {
        "releases": loads_releases(str(record["releases"])),
        "plan": plan,
        "run-key": str(record.get("run-key", "")),
    }


def _save_state(
    context: Context,
    releases: list[GaussianRelease],
    plan: DPPlan | None = None,
    run_key: str = "",
) -> None:
    record = ConfigRecord({"releases": dumps_releases(releases), "run-key": run_key})
    if plan is not None:
        record["plan-noise"] = plan.noise_multiplier
        record["plan-rate"] = plan.sample_rate
        record["plan-steps-per-round"] = plan.steps_per_round
        record["plan-steps"] = plan.planned_steps
        record["plan-epsilons"] = list(plan.epsilon_by_round)
    context.state[_STATE] = record


def _status(site: str, state: str, reason: str) -> RecordDict:
    return RecordDict(
        {
            p.STATUS: ConfigRecord(
                {p.STATUS_SITE: site, p.STATUS_STATE: state, p.STATUS_REASON: reason}
            )
        }
    )


def _safe_name(context: Context) -> str:
    return str(context.node_config.get(p.NODE_SITE) or f"node-{context.node_id}")


def _reply(msg: Message, content: RecordDict) -> Message:
    return Message(content=content, reply_to=msg)


app = make_client_app()
