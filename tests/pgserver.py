"""A throwaway PostgreSQL server for the OMOP tests and benchmark: Debian's ``postgresql``
binaries, ``initdb`` in a temporary folder, listening on 127.0.0.1 on a free port, stopped (and
its folder removed) when the context ends. As root (CI) the server runs as the ``postgres``
system user, since postgres refuses to run as root.

``load_cdm`` copies tables of a DuckDB CDM (such as Eunomia's, upper-case columns and all) into
a schema with the CDM's lower-case names and types, through COPY.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUPERUSER_PASSWORD = "allfed-test-superuser"
# Columns whose stored type in Eunomia differs from the CDM DDL's.
_CDM_TYPES = {
    "value_as_number": "numeric",
    "ancestor_concept_id": "bigint",
    "measurement_id": "bigint",
}
_PG_TYPES = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "DOUBLE": "double precision",
    "VARCHAR": "text",
    "DATE": "date",
    "TIMESTAMP": "timestamp",
}


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    superuser: str = "postgres"
    password: str = SUPERUSER_PASSWORD

    def url(self, user: str | None = None, password: str | None = None, dbname="postgres") -> str:
        return (
            f"host={self.host} port={self.port} dbname={dbname} "
            f"user={user or self.superuser} password={password or self.password}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[Server]:
    """Start a server; stop it and remove its folder in a ``finally``."""
    bin_dir = pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="allfed-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD)
    if as_user:
        shutil.chown(pwfile, "postgres", "postgres")
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    started = False
    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        started = True
        yield Server("127.0.0.1", port)
    finally:
        if started:
            with contextlib.suppress(subprocess.SubprocessError):
                run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def load_cdm(duckdb_path: Path, conninfo: str, schema: str, tables: list[str]) -> None:
    """Copy ``tables`` of a DuckDB CDM into ``schema`` (created), lower-case and CDM-typed."""
    import duckdb
    import psycopg
    from psycopg import sql

    source = duckdb.connect(str(duckdb_path), read_only=True)
    scratch = Path(tempfile.mkdtemp(prefix="allfed-cdm-"))
    try:
        with psycopg.connect(conninfo, autocommit=True) as pg:
            pg.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            for table in tables:
                columns = source.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = ? AND table_catalog = current_database() "
                    "ORDER BY ordinal_position",
                    [table],
                ).fetchall()
                names = [c.lower() for c, _ in columns]
                types = [
                    _CDM_TYPES.get(n, _PG_TYPES.get(t, "text"))
                    for n, (_, t) in zip(names, columns, strict=True)
                ]
                target = sql.Identifier(schema, table)
                pg.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
                pg.execute(
                    sql.SQL("CREATE TABLE {} ({})").format(
                        target,
                        sql.SQL(", ").join(
                            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                            for n, t in zip(names, types, strict=True)
                        ),
                    )
                )
                csv = scratch / f"{table}.csv"
                select = ", ".join(
                    f'CAST("{c}" AS {"BIGINT" if t == "bigint" else "DOUBLE"})'
                    if n in _CDM_TYPES
                    else f'"{c}"'
                    for n, (c, _), t in zip(names, columns, types, strict=True)
                )
                source.execute(f"COPY (SELECT {select} FROM \"{table}\") TO '{csv}' (HEADER false)")
                copy = sql.SQL("COPY {} FROM STDIN (FORMAT csv)").format(target)
                with pg.cursor() as cur, cur.copy(copy) as out, csv.open("rb") as handle:
                    while chunk := handle.read(1 << 20):
                        out.write(chunk)
                pg.execute(sql.SQL("ANALYZE {}").format(target))
    finally:
        source.close()
        shutil.rmtree(scratch, ignore_errors=True)
