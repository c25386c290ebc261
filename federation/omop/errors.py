"""Why an OMOP source cannot serve a study: a fixed vocabulary of reasons, and one line for the
site operator that names tables, columns, schemas and concept ids, never a participant's value,
a user name or a password."""

from __future__ import annotations

from federation.errors import DataError

# The reason codes a refusal may carry off the site (the message itself stays at the site).
REASONS = (
    "source-config",  # the source description is malformed or names a missing file
    "database-unreachable",  # no server, wrong host or port, a DuckDB file that cannot be opened
    "authentication-failed",  # wrong password or user
    "permission-denied",  # the user may not read a schema or table
    "missing-table",
    "missing-column",
    "cdm-version",  # a CDM version the study does not accept, or none recorded
    "unknown-concept",  # a concept id of the cohort is not in the vocabulary
    "bad-value",  # a column holds values of the wrong type (e.g. text in value_as_number)
    "bad-dates",  # survival dates no cohort can have (a death before the index, a future date)
    "empty-cohort",
    "database-error",  # anything else the database refused
)


class SourceError(DataError):
    """An OMOP source that cannot serve the study; ``reason`` is one of ``REASONS``."""

    def __init__(self, source: str, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        super().__init__(f"{source}: {message}", reason)
        self.reason = reason
