"""What a site message's ledger work costs with the ledgers held open (``client.ledgers``) against
opening each ledger afresh, as a simulation's worker serving many sites in turn does.

A message of a training round opens its site's ledger, reads the run and the pinned partition,
records the round's release and the message in the audit trail. Here each of ``--sites`` ledgers
(one admitted run each) gets ``--messages`` such messages in turn, once through
``checked_ledger`` and ``site_partition``'s cache and once through a fresh ``Ledger(path)``
and two partition reads per message (the earlier path), in the same run on the same disk:
CPU seconds and wall seconds per message, and their ratio.

    python benchmarks/ledgers.py --sites 50 --messages 5 --json ledgers.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from federation.client import ledgers
from federation.client.ledgers import checked_ledger, held
from federation.client.partition import Partition
from privacy.accounting import GaussianRelease
from privacy.ledger import TRAIN, Budget, Ledger, PlannedRelease, RunPlan

RELEASE = PlannedRelease("dp-sgd", TRAIN, GaussianRelease(5.0, 0.1, 10))
BUDGET = Budget(100.0, 1e-5, "rdp", 100.0, 100.0)


def admitted(path: Path) -> None:
    """A ledger with its partition pinned and a run admitted that plans many rounds."""
    ledger = Ledger(path)
    ledger.pin_partition({"method": "fraction", "test_fraction": 0.3})
    rounds = PlannedRelease("dp-sgd", TRAIN, GaussianRelease(5.0, 0.1, 1_000))
    refusal = ledger.admit(RunPlan("run", "study", "rdp", 1e-5, 9.0, (rounds,)), BUDGET)
    if refusal:
        raise RuntimeError(f"the benchmark's run was refused: {refusal}")


def message(ledger: Ledger, cached: bool, number: int) -> None:
    """One training message's ledger work (the run, the partition, the release, the audit)."""
    ledger.run("run")
    entry = held(ledger) if cached else None
    if entry is None or entry.partition is None:
        partition = Partition(ledger.partition_definition(), ledger.partition_secret())
        if entry is not None:
            entry.partition = partition
    refusal = ledger.record_release("run", number, RELEASE, BUDGET)
    if refusal:
        raise RuntimeError(f"a round was refused: {refusal}")
    ledger.record_message("run", number, "train", "ok", ["metrics"], {})


def measure(paths: list[Path], messages: int, cached: bool) -> dict[str, float]:
    started, cpu = time.perf_counter(), time.process_time()
    for number in range(1, messages + 1):
        for path in paths:
            message(checked_ledger(path) if cached else Ledger(path), cached, number)
    count = messages * len(paths)
    return {
        "cpu_ms_per_message": round((time.process_time() - cpu) / count * 1e3, 3),
        "ms_per_message": round((time.perf_counter() - started) / count * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--messages", type=int, default=5, help="messages per site")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="allfed-ledgers-") as work:
        results = {}
        for name, cached in (("fresh", False), ("held", True)):
            paths = [Path(work) / name / f"site-{i}.sqlite" for i in range(args.sites)]
            for path in paths:
                admitted(path)
            results[name] = measure(paths, args.messages, cached)
        ledgers.OPEN.clear()
    fresh, kept = results["fresh"], results["held"]
    results["cpu_ratio"] = round(fresh["cpu_ms_per_message"] / kept["cpu_ms_per_message"], 2)
    results["wall_ratio"] = round(fresh["ms_per_message"] / kept["ms_per_message"], 2)
    print(
        f"{args.sites} ledgers x {args.messages} messages: opened afresh "
        f"{fresh['cpu_ms_per_message']} CPU ms ({fresh['ms_per_message']} ms) a message, held "
        f"open {kept['cpu_ms_per_message']} CPU ms ({kept['ms_per_message']} ms): "
        f"{results['cpu_ratio']}x the CPU, {results['wall_ratio']}x the wall time"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
