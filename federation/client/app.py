"""The site node: a Flower ClientApp that answers setup, train and evaluate messages.

What leaves the site is fixed here: a setup reply (site name, status, record counts, training
records per group level with small cells withheld and, under DP, noisy standardization sums), a
train reply (model weights plus the whitelisted metrics in ``protocol.TRAIN_METRICS``) and an
evaluate reply (additive score statistics, per group level and per intersection of two group
columns too, with small groups withheld). Across the rounds of a run the node keeps its privacy
plan and its accountant's history in ``context.state``, which never leaves the node.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federation import protocol as p
from federation.client.data import SiteTable, load_site_table
from federation.client.features import (
    encode,
    resolve_scaling,
    scaling_sensitivity,
    scaling_sums,
)
from federation.client.training import DPPlan, LocalSettings, plan_dp, train_dp, train_plain
from federation.errors import AllfedError
from federation.scorestats import (
    ScoreStats,
    counts_to_record,
    group_stats,
    groups_to_record,
    intersect_groups,
    level_counts,
)
from federation.spec import StudySpec, spec_from_run_config
from models.registry import build_model
from privacy.accounting import (
    GaussianRelease,
    calibrate_noise,
    compute_epsilon,
    dumps_releases,
    loads_releases,
)
from privacy.disclosure import DEFAULT_MIN_CELL_COUNT

log = logging.getLogger("allfed.site")

_STATE = "allfed"  # key of this node's ConfigRecord in context.state


@dataclass(frozen=True)
class SiteSettings:
    """Who this node is, where its data lives, and the study it is asked to join."""

    name: str
    data: Path
    spec: StudySpec


def settings_from_context(context: Context) -> SiteSettings:
    """Deployment: data and site name from ``--node-config``, the study from the run config."""
    node, run = context.node_config, context.run_config
    if p.NODE_DATA in node:
        data, name = str(node[p.NODE_DATA]), str(node.get(p.NODE_SITE) or f"node-{context.node_id}")
    elif "partition-id" in node and run.get(p.RUN_SITES):
        name, data = _site_of_partition(str(run[p.RUN_SITES]), int(node["partition-id"]))
    else:
        raise AllfedError("the SuperNode needs --node-config 'data=\"PATH\"' (its site data file)")
    return SiteSettings(name=name, data=Path(data), spec=spec_from_run_config(run))


def _site_of_partition(sites: str, partition: int) -> tuple[str, str]:
    """``flwr run`` on the local simulation engine: run config ``sites = "A=PATH,B=PATH"``."""
    entries = [entry.partition("=") for entry in sites.split(",") if entry.strip()]
    if partition >= len(entries):
        raise AllfedError(
            f"run config 'sites' names {len(entries)} sites; node {partition} has none"
        )
    name, _, path = entries[partition]
    return name.strip(), path.strip()


def make_client_app(
    resolve: Callable[[Context], SiteSettings] = settings_from_context,
) -> ClientApp:
    """A ClientApp whose site settings come from ``resolve`` (deployment or simulation)."""
    client_app = ClientApp()

    @client_app.query("setup")
    def setup(msg: Message, context: Context) -> Message:
        return _reply(msg, _setup(msg, context, resolve))

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        return _reply(msg, _train(msg, context, resolve(context)))

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _reply(msg, _evaluate(msg, resolve(context)))

    return client_app


def _setup(msg: Message, context: Context, resolve) -> RecordDict:
    """Check the data and, when scaling is pooled, release this site's (noisy) sums."""
    try:
        site = resolve(context)
    except AllfedError as error:
        return _status(_safe_name(context), p.FAILED, str(error))
    try:
        table = _load(site)
    except AllfedError as error:
        log.error("site %s cannot join: %s", site.name, error)
        return _status(site.name, p.FAILED, str(error))
    spec = site.spec
    if spec.privacy.enabled and spec.privacy.delta * table.n_train >= 1:
        return _status(
            site.name,
            p.REFUSED,
            f"delta {spec.privacy.delta:g} is too weak for {table.n_train} training records: "
            "delta must stay well below 1/records (lower [privacy] delta)",
        )
    metrics = MetricRecord({p.N_TRAIN: table.n_train, p.N_TEST: table.n_test})
    training_groups = {g: values[~table.is_test] for g, values in table.groups.items()}
    metrics.update(
        counts_to_record(level_counts(training_groups, DEFAULT_MIN_CELL_COUNT), p.REPRESENTATION)
    )
    releases: list[GaussianRelease] = []
    sums = scaling_sums(table, spec)
    if len(sums[0]):
        if spec.privacy.enabled:
            noise = _standardization_noise(spec)
            sums = _add_gaussian_noise(sums, noise * scaling_sensitivity(spec))
            releases.append(GaussianRelease(noise, 1.0, 1))
            metrics[p.STANDARDIZATION_NOISE] = noise
        metrics[p.SUM], metrics[p.SUM_SQUARES], metrics[p.COUNT] = (s.tolist() for s in sums)
    _save_state(context, releases=releases)
    content = _status(site.name, p.OK, "")
    content[p.METRICS] = metrics
    return content


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
        plan = state["plan"] or plan_dp(
            len(y),
            spec.training.batch_size,
            spec.training.local_epochs,
            spec.training.rounds,
            spec.privacy.target_epsilon,
            spec.privacy.delta,
            spec.privacy.accountant,
            state["releases"],
        )
        history = train_dp(model, x, y, settings, plan, spec.privacy.accountant, state["releases"])
        _save_state(context, releases=history, plan=plan)
        metrics[p.EPSILON] = compute_epsilon(history, spec.privacy.delta, spec.privacy.accountant)
        metrics[p.DELTA] = spec.privacy.delta
        metrics[p.NOISE_MULTIPLIER] = plan.noise_multiplier
        metrics[p.SAMPLE_RATE] = plan.sample_rate
        metrics[p.STEPS] = sum(
            r.steps
            for r in history
            if (r.noise_multiplier, r.sample_rate) == (plan.noise_multiplier, plan.sample_rate)
        )
    else:
        train_plain(model, x, y, settings)
    return RecordDict({p.ARRAYS: ArrayRecord(model.state_dict()), p.METRICS: metrics})


def _evaluate(msg: Message, site: SiteSettings) -> RecordDict:
    try:
        table, x, y, model = _inputs(msg, site, test=True)
    except AllfedError as error:
        return _status(site.name, p.FAILED, str(error))
    model.eval()
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.from_numpy(x)).squeeze(-1)).numpy().astype(float)
    groups = {g: values[table.is_test] for g, values in table.groups.items()}
    record = MetricRecord({p.NUM_EXAMPLES: len(y)})
    record.update(ScoreStats.from_scores(y, scores).to_record(p.SITE_STATS))
    for prefix, columns in (
        (p.GROUP_STATS, groups),
        (p.INTERSECTION_STATS, intersect_groups(groups)),
    ):
        record.update(
            groups_to_record(group_stats(y, scores, columns, DEFAULT_MIN_CELL_COUNT), prefix)
        )
    return RecordDict({p.METRICS: record})


_TABLES: dict[str, tuple[tuple, SiteTable]] = {}  # path -> (file version and spec, table)


def _load(site: SiteSettings) -> SiteTable:
    """The site's checked table, read once per file version and spec in this process. One entry
    per file: a simulation's worker process serves many sites in turn."""
    try:
        stat = site.data.stat()
        version = (stat.st_mtime_ns, stat.st_size, site.spec.to_toml())
    except OSError:
        version = (None, None, site.spec.to_toml())
    path = str(site.data)
    if path not in _TABLES or _TABLES[path][0] != version:
        _TABLES[path] = (version, load_site_table(site.data, site.spec))
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
    """Noise multiplier of the standardization sums: alone, a ``standardization-share`` of the
    run's target epsilon; DP-SGD's noise is then calibrated for what remains after it."""
    share = spec.privacy.standardization_share * spec.privacy.target_epsilon
    return calibrate_noise(share, spec.privacy.delta, 1.0, 1, spec.privacy.accountant)


def _add_gaussian_noise(sums, std: float):
    rng = np.random.default_rng(secrets.randbits(128))
    return tuple(s + rng.normal(0.0, std, size=s.shape) for s in sums)


def _load_state(context: Context) -> dict:
    record = context.state.get(_STATE)
    if record is None:
        return {"releases": [], "plan": None}
    plan = None
    if "plan-noise" in record:
        plan = DPPlan(
            float(record["plan-noise"]),
            float(record["plan-rate"]),
            int(record["plan-steps-per-round"]),
            int(record["plan-steps"]),
        )
    return {"releases": loads_releases(str(record["releases"])), "plan": plan}


def _save_state(context: Context, releases: list[GaussianRelease], plan: DPPlan | None = None):
    record = ConfigRecord({"releases": dumps_releases(releases)})
    if plan is not None:
        record["plan-noise"] = plan.noise_multiplier
        record["plan-rate"] = plan.sample_rate
        record["plan-steps-per-round"] = plan.steps_per_round
        record["plan-steps"] = plan.planned_steps
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
