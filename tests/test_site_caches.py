"""The ledgers a site node process holds open (``client.ledgers``) and the partition pinned in
each (``client.site.site_partition``): each file checked and read once, one site's never served
for another's, a ledger file that was removed or replaced checked and read again, and every
record on the file at once for any other reader."""

from __future__ import annotations

import os
import sqlite3

import pytest

from federation.client import ledgers
from federation.client.ledgers import checked_ledger
from federation.client.site import SiteSettings, site_partition
from federation.errors import AllfedError
from federation.synth import study_toml, write_cohort
from federation.wire.spec import load_spec, parse_spec
from privacy import ledger as ledger_module
from privacy.ledger import Ledger, LedgerError


@pytest.fixture(autouse=True)
def _none_held(monkeypatch):
    monkeypatch.setattr(ledgers, "OPEN", {})


@pytest.fixture
def schema_checks(monkeypatch):
    """How often a Ledger checked its file (ran its schema and migrations)."""
    calls = []
    migrate = Ledger._migrate
    monkeypatch.setattr(
        Ledger, "_migrate", lambda self, db: calls.append(self.path) or migrate(self, db)
    )
    return calls


def test_a_ledger_file_is_checked_once_per_process(tmp_path, schema_checks):
    path = tmp_path / "a.sqlite"
    first = checked_ledger(path)
    assert checked_ledger(path) is first and checked_ledger(path) is first
    assert schema_checks == [path]


def test_one_sites_ledger_is_never_served_for_another(tmp_path):
    a, b = checked_ledger(tmp_path / "a.sqlite"), checked_ledger(tmp_path / "b.sqlite")
    a.pin_partition({"test_fraction": 0.3})
    assert b.path == tmp_path / "b.sqlite" and a is not b
    assert b.partition_definition() is None  # b's own file, untouched by a's pin
    assert checked_ledger(tmp_path / "a.sqlite").partition_definition() is not None


def test_a_removed_ledger_is_created_and_checked_again(tmp_path, schema_checks):
    path = tmp_path / "a.sqlite"
    first = checked_ledger(path)
    first.pin_partition({"test_fraction": 0.3})
    for leftover in tmp_path.glob("a.sqlite*"):
        leftover.unlink()
    again = checked_ledger(path)
    assert again is not first and schema_checks == [path, path]
    assert again.partition_definition() is None  # a new, empty ledger, not the old one


def test_a_ledger_replaced_by_another_database_is_refused(tmp_path):
    path = tmp_path / "a.sqlite"
    checked_ledger(path)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE patients (id INTEGER)")
    other.replace(path)  # a new file (another inode) under the ledger's name
    with pytest.raises(LedgerError, match="not an allfed ledger"):
        checked_ledger(path)


def test_the_node_opens_its_ledger_through_the_cache(tmp_path, schema_checks):
    spec = parse_spec(study_toml())
    settings = SiteSettings("a", tmp_path / "a.csv", spec, ledger=tmp_path / "a.sqlite")
    assert settings.open_ledger() is settings.open_ledger()
    assert len(schema_checks) == 1
    broken = SiteSettings("b", tmp_path / "b.csv", spec, ledger=tmp_path)  # a directory
    with pytest.raises(AllfedError, match=r"site b: .*is a directory"):
        broken.open_ledger()


def test_the_cache_holds_no_ledger_the_process_could_not_check(tmp_path, monkeypatch):
    def refuse(self):
        raise LedgerError(f"{self.path}: not a usable ledger")

    monkeypatch.setattr(ledger_module.Ledger, "_refuse_another_database", refuse)
    with pytest.raises(LedgerError):
        checked_ledger(tmp_path / "a.sqlite")
    assert ledgers.OPEN == {}


def test_a_record_is_on_the_file_for_any_other_reader(tmp_path):
    """The held connection changes when SQLite checkpoints, not what a commit makes durable:
    another connection (another process: the privacy officer's CLI) reads the record at once."""
    path = tmp_path / "a.sqlite"
    checked_ledger(path).pin_partition({"test_fraction": 0.3})
    with sqlite3.connect(path) as other:
        rows = other.execute("SELECT key FROM partition").fetchall()
    assert sorted(r[0] for r in rows) == ["definition", "secret"]
    assert Ledger(path).partition_definition() == {"test_fraction": 0.3}


def test_at_most_max_open_ledgers_are_held(tmp_path, monkeypatch, schema_checks):
    monkeypatch.setattr(ledgers, "MAX_OPEN", 2)
    a, b, c = (tmp_path / f"{name}.sqlite" for name in "abc")
    first = checked_ledger(a)
    checked_ledger(b)
    checked_ledger(c)  # lets a go, the least recently used
    assert list(ledgers.OPEN) == [str(b), str(c)]
    assert checked_ledger(a) is not first and schema_checks == [a, b, c, a]


@pytest.fixture
def cohort(tmp_path):
    files, spec_path = write_cohort(tmp_path / "data", 2, 200, seed=3)
    return files, load_spec(spec_path)


def _site(name, files, spec, tmp_path):
    return SiteSettings(name, files[name], spec, ledger=tmp_path / "ledgers" / f"{name}.sqlite")


def test_a_pinned_partition_is_read_once_per_ledger_file(cohort, tmp_path, monkeypatch):
    files, spec = cohort
    site = _site(next(iter(files)), files, spec, tmp_path)
    reads = []
    definition = Ledger.partition_definition
    monkeypatch.setattr(
        Ledger, "partition_definition", lambda self: reads.append(1) or definition(self)
    )
    first = site_partition(site, site.open_ledger())
    assert site_partition(site, site.open_ledger()) is first
    assert len(reads) == 1
    assert first.secret == site.open_ledger().partition_secret()  # what the ledger pinned


def test_one_sites_partition_is_never_served_for_another(cohort, tmp_path, monkeypatch):
    files, spec = cohort
    a, b = (_site(name, files, spec, tmp_path) for name in files)
    partition_a = site_partition(a, a.open_ledger())
    partition_b = site_partition(b, b.open_ledger())
    assert partition_a.secret != partition_b.secret
    assert partition_b.secret == b.open_ledger().partition_secret()
    assert site_partition(a, a.open_ledger()) is partition_a


def test_a_new_ledger_file_pins_and_serves_its_own_partition(cohort, tmp_path, monkeypatch):
    files, spec = cohort
    site = _site(next(iter(files)), files, spec, tmp_path)
    first = site_partition(site, site.open_ledger())
    for leftover in (tmp_path / "ledgers").glob(f"{site.name}.sqlite*"):
        leftover.unlink()
    again = site_partition(site, site.open_ledger())
    assert again.secret != first.secret  # a fresh ledger pinned a fresh secret
    assert again.secret == site.open_ledger().partition_secret()


def test_a_forked_child_checks_the_ledger_again_and_leaves_the_parents_alone(
    tmp_path, schema_checks
):
    """SQLite connections must not cross a fork: a child opens its own, and the parent's
    held connection keeps working after the child exits."""
    path = tmp_path / "a.sqlite"
    parent = checked_ledger(path)
    pid = os.fork()
    if pid == 0:  # the child: a fresh check (its own connection), then a record
        child = checked_ledger(path)
        fresh = child is not parent and len(schema_checks) == 2
        child.pin_partition({"test_fraction": 0.3})
        os._exit(0 if fresh else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert checked_ledger(path) is parent and schema_checks == [path]
    assert parent.partition_definition() == {"test_fraction": 0.3}
