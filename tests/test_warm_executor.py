"""The warm executor's memory (``federation.deploy.warm``): a forked task hands the site table it
read and the epsilons it composed back to the executor, and the tasks forked after it use them
only while the file they came from is unchanged. Real forks, a real site file and Opacus's own
accountant: nothing here is simulated but the Flower task around the child."""

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from federation.client import site
from federation.client.data import read_table
from federation.client.partition import Partition, requested_definition
from federation.deploy import warm
from federation.wire.spec import parse_spec
from privacy import accounting
from privacy.accounting import GaussianRelease, compute_epsilon
from privacy.policy import SitePolicy

SPEC = parse_spec(
    """
[study]
label = "y"
consent = "consent"
seed = 3
[features]
numeric = ["age"]
bounds = { age = [18, 90] }
""",
    source="spec",
)
RELEASE = GaussianRelease(1.1, 0.01, 517)  # steps no other test composes: a fresh cache key


@pytest.fixture()
def site_file(tmp_path, monkeypatch):
    """A site of 100 records, its settings and partition, with this process's caches empty."""
    monkeypatch.setattr(site, "TABLES", {})
    monkeypatch.setattr(accounting, "EPSILONS", {})
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"age": rng.integers(20, 85, 100), "consent": 1, "y": rng.integers(0, 2, 100)}
    )
    path = tmp_path / "site.csv"
    frame.to_csv(path, index=False)
    columns = list(read_table(path).columns)
    partition = Partition(requested_definition(SitePolicy(), SPEC, columns), bytes(range(32)))
    settings = site.SiteSettings("urban", path, SPEC, tmp_path / "ledger.sqlite")
    return settings, partition, frame


def _in_child(work) -> None:
    """Fork, let the child run ``work`` and send what it added; keep it here, as the executor
    does (``deploy.node.ForkExecutor``)."""
    back, out = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(back)
            before = warm.marks()
            work()
            warm.send(out, warm.added(before))
            code = 0
        finally:
            os._exit(code)
    os.close(out)
    warm.receive(back)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_tasks_table_and_epsilons_serve_the_tasks_after_it(site_file, monkeypatch):
    settings, partition, _ = site_file
    _in_child(
        lambda: (site.site_table(settings, partition), compute_epsilon([RELEASE], 1e-5, "prv"))
    )
    assert str(settings.data) in site.TABLES and len(accounting.EPSILONS) == 1

    def no_read(*_args, **_kwargs):
        raise AssertionError("the table was read again")

    def no_composition(*_args, **_kwargs):
        raise AssertionError("the epsilon was composed again")

    with monkeypatch.context() as patched:
        patched.setattr(site, "load_site_table", no_read)
        patched.setattr(accounting, "_composed_epsilon", no_composition)
        table = site.site_table(settings, partition)
        epsilon = compute_epsilon([RELEASE], 1e-5, "prv")
    assert table.n_train + table.n_test == 100
    # The value handed back is the accountant's own, bit for bit.
    assert epsilon == accounting._composed_epsilon((RELEASE,), 1e-5, "prv")


def test_a_handed_on_table_is_read_again_once_its_file_changes(site_file):
    settings, partition, frame = site_file
    _in_child(lambda: site.site_table(settings, partition))
    kept = site.TABLES[str(settings.data)][1]
    time.sleep(0.05)  # file times are coarse: a new extract comes later than a clock tick
    before = settings.data.stat()
    frame.assign(y=1 - frame["y"]).to_csv(settings.data, index=False)  # same size, new labels
    os.utime(settings.data, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = site.site_table(settings, partition)
    assert again is not kept
    assert np.array_equal(again.label, 1 - kept.label)


def test_only_new_entries_go_back_and_never_a_database_sources_table(site_file):
    settings, partition, _ = site_file
    site.site_table(settings, partition)  # already in the executor before the fork
    source = str(settings.data.with_suffix(".toml"))

    def work():
        site.TABLES[source] = ("version", "a table read from a database")
        compute_epsilon([RELEASE], 1e-5, "rdp")

    before = warm.marks()
    work()
    added = warm.added(before)
    assert added["tables"] == {}  # the CSV's table was there before; the source's stays behind
    assert list(added["epsilons"]) == [((RELEASE,), 1e-5, "rdp")]


def test_a_child_that_dies_before_it_sends_adds_nothing(site_file):
    back, out = os.pipe()
    pid = os.fork()
    if pid == 0:
        os._exit(1)  # killed mid-task: its end of the pipe closes with it
    os.close(out)
    warm.receive(back)
    os.waitpid(pid, 0)
    assert site.TABLES == {} and accounting.EPSILONS == {}


def test_a_forked_task_that_closes_its_executor_stops_none_of_its_siblings(monkeypatch):
    """Flower's signal handlers, inherited by every forked task, close the executor on the
    way out (a task whose token was revoked signals itself): the task's copy of the executor
    must not stop the tasks started before it."""
    from types import SimpleNamespace

    from federation.deploy import node

    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    executor = node.ForkExecutor()
    try:
        executor.children.add(sibling.pid)
        monkeypatch.setattr(node, "_child", lambda *_: executor.close() or 0)
        executor.launch(SimpleNamespace(root_certificates_path=None, insecure=True))
        (child,) = executor.children - {sibling.pid}
        _, code = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(code) == 0
        assert sibling.poll() is None
    finally:
        sibling.kill()
        sibling.wait()
