"""The site node's per-process ledger cache (``client.site.checked_ledger``): a ledger file is
checked once per file, one site's ledger is never served for another's, and a ledger file that
was removed or replaced is checked again."""

from __future__ import annotations

import sqlite3

import pytest

from federation.client import site as site_module
from federation.client.site import SiteSettings, checked_ledger
from federation.errors import AllfedError
from federation.synth import study_toml
from federation.wire.spec import parse_spec
from privacy import ledger as ledger_module
from privacy.ledger import Ledger, LedgerError


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch):
    monkeypatch.setattr(site_module, "LEDGERS", {})


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
    assert site_module.LEDGERS == {}
