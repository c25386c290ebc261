"""Database errors as one line with a fixed reason: the driver's own text (which may hold a
user name, a host's reply or, for a type error, a stored value) never leaves this module."""

from __future__ import annotations

import sqlalchemy as sa

from federation.omop.errors import SourceError

# PostgreSQL SQLSTATE -> (reason, what to tell the operator)
_SQLSTATES = {
    "28P01": ("authentication-failed", "the database refused the password"),
    "28000": ("authentication-failed", "the database refused the user (pg_hba.conf or role)"),
    "3D000": ("database-unreachable", "the database named in dbname does not exist"),
    "42501": ("permission-denied", "the database user may not read a table the cohort needs"),
    "3F000": ("missing-table", "a schema the source names does not exist"),
    "42P01": ("missing-table", "a table the cohort needs does not exist"),
    "42703": ("missing-column", "a column the cohort needs does not exist"),
    "22P02": ("bad-value", "a column holds text where the CDM has a number or a date"),
    "22007": ("bad-value", "a date column holds text that is not a date"),
    "57014": ("database-error", "the query was cancelled (statement timeout)"),
}
# DuckDB exception class name -> (reason, message)
_DUCKDB = {
    "IOException": (
        "database-unreachable",
        "the DuckDB file cannot be opened (locked by a writer, or not a DuckDB database)",
    ),
    "CatalogException": ("missing-table", "a table or column the cohort needs does not exist"),
    "BinderException": ("missing-column", "a column the cohort needs does not exist"),
    "ConversionException": (
        "bad-value",
        "a column holds text where the CDM has a number or a date",
    ),
    "PermissionException": ("permission-denied", "the DuckDB file may not be read"),
}


# What libpq says when it refuses a connection (it gives no SQLSTATE then): every fragment must be
# in the driver's text; matched here, never shown.
_CONNECTION = (
    (
        ("password authentication failed",),
        "authentication-failed",
        "the database refused the password",
    ),
    (
        ("no password supplied",),
        "authentication-failed",
        "the database wants a password: set password-env or passfile",
    ),
    (('role "', "does not exist"), "authentication-failed", "the database refused the user"),
    (
        ('database "', "does not exist"),
        "database-unreachable",
        "the database named in dbname does not exist",
    ),
)


def translate(exc: sa.exc.DBAPIError, where: str, connecting: bool = False) -> SourceError:
    """The ``SourceError`` for a driver error, from its SQLSTATE or its class, never its text."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)
    if state in _SQLSTATES:
        reason, message = _SQLSTATES[state]
        return SourceError(where, reason, message)
    name = type(orig).__name__
    if name in _DUCKDB:
        reason, message = _DUCKDB[name]
        return SourceError(where, reason, message)
    text = str(orig).lower()
    for fragments, reason, message in _CONNECTION if connecting else ():
        if all(f in text for f in fragments):
            return SourceError(where, reason, message)
    if connecting or (state or "").startswith("08"):
        return SourceError(
            where,
            "database-unreachable",
            "cannot connect to the database (is the server up, and are host and port right?)",
        )
    detail = f"SQLSTATE {state}" if state else name
    return SourceError(where, "database-error", f"the database refused the query ({detail})")
