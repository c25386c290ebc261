"""A descriptive analysis, driven from the aggregator: ask every site once, pool what they release.

Every site answers the same query (``federation.wire.queries``) with one noisy release; the
aggregator checks each answer against the query (only its cells, whole non-negative counts, the
planned noise), pools the released cells overall, per site and per stratum (``pooling``: consistent
counts, uncertainties, what is n/a and why; a km query's curves: ``km``), and writes
``analysis.json`` (sites, privacy, pooled results), ``<kind>.json`` and ``<kind>.html`` (the
table) and ``run.log``. A site that refuses or fails is named with its reason; the analysis
completes on the others.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation.server.exchange import SiteExchange
from federation.server.grid import wait_for_nodes
from federation.server.km import pooled_km
from federation.server.km_page import write_km
from federation.server.outputs import RunDirectory
from federation.server.pooling import pooled_tables
from federation.server.sites import Roster, SiteRecord
from federation.server.tables import write_tables
from federation.wire import protocol as p
from federation.wire.protocol import decode_name
from federation.wire.queries import AnalysisRequest, build_query, planned_release
from federation.wire.spec import StudySpec
from privacy.kaplan_meier import KmQuery
from privacy.statistics import COUNT, Cell, Query

log = logging.getLogger("allfed.server")


@dataclass
class SiteAnswer:
    """One site's status and released cells (absent cells were withheld at the site)."""

    name: str
    status: str = p.OK
    reason: str | None = None
    epsilon: float | None = None
    noise_multiplier: float | None = None
    cells: dict[Cell, float] = field(default_factory=dict)


class AnalysisRun:
    """Answers ``request`` over the nodes of ``grid`` and writes ``out``."""

    def __init__(
        self,
        grid: Grid,
        spec: StudySpec,
        request: AnalysisRequest,
        out: Path,
        expected_sites: int | None = None,
    ) -> None:
        self.grid, self.spec, self.request = grid, spec, request
        self.query = build_query(request, spec)
        self.noise = planned_release(request).noise_multiplier  # what every site must add
        self.outputs = RunDirectory(out)
        self.expected_sites = expected_sites
        self.run_key = f"analysis-{secrets.token_hex(8)}"

    def run(self) -> dict[str, Any]:
        self.outputs.start_log()
        try:
            answers = self._ask()
            released = {a.name: a.cells for a in answers if a.status == p.OK}
            if isinstance(self.query, KmQuery):
                result = pooled_km(self.spec, self.request, self.query, released, self.noise)
                write_km(self.outputs.path, result)
            else:
                result = pooled_tables(self.spec, self.request, self.query, released, self.noise)
                write_tables(self.outputs.path, self.request.kind, result)
            summary = _summary(self.spec, self.request, answers, result, self.run_key)
            self.outputs.write_json("analysis.json", summary)
            return summary
        finally:
            self.outputs.stop_log()

    def _ask(self) -> list[SiteAnswer]:
        """Every node's answer to the query, in node order. The exchange is the training run's
        (``exchange.SiteExchange``), so a site that does not answer, errs or declines is out
        the same way, with the same reason; the answers it lets through are checked here."""
        timeout = self.spec.training.round_timeout
        wanted = self.expected_sites or self.spec.training.min_sites
        nodes = wait_for_nodes(self.grid, wanted, timeout)
        roster = Roster({node: SiteRecord(name=f"node-{node}") for node in nodes})
        config = ConfigRecord({p.ANALYSIS_REQUEST: self.request.to_json(), p.RUN_KEY: self.run_key})
        messages = [
            Message(RecordDict({p.CONFIG: config}), dst_node_id=node, message_type=p.ANALYZE)
            for node in nodes
        ]
        usable = {
            r.metadata.src_node_id: r for r in SiteExchange(self.grid, roster, timeout)(messages)
        }
        answers = []
        for node in nodes:
            site = roster[node]
            answer = SiteAnswer(name=site.name, status=site.status, reason=site.reason)
            if node in usable:
                read_answer(answer, usable[node].content, self.query, self.noise)
                if answer.status != p.OK:
                    log.warning("site %s %s: %s", answer.name, answer.status, answer.reason)
            answers.append(answer)
        return answers


def read_answer(
    answer: SiteAnswer, content: RecordDict, query: Query | KmQuery, planned: float
) -> None:
    """Fill ``answer`` from a reply, or mark it failed when the reply breaks the query."""
    status = content.config_records.get(p.STATUS)
    if status is None:
        answer.status, answer.reason = p.FAILED, "reply without a status"
        return
    answer.name = str(status[p.STATUS_SITE])
    if status[p.STATUS_STATE] != p.OK:
        answer.status, answer.reason = str(status[p.STATUS_STATE]), str(status[p.STATUS_REASON])
        return
    metrics = content.metric_records.get(p.METRICS)
    try:
        if metrics is None:
            raise ValueError("no metrics")
        noise = float(metrics[p.NOISE_MULTIPLIER])
        if not math.isclose(noise, planned, rel_tol=1e-9):
            raise ValueError("noise other than the request's")
        answer.cells = _cells(metrics, set(query.cells()))
        if isinstance(query, KmQuery) and len(answer.cells) != len(query.cells()):
            raise ValueError("a km answer holds every cell")  # none is withheld at a site
        answer.epsilon, answer.noise_multiplier = float(metrics[p.EPSILON]), noise
    except (KeyError, TypeError, ValueError) as error:
        answer.status, answer.reason = p.FAILED, f"answer rejected: {error}"


def _cells(metrics, expected: set[Cell]) -> dict[Cell, float]:
    cells = {}
    for key, value in metrics.items():
        if not key.startswith(p.CELL + "."):
            continue
        stratum, variable, level, statistic = key.split(".")[1:]
        cell = (decode_name(stratum), decode_name(variable), decode_name(level), statistic)
        if cell not in expected:
            raise ValueError(f"cell {key} is not in the query")
        value = float(value)
        if not math.isfinite(value) or (statistic == COUNT and (value < 0 or value % 1)):
            raise ValueError(f"cell {key} is not a valid {statistic}")
        cells[cell] = value
    return cells


def _summary(
    spec: StudySpec,
    request: AnalysisRequest,
    answers: list[SiteAnswer],
    result: dict[str, Any],
    run_key: str,
) -> dict[str, Any]:
    answered = sum(a.status == p.OK for a in answers)
    return {
        "study": spec.study.name,
        "analysis": request.kind,
        "run_key": run_key,
        "status": "completed" if answered else "failed",
        "error": None if answered else "no site answered",
        "privacy": {
            "epsilon": request.epsilon,
            "delta": request.delta,
            "accountant": request.accountant,
            "mechanism": "Gaussian (OpenDP), one release per site",
        },
        "sites": {
            a.name: {
                "status": a.status,
                "reason": a.reason,
                "epsilon": a.epsilon,
                "delta": request.delta if a.epsilon is not None else None,
                "noise_multiplier": a.noise_multiplier,
                "sample_rate": 1.0 if a.epsilon is not None else None,
                "steps": 1 if a.epsilon is not None else 0,
            }
            for a in answers
        },
        "result": result,
    }
