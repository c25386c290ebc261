"""Run a study on one machine with Flower's simulation engine: every site a simulated node.

The nodes run the same ClientApp code as a deployed SuperNode; only where a node learns its site
(file and name) differs: here from its partition id, there from ``--node-config``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.errors import AllfedError
from federation.wire.spec import StudySpec, parse_spec

if TYPE_CHECKING:
    from federation.wire.queries import AnalysisRequest

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def configure_flower_environment() -> None:
    """No telemetry, no dependency installs, and a private FLWR_HOME unless one is set."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    if "FLWR_HOME" not in os.environ:
        os.environ["FLWR_HOME"] = tempfile.mkdtemp(prefix="allfed-flwr-home-")


@dataclass(frozen=True)
class SimulatedSites:
    """Which site a simulated node is, by its partition id; small and picklable for Ray."""

    spec_toml: str
    sites: tuple[tuple[str, str], ...]
    ledger_dir: str  # each site's ledger is ledger_dir/NAME.sqlite
    policies: tuple[tuple[str, str], ...] = ()  # site name -> its policy file

    def __call__(self, context):
        from federation.client.site import SiteSettings, site_policy
        from privacy.policy import simulation_policy

        name, path = self.sites[int(context.node_config["partition-id"])]
        spec = _parse(self.spec_toml)
        policy_file = dict(self.policies).get(name)
        return SiteSettings(
            name=name,
            data=Path(path),
            spec=spec,
            ledger=Path(self.ledger_dir) / f"{name}.sqlite",
            policy=site_policy(policy_file)
            if policy_file
            else simulation_policy(spec.privacy.enabled),
        )


@lru_cache(maxsize=4)
def _parse(text: str) -> StudySpec:
    return parse_spec(text)


def simulate(
    spec: StudySpec,
    sites: dict[str, Path],
    out: Path,
    on_round=None,
    verbose: bool = False,
    client_mods: list | None = None,
    policies: dict[str, Path] | None = None,
    ledger_dir: Path | None = None,
    resume: bool = False,
    analysis: AnalysisRequest | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run ``spec`` over ``sites`` (name -> data file) and return the run's summary.

    The run directory ``out`` is written whether the run completes or fails; a failed run
    (fewer than ``min-sites`` sites left) returns a summary with ``status: "failed"``.
    ``client_mods`` (Flower mods wrapped around every site's handlers) are for fault injection.
    ``policies`` (site name -> policy file) and ``ledger_dir`` (one ledger per site, default
    ``out/ledgers``) are the sites' own governance, as ``--node-config policy=... ledger=...``
    is in deployment; a site without a policy file gets the default policy, except that a study
    without DP may run (the caller holds the files).
    ``resume`` continues the run in ``out`` from its checkpoint (same spec; under DP the sites
    need their ledgers).
    ``analysis`` answers that descriptive analysis instead of training and returns its
    ``analysis.json``.
    ``ray_address`` (``HOST:PORT`` of a running Ray cluster's head) runs the simulated sites on
    that cluster's nodes instead of a Ray started on this machine (``ray_backend_config``).
    """
    if not sites:
        raise AllfedError("no sites given: pass --site NAME=PATH at least once")
    for name, path in sites.items():
        if not Path(path).exists():
            raise AllfedError(f"site {name}: {path}: file not found")
        if Path(path).is_dir():
            raise AllfedError(f"site {name}: {path}: is a directory, expected the site's file")
    if analysis is None and len(sites) < spec.training.min_sites:
        raise AllfedError(
            f"{len(sites)} site(s) given, fewer than [training] min-sites = "
            f"{spec.training.min_sites}: the run cannot start"
        )
    if ray_address is not None:
        check_ray_address(ray_address)
    configure_flower_environment()

    from flwr.simulation import run_simulation
    from flwr.supercore.logger import update_console_handler

    from federation.client.app import make_client_app
    from federation.client.site import site_policy
    from federation.server.app import RunSettings, make_server_app
    from federation.server.outputs import load_checkpoint
    from federation.server.sites import RunFailed
    from federation.simulation_dispatch import fast_message_dispatch

    checkpoint = load_checkpoint(Path(out), spec.to_toml()) if resume else None

    policies = policies or {}
    if unknown := sorted(set(policies) - set(sites)):
        raise AllfedError(f"--policy {unknown[0]}: no --site of that name")
    for path in policies.values():
        site_policy(path)  # a malformed policy is the user's mistake: say so before starting
    resolve_site = SimulatedSites(
        spec.to_toml(),
        tuple((name, str(Path(path).resolve())) for name, path in sites.items()),
        str(Path(ledger_dir or Path(out) / "ledgers").resolve()),
        tuple((name, str(Path(path).resolve())) for name, path in policies.items()),
    )
    settings = RunSettings(
        spec=spec,
        out=Path(out),
        on_round=on_round,
        expected_sites=len(sites),
        checkpoint=checkpoint,
        analysis=analysis,
    )
    server_app = make_server_app(lambda _context: settings)
    client_app = make_client_app(resolve_site, mods=client_mods)
    update_console_handler(level=logging.INFO if verbose else logging.ERROR)
    # Ray installs a root log handler; keep Flower's and allfed's records out of it (they still
    # reach run.log, and Flower's own console handler in verbose mode).
    logging.getLogger("flwr").propagate = False
    logging.getLogger("allfed").propagate = verbose
    fast_message_dispatch()  # Flower's own asks every site in turn, each walk over every message
    with contextlib.suppress(RunFailed):  # the summary written by the run says why
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(sites),
            backend_config=ray_backend_config(len(sites), verbose, ray_address),
        )
    summary_path = Path(out) / ("analysis.json" if analysis else "summary.json")
    if not summary_path.exists():
        raise RuntimeError(f"the simulation ended without writing {summary_path}")
    return json.loads(summary_path.read_text(encoding="utf-8"))


def analyze(
    spec: StudySpec,
    sites: dict[str, Path],
    request: AnalysisRequest,
    out: Path,
    policies: dict[str, Path] | None = None,
    ledger_dir: Path | None = None,
) -> dict[str, Any]:
    """Answer a descriptive analysis over ``sites`` (the Python face of ``allfed analyze``);
    returns ``out/analysis.json``, whose ``result`` is the pooled table."""
    return simulate(spec, sites, out, analysis=request, policies=policies, ledger_dir=ledger_dir)


def ray_backend_config(n_sites: int, verbose: bool, ray_address: str | None) -> dict[str, Any]:
    """Flower's Ray backend settings: one CPU a site. Without ``ray_address``, Ray starts here
    with as many workers as sites, up to this machine's CPUs; with it, Ray joins that cluster,
    whose nodes bring their own CPUs (Ray refuses a CPU count when it joins a cluster)."""
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }
    if ray_address is None:
        init_args["num_cpus"] = max(1, min(n_sites, _usable_cpus()))
    else:
        init_args["address"] = ray_address
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}


def check_ray_address(address: str) -> None:
    """A one-line error, before Flower starts, for an address no Ray cluster answers at (Ray
    itself retries for a minute, then raises)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AllfedError(
            f"--ray-address {address!r}: expected HOST:PORT of the Ray head (its GCS port, "
            "6379 by default, as `ray start --head` prints)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise AllfedError(
            f"--ray-address {address}: no Ray cluster answers there ({error.strerror or error})"
        ) from None


def _usable_cpus() -> int:
    """The CPUs this process may run on (a container's or ``taskset``'s limit), not the
    machine's: more Ray workers than that only fight over them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
