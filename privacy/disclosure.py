"""Small-cell suppression: the dissemination rule for every count that leaves a site.

The national cohort program's rule forbids releasing any count from 1 to 20; a zero may be
released. A withheld cell is reported as withheld (null), never as 0.
"""

DEFAULT_MIN_CELL_COUNT = 20


def is_disclosive(count: int, min_cell_count: int = DEFAULT_MIN_CELL_COUNT) -> bool:
    """True when ``count`` may not be released (1 <= count <= min_cell_count)."""
    return 0 < count <= min_cell_count
