"""A site's OMOP source description: a site-local TOML file that says where the CDM is.

    [omop]
    engine = "postgresql"                 # or "duckdb" (the embedded default)
    host = "db.site.example"
    port = 5432
    dbname = "cdm"
    user = "allfed_reader"
    password-env = "ALLFED_OMOP_PASSWORD" # or passfile = "/etc/allfed/pgpass" (.pgpass format)
    cdm-schema = "cdm"
    vocabulary-schema = "vocab"           # defaults to cdm-schema

    [omop]
    engine = "duckdb"
    path = "cdm.duckdb"                   # relative to this file
    cdm-schema = "main"

The file stays at the site and is named where a data file is named (``--node-config data=...``,
``allfed simulate --site NAME=SOURCE``, ``allfed site check``). The password is read from the
site's environment or from a passfile that libpq reads itself, so it appears in no run config,
URL, reply, error or log line. Connections are read-only.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from federation.omop.errors import SourceError


class Source(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=lambda n: n.replace("_", "-")
    )

    engine: Literal["duckdb", "postgresql"] = "duckdb"
    path: str | None = None
    host: str = "localhost"
    port: Annotated[StrictInt, Field(gt=0, lt=65536)] = 5432
    dbname: str | None = None
    user: str | None = None
    password_env: str | None = None
    passfile: str | None = None
    sslmode: str | None = None
    connect_timeout: Annotated[StrictInt, Field(gt=0)] = 10
    cdm_schema: str | None = None
    vocabulary_schema: str | None = None

    @property
    def cdm(self) -> str:
        return self.cdm_schema or ("main" if self.engine == "duckdb" else "public")

    @property
    def vocabulary(self) -> str:
        return self.vocabulary_schema or self.cdm

    def describe(self) -> str:
        """Where the CDM is, for the operator: no user name, no password."""
        if self.engine == "duckdb":
            return f"DuckDB {self.path}"
        return f"PostgreSQL {self.host}:{self.port}/{self.dbname}"


def load_source(path: str | Path) -> Source:
    """Read and validate a source description; relative DuckDB paths are resolved beside it."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SourceError(where, "source-config", "OMOP source description not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SourceError(
            where, "source-config", f"not a readable TOML file ({type(exc).__name__})"
        ) from None
    if set(raw) != {"omop"} or not isinstance(raw["omop"], dict):
        raise SourceError(where, "source-config", "expected one [omop] table")
    table = raw["omop"]
    if "password" in table:
        raise SourceError(
            where,
            "source-config",
            "[omop] password: a password is never written here; name an environment variable "
            "(password-env) or a passfile",
        )
    try:
        source = Source.model_validate(table)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        raise SourceError(where, "source-config", f"[omop] {key}: {message}") from None
    if source.engine == "duckdb":
        if not source.path:
            raise SourceError(where, "source-config", "[omop] path: required for DuckDB")
        db = Path(source.path).expanduser()
        db = db if db.is_absolute() else (path.parent / db)
        source = source.model_copy(update={"path": str(db.resolve())})
        if not db.is_file():
            raise SourceError(where, "database-unreachable", f"DuckDB file {db} not found")
    elif not source.dbname:
        raise SourceError(where, "source-config", "[omop] dbname: required for PostgreSQL")
    if source.password_env and source.password_env not in os.environ:
        raise SourceError(
            where,
            "source-config",
            f"[omop] password-env: the environment variable {source.password_env} is not set",
        )
    if source.passfile and not Path(source.passfile).expanduser().is_file():
        raise SourceError(where, "source-config", "[omop] passfile: file not found")
    return source


@contextmanager
def connect(source: Source, where: str) -> Iterator:
    """A read-only SQLAlchemy connection; every failure becomes a one-line ``SourceError``."""
    import sqlalchemy as sa

    from federation.omop.failures import translate

    engine = sa.create_engine(
        _url(source), connect_args=_connect_args(source), poolclass=sa.pool.NullPool
    )
    try:
        try:
            conn = engine.connect()
        except sa.exc.DBAPIError as exc:
            raise translate(exc, where, connecting=True) from None
        with conn:
            yield conn
    finally:
        engine.dispose()


def _url(source: Source):
    import sqlalchemy as sa

    if source.engine == "duckdb":
        return sa.engine.URL.create("duckdb", database=source.path)
    return sa.engine.URL.create(
        "postgresql+psycopg",
        username=source.user,
        host=source.host,
        port=source.port,
        database=source.dbname,
    )


def _connect_args(source: Source) -> dict:
    if source.engine == "duckdb":
        return {"read_only": True}
    args: dict = {
        "connect_timeout": source.connect_timeout,
        "application_name": "allfed",
        "options": "-c default_transaction_read_only=on",
    }
    if source.password_env:
        args["password"] = os.environ[source.password_env]
    if source.passfile:
        args["passfile"] = str(Path(source.passfile).expanduser())
    if source.sslmode:
        args["sslmode"] = source.sslmode
    return args
