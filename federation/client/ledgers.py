"""The site ledgers a node process keeps open: each file checked once, and held open between
messages.

A simulation's worker process answers many sites' messages in turn, and a message opens its
site's ledger several times (admission, the release record, the audit trail). Two costs there are
not the ledger's own work: checking the file (an allfed ledger, its schema up to date: three
connections) at every message, and SQLite's checkpoint when the last connection to a WAL
database closes, which copies the WAL into the database file, syncs it and deletes the WAL after
every single method call. Here a process checks a ledger file once and keeps one idle
connection to it, so the other connections' closes are not the last: the WAL is checkpointed as
it grows instead. Every admission and record still runs in its own connection and transaction,
synced to the WAL at commit (``synchronous=FULL``), so the ledger is as durable as before.

The held connection also pins the file's inode, so a file removed or replaced under the same
name has another device and inode and is checked again (a removed file's inode cannot be reused
while it is held). At most ``MAX_OPEN`` ledgers are held (a quarter of the process's file
descriptors, three each), the least recently used let go first.
"""

from __future__ import annotations

import os
import resource
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from federation.client.partition import Partition
from privacy.ledger import Ledger


def _max_open() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(8, soft // 12)  # a quarter of the descriptors, three a held ledger


MAX_OPEN = _max_open()


@dataclass
class OpenLedger:
    """A ledger file this process checked, the idle connection that holds it open, and the
    partition pinned in it once read (written once, at the ledger's first run, never changed)."""

    identity: tuple[int, int]
    ledger: Ledger
    held: sqlite3.Connection
    partition: Partition | None = None


OPEN: dict[str, OpenLedger] = {}
"""path -> the ledger held open there, least recently used first."""
_OWNER = os.getpid()
_INHERITED: list[OpenLedger] = []  # a forked child's from its parent: kept, never used or closed


def checked_ledger(path: Path) -> Ledger:
    """The ledger at ``path``: checked when this process has not held this very file open (a
    file removed, replaced or not there yet is checked again), then held open."""
    global _OWNER
    if os.getpid() != _OWNER:  # SQLite connections must not cross a fork: start afresh
        _INHERITED.extend(OPEN.values())
        OPEN.clear()
        _OWNER = os.getpid()
    key = str(path)
    known = OPEN.pop(key, None)
    if known is not None:
        if known.identity == _identity(path):
            OPEN[key] = known  # the most recently used last
            return known.ledger
        known.held.close()
    ledger = Ledger(path)
    connection = sqlite3.connect(path, timeout=120, check_same_thread=False)
    try:
        connection.execute("SELECT count(*) FROM meta").fetchall()  # opens the WAL, as reads do
        identity = _identity(path)
    except sqlite3.Error:
        identity = None
    if identity is None:
        connection.close()
        return ledger
    while len(OPEN) >= MAX_OPEN:
        OPEN.pop(next(iter(OPEN))).held.close()
    OPEN[key] = OpenLedger(identity, ledger, connection)
    return ledger


def held(ledger: Ledger) -> OpenLedger | None:
    """``ledger``'s entry, when it is the one this process holds open for its file."""
    entry = OPEN.get(str(ledger.path))
    return entry if entry is not None and entry.ledger is ledger else None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)
