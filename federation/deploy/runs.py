"""Launch a study on a SuperLink and report its outcome with an exit code that means something.

``flwr run`` returns 0 as soon as the run is submitted, and a run that fails later still leaves
it at 0. ``launch`` submits with ``flwr run``, waits for Flower's own status (``flwr list``)
and then reads the run directory's ``summary.json``; ``run_status`` reads a run directory alone.
Exit codes: 0 completed; 1 failed (the reason is printed); 3 not finished (or no summary yet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from federation.errors import AllfedError

COMPLETED, FAILED, PENDING = 0, 1, 3


@dataclass(frozen=True)
class RunOutcome:
    """What became of a run: an exit code and one line that says why."""

    code: int
    message: str
    summary: dict[str, Any] | None = None


def run_status(run_dir: Path) -> RunOutcome:
    """The outcome recorded in ``RUN_DIR/summary.json`` (written by the ServerApp), or in
    ``analysis.json`` for a descriptive analysis."""
    path = run_dir / "summary.json"
    if not path.exists() and (run_dir / "analysis.json").exists():
        path = run_dir / "analysis.json"
    if not run_dir.is_dir():
        raise AllfedError(f"{run_dir}: no such run directory")
    if not path.exists():
        return RunOutcome(PENDING, f"{path}: no summary yet (the run is running or never began)")
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AllfedError(f"{path}: not a readable summary ({error})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("status"), str):
        raise AllfedError(f"{path}: not an allfed run summary (it has no status)")
    status = summary.get("status")
    sites = summary.get("sites") or {}
    lines = ", ".join(
        f"{name} {site.get('status')}" + (f" ({site['reason']})" if site.get("reason") else "")
        for name, site in sites.items()
    )
    if "analysis" in summary:
        what = f"a {summary['analysis']} analysis"
    else:
        planned = summary.get("planned_rounds", summary.get("rounds"))
        what = f"{summary.get('rounds')}/{planned} rounds"
    if status == "completed":
        return RunOutcome(COMPLETED, f"completed: {what}; sites: {lines}", summary)
    return RunOutcome(FAILED, f"failed: {summary.get('error')}; {what}; sites: {lines}", summary)


def _flwr(args: list[str], cwd: Path | None = None) -> dict[str, Any]:
    local = Path(sys.executable).parent / "flwr"  # this environment's flwr, else PATH's
    flwr = str(local) if local.exists() else "flwr"
    done = subprocess.run(
        [flwr, *args, "--format", "json"], capture_output=True, text=True, cwd=cwd
    )
    start = done.stdout.find("{")
    try:
        answer = json.loads(done.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        answer = {}
    if done.returncode != 0 or not answer.get("success", False):
        detail = (answer.get("error-message") or done.stderr or done.stdout).strip()
        raise AllfedError(f"flwr {args[0]} failed: {detail.splitlines()[-1] if detail else '?'}")
    return answer


def run_config(
    study: Path,
    out: Path,
    expected_sites: int = 0,
    resume: bool = False,
    analysis: str | None = None,
) -> Path:
    """A TOML file for ``flwr run --run-config FILE``, written with a TOML writer (any text is
    quoted right: a spec, a path with quotes, an analysis of a column named ``patient's age``).
    It carries the study spec itself: the sites read it from the run config and cannot read a
    file on the SuperLink's host. ``resume`` continues the run in ``out`` from its checkpoint;
    ``analysis`` (a request's JSON) makes it a descriptive analysis."""
    try:
        spec = study.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AllfedError(f"{study}: cannot read the study spec ({type(error).__name__})") from None
    config: dict[str, str | int] = {"study": spec, "resume" if resume else "out": str(out)}
    if expected_sites:
        config["expected-sites"] = expected_sites
    if analysis:
        config["analysis"] = analysis
    handle, name = tempfile.mkstemp(prefix="allfed-run-config-", suffix=".toml")
    with os.fdopen(handle, "wb") as file:
        tomli_w.dump(config, file)
    return Path(name)


def launch(
    study: Path,
    out: Path,
    superlink: str | None = None,
    app: Path = Path("."),
    expected_sites: int = 0,
    timeout: float = 24 * 3600,
    poll: float = 2.0,
    on_status=None,
    resume: bool = False,
    analysis: str | None = None,
) -> RunOutcome:
    """``flwr run APP SUPERLINK`` with the study and run directory, then wait for its outcome.

    ``study`` and ``out`` are paths on the SuperLink's machine (the ServerApp reads and writes
    them there); ``superlink`` names a connection in ``$FLWR_HOME/config.toml``; ``resume``
    continues the run in ``out`` after its last completed round; ``analysis`` (a request's
    JSON) runs that descriptive analysis instead of training.
    """
    config = run_config(study, out, expected_sites, resume, analysis)
    args = ["run", str(app)] + ([superlink] if superlink else []) + ["--run-config", str(config)]
    run_id = str(_flwr(args)["run-id"])
    if on_status:
        on_status(f"submitted run {run_id}")
    target = [superlink] if superlink else []
    deadline = time.monotonic() + timeout
    status = "pending"
    while time.monotonic() < deadline:
        runs = _flwr(["list", *target, "--run-id", run_id]).get("runs") or []
        status = str(runs[0]["status"]) if runs else "unknown"
        if status.startswith("finished"):
            break
        time.sleep(poll)
    else:
        return RunOutcome(PENDING, f"run {run_id} still {status} after {timeout:g} s")
    if not out.is_dir():  # the ServerApp died before it made its run directory
        return RunOutcome(FAILED, f"run {run_id}: Flower reports {status} and {out} was never made")
    outcome = run_status(out)
    if status != "finished:completed" and outcome.code == COMPLETED:
        return RunOutcome(FAILED, f"run {run_id}: Flower reports {status}", outcome.summary)
    if outcome.code == PENDING:  # the ServerApp died before it could write a summary
        return RunOutcome(FAILED, f"run {run_id}: Flower reports {status} and {outcome.message}")
    return RunOutcome(outcome.code, f"run {run_id}: {outcome.message}", outcome.summary)
