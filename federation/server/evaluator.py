"""One evaluation of a model across the sites: two DP releases per site, pooled into metrics.

Release 1 (``evaluate``): every site sends its test partition's noisy histograms and sums. The
aggregator checks each reply (exactly the study's cells, finite numbers, the planned noise),
pools them and works out, per cell, the CDF to rank against. Release 2 (``evaluate.ranks``):
every site that sent release 1 sums that CDF over its records; the pooled AUROCs come from
these sums. A site that fails release 2 keeps its release-1 metrics; its cells' AUROCs then
come from the histograms (wider intervals).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from federation.server import evaluation as ev
from federation.wire import protocol as p
from federation.wire.evaluation import Cell, evaluation_noise, layout, rank_requests_to_config
from federation.wire.spec import StudySpec

log = logging.getLogger("allfed.server")

Exchange = Callable[[list[Message]], list[Message]]
Reject = Callable[[int, str], None]  # (node, reason): the site failed this exchange


@dataclass
class EvaluationResult:
    """What an evaluation gives the run: metrics, representation, and per site its noisy
    test-record count and the test partition's epsilon so far."""

    metrics: dict[str, Any]
    representation: dict[str, Any]
    n_test: dict[int, int | None] = field(default_factory=dict)
    epsilon: dict[int, float] = field(default_factory=dict)


class SiteEvaluator:
    """What every task's evaluator shares: the study's cells and budget, sending a message to
    the sites, and reading their replies (a bad reply is the site's failure, not the run's)."""

    release_noise = staticmethod(evaluation_noise)  # the two releases' noise multipliers

    def __init__(self, spec: StudySpec, exchange: Exchange, reject: Reject) -> None:
        self.spec, self.exchange, self.reject = spec, exchange, reject
        self.layout = layout(spec)
        self.histogram_noise, self.rank_noise = self.release_noise(*self.budget())

    def budget(self) -> tuple[float, float, str, int]:
        """The test partition's epsilon, delta, accountant and the run's evaluations, which
        each task's noise is calibrated to."""
        privacy = self.spec.privacy
        evaluations = len(self.spec.training.evaluation_rounds())
        return privacy.evaluation_budget, privacy.delta, privacy.accountant, evaluations

    def _send(
        self, message_type: str, arrays: ArrayRecord, config: ConfigRecord, nodes: list[int]
    ) -> dict[int, Any]:
        content = RecordDict({p.ARRAYS: arrays, p.CONFIG: config})
        kind = MessageType.EVALUATE if message_type == p.EVALUATE else message_type
        messages = [Message(content=content, message_type=kind, dst_node_id=node) for node in nodes]
        return {
            reply.metadata.src_node_id: reply.content[p.METRICS]
            for reply in self.exchange(messages)
            if p.METRICS in reply.content
        }

    def _read_releases(
        self, replies: dict[int, Any], noise: float, read: Callable[[Any], Any]
    ) -> tuple[dict[int, Any], dict[int, float]]:
        """Each reply's release (``read``: its metrics to cells) and epsilon so far, the replies
        with another noise or a malformed release rejected."""
        sites: dict[int, Any] = {}
        epsilon: dict[int, float] = {}
        for node, metrics in replies.items():
            try:
                check_noise(metrics, noise)
                sites[node] = read(metrics)
                epsilon[node] = float(metrics[p.EPSILON])
            except (KeyError, TypeError, ValueError) as error:
                self.reject(node, f"evaluation reply rejected: {error}")
        return sites, epsilon

    def _read_ranks(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        requests: Mapping[str, Any],
        nodes: list[int],
        names: dict[int, str],
        epsilon: dict[int, float],
        read: Callable[[Any], Any],
    ) -> dict[int, Any]:
        """Release 2 from ``nodes`` (``requests``: its config keys), each reply read by ``read``
        and its epsilon so far noted in ``epsilon``; a reply with another noise or a malformed
        release is logged, and that site keeps its release-1 metrics."""
        rank_config = ConfigRecord(dict(config))
        rank_config.update(requests)
        ranks = {}
        for node, metrics in self._send(p.EVALUATE_RANKS, arrays, rank_config, nodes).items():
            try:
                check_noise(metrics, self.rank_noise)
                ranks[node] = read(metrics)
                epsilon[node] = float(metrics[p.EPSILON])
            except (KeyError, TypeError, ValueError) as error:
                log.warning("site %s: rank release rejected: %s", names.get(node, node), error)
        return ranks

    def _with_ranks(
        self,
        pooled: Mapping[Cell, Any],
        sites: Mapping[int, Mapping[Cell, Any]],
        ranks: Mapping[int, Mapping[Cell, Any]],
        names: dict[int, str],
    ) -> tuple[dict[Cell, Any], dict[str, dict[Cell, Any]]]:
        """The pooled cells (reconciled) and every site's cells by name, with their rank sums."""
        cells = ev.reconcile(ev.with_ranks(pooled, ranks.values()), self.layout)
        by_name = {
            names[node]: ev.with_ranks(released, [ranks[node]] if node in ranks else [])
            for node, released in sites.items()
        }
        return cells, by_name

    def _result(
        self,
        metrics: dict[str, Any],
        by_name: Mapping[str, Mapping[Cell, Any]],
        cells: Mapping[Cell, Any],
        sites: Mapping[int, Mapping[Cell, Any]],
        epsilon: dict[int, float],
    ) -> EvaluationResult:
        """The evaluation's result: its metrics tables, the representation table and every
        site's noisy test-record count, read from the pooled (``cells``) and per-site cells."""
        return EvaluationResult(
            metrics=metrics,
            representation=ev.representation(by_name, cells, self.layout),
            n_test={
                node: ev.published_count(released[ev.POOLED_CELL].records)
                for node, released in sites.items()
            },
            epsilon=epsilon,
        )


class Evaluator(SiteEvaluator):
    """Evaluates models of ``spec`` over the sites ``exchange`` reaches."""

    def evaluate(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        nodes: list[int],
        names: dict[int, str],
    ) -> EvaluationResult:
        sites, epsilon = self._read_releases(
            self._send(p.EVALUATE, arrays, config, nodes),
            self.histogram_noise,
            lambda metrics: ev.read_histograms(metrics, self.layout, self.histogram_noise),
        )
        pooled = ev.pool(sites.values())
        requests = {
            cell: request
            for cell in self.layout.rank_cells()
            if cell in pooled and (request := ev.rank_request(pooled[cell])) is not None
        }
        ranks = self._read_ranks(
            arrays, config, rank_requests_to_config(requests), list(sites), names, epsilon,
            lambda metrics: ev.read_ranks(metrics, requests, self.layout, self.rank_noise),
        )  # fmt: skip
        cells, by_name = self._with_ranks(pooled, sites, ranks, names)
        metrics = ev.evaluation_tables(by_name, cells, self.layout)
        return self._result(metrics, by_name, cells, sites, epsilon)


def check_noise(metrics: Any, planned: float) -> None:
    """A site must add the noise its plan says: the intervals are computed from it."""
    if abs(float(metrics[p.NOISE_MULTIPLIER]) - planned) > 1e-9 * planned:
        raise ValueError("the site's evaluation noise differs from the plan")
