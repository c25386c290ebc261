"""What the console shows, as plain data: read from the ledgers and run directories, never written.

Ledger figures come from ``federation.cli_privacy.ledger_report`` and ``audit_report``, the
functions behind ``allfed privacy ledger --json`` and ``allfed privacy audit --json``, so the
page and the command cannot disagree. Rows may carry columns this module does not know (a
release's ``partition``, a run's ``spec_digest``): they are passed through, shown where named.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import AllfedError
from federation.server.outputs import LOG, METRICS, REPORT, SUMMARY
from federation.wire.model_files import MODEL_CARD_MD

ANALYSIS = "analysis.json"  # what an `allfed analyze` run directory holds instead of a summary
LEDGER_TABLES = {"meta", "runs", "releases", "messages"}
# Pooled metrics shown per round, each with its interval (``<key>_ci``) where the run gives one.
ROUND_METRICS = (("auroc", "AUROC"), ("auprc", "AUPRC"), ("brier", "Brier"))


@dataclass(frozen=True)
class Sources:
    """What the operator pointed the console at; nothing outside these folders is read."""

    ledger_dir: Path | None
    runs_dir: Path | None
    policies: dict[str, Path]

    def ledgers(self) -> dict[str, Path]:
        """Site name -> ledger file (``NAME.sqlite``), looked up afresh: sites join."""
        if self.ledger_dir is None:
            return {}
        return {p.stem: p for p in sorted(self.ledger_dir.glob("*.sqlite")) if p.is_file()}

    def runs(self) -> dict[str, Path]:
        """Run name -> run directory: ``runs_dir`` itself if it is one, and its subfolders
        that are (a run in progress has a log or rounds but no summary yet)."""
        if self.runs_dir is None:
            return {}
        folders = [self.runs_dir, *sorted(p for p in self.runs_dir.iterdir() if p.is_dir())]
        return {p.name: p for p in folders if _is_run(p)}


def _is_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in (SUMMARY, ANALYSIS, METRICS, LOG))


# -- site side: the ledger ----------------------------------------------------------------


def is_ledger(path: Path) -> bool:
    """Whether ``path`` is a site ledger, checked on a read-only connection: opening any other
    SQLite file with ``Ledger`` would add the ledger's tables to it."""
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.DatabaseError:
        return False
    return {name for (name,) in rows} >= LEDGER_TABLES


def site_summary(name: str, path: Path) -> dict[str, Any]:
    """The overview's line for one site: lifetime epsilon against its budget."""
    from federation.cli_privacy import audit_report, ledger_report

    _check_ledger(path)
    ledger = ledger_report(path)
    runs = audit_report(path)["runs"]
    last = max([e["recorded_at"] for e in ledger["entries"]], default=None)
    return {
        "name": name,
        **_budget_figures(ledger),
        "runs": len(runs),
        "refused": sum(1 for r in runs if r["status"] != "admitted"),
        "last_release": last,
    }


def site_view(name: str, path: Path, policy: Path | None) -> dict[str, Any]:
    """Everything the site page shows: budget, runs, refusals, what left, the policy."""
    from federation.cli_privacy import audit_report, ledger_report

    _check_ledger(path)
    ledger = ledger_report(path)
    runs = audit_report(path)["runs"]
    entries = ledger["entries"]
    for run in runs:
        own = [e for e in entries if e["run_id"] == run["run_id"]]
        run["releases"] = len(own)
        run["partitions"] = sorted({e["partition"] for e in own if e.get("partition")})
        times = [m["recorded_at"] for m in run["messages"]]
        run["started"] = run.get("recorded_at") or min(times, default=None)
    messages = [{**m, "study": run.get("study", "")} for run in runs for m in run["messages"]]
    messages.sort(key=lambda m: m["recorded_at"])
    return {
        "name": name,
        "last_message": messages[-1]["recorded_at"] if messages else None,
        "ledger": ledger,
        **_budget_figures(ledger),
        "partitions": ledger.get("partitions") or {},
        "has_partition": any("partition" in e for e in entries),
        "runs": runs,
        "studies": _by_study(runs),
        "refusals": _refusals(runs),
        "messages": messages,
        "policy": _policy(ledger, policy),
    }


def _check_ledger(path: Path) -> None:
    if not is_ledger(path):
        raise AllfedError(f"{path.name}: not an allfed ledger (no runs, releases, messages)")


def _budget_figures(ledger: dict[str, Any]) -> dict[str, Any]:
    """Spent, budget and what is left, as ``allfed privacy ledger`` gives them."""
    spent, cap = ledger["lifetime_epsilon"], ledger["lifetime_budget"]
    return {
        "spent": spent,
        "budget": cap,
        "left": None if cap is None else max(cap - spent, 0.0),
        "share": None if not cap else min(spent / cap, 1.0),
        "delta": ledger["delta"],
        "accountant": ledger["accountant"],
    }


def _by_study(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Who asked for the budget: per study, its runs, refusals and messages sent."""
    studies: dict[str, dict[str, Any]] = {}
    for run in runs:
        study = run.get("study") or "(refused before admission)"
        row = studies.setdefault(
            study, {"study": study, "runs": 0, "refused": 0, "messages": 0, "epsilons": []}
        )
        row["runs"] += 1
        row["refused"] += run["status"] != "admitted"
        row["messages"] += len(run["messages"])
        if run["status"] == "admitted":
            row["epsilons"].append(run["epsilon"])
    return list(studies.values())


def _refusals(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs the ledger refused (with its reason) and messages a site sent with a status other
    than ok (the ledger keeps their keys, the node's log their reason)."""
    refusals = []
    for run in runs:
        if run["status"] == "refused":
            refusals.append(
                {
                    "when": run.get("recorded_at"),
                    "run_id": run["run_id"],
                    "study": run.get("study", ""),
                    "what": "admission",
                    "reason": run.get("reason") or "",
                }
            )
        for message in run["messages"]:
            if message["status"] != "ok" and run["status"] != "refused":  # one line a refusal
                refusals.append(
                    {
                        "when": message["recorded_at"],
                        "run_id": run["run_id"],
                        "study": run.get("study", ""),
                        "what": f"{message['kind']} reply, round {message['round']}: "
                        f"{message['status']}",
                        "reason": "",
                    }
                )
    return sorted(refusals, key=lambda r: r["when"] or 0)


def _policy(ledger: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """The budget the node last enforced (recorded in the ledger) and, when the operator named
    the policy file, every rule in it."""
    from privacy.policy import PolicyError, load_policy

    rules: dict[str, Any] | None = None
    if path is not None:
        try:
            rules = load_policy(path).model_dump(by_alias=True)
        except PolicyError as error:
            raise AllfedError(str(error)) from None
    recorded = {
        "lifetime-epsilon": ledger["lifetime_budget"],
        "lifetime-delta": ledger["delta"],
        "accountant": ledger["accountant"],
    }
    differs = [k for k, v in recorded.items() if rules is not None and rules.get(k) != v]
    return {"recorded": recorded, "rules": rules, "differs": differs}


def epsilon_series(path: Path) -> dict[str, Any]:
    """Lifetime epsilon after each release, over time, for the site's plot."""
    from federation.cli_privacy import ledger_report

    _check_ledger(path)
    ledger = ledger_report(path)
    return {
        "budget": ledger["lifetime_budget"],
        "points": [
            {
                "when": e["recorded_at"],
                "epsilon": e["lifetime_epsilon_after"],
                "run_id": e["run_id"],
                "study": e["study"],
                "partition": e.get("partition"),
            }
            for e in ledger["entries"]
        ],
    }


# -- central side: run directories --------------------------------------------------------


def run_view(name: str, path: Path) -> dict[str, Any]:
    """A run's status, sites, rounds and links; a run in progress has rounds but no summary.
    A descriptive analysis (``allfed analyze``) has its ``analysis.json`` and a table instead."""
    summary = _read_summary(path, SUMMARY) or _read_summary(path, ANALYSIS)
    analysis = (summary or {}).get("analysis")
    rounds = read_complete_rounds(path)
    latest = rounds[-1] if rounds else {}
    epsilon_now = latest.get("epsilon") or {}
    sites = []
    names = list((summary or {}).get("sites") or epsilon_now)
    for site in names:
        info = ((summary or {}).get("sites") or {}).get(site, {})
        sites.append(
            {
                "name": site,
                "status": info.get("status") or _in_progress(epsilon_now.get(site)),
                "reason": info.get("reason"),
                "epsilon": info.get("epsilon", epsilon_now.get(site)),
                "n_train": info.get("n_train"),
                "n_test": info.get("n_test"),
            }
        )
    status = summary["status"] if summary else "in progress"
    planned = (summary or {}).get("planned_rounds") or (summary or {}).get("rounds")
    pooled = ((summary or latest).get("metrics") or {}).get("pooled") or {}
    updated = _last_write(path)
    return {
        "name": name,
        "study": (summary or {}).get("study"),
        "status": status,
        "finished": summary is not None,
        "error": (summary or {}).get("error"),
        "privacy": (summary or {}).get("privacy"),
        "rounds_done": int(latest.get("round", 0)),
        "planned": planned,
        "sites": sites,
        "rounds": [_round_row(row, names) for row in rounds],
        "site_names": names,
        "final": _metric_cells(pooled),
        "analysis": analysis,
        "table": bool(analysis) and (path / f"{analysis}.html").is_file(),
        "report": (path / REPORT).is_file(),
        "model_card": (path / MODEL_CARD_MD).is_file(),
        "updated": updated,
        "version": f"{len(rounds)}:{status}:{updated}",
    }


def _in_progress(epsilon: float | None) -> str:
    """A site's state before the summary says: its last round's update came, or it did not."""
    return "no update yet" if epsilon is None else "training"


def run_state(name: str, path: Path) -> dict[str, Any]:
    """The small JSON the live page polls: enough to know whether a round has landed."""
    view = run_view(name, path)
    keys = ("name", "status", "finished", "rounds_done", "planned", "version")
    return {key: view[key] for key in keys}


def _round_row(row: dict[str, Any], sites: list[str]) -> dict[str, Any]:
    pooled = (row.get("metrics") or {}).get("pooled") or {}
    epsilon = row.get("epsilon") or {}
    return {
        "round": row.get("round"),
        "seconds": row.get("seconds"),
        "metrics": _metric_cells(pooled),
        "epsilon": [epsilon.get(site) for site in sites],
        "rejected": row.get("rejected") or {},
    }


def _metric_cells(pooled: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"key": key, "label": label, "value": pooled.get(key), "ci": pooled.get(f"{key}_ci")}
        for key, label in ROUND_METRICS
    ]


def read_complete_rounds(path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl``'s finished lines: a run in progress may be writing the last one."""
    file = path / METRICS
    if not file.is_file():
        return []
    text = file.read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]  # whatever follows the last newline is still being written
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as error:
        raise AllfedError(f"{path.name}/{METRICS}: not valid JSON lines ({error})") from None


def _read_summary(path: Path, name: str) -> dict[str, Any] | None:
    file = path / name
    if not file.is_file():
        return None
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AllfedError(f"{path.name}/{name}: not valid JSON ({error})") from None
    if not isinstance(summary, dict) or "sites" not in summary or "status" not in summary:
        raise AllfedError(f"{path.name}/{name}: not an allfed run summary")
    return summary


def _last_write(path: Path) -> float | None:
    names = (SUMMARY, ANALYSIS, METRICS, LOG)
    times = [(path / n).stat().st_mtime for n in names if (path / n).is_file()]
    return max(times, default=None)


def run_line(name: str, path: Path) -> dict[str, Any]:
    """The overview's line for one run."""
    view = run_view(name, path)
    spent = [s["epsilon"] for s in view["sites"] if s["epsilon"] is not None]
    return {**view, "max_epsilon": max(spent, default=None)}
