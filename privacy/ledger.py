"""The site ledger: one SQLite file per site that records every noisy release and every message.

Why SQLite: a privacy officer can open it with any SQLite tool, it needs no server, and its
transactions make "record before send" hold through a crash. Every release is committed before
its result is computed or leaves the site, so a crash between recording and sending leaves the
ledger over-counting, never under-counting. The ledger is the site's memory of its runs: the
accountant's history of a run is its rows here, never only Flower's node state.

**Partitions.** The site fixes which of its records are test records and which train
(``pin_partition``: a site secret or the site's own split column, the same in every run). A
release is on the ``train`` partition (DP-SGD, standardization), the ``test`` partition
(evaluation) or on ``all`` records (descriptive analyses). A participant is in exactly one of
the two partitions, so a participant's epsilon is the larger of the two partitions' epsilons,
each composing that partition's releases with the ``all`` releases: every budget below is
checked per partition.

**Admission control** runs in one ``BEGIN IMMEDIATE`` transaction (writers queue; two runs can
never both take the last of a budget): a run is admitted only when everything recorded, the
unspent plans of other admitted runs (reserved until spent) and this run's whole plan fit the
lifetime budget, and the run's own plan fits the per-run caps. Every later release is checked
against the run's admitted plan (a release the plan does not hold is refused) and the budgets
again (the hard stop), and recorded in the same transaction.

Tables: ``runs`` (admitted and refused runs: plan, spec digest, the setup reply to repeat),
``releases`` (mechanism, partition, parameters, epsilon after), ``messages`` (the audit trail of
every message the site sent, with the detailed reason that stayed at the site), ``partition``
(the site's fixed partition and its secret; never printed), ``last_reply`` (each run's last
released update, to answer a server that lost it with the same release).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy.accounting import GaussianRelease, compute_epsilon, merged
from privacy.refusal import Refusal

SCHEMA_VERSION = 3
TRAIN, TEST, ALL = "train", "test", "all"
PARTITIONS = (TRAIN, TEST)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, study TEXT NOT NULL, recorded_at REAL NOT NULL,
    accountant TEXT NOT NULL, delta REAL NOT NULL, target_epsilon REAL NOT NULL,
    planned TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    spec_digest TEXT, kind TEXT NOT NULL DEFAULT 'training', setup_reply TEXT,
    settings TEXT);
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, recorded_at REAL NOT NULL, run_id TEXT NOT NULL,
    study TEXT NOT NULL, round INTEGER NOT NULL, mechanism TEXT NOT NULL,
    noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL,
    delta REAL NOT NULL, run_epsilon_after REAL NOT NULL, lifetime_epsilon_after REAL NOT NULL,
    partition TEXT NOT NULL DEFAULT 'all');
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, recorded_at REAL NOT NULL, run_id TEXT NOT NULL,
    round INTEGER NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL, keys TEXT NOT NULL,
    arrays TEXT NOT NULL, run_epsilon REAL NOT NULL, lifetime_epsilon REAL NOT NULL,
    detail TEXT);
CREATE TABLE IF NOT EXISTS partition (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS last_reply (
    run_id TEXT PRIMARY KEY, round INTEGER NOT NULL, kind TEXT NOT NULL, content BLOB NOT NULL);
"""
# Columns an earlier ledger lacks: a version-1 ledger's releases did not say their partition,
# so they count against both (conservative); a version-2 ledger's runs kept no settings.
_MIGRATIONS = {
    "runs": (
        "spec_digest TEXT",
        "kind TEXT NOT NULL DEFAULT 'training'",
        "setup_reply TEXT",
        "settings TEXT",
    ),
    "releases": ("partition TEXT NOT NULL DEFAULT 'all'",),
    "messages": ("detail TEXT",),
}


class LedgerError(Exception):
    """The ledger file cannot be used (not SQLite, unreadable, of a newer schema)."""


@dataclass(frozen=True)
class Budget:
    """The limits a ledger enforces (from the site policy); None means no limit.

    ``lifetime_epsilon`` bounds every partition's lifetime epsilon (a participant's is the
    larger of the two); ``max_epsilon_per_run`` a run's training partition,
    ``max_evaluation_epsilon_per_run`` its test partition.
    """

    lifetime_epsilon: float | None
    lifetime_delta: float
    accountant: str
    max_epsilon_per_run: float | None = None
    max_evaluation_epsilon_per_run: float | None = None

    def run_cap(self, partition: str) -> float | None:
        return (
            self.max_evaluation_epsilon_per_run if partition == TEST else (self.max_epsilon_per_run)
        )


@dataclass(frozen=True)
class PlannedRelease:
    """One kind of release a run plans: ``mechanism`` on ``partition``, all its steps."""

    mechanism: str
    partition: str
    release: GaussianRelease

    def as_list(self) -> list[Any]:
        return [self.mechanism, self.partition, *self.release.as_tuple()]

    @classmethod
    def from_list(cls, item: list[Any]) -> PlannedRelease:
        if len(item) == 3:  # a version-1 plan: one mechanism, partition unknown
            return cls("dp-sgd", ALL, GaussianRelease(float(item[0]), float(item[1]), int(item[2])))
        mechanism, partition, s, q, t = item
        return cls(mechanism, partition, GaussianRelease(float(s), float(q), int(t)))


@dataclass(frozen=True)
class RunPlan:
    """A run as the site admits it: every release it will make, at the run's delta, bound to
    one study spec (its digest) and the settings the site planned it with (``settings``: what
    the spec left to the planner, which later messages of the run train with)."""

    run_id: str
    study: str
    accountant: str
    delta: float
    target_epsilon: float
    releases: tuple[PlannedRelease, ...]
    spec_digest: str = ""
    kind: str = "training"
    settings: dict[str, Any] | None = None


class Ledger:
    """One site's ledger file; every method opens, uses and closes its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise LedgerError(f"{self.path}: is a directory, not a ledger file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._refuse_another_database()
            with self._connect() as db:
                db.executescript(_SCHEMA)
                self._migrate(db)
        except sqlite3.DatabaseError as error:
            raise LedgerError(f"{self.path}: not a usable ledger ({error})") from None

    def _refuse_another_database(self) -> None:
        """Never add a ledger's tables to another application's database (nor change its
        journal mode): a ledger holds its ``meta`` table from its first use."""
        db = sqlite3.connect(self.path)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        finally:
            db.close()
        if tables and "meta" not in tables:
            raise LedgerError(
                f"{self.path}: a SQLite database, but not an allfed ledger; name the site's "
                "ledger file (or a new file)"
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

    def _migrate(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise LedgerError(f"{self.path}: written by a newer allfed (schema {version})")
        for table, columns in _MIGRATIONS.items():
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )

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

    # -- the site's fixed partition -------------------------------------------------------

    def pin_partition(self, definition: dict[str, Any]) -> dict[str, Any]:
        """The site's partition: the one pinned by the first run, or ``definition`` (then pinned,
        with a fresh secret). Later runs always get the pinned one, whatever they ask."""
        with self._transaction() as db:
            rows = dict(db.execute("SELECT key, value FROM partition").fetchall())
            if "definition" not in rows:
                db.execute(
                    "INSERT INTO partition VALUES ('definition', ?)",
                    (json.dumps(definition, sort_keys=True),),
                )
                db.execute("INSERT INTO partition VALUES ('secret', ?)", (secrets.token_hex(32),))
                return dict(definition)
            return json.loads(rows["definition"])

    def partition_secret(self) -> bytes:
        """The secret the site's partition is derived from (it never leaves the site)."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM partition WHERE key = 'secret'").fetchone()
        if row is None:
            raise LedgerError(f"{self.path}: no partition pinned yet")
        return bytes.fromhex(row[0])

    def partition_definition(self) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT value FROM partition WHERE key = 'definition'").fetchone()
        return None if row is None else json.loads(row[0])

    # -- admission control and releases ---------------------------------------------------

    def admit(
        self,
        plan: RunPlan,
        budget: Budget,
        first: Sequence[PlannedRelease] = (),
        setup_reply: dict[str, Any] | None = None,
    ) -> Refusal | None:
        """Admit ``plan`` (and record its ``first`` releases, round 0) or say why not.

        A refused run is recorded too (status ``refused`` and the reason), so the officer sees
        every request the site turned down. ``setup_reply`` is what the site answers a repeated
        setup of this run with (already released: repeating it costs nothing).
        """
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (plan.run_id,)).fetchone():
                return Refusal("run-key-in-use", None, f"run {plan.run_id} is already recorded")
            reason = self._over_budget(db, plan.run_id, plan, list(plan.releases), budget)
            db.execute(
                "INSERT INTO runs (run_id, study, recorded_at, accountant, delta, target_epsilon,"
                " planned, status, reason, spec_digest, kind, setup_reply, settings)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    plan.run_id,
                    plan.study,
                    time.time(),
                    plan.accountant,
                    plan.delta,
                    plan.target_epsilon,
                    json.dumps([r.as_list() for r in plan.releases]),
                    "refused" if reason else "admitted",
                    reason.detail if reason else None,
                    plan.spec_digest,
                    plan.kind,
                    json.dumps(setup_reply) if setup_reply is not None else None,
                    json.dumps(plan.settings) if plan.settings is not None else None,
                ),
            )
            for key, value in (
                ("lifetime_epsilon", budget.lifetime_epsilon),
                ("lifetime_delta", budget.lifetime_delta),
                ("accountant", budget.accountant),
            ):
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
            if reason is None:
                for planned in first:
                    self._insert_release(db, plan.run_id, 0, planned, budget)
            return reason

    def update_settings(self, run_id: str, settings: dict[str, Any]) -> None:
        """Replace a run's settings (the bounds it pooled its scaling with join them)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET settings = ? WHERE run_id = ?", (json.dumps(settings), run_id)
            )

    def store_setup_reply(self, run_id: str, reply: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET setup_reply = ? WHERE run_id = ?", (json.dumps(reply), run_id)
            )

    def record_release(
        self, run_id: str, round_: int, planned: PlannedRelease, budget: Budget
    ) -> Refusal | None:
        """The hard stop: record ``planned`` if the run's admitted plan still holds it and it fits
        every budget, else say why not."""
        with self._transaction() as db:
            run = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if run is None or run["status"] != "admitted":
                return Refusal("no-admitted-run", None, f"run {run_id} was not admitted")
            if not _within_plan(db, run, planned):
                return Refusal(
                    "plan-exhausted",
                    None,
                    f"run {run_id}: {planned.mechanism} on {planned.partition} would exceed the "
                    "admitted plan",
                )
            reason = self._over_budget(db, run_id, None, [planned], budget)
            if reason is None:
                self._insert_release(db, run_id, round_, planned, budget)
            return reason

    def _over_budget(
        self,
        db: sqlite3.Connection,
        run_id: str,
        plan: RunPlan | None,
        new: Sequence[PlannedRelease],
        budget: Budget,
    ) -> Refusal | None:
        run = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        delta = plan.delta if plan is not None else run["delta"]
        accountant = plan.accountant if plan is not None else run["accountant"]
        spent = _rows(db, "WHERE run_id = ?", (run_id,))
        for partition in PARTITIONS:
            cap = budget.run_cap(partition)
            if cap is None:
                continue
            epsilon = compute_epsilon(_on(partition, [*spent, *new]), delta, accountant)
            if epsilon > cap:
                return Refusal(
                    "run-budget",
                    None,
                    f"the run's {partition} partition would reach epsilon {epsilon:.3f}, above "
                    f"the site policy's cap {cap:g}",
                )
        if budget.lifetime_epsilon is None:
            return None
        committed = [*_rows(db, "", ()), *_reserved(db, exclude=run_id), *new]
        for partition in PARTITIONS:
            epsilon = compute_epsilon(
                _on(partition, committed), budget.lifetime_delta, budget.accountant
            )
            if epsilon > budget.lifetime_epsilon:
                return Refusal(
                    "lifetime-budget",
                    None,
                    f"the site's {partition} partition would reach lifetime epsilon "
                    f"{epsilon:.3f} (with earlier runs and reserved plans), above its lifetime "
                    f"budget {budget.lifetime_epsilon:g} at delta {budget.lifetime_delta:g}",
                )
        return None

    def _insert_release(
        self,
        db: sqlite3.Connection,
        run_id: str,
        round_: int,
        planned: PlannedRelease,
        budget: Budget,
    ) -> None:
        run = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        side = planned.partition if planned.partition in PARTITIONS else TRAIN
        run_eps = compute_epsilon(
            _on(side, [*_rows(db, "WHERE run_id = ?", (run_id,)), planned]),
            run["delta"],
            run["accountant"],
        )
        everything = [*_rows(db, "", ()), planned]
        life_eps = max(
            compute_epsilon(_on(p, everything), budget.lifetime_delta, budget.accountant)
            for p in PARTITIONS
        )
        release = planned.release
        db.execute(
            "INSERT INTO releases (recorded_at, run_id, study, round, mechanism, noise_multiplier,"
            " sample_rate, steps, delta, run_epsilon_after, lifetime_epsilon_after, partition)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                run_id,
                run["study"],
                round_,
                planned.mechanism,
                release.noise_multiplier,
                release.sample_rate,
                release.steps,
                run["delta"],
                run_eps,
                life_eps,
                planned.partition,
            ),
        )

    # -- the last released reply of a run ---------------------------------------------------

    def keep_reply(self, run_id: str, round_: int, kind: str, content: bytes) -> None:
        """Keep what the site released for ``round_`` (already accounted): a server that lost it
        (a crash, a resume) gets the same release again instead of a new one."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO last_reply VALUES (?, ?, ?, ?)",
                (run_id, round_, kind, content),
            )

    def kept_reply(self, run_id: str, round_: int, kind: str) -> bytes | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT content FROM last_reply WHERE run_id = ? AND round = ? AND kind = ?",
                (run_id, round_, kind),
            ).fetchone()
        return None if row is None else bytes(row[0])

    # -- audit trail ----------------------------------------------------------------------

    def record_message(
        self,
        run_id: str,
        round_: int,
        kind: str,
        status: str,
        keys: Iterable[str],
        arrays: dict[str, list[int]],
        detail: str | None = None,
    ) -> None:
        """Append what one outgoing message carried (names and shapes, never values), and the
        detailed reason of a refusal, which stays here."""
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
                " run_epsilon, lifetime_epsilon, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    detail,
                ),
            )

    # -- reading --------------------------------------------------------------------------

    def lifetime_epsilon(self, delta: float, accountant: str) -> float:
        """A participant's lifetime epsilon: the larger partition's, at ``delta``."""
        return max(self.lifetime_epsilons(delta, accountant).values())

    def lifetime_epsilons(self, delta: float, accountant: str) -> dict[str, float]:
        """Per partition, every recorded release on it or on all records, composed."""
        with self._connect() as db:
            rows = _rows(db, "", ())
        return {p: compute_epsilon(_on(p, rows), delta, accountant) for p in PARTITIONS}

    def run_epsilons(self, run_id: str) -> dict[str, float]:
        """One run's epsilon per partition, at its own delta and accountant."""
        run = self.run(run_id)
        if run is None:
            return dict.fromkeys(PARTITIONS, 0.0)
        with self._connect() as db:
            rows = _rows(db, "WHERE run_id = ?", (run_id,))
        return {
            p: compute_epsilon(_on(p, rows), run["delta"], run["accountant"]) for p in PARTITIONS
        }

    def budget(self) -> dict[str, Any]:
        """The budget the site's node last enforced (from its policy), as recorded."""
        with self._connect() as db:
            rows = db.execute("SELECT key, value FROM meta WHERE key != 'schema_version'")
            return {key: json.loads(value) for key, value in rows}

    def releases(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM releases ORDER BY id")]

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run's row (its plan and setup reply decoded) or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else _decoded(row)

    def run_releases(self, run_id: str) -> list[dict[str, Any]]:
        """One run's releases in the order they were recorded: its history."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM releases WHERE run_id = ? ORDER BY id", (run_id,))
            return [dict(r) for r in rows]

    def runs(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY recorded_at").fetchall()
        return [_decoded(row) for row in rows]

    def message_count(self, run_id: str, kind: str, status: str) -> int:
        """How many messages of ``kind`` with ``status`` the site sent in a run."""
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM messages WHERE run_id = ? AND kind = ? AND status = ?",
                (run_id, kind, status),
            ).fetchone()
        return int(row[0])

    def messages(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM messages ORDER BY id")]
        for row in rows:
            row["keys"], row["arrays"] = json.loads(row["keys"]), json.loads(row["arrays"])
        return rows


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    run = dict(row)
    run["planned"] = [
        PlannedRelease.from_list(item).as_list() for item in json.loads(run["planned"])
    ]
    run["setup_reply"] = json.loads(run["setup_reply"]) if run.get("setup_reply") else None
    run["settings"] = json.loads(run["settings"]) if run.get("settings") else None
    return run


def _rows(db: sqlite3.Connection, where: str, args: tuple) -> list[PlannedRelease]:
    query = (
        f"SELECT mechanism, partition, noise_multiplier, sample_rate, steps FROM releases {where}"
    )
    return [
        PlannedRelease(r[0], r[1], GaussianRelease(float(r[2]), float(r[3]), int(r[4])))
        for r in db.execute(query, args)
    ]


def _on(partition: str, releases: Iterable[PlannedRelease]) -> list[GaussianRelease]:
    """The releases a participant of ``partition`` is in: that partition's and all records'."""
    return [r.release for r in releases if r.partition in (partition, ALL)]


def _within_plan(db: sqlite3.Connection, run: sqlite3.Row, new: PlannedRelease) -> bool:
    """Whether the run's plan still holds ``new``: the same mechanism, partition, noise and rate,
    with enough steps left."""
    planned = [PlannedRelease.from_list(item) for item in json.loads(run["planned"])]

    def same(r: PlannedRelease) -> bool:
        return (r.mechanism, r.partition, r.release.noise_multiplier, r.release.sample_rate) == (
            new.mechanism,
            new.partition,
            new.release.noise_multiplier,
            new.release.sample_rate,
        )

    allowed = sum(r.release.steps for r in planned if same(r))
    used = sum(r.release.steps for r in _rows(db, "WHERE run_id = ?", (run["run_id"],)) if same(r))
    return used + new.release.steps <= allowed


def _reserved(db: sqlite3.Connection, exclude: str) -> list[PlannedRelease]:
    """What admitted runs planned and have not yet recorded: reserved until spent. A run that
    stops early keeps its reservation (conservative)."""
    reserved: list[PlannedRelease] = []
    for run in db.execute(
        "SELECT run_id, planned FROM runs WHERE status = 'admitted' AND run_id != ?", (exclude,)
    ).fetchall():
        spent: dict[tuple, int] = {}
        for r in _rows(db, "WHERE run_id = ?", (run["run_id"],)):
            key = (r.mechanism, r.partition, r.release.noise_multiplier, r.release.sample_rate)
            spent[key] = spent.get(key, 0) + r.release.steps
        for item in json.loads(run["planned"]):
            planned = PlannedRelease.from_list(item)
            release = planned.release
            key = (planned.mechanism, planned.partition, release.noise_multiplier,
                   release.sample_rate)  # fmt: skip
            left = release.steps - spent.pop(key, 0)
            if left > 0:
                reserved.append(
                    PlannedRelease(
                        planned.mechanism,
                        planned.partition,
                        GaussianRelease(release.noise_multiplier, release.sample_rate, left),
                    )
                )
    return reserved


def merged_plan(releases: Iterable[PlannedRelease]) -> tuple[PlannedRelease, ...]:
    """The same plan with one entry per (mechanism, partition, noise, rate), in a fixed order."""
    by_kind: dict[tuple[str, str], list[GaussianRelease]] = {}
    for planned in releases:
        by_kind.setdefault((planned.mechanism, planned.partition), []).append(planned.release)
    return tuple(
        PlannedRelease(mechanism, partition, release)
        for (mechanism, partition), items in sorted(by_kind.items())
        for release in merged(items)
    )
