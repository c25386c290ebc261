"""User-facing errors: one line that says what is wrong and where, exit code 2."""

from __future__ import annotations

from privacy.refusal import Refusal


class AllfedError(Exception):
    """A mistake in the user's input (spec, data file, command line).

    The CLI prints ``str(error)`` on one line and exits with code 2, never a traceback.
    Messages name files, columns, row numbers and counts, never a participant's value. At a site
    node the message stays at the site; the aggregator is told only ``refusal().public()``:
    which ``check`` failed and on which ``key`` (a column or spec key).
    """

    exit_code = 2
    default_check = "spec-invalid"

    def __init__(self, message: str, check: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.check = check or self.default_check
        self.key = key

    def refusal(self) -> Refusal:
        return Refusal(self.check, self.key, str(self))


class SpecError(AllfedError):
    """The study spec is malformed or inconsistent."""


class DataError(AllfedError):
    """A site's data file does not satisfy the study spec."""

    default_check = "data-unreadable"
