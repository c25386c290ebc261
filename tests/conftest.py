"""Shared fixtures: a private FLWR_HOME, no telemetry, a task identity for messages built in the
test process, and small synthetic cohorts."""

import pytest
from flwr.supercore.task_identity import TaskIdentity

from federation.synth import write_cohort


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
