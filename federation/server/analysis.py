"""A descriptive analysis, driven from the aggregator: ask every site once, pool what they release.

Every site answers the same query (``federation.queries``) with one noisy release; the aggregator
checks each answer against the query (only its cells, whole non-negative counts, the planned
noise), pools the released cells overall, per site and per stratum with the noise's standard
errors, and writes ``analysis.json`` (sites, privacy, pooled results), ``<kind>.json`` and
``<kind>.html`` (the table) and ``run.log``. A site that refuses or fails is named with its
reason; the analysis completes on the others.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation import protocol as p
from federation.protocol import decode_name
from federation.queries import ALL, AnalysisRequest, build_query, planned_release
from federation.server.outputs import RunDirectory
from federation.server.run import wait_for_nodes
from federation.server.tables import write_tables
from federation.spec import StudySpec
from privacy.statistics import (
    COUNT,
    OVERALL_CELL,
    PRESENT,
    SQUARES,
    SUM,
    TOTAL,
    Cell,
    Query,
    Variable,
    pool_count,
    pool_mean,
)

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
            result = pooled_tables(self.spec, self.request, self.query, answers, self.noise)
            write_tables(self.outputs.path, self.request.kind, result)
            summary = _summary(self.spec, self.request, answers, result, self.run_key)
            self.outputs.write_json("analysis.json", summary)
            return summary
        finally:
            self.outputs.stop_log()

    def _ask(self) -> list[SiteAnswer]:
        timeout = self.spec.training.round_timeout
        wanted = self.expected_sites or self.spec.training.min_sites
        nodes = wait_for_nodes(self.grid, wanted, timeout)
        config = ConfigRecord({p.ANALYSIS_REQUEST: self.request.to_json(), p.RUN_KEY: self.run_key})
        messages = [
            Message(RecordDict({p.CONFIG: config}), dst_node_id=node, message_type=p.ANALYZE)
            for node in nodes
        ]
        replies = {
            r.metadata.src_node_id: r for r in self.grid.send_and_receive(messages, timeout=timeout)
        }
        answers = []
        for node in nodes:
            answer = SiteAnswer(name=f"node-{node}")
            reply = replies.get(node)
            if reply is None:
                answer.status, answer.reason = p.FAILED, f"no reply within {timeout:g} s"
            elif reply.has_error():
                answer.status, answer.reason = p.FAILED, "node error"
            else:
                read_answer(answer, reply.content, self.query, self.noise)
            if answer.status != p.OK:
                log.warning("site %s %s: %s", answer.name, answer.status, answer.reason)
            answers.append(answer)
        return answers


def read_answer(answer: SiteAnswer, content: RecordDict, query: Query, planned: float) -> None:
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


def pooled_tables(
    spec: StudySpec,
    request: AnalysisRequest,
    query: Query,
    answers: list[SiteAnswer],
    noise_multiplier: float,
) -> dict[str, Any]:
    """The pooled table: overall, per site and per stratum; counts with their noise SE, means
    with 95% CIs. Only sites that answered contribute."""
    sites = [a for a in answers if a.status == p.OK]
    sds = query.noise_sd(noise_multiplier)
    strata = [s for s in query.strata if s != ALL]

    def scopes():
        yield ("overall", None), [(a, s) for a in sites for s in query.strata]
        for a in sites:
            yield ("sites", a.name), [(a, s) for s in query.strata]
        for s in strata:
            yield ("groups", s), [(a, s) for a in sites]

    totals = {}
    for scope, parts in scopes():
        if query.overall and scope[0] != "groups":  # the released total over all strata
            answering = {a.name: a for a, _ in parts}.values()
            cells = (a.cells.get(OVERALL_CELL) for a in answering)
            totals[scope] = pool_count(cells, sds[OVERALL_CELL[1:]])
        else:
            cells = (a.cells.get((s, TOTAL, TOTAL, COUNT)) for a, s in parts)
            totals[scope] = pool_count(cells, sds[(TOTAL, TOTAL, COUNT)])
    rows = []
    total_sd = sds[(TOTAL, TOTAL, COUNT)]
    if not query.variables:  # a count: the table is every stratum's total
        for stratum in query.strata:
            row = {"variable": request.strata_column or TOTAL, "level": stratum}
            cells = {a.name: a.cells.get((stratum, TOTAL, TOTAL, COUNT)) for a in sites}
            row |= _count_entry(cells.values(), total_sd, totals[("overall", None)].count)
            row["sites"] = {
                name: _count_entry([cell], total_sd, totals[("sites", name)].count)
                for name, cell in cells.items()
            }
            rows.append(row)
    for variable in query.variables:
        for level, statistic in variable.cells():
            if statistic != COUNT:
                continue
            row: dict[str, Any] = {
                "variable": variable.name,
                "level": "mean (SD)" if (variable.numeric and level == PRESENT) else level,
            }
            for scope, parts in scopes():
                entry = _entry(variable, level, parts, sds, totals[scope].count)
                if scope[0] == "overall":
                    row.update(entry)
                else:
                    row.setdefault(scope[0], {})[scope[1]] = entry
            rows.append(row)
    overall = totals[("overall", None)]
    return {
        "analysis": request.kind,
        "study": spec.study.name,
        "by": request.strata_column,
        "epsilon": request.epsilon,
        "delta": request.delta,
        "total": overall.count,
        "total_se": round(overall.se, 2),
        "sites": {a.name: totals[("sites", a.name)].count for a in sites},
        # a count's rows are its strata already
        "groups": {s: totals[("groups", s)].count for s in strata} if query.variables else {},
        "rows": rows,
    }


def _count_entry(cells: Iterable[float | None], sd: float, total: int | None) -> dict[str, Any]:
    """A pooled count with its noise SE, withheld cells and percent of ``total``."""
    pooled = pool_count(cells, sd)
    entry = pooled.as_dict()
    entry["percent"] = (
        round(100 * pooled.count / total, 1) if pooled.count is not None and total else None
    )
    return entry


def _entry(
    variable: Variable, level: str, parts: list, sds: dict, total: int | None
) -> dict[str, Any]:
    if variable.numeric and level == PRESENT:
        trios = []
        for answer, stratum in parts:
            key = (stratum, variable.name, PRESENT)
            trio = tuple(answer.cells.get((*key, stat)) for stat in (COUNT, SUM, SQUARES))
            trios.append(None if None in trio else trio)
        entry = pool_mean(variable, trios, sds).as_dict()
        entry["withheld_cells"] = sum(t is None for t in trios)
        return entry
    cells = (a.cells.get((s, variable.name, level, COUNT)) for a, s in parts)
    return _count_entry(cells, sds[(variable.name, level, COUNT)], total)


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
