"""Before the first round: the census, the sites' setup, their private bounds and the pooled
scaling.

1. Census: every node releases its public training-record count; the training settings the spec
   leaves out are planned for the smallest site (a resumed run keeps its first plan).
2. Setup: every counted site checks its data against the spec and, on a fresh run, releases its
   standardization sums (for declared bounds) and noisy histograms (for columns without).
3. Private bounds: the pooled histograms give bounds for the undeclared columns; a scaling
   message then asks every site for its sums clipped to them.
4. Pooled scaling: the federation's center and scale of every pooled column from those sums.

A resumed run does 1 and 2 only: its checkpoint holds the run's bounds and scaling.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from federation.server.exchange import SiteExchange
from federation.server.replies import is_positive_count, setup_problem, sums_problem
from federation.server.sites import SiteRecord
from federation.server.standardization import pooled_scaling
from federation.server.state import RunState
from federation.wire import protocol as p
from federation.wire.spec import estimated_columns, federated_columns
from privacy.bounds import pooled_bounds

log = logging.getLogger("allfed.server")

Releases = dict[int, Any]  # node -> the metrics of its setup (or scaling) reply
NO_PRIVATE_BOUNDS = (
    "no private bounds: too few of its values stand out of the histograms' noise; scaled by "
    "each site's own statistics"
)


def census(
    exchange: SiteExchange, state: RunState, nodes: list[int], planned_for: int | None
) -> list[int]:
    """Count every node's training records and plan ``state.spec`` for the smallest site (for
    ``planned_for`` records when resuming a run planned so). Returns the nodes counted."""
    for node in nodes:
        state.sites[node] = SiteRecord(name=f"node-{node}")
    config = ConfigRecord({p.RUN_KEY: state.run_key})
    messages = [
        Message(RecordDict({p.CONFIG: config}), message_type=p.CENSUS, dst_node_id=n) for n in nodes
    ]
    counted = {}
    for reply in exchange(messages):
        site = state.sites[reply.metadata.src_node_id]
        status = reply.content.config_records.get(p.STATUS)
        metrics = reply.content.metric_records.get(p.METRICS)
        count = metrics.get(p.N_TRAIN) if status is not None and metrics is not None else None
        if not is_positive_count(count):
            site.fail(p.FAILED, "census reply rejected: n-train must be a positive count")
            continue
        site.name = str(status[p.STATUS_SITE])
        counted[reply.metadata.src_node_id] = site.n_train = count
    state.require_sites("census")
    state.smallest_n_train = planned_for or min(counted.values())
    state.spec = state.spec.planned(state.smallest_n_train)
    return sorted(counted)


def set_up_sites(exchange: SiteExchange, state: RunState, nodes: list[int]) -> Releases:
    """Ask ``nodes`` to set up for the run (resuming after ``state.rounds_done``); returns the
    releases of the sites whose reply keeps the contract. Fails on two sites of one name."""
    config = {
        p.RUN_KEY: state.run_key,
        p.RESUME_AFTER: state.rounds_done,
        p.SMALLEST_N_TRAIN: state.smallest_n_train,
    }
    messages = [
        Message(
            content=RecordDict({p.CONFIG: ConfigRecord(config)}),
            message_type=p.SETUP,
            dst_node_id=n,
        )
        for n in nodes
    ]
    spec = state.spec
    released: Releases = {}
    for reply in exchange(messages):
        site = state.sites[reply.metadata.src_node_id]
        status = reply.content.config_records.get(p.STATUS)
        if status is None:
            site.fail(p.FAILED, "setup reply without a status")
            continue
        site.name = str(status[p.STATUS_SITE])
        if status[p.STATUS_STATE] != p.OK:
            site.fail(str(status[p.STATUS_STATE]), str(status[p.STATUS_REASON]))
            continue
        metrics = reply.content[p.METRICS]
        problem = setup_problem(metrics, len(federated_columns(spec)), len(estimated_columns(spec)))
        if problem:
            site.fail(p.FAILED, f"setup reply rejected: {problem}")
            continue
        site.n_train = int(metrics[p.N_TRAIN])
        site.note_release(metrics, p.BOUNDS_NOISE)
        site.note_release(metrics, p.STANDARDIZATION_NOISE)
        released[reply.metadata.src_node_id] = metrics
    state.sites.require_unique_names()
    return released


def estimate_private_bounds(
    exchange: SiteExchange, state: RunState, released: Releases
) -> Releases:
    """Bounds for the columns the spec declares none for, from the sites' pooled noisy
    histograms (``privacy.bounds``, post-processing), then the scaling message: every site's
    sums clipped to them. Returns the sums to pool by node: ``released`` itself when the spec
    declares every bound."""
    names = estimated_columns(state.spec)
    if not names:
        return released
    active = state.sites.active()
    counts = {
        node: m for node, m in released.items() if node in active and p.BOUNDS_HISTOGRAMS in m
    }
    if not counts:
        return {}
    found = pooled_bounds(
        [m[p.BOUNDS_HISTOGRAMS] for m in counts.values()],
        [m[p.BOUNDS_NOISE] for m in counts.values()],
        sum(state.sites[node].n_train for node in counts),
    )
    for column, bounds in zip(names, found, strict=True):
        if bounds is None:
            state.scaling_warnings[column] = NO_PRIVATE_BOUNDS
            log.warning("pooled scaling of %s: %s", column, NO_PRIVATE_BOUNDS)
        else:
            state.estimated_bounds[column] = bounds
    columns = len(federated_columns(state.spec, state.bounds))
    if not columns:
        return {}
    config = {p.RUN_KEY: state.run_key}
    for column, (low, high) in state.estimated_bounds.items():
        config[f"{p.BOUNDS}.{p.encode_name(column)}"] = [low, high]
    messages = [
        Message(RecordDict({p.CONFIG: ConfigRecord(config)}), node, p.SCALING)
        for node in sorted(state.sites.active())
    ]
    sums = {}
    for reply in exchange(messages):
        site = state.sites[reply.metadata.src_node_id]
        metrics = reply.content.metric_records.get(p.METRICS)
        problem = "no sums" if metrics is None else sums_problem(metrics, columns)
        if problem:
            site.fail(p.FAILED, f"scaling reply rejected: {problem}")
            continue
        site.note_release(metrics, p.STANDARDIZATION_NOISE)
        sums[reply.metadata.src_node_id] = metrics
    state.require_sites("scaling")
    return sums


def pool_scaling(state: RunState, released: Releases) -> None:
    """The federation's center and scale of every pooled column from the sites' sums."""
    spec = state.spec
    columns = [spec.features.numeric[i] for i in federated_columns(spec, state.bounds)]
    active = state.sites.active()
    sites = [m for node, m in released.items() if node in active and p.SUM in m]
    if not columns or not sites:
        return
    pooled = pooled_scaling(
        spec,
        columns,
        [list(m[p.SUM]) for m in sites],
        [list(m[p.SUM_SQUARES]) for m in sites],
        [list(m[p.COUNT]) for m in sites],
        noise_multipliers=(
            [float(m.get(p.STANDARDIZATION_NOISE, 0.0)) for m in sites]
            if spec.privacy.enabled
            else ()
        ),
        n_train=[s.n_train for s in state.sites.values() if s.status == p.OK],
        bounds=state.bounds,
    )
    state.scaling = (pooled.center, pooled.scale)
    state.scaling_warnings.update(pooled.warnings)
    for column, problem in pooled.warnings.items():
        log.warning("pooled scaling of %s: %s", column, problem)
