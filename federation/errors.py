"""User-facing errors: one line that says what is wrong and where, exit code 2."""


class AllfedError(Exception):
    """A mistake in the user's input (spec, data file, command line).

    The CLI prints ``str(error)`` on one line and exits with code 2, never a traceback.
    Messages name files, columns, row numbers and counts, never a participant's value.
    """

    exit_code = 2


class SpecError(AllfedError):
    """The study spec is malformed or inconsistent."""


class DataError(AllfedError):
    """A site's data file does not satisfy the study spec."""
