"""How a simulated federation's time and memory grow with the number of sites.

N synthetic sites of about 1,000 records each (the synthetic cardiometabolic cohort, DP-SGD at
epsilon 3 with the study's defaults) run R rounds through ``federation.simulation.simulate``,
exactly as ``allfed simulate`` runs them. Peak memory is the largest sum, over the sampled
moments, of the resident memory of this process and every process it started (Ray's GCS, raylet
and worker actors included), read from /proc every 0.2 s; proportional set size (PSS: shared
pages split between the processes that map them) is reported beside it.

    python benchmarks/scale.py --sites 50 --rounds 5 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from federation.simulation import simulate
from federation.synth import write_cohort
from federation.wire.spec import load_spec

_PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it, from the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """Summed RSS and PSS (MB) of ``pids``; processes that exited meanwhile count zero."""
    rss = pss = 0
    for pid in pids:
        try:
            rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            continue
    return rss / 2**20, pss / 2**20


class PeakMemory:
    """Samples this process tree's memory in a thread; ``peak_rss_mb`` and ``peak_pss_mb``."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_rss_mb = self.peak_pss_mb = 0.0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        pids = descendants(os.getpid())
        rss, pss = memory_mb(pids)
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        self.peak_pss_mb = max(self.peak_pss_mb, pss)
        self.peak_processes = max(self.peak_processes, len(pids))


def run_scale(sites: int, rounds: int, records: int, work: Path) -> dict:
    """One simulated federation; its wall time (Ray start-up included) and peak memory."""
    files, spec_path = write_cohort(work / "data", n_sites=sites, records_per_site=records)
    spec = load_spec(spec_path).with_overrides(training={"rounds": rounds})
    round_seconds: list[float] = []
    with PeakMemory() as memory:
        started = time.perf_counter()
        summary = simulate(
            spec,
            files,
            work / "run",
            on_round=lambda _r, _n, row: round_seconds.append(row["seconds"]),
        )
        seconds = time.perf_counter() - started
    failed = {
        name: site["reason"] for name, site in summary["sites"].items() if site["status"] != "ok"
    }
    joined = len(summary["sites"])
    if summary["status"] != "completed" or failed or joined != sites:
        raise RuntimeError(
            f"{joined} of {sites} sites joined the run; failed: {failed}; {summary['error']}"
        )
    return {
        "sites": sites,
        "rounds": rounds,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(memory.peak_rss_mb, 1),
        "detail": {
            "seconds_per_site_round": round(seconds / (sites * rounds), 4),
            "round_seconds": round_seconds,
            "outside_rounds_seconds": round(seconds - sum(round_seconds), 2),
            "peak_pss_mb": round(memory.peak_pss_mb, 1),
            "peak_processes": memory.peak_processes,
            "records_per_site": records,
            "cpus": os.cpu_count(),
            "pooled_auroc": (summary["metrics"].get("pooled") or {}).get("auroc"),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=1000, help="records per site (±20%%)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="allfed-scale-") as work:
        result = run_scale(args.sites, args.rounds, args.records, Path(work))
    detail = result["detail"]
    print(f"{'sites':>6} {'rounds':>6} {'seconds':>8} {'s/site-round':>12} {'peak RSS MB':>11}")
    print(
        f"{result['sites']:>6} {result['rounds']:>6} {result['seconds']:>8.1f} "
        f"{detail['seconds_per_site_round']:>12.3f} {result['peak_rss_mb']:>11.0f}"
    )
    print(f"outside rounds {detail['outside_rounds_seconds']} s; rounds {detail['round_seconds']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
