"""The site ledger: one SQLite file per site that records every noisy release and every message.

Why SQLite: a privacy officer can open it with any SQLite tool, it needs no server, and its
transactions make "record before send" hold through a crash. Every release is committed before
its result is computed or leaves the site, so a crash between recording and sending leaves the
ledger over-counting, never under-counting.

Lifetime epsilon composes every release of every run with the accountant (PRV or RDP) at the
budget's delta; composition is tighter than summing the runs' epsilons. Admission control runs in
one ``BEGIN IMMEDIATE`` transaction (writers queue; two runs can never both take the last of a
budget): a run is admitted only when everything recorded, the unspent plans of other admitted
runs (reserved until spent) and this run's whole plan fit the lifetime budget; before each round,
that round's release is checked and recorded the same way (the hard stop).

Tables: ``runs`` (admitted and refused runs with their plans), ``releases`` (mechanism, its
parameters, epsilon after), ``messages`` (the audit trail: every message the site sent).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy.accounting import GaussianRelease, compute_epsilon, merged

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, study TEXT NOT NULL, recorded_at REAL NOT NULL,
    accountant TEXT NOT NULL, delta REAL NOT NULL, target_epsilon REAL NOT NULL,
    planned TEXT NOT NULL, status TEXT NOT NULL, reason TEXT);
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, recorded_at REAL NOT NULL, run_id TEXT NOT NULL,
    study TEXT NOT NULL, round INTEGER NOT NULL, mechanism TEXT NOT NULL,
    noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL,
    delta REAL NOT NULL, run_epsilon_after REAL NOT NULL, lifetime_epsilon_after REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, recorded_at REAL NOT NULL, run_id TEXT NOT NULL,
    round INTEGER NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL, keys TEXT NOT NULL,
    arrays TEXT NOT NULL, run_epsilon REAL NOT NULL, lifetime_epsilon REAL NOT NULL);
"""


@dataclass(frozen=True)
class Budget:
    """The limits a ledger enforces (from the site policy); None means no limit."""

    lifetime_epsilon: float | None
    lifetime_delta: float
    accountant: str
    max_epsilon_per_run: float | None = None


@dataclass(frozen=True)
class RunPlan:
    """A run as the site plans it: every release it will make, at the run's delta."""

    run_id: str
    study: str
    accountant: str
    delta: float
    target_epsilon: float
    releases: tuple[GaussianRelease, ...]


class Ledger:
    """One site's ledger file; every method opens, uses and closes its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock first, so checks and inserts are atomic."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- admission control and releases ---------------------------------------------------

    def admit(
        self, plan: RunPlan, budget: Budget, first: Sequence[tuple[str, GaussianRelease]] = ()
    ) -> str | None:
        """Admit ``plan`` (and record its ``first`` releases, round 0) or say why not.

        A refused run is recorded too (status ``refused`` and the reason), so the officer sees
        every request the site turned down.
        """
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (plan.run_id,)).fetchone():
                return f"run {plan.run_id} is already in the ledger"
            reason = self._over_budget(db, plan.run_id, plan.releases, budget, whole_run=True)
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    plan.run_id,
                    plan.study,
                    time.time(),
                    plan.accountant,
                    plan.delta,
                    plan.target_epsilon,
                    json.dumps([r.as_tuple() for r in plan.releases]),
                    "refused" if reason else "admitted",
                    reason,
                ),
            )
            for key, value in (
                ("lifetime_epsilon", budget.lifetime_epsilon),
                ("lifetime_delta", budget.lifetime_delta),
                ("accountant", budget.accountant),
            ):
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
            if reason is None:
                for mechanism, release in first:
                    self._insert_release(db, plan.run_id, 0, mechanism, release, budget)
            return reason

    def record_release(
        self, run_id: str, round_: int, mechanism: str, release: GaussianRelease, budget: Budget
    ) -> str | None:
        """The hard stop: record ``release`` if it fits every budget, else say why not."""
        with self._transaction() as db:
            run = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if run is None or run["status"] != "admitted":
                return f"run {run_id} was not admitted by this site's ledger"
            reason = self._over_budget(db, run_id, [release], budget, whole_run=False)
            if reason is None:
                self._insert_release(db, run_id, round_, mechanism, release, budget)
            return reason

    def _over_budget(
        self,
        db: sqlite3.Connection,
        run_id: str,
        new: Sequence[GaussianRelease],
        budget: Budget,
        whole_run: bool,
    ) -> str | None:
        run = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if run is not None and budget.max_epsilon_per_run is not None:
            spent = [*_run_releases(db, run_id), *new]
            epsilon = compute_epsilon(spent, run["delta"], run["accountant"])
            if epsilon > budget.max_epsilon_per_run:
                return (
                    f"the run would reach epsilon {epsilon:.3f}, above the site policy's "
                    f"max-epsilon-per-run {budget.max_epsilon_per_run:g}"
                )
        if budget.lifetime_epsilon is None:
            return None
        committed = [*_all_releases(db), *_reserved(db, exclude=run_id), *new]
        epsilon = compute_epsilon(committed, budget.lifetime_delta, budget.accountant)
        if epsilon > budget.lifetime_epsilon:
            what = "this run's plan" if whole_run else "this round"
            return (
                f"{what} would take the site's lifetime epsilon to {epsilon:.3f} "
                f"(with earlier runs and reserved plans), above its lifetime budget "
                f"{budget.lifetime_epsilon:g} at delta {budget.lifetime_delta:g}"
            )
        return None

    def _insert_release(
        self,
        db: sqlite3.Connection,
        run_id: str,
        round_: int,
        mechanism: str,
        release: GaussianRelease,
        budget: Budget,
    ) -> None:
        run = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        run_eps = compute_epsilon(
            [*_run_releases(db, run_id), release], run["delta"], run["accountant"]
        )
        life_eps = compute_epsilon(
            [*_all_releases(db), release], budget.lifetime_delta, budget.accountant
        )
        db.execute(
            "INSERT INTO releases (recorded_at, run_id, study, round, mechanism, noise_multiplier,"
            " sample_rate, steps, delta, run_epsilon_after, lifetime_epsilon_after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                run_id,
                run["study"],
                round_,
                mechanism,
                release.noise_multiplier,
                release.sample_rate,
                release.steps,
                run["delta"],
                run_eps,
                life_eps,
            ),
        )

    # -- audit trail ----------------------------------------------------------------------

    def record_message(
        self,
        run_id: str,
        round_: int,
        kind: str,
        status: str,
        keys: Iterable[str],
        arrays: dict[str, list[int]],
    ) -> None:
        """Append what one outgoing message carried (names and shapes, never values)."""
        with self._transaction() as db:
            run_eps, life_eps = 0.0, 0.0
            last = db.execute(
                "SELECT run_epsilon_after FROM releases WHERE run_id = ? ORDER BY id DESC LIMIT 1",
                (run_id,),
            ).fetchone()
            if last is not None:
                run_eps = last[0]
            row = db.execute(
                "SELECT lifetime_epsilon_after FROM releases ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if row is not None:
                life_eps = row[0]
            db.execute(
                "INSERT INTO messages (recorded_at, run_id, round, kind, status, keys, arrays,"
                " run_epsilon, lifetime_epsilon) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    run_id,
                    round_,
                    kind,
                    status,
                    json.dumps(sorted(keys)),
                    json.dumps(arrays),
                    run_eps,
                    life_eps,
                ),
            )

    # -- reading --------------------------------------------------------------------------

    def lifetime_epsilon(self, delta: float, accountant: str) -> float:
        """Every recorded release of every run, composed at ``delta``."""
        with self._connect() as db:
            return compute_epsilon(_all_releases(db), delta, accountant)

    def budget(self) -> dict[str, Any]:
        """The budget the site's node last enforced (from its policy), as recorded."""
        with self._connect() as db:
            rows = db.execute("SELECT key, value FROM meta WHERE key != 'schema_version'")
            return {key: json.loads(value) for key, value in rows}

    def releases(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM releases ORDER BY id")]

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run's row (its plan decoded) or None; a resumed run is continued from it."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        run = dict(row)
        run["planned"] = json.loads(run["planned"])
        return run

    def run_releases(self, run_id: str) -> list[dict[str, Any]]:
        """One run's releases in the order they were recorded: its history on a resume."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM releases WHERE run_id = ? ORDER BY id", (run_id,))
            return [dict(r) for r in rows]

    def runs(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY recorded_at")]
        for row in rows:
            row["planned"] = json.loads(row["planned"])
        return rows

    def messages(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM messages ORDER BY id")]
        for row in rows:
            row["keys"], row["arrays"] = json.loads(row["keys"]), json.loads(row["arrays"])
        return rows


def _rows_to_releases(rows: Iterable[sqlite3.Row]) -> list[GaussianRelease]:
    return [GaussianRelease(float(r[0]), float(r[1]), int(r[2])) for r in rows]


def _all_releases(db: sqlite3.Connection) -> list[GaussianRelease]:
    return _rows_to_releases(
        db.execute("SELECT noise_multiplier, sample_rate, steps FROM releases")
    )


def _run_releases(db: sqlite3.Connection, run_id: str) -> list[GaussianRelease]:
    return _rows_to_releases(
        db.execute(
            "SELECT noise_multiplier, sample_rate, steps FROM releases WHERE run_id = ?", (run_id,)
        )
    )


def _reserved(db: sqlite3.Connection, exclude: str) -> list[GaussianRelease]:
    """What admitted runs planned and have not yet recorded: reserved until spent. A run that
    stops early keeps its reservation (conservative)."""
    reserved: list[GaussianRelease] = []
    for run in db.execute(
        "SELECT run_id, planned FROM runs WHERE status = 'admitted' AND run_id != ?", (exclude,)
    ).fetchall():
        spent = dict(
            ((r.noise_multiplier, r.sample_rate), r.steps)
            for r in merged(_run_releases(db, run["run_id"]))
        )
        for s, q, t in json.loads(run["planned"]):
            left = int(t) - spent.pop((float(s), float(q)), 0)
            if left > 0:
                reserved.append(GaussianRelease(float(s), float(q), left))
    return reserved
