"""Seconds per federated round on a real deployment: a SuperLink and SuperNodes as processes on
127.0.0.1, with TLS and SuperNode authentication, exactly as the guides set them up.

A round is what the ServerApp records in ``metrics.jsonl``: send the global model, wait for
every site's DP-SGD update, aggregate, send the evaluation, wait for every site's statistics and
pool them. ``seconds_per_round`` is the median over the run's rounds (the first round also
calibrates each site's noise, ``first_round_seconds`` shows it). ``--plain`` starts the nodes
with Flower's default ``flower-supernode`` (a new ClientApp process per message) instead of
``allfed node start`` (warm executor), for comparison.

    python benchmarks/deployment.py --json OUT [--sites 3] [--records 800] [--rounds 5] [--plain]
        [--accountant prv|rdp]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from federation.deploy.local import LocalFederation
from federation.synth import write_cohort


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
            fed.join_sites(files, timeout=300)
            ready = time.perf_counter()
            run_id = fed.launch(study, out, expected_sites=sites)
            status = fed.wait_for_run(run_id, timeout=3600)
            finished = time.perf_counter()
        except BaseException:
            print(fed.logs(), file=sys.stderr)
            raise
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [row["seconds"] for row in rows]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "seconds_per_round": statistics.median(seconds[1:] or seconds),
        "rounds": len(rows),
        "sites": sites,
        "round_seconds": seconds,
        "first_round_seconds": seconds[0] if seconds else None,
        "mean_seconds_per_round": statistics.fmean(seconds) if seconds else None,
        "records_per_site": records,
        "accountant": accountant,
        "node_runner": "allfed node start (warm executor)" if fast else "flower-supernode",
        "status": status,
        "summary_status": summary["status"],
        "startup_seconds": round(ready - started, 2),
        "run_seconds": round(finished - ready, 2),
        "transport": "TLS, SuperNode authentication, 127.0.0.1",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the result")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--records", type=int, default=800, help="records per site")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plain", action="store_true", help="plain flower-supernode nodes")
    parser.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="allfed-bench-") as tmp:
        result = measure(
            args.sites, args.records, args.rounds, not args.plain, Path(tmp), args.accountant
        )
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
