"""Shared fixtures: a private FLWR_HOME, no telemetry, a task identity for messages built in the
test process, small synthetic cohorts, and a local deployment for the deployment modules."""

import os
import time

import pytest
from flwr.supercore.task_identity import TaskIdentity

from federation.deploy.local import LocalFederation
from federation.synth import write_cohort

# The modules with end-to-end runs, longest first: the two workers (pyproject's addopts) take
# whole modules in this order, so the short unit modules fill in at the end.
LONGEST_FIRST = (
    "test_deployment.py",
    "test_faults.py",
    "test_simulation.py",
    "test_omop.py",
    "test_ray_cluster.py",
    "test_audit.py",
    "test_governance_e2e.py",
    "test_analyze.py",
    "test_console.py",
    "test_report.py",
    "test_predict.py",
)


def pytest_configure(config):
    """Each xdist worker on its own share of the CPUs (inherited by the Ray workers and nodes it
    starts): two simulations at once then do not fight over the same cores."""
    worker, count = (
        os.environ.get("PYTEST_XDIST_WORKER"),
        os.environ.get("PYTEST_XDIST_WORKER_COUNT"),
    )
    if worker and count and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        share = cpus[int(worker.removeprefix("gw")) % int(count) :: int(count)]
        if share:
            os.sched_setaffinity(0, share)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module stays


@pytest.fixture(autouse=True)
def flower_environment(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr-home")))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


@pytest.fixture(autouse=True)
def server_identity():
    """Messages are created by a ServerApp; give this process the identity Flower expects."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """Three synthetic sites of about 600 records and their study spec."""
    return write_cohort(tmp_path_factory.mktemp("cohort"), n_sites=3, records_per_site=600, seed=11)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A SuperLink with TLS and SuperNode auth, and two registered, connected SuperNodes."""
    root = tmp_path_factory.mktemp("deployment")
    files, study = write_cohort(root / "data", n_sites=2, records_per_site=800, seed=5)
    # Deployment mechanics, not accounting: one round and the quicker RDP accountant.
    text = study.read_text().replace("[training]\n", "[training]\nrounds = 1\n")
    study.write_text(text.replace('accountant = "prv"', 'accountant = "rdp"'))
    fed = LocalFederation(root / "fed")
    try:
        fed.start_superlink()
        fed.join_sites(files, timeout=120)
        yield fed, files, study
    except BaseException:
        print(fed.logs())
        raise
    finally:
        fed.stop()
        deadline = time.monotonic() + 10  # killed children may take a moment to be reaped
        while any(p.group_alive() for p in fed.processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p.name for p in fed.processes if p.group_alive()]
