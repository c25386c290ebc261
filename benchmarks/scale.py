"""How a simulated federation's time and memory grow with the number of sites.

N synthetic sites of about 1,000 records each (the synthetic cardiometabolic cohort, DP-SGD at
epsilon 3 with the study's defaults) run R rounds through ``federation.simulation.simulate``,
exactly as ``allfed simulate`` runs them. Peak memory is the largest sum, over the sampled
moments, of the resident memory of this process and every process it started (Ray's GCS, raylet
and worker actors included), read from /proc every 0.5 s; proportional set size (PSS: shared
pages split between the processes that map them) is read every 5 s beside it (reading a large
process's PSS walks its page tables: sampled as often as RSS it took a core of its own). CPU
seconds are the tree's user and system time, each process's last reading: on a shared machine
they, not the wall time, say what the run itself costs.

Several ``--sites`` run one after another (each a fresh federation, Ray started anew), and a
least-squares line of seconds (and CPU seconds) against sites x rounds is fitted over them: its
slope is the cost of a site-round, its intercept the run's fixed cost.

    python benchmarks/scale.py --sites 10 20 50 --rounds 5 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from federation.simulation import simulate
from federation.synth import write_cohort
from federation.wire.spec import load_spec

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


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


def rss_mb(pids: list[int]) -> float:
    """Summed RSS (MB) of ``pids``; processes that exited meanwhile count zero."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


def pss_mb(pids: list[int]) -> float:
    """Summed PSS (MB) of ``pids``."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of ``pid`` so far; None once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


class PeakMemory:
    """Samples this process tree in a thread: ``peak_rss_mb``, ``peak_pss_mb`` and the tree's
    ``cpu_seconds`` (each process's last reading, the sampler's own thread included)."""

    def __init__(self, interval: float = 0.5, pss_every: int = 10) -> None:
        self.interval, self.pss_every = interval, pss_every
        self.peak_rss_mb = self.peak_pss_mb = 0.0
        self.peak_processes = 0
        self._cpu: dict[int, float] = {}
        self._pids: list[int] = []
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def __enter__(self) -> PeakMemory:
        self._start_cpu = cpu_seconds(os.getpid()) or 0.0
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._cpu[os.getpid()] -= self._start_cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        if self._samples % 4 == 0 or not self._pids:  # new processes: every 2 s
            self._pids = descendants(os.getpid())
        self._pids = [pid for pid in self._pids if self._read_cpu(pid)]
        self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self._pids))
        if self._samples % self.pss_every == 0:
            self.peak_pss_mb = max(self.peak_pss_mb, pss_mb(self._pids))
        self.peak_processes = max(self.peak_processes, len(self._pids))
        self._samples += 1

    def _read_cpu(self, pid: int) -> bool:
        seconds = cpu_seconds(pid)
        if seconds is None:
            return False
        self._cpu[pid] = max(self._cpu.get(pid, 0.0), seconds)
        return True


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares ``y = intercept + slope * x`` with R^2; None under two distinct xs."""
    if len(set(xs)) < 2:
        return None
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.sum((y - (intercept + slope * x)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    return {
        "intercept_s": round(float(intercept), 2),
        "slope_s_per_site_round": round(float(slope), 4),
        "r2": round(1 - residual / total, 4) if total > 0 else 1.0,
    }


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
        "cpu_seconds": round(memory.cpu_seconds, 2),
        "peak_rss_mb": round(memory.peak_rss_mb, 1),
        "detail": {
            "seconds_per_site_round": round(seconds / (sites * rounds), 4),
            "cpu_seconds_per_site_round": round(memory.cpu_seconds / (sites * rounds), 4),
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
    parser.add_argument("--sites", type=int, nargs="+", default=[50])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=1000, help="records per site (±20%%)")
    parser.add_argument("--json", type=Path, help="write the results and the fit here")
    args = parser.parse_args()
    results = []
    print(
        f"{'sites':>6} {'rounds':>6} {'seconds':>8} {'CPU s':>8} {'s/site-round':>12} "
        f"{'CPU s/site-round':>16} {'peak RSS MB':>11} {'peak PSS MB':>11}"
    )
    for sites in args.sites:
        with tempfile.TemporaryDirectory(prefix="allfed-scale-") as work:
            result = run_scale(sites, args.rounds, args.records, Path(work))
        results.append(result)
        detail = result["detail"]
        print(
            f"{result['sites']:>6} {result['rounds']:>6} {result['seconds']:>8.1f} "
            f"{result['cpu_seconds']:>8.1f} {detail['seconds_per_site_round']:>12.3f} "
            f"{detail['cpu_seconds_per_site_round']:>16.3f} {result['peak_rss_mb']:>11.0f} "
            f"{detail['peak_pss_mb']:>11.0f}",
            flush=True,
        )
        print(
            f"       outside rounds {detail['outside_rounds_seconds']} s; "
            f"rounds {detail['round_seconds']}",
            flush=True,
        )
    units = [r["sites"] * r["rounds"] for r in results]
    fit = {
        "seconds": linear_fit(units, [r["seconds"] for r in results]),
        "cpu_seconds": linear_fit(units, [r["cpu_seconds"] for r in results]),
    }
    for name, line in fit.items():
        if line:
            print(
                f"fit of {name} against sites x rounds: {line['intercept_s']} s + "
                f"{line['slope_s_per_site_round']} s per site-round (R^2 {line['r2']})"
            )
    if args.json:
        text = json.dumps({"runs": results, "fit": fit}, indent=2) + "\n"
        args.json.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
