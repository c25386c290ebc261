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

The baseline, in the same run, at the smallest ``--sites``: the same federation (same files,
same spec) with every site's node called in this process by the aggregator's own run loop, no
Flower messaging and no Ray (``in_process``): the sites' and the aggregator's own work, which
the simulated federation's CPU seconds per site-round are divided by. ``--flower-dispatch``
also runs the smallest federation with Flower's own message dispatch (one walk over the stored
messages per site and tick) instead of ``federation.simulation_dispatch``.

    python benchmarks/scale.py --sites 100 300 1000 --rounds 5 --json scale.json
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

from federation import simulation_dispatch
from federation.client.app import make_client_app
from federation.client.site import SiteSettings
from federation.server.run import StudyRun
from federation.simulation import simulate
from federation.synth import write_cohort
from federation.wire.spec import StudySpec, load_spec
from privacy.policy import simulation_policy

TARGET_SECONDS_PER_SITE_ROUND = 0.05  # wall seconds per site-round, fixed costs included
TARGET_MEMORY_GB = 8.0
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


def process_kind(pid: int) -> str:
    """ "driver" (this process), "ray workers" (where the sites' ClientApps run) or "ray
    services", from the process's command line."""
    if pid == os.getpid():
        return "driver"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "ray services"
    # A worker renames itself (``ray::ClientAppActor``, ``ray::IDLE``) once it has started.
    worker = b"default_worker.py" in command or command.startswith(
        (b"ray::ClientApp", b"ray::IDLE")
    )
    return "ray workers" if worker else "ray services"


class PeakMemory:
    """Samples this process tree in a thread: ``peak_rss_mb``, ``peak_pss_mb`` and the tree's
    ``cpu_seconds`` (each process's last reading, the sampler's own thread included)."""

    def __init__(self, interval: float = 0.5, pss_every: int = 10) -> None:
        self.interval, self.pss_every = interval, pss_every
        self.peak_rss_mb = self.peak_pss_mb = 0.0
        self.peak_processes = 0
        self._cpu: dict[int, float] = {}
        self._kinds: dict[int, str] = {}
        self._pids: list[int] = []
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def cpu_by_kind(self) -> dict[str, float]:
        """CPU seconds of this process, of Ray's workers (the simulated sites' ClientApps) and
        of Ray's own services (GCS, raylet, agents), each summed over its processes."""
        kinds: dict[str, float] = {}
        for pid, seconds in self._cpu.items():
            kind = self._kinds.get(pid, "ray services")
            kinds[kind] = round(kinds.get(kind, 0.0) + seconds, 2)
        return kinds

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
        if pid not in self._kinds:
            self._kinds[pid] = process_kind(pid)
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


class InProcessGrid:
    """The sites' nodes called one after another in this process, each with its own context
    (its state kept between messages as Flower keeps it): the aggregator's exchanges without
    any messaging."""

    def __init__(self, sites: list[SiteSettings]) -> None:
        from flwr.app import Context, RecordDict

        self.nodes = {
            node: (
                make_client_app(lambda _context, site=site: site),
                Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={}),
            )
            for node, site in enumerate(sites, start=1)
        }

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for number, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"message-{number}"
            app, context = self.nodes[message.metadata.dst_node_id]
            replies.append(app(message, context))
        return replies


def in_process(files: dict[str, Path], spec: StudySpec, work: Path) -> dict:
    """The federation of ``files`` run by ``StudyRun`` over ``InProcessGrid``: its CPU seconds
    (this process alone: nothing else runs)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as Flower sets
    policy = simulation_policy(spec.privacy.enabled)
    sites = [
        SiteSettings(name, path, spec, work / "in-process-ledgers" / f"{name}.sqlite", policy)
        for name, path in files.items()
    ]
    started = time.process_time()
    summary = StudyRun(InProcessGrid(sites), spec, work / "in-process-run").run()
    seconds = time.process_time() - started
    if summary["status"] != "completed":
        raise RuntimeError(f"the in-process run failed: {summary['error']}")
    return {"cpu_seconds": round(seconds, 2)}


def dispatch_tick(sites: int) -> dict:
    """CPU seconds of one tick of the simulation engine's message dispatch with a message
    pending for each of ``sites`` nodes: Flower's own (each node asked in turn) against
    ``simulation_dispatch.deliver_pending``, on two LinkStates set up as ``run_simulation``
    sets one up."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    def pending():
        factory = LinkStateFactory(
            FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
        )
        run = Run.create_empty(run_id=1)
        run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
        state = factory.state()
        state.run_ids[1] = RunRecord(run=run)
        state.task_store[1] = Task(task_id=1, run_id=1)
        nodes = list(_register_nodes(num_nodes=sites, state_factory=factory))
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        grid = InMemoryGrid(state_factory=factory)
        grid.set_run(run)
        content = RecordDict({"config": ConfigRecord({"round": 1})})
        grid.push_messages([Message(content, message_type="train", dst_node_id=n) for n in nodes])
        return state, nodes

    def ticks(tick) -> tuple[list[float], int]:
        """CPU seconds of the tick that hands the messages out and of the next (each one until
        the replies are in), and how many messages the first handed out."""
        state, nodes = pending()
        seconds, handed = [], 0
        for _ in range(2):
            started = time.process_time()
            found = tick(state, nodes)
            seconds.append(round(time.process_time() - started, 4))
            handed = handed or len(found)
        return seconds, handed

    ours, ours_handed = ticks(
        lambda state, nodes: simulation_dispatch.deliver_pending(state, frozenset(nodes))
    )
    flowers, flowers_handed = ticks(
        lambda state, nodes: [m for n in nodes for m in state.get_message_ins(node_id=n, limit=1)]
    )
    if not ours_handed == flowers_handed == sites:
        raise RuntimeError("the two dispatches handed out different messages")
    return {
        "sites": sites,
        "cpu_seconds": ours,
        "flower_cpu_seconds": flowers,
        "ratio_waiting": round(flowers[1] / max(ours[1], 1e-6), 1),
    }


def flower_dispatch() -> None:
    """Leave Flower's own message dispatch in place for the next ``simulate``."""
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    simulation_dispatch.fast_message_dispatch = lambda: setattr(
        vce_api, "add_messages_to_queue", original
    )


def run_scale(sites: int, rounds: int, records: int, work: Path, baseline: bool = False) -> dict:
    """One simulated federation; its wall time (Ray start-up included) and peak memory, and
    (``baseline``) the same federation's in-process CPU seconds."""
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
    result = {
        "sites": sites,
        "rounds": rounds,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(memory.cpu_seconds, 2),
        "peak_rss_mb": round(memory.peak_rss_mb, 1),
        "detail": {
            "seconds_per_site_round": round(seconds / (sites * rounds), 4),
            "cpu_seconds_per_site_round": round(memory.cpu_seconds / (sites * rounds), 4),
            "cpu_seconds_by_process": memory.cpu_by_kind(),
            "round_seconds": round_seconds,
            "outside_rounds_seconds": round(seconds - sum(round_seconds), 2),
            "peak_pss_mb": round(memory.peak_pss_mb, 1),
            "peak_processes": memory.peak_processes,
            "records_per_site": records,
            "cpus": os.cpu_count(),
            "pooled_auroc": (summary["metrics"].get("pooled") or {}).get("auroc"),
        },
    }
    if baseline:
        base = in_process(files, spec, work)
        base["cpu_seconds_per_site_round"] = round(base["cpu_seconds"] / (sites * rounds), 4)
        base["ratio"] = round(memory.cpu_seconds / base["cpu_seconds"], 2)
        result["in_process"] = base
    return result


def report(result: dict) -> None:
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
        f"rounds {detail['round_seconds']}; CPU s {detail['cpu_seconds_by_process']}",
        flush=True,
    )
    if tick := result.get("dispatch_tick"):
        print(
            f"       a dispatch tick (10 a second) with a message per site, handing them out / "
            f"while the replies are awaited: {tick['cpu_seconds']} CPU s; Flower's own "
            f"{tick['flower_cpu_seconds']} ({tick['ratio_waiting']}x while awaited)",
            flush=True,
        )
    if base := result.get("in_process"):
        print(
            f"       in one process without Flower or Ray: {base['cpu_seconds']} CPU s "
            f"({base['cpu_seconds_per_site_round']} per site-round); the simulation costs "
            f"{base['ratio']}x that",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[50])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=1000, help="records per site (±20%%)")
    parser.add_argument("--json", type=Path, help="write the results and the fit here")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the in-process run of the smallest"
    )
    parser.add_argument(
        "--no-tick", action="store_true", help="skip timing one dispatch tick at each --sites"
    )
    parser.add_argument(
        "--flower-dispatch",
        action="store_true",
        help="also run the smallest federation with Flower's own message dispatch",
    )
    args = parser.parse_args()
    results = []
    smallest = min(args.sites)
    print(
        f"{'sites':>6} {'rounds':>6} {'seconds':>8} {'CPU s':>8} {'s/site-round':>12} "
        f"{'CPU s/site-round':>16} {'peak RSS MB':>11} {'peak PSS MB':>11}"
    )
    for sites in args.sites:
        with tempfile.TemporaryDirectory(prefix="allfed-scale-") as work:
            baseline = sites == smallest and not args.no_baseline
            result = run_scale(sites, args.rounds, args.records, Path(work), baseline)
        if not args.no_tick:
            result["dispatch_tick"] = dispatch_tick(sites)
        results.append(result)
        report(result)
    if args.flower_dispatch:
        flower_dispatch()
        with tempfile.TemporaryDirectory(prefix="allfed-scale-") as work:
            old = run_scale(smallest, args.rounds, args.records, Path(work))
        report(old)
        new = next(r for r in results if r["sites"] == smallest)
        ratio = round(old["cpu_seconds"] / new["cpu_seconds"], 2)
        print(f"Flower's own dispatch at {smallest} sites: {ratio}x the CPU seconds")
    units = [r["sites"] * r["rounds"] for r in results]
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
    largest = max(results, key=lambda r: r["sites"])
    per_unit = largest["detail"]["seconds_per_site_round"]
    print(
        f"target at {largest['sites']} sites: {per_unit:.3f} s per site-round in all "
        f"(target {TARGET_SECONDS_PER_SITE_ROUND}; "
        f"{largest['detail']['cpu_seconds_per_site_round']:.3f} CPU s on {os.cpu_count()} CPUs), "
        f"peak RSS {largest['peak_rss_mb'] / 1024:.2f} GB (target {TARGET_MEMORY_GB})"
    )
    if args.flower_dispatch:
        fit["flower_dispatch"] = old
    if args.json:
        text = json.dumps({"runs": results, "fit": fit}, indent=2) + "\n"
        args.json.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
