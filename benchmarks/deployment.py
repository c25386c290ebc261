"""Seconds per federated round on a real deployment: a SuperLink and SuperNodes as processes on
127.0.0.1, with TLS and SuperNode authentication, exactly as the guides set them up.

A round is what the ServerApp records in ``metrics.jsonl``: send the global model, wait for
every site's DP-SGD update, aggregate, send the evaluation, wait for every site's statistics and
pool them. ``seconds_per_round`` is the median over the run's rounds (the first round also
calibrates each site's noise, ``first_round_seconds`` shows it). ``--plain`` starts the nodes
with Flower's default ``flower-supernode`` (a new ClientApp process per message) instead of
``allfed node start`` (warm executor), for comparison.

Beside the wall time, which a shared machine inflates, ``cpu_seconds_per_round`` is the CPU the
federation's processes (SuperLink, ServerApp, SuperNodes, executors and their tasks, children
they reaped included) spent per round, read from /proc at the rows of round 1 and round R-1:
the rounds between the first (which also calibrates the noise) and the last (which also
evaluates and writes the outputs), what a round costs whatever else the machine runs. Memory per
node is the peak resident size of each SuperNode and of its executor (a forked task shares the
executor's pages). Several ``--sites`` run one after the other, each a fresh federation, and a
least-squares line of seconds and CPU seconds per round against the number of sites is fitted.

    python benchmarks/deployment.py --json OUT [--sites 3 10 20] [--records 800] [--rounds 5]
        [--plain] [--accountant prv|rdp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from federation.deploy.local import LocalFederation, Process, descendants
from federation.synth import write_cohort

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and of the children it has reaped (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / _TICKS


def federation_cpu(processes: list[Process]) -> float:
    """CPU seconds of every process the federation started and of all their descendants."""
    pids = {p.popen.pid for p in processes}
    for process in processes:
        pids.update(descendants(process.popen.pid))
    return sum(_cpu(pid) for pid in pids)


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident size (VmHWM) in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def node_memory(node: Process) -> dict[str, float | None]:
    """Peak RSS of a SuperNode and of its executor (its one long-lived child)."""
    executors = [pid for pid in descendants(node.popen.pid) if _is_executor(pid)]
    return {
        "supernode_mb": peak_rss_mb(node.popen.pid),
        "executor_mb": peak_rss_mb(executors[0]) if executors else None,
    }


def _is_executor(pid: int) -> bool:
    try:
        return b"executor" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def measure(
    sites: int, records: int, rounds: int, fast: bool, root: Path, accountant: str = "prv"
) -> dict:
    files, study = write_cohort(root / "data", n_sites=sites, records_per_site=records, seed=7)
    text = study.read_text().replace("[training]\n", f"[training]\nrounds = {rounds}\n")
    study.write_text(text.replace('accountant = "prv"', f'accountant = "{accountant}"'))
    out = root / "run"
    started = time.perf_counter()
    with LocalFederation(root / "fed", fast=fast) as fed:
        try:
            fed.start_superlink()
            nodes = fed.join_sites(files, timeout=600)
            ready = time.perf_counter()
            run_id = fed.launch(study, out, expected_sites=sites)
            cpu = _training_cpu(fed, out / "metrics.jsonl", rounds)
            status = fed.wait_for_run(run_id, timeout=3600)
            finished = time.perf_counter()
            memory = [node_memory(node) for node in nodes]
        except BaseException:
            print(fed.logs(), file=sys.stderr)
            raise
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [row["seconds"] for row in rows]
    summary = json.loads((out / "summary.json").read_text())
    supernode = [m["supernode_mb"] for m in memory if m["supernode_mb"]]
    executor = [m["executor_mb"] for m in memory if m["executor_mb"]]
    return {
        "seconds_per_round": statistics.median(seconds[1:] or seconds),
        "cpu_seconds_per_round": cpu,
        "rounds": len(rows),
        "sites": sites,
        "round_seconds": seconds,
        "first_round_seconds": seconds[0] if seconds else None,
        "mean_seconds_per_round": statistics.fmean(seconds) if seconds else None,
        "supernode_peak_rss_mb": round(statistics.median(supernode), 1) if supernode else None,
        "executor_peak_rss_mb": round(statistics.median(executor), 1) if executor else None,
        "records_per_site": records,
        "accountant": accountant,
        "node_runner": "allfed node start (warm executor)" if fast else "flower-supernode",
        "status": status,
        "summary_status": summary["status"],
        "startup_seconds": round(ready - started, 2),
        "run_seconds": round(finished - ready, 2),
        "load_average": os.getloadavg(),
        "transport": "TLS, SuperNode authentication, 127.0.0.1",
    }


def _training_cpu(fed: LocalFederation, metrics: Path, rounds: int) -> float | None:
    """CPU seconds per round of the rounds between the first (which also calibrates) and the
    last (which also evaluates and writes the outputs): from the row of round 1 to that of
    round R-1. None under 3 rounds."""
    if rounds < 3:
        return None
    readings = {}
    deadline = time.monotonic() + 3600
    while len(readings) < 2 and time.monotonic() < deadline:
        done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        for row in (1, rounds - 1):
            if done >= row and row not in readings:
                readings[row] = federation_cpu(fed.processes)
        time.sleep(0.02)
    if len(readings) < 2:
        return None
    return round((readings[rounds - 1] - readings[1]) / (rounds - 2), 2)


def fit(results: list[dict], key: str) -> dict[str, float] | None:
    """Least-squares ``key = intercept + slope * sites``; None under two site counts."""
    xs = [r["sites"] for r in results]
    if len(set(xs)) < 2:
        return None
    slope, intercept = np.polyfit(xs, [r[key] for r in results], 1)
    return {"intercept": round(float(intercept), 3), "per_site": round(float(slope), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the result")
    parser.add_argument("--sites", type=int, nargs="+", default=[3])
    parser.add_argument("--records", type=int, default=800, help="records per site")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plain", action="store_true", help="plain flower-supernode nodes")
    parser.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
    args = parser.parse_args()
    results = []
    for sites in args.sites:
        with tempfile.TemporaryDirectory(prefix="allfed-bench-") as tmp:
            result = measure(
                sites, args.records, args.rounds, not args.plain, Path(tmp), args.accountant
            )
        results.append(result)
        print(
            f"{sites} sites: {result['seconds_per_round']} s per round (median), "
            f"{result['cpu_seconds_per_round']} CPU s per round, RSS per node "
            f"{result['supernode_peak_rss_mb']} MB SuperNode + {result['executor_peak_rss_mb']} "
            f"MB executor; load {result['load_average'][0]:.1f}",
            flush=True,
        )
    fits = {key: fit(results, key) for key in ("seconds_per_round", "cpu_seconds_per_round")}
    for key, line in fits.items():
        if line:
            print(f"fit: {key} = {line['intercept']} + {line['per_site']} x sites")
    answer = results[0] if len(results) == 1 else {"runs": results, "fit": fits}
    args.json.write_text(json.dumps(answer, indent=2) + "\n")
    print(json.dumps(answer, indent=2))


if __name__ == "__main__":
    main()
