"""How quickly Flower retries an object that is not there yet, in the processes allfed runs.

Flower sends a message as a head and then its objects (arrays, records); the receiver pulls the
head, then each object, and an object still on its way is retried after 1 s, then 2 s, 4 s (up
to 10 s, ``flwr.supercore.constant.PULL_INITIAL_BACKOFF``). On one round of a deployment that
wait is hit three times: the SuperNode pulls the ServerApp's message while its objects are still
being pushed, the ClientApp task pulls it from the SuperNode while the SuperNode is still
receiving it, and the ServerApp pulls a reply while the SuperNode is still pushing it. Objects
of a few kilobytes arrive within milliseconds, so ``fast_object_pulls`` starts the retries at
``INITIAL_BACKOFF`` instead (still doubling, capped at ``BACKOFF_CAP``): the same pulls, the same
checks, only less idle time. Flower has no setting for it; the defaults of its two pull functions
are replaced in this process (``tests/test_flower_internals.py`` checks they are still there).
"""

from __future__ import annotations

INITIAL_BACKOFF = 0.05  # seconds before the first retry of an object not yet available
BACKOFF_CAP = 1.0  # the longest wait between two retries of one object


def fast_object_pulls(initial: float = INITIAL_BACKOFF, cap: float = BACKOFF_CAP) -> None:
    """Make every Flower object pull in this process retry after ``initial`` seconds (doubling up
    to ``cap``) rather than after 1 s (up to 10 s)."""
    from flwr.supercore.inflatable import inflatable_utils

    for function in (
        inflatable_utils.pull_objects,
        inflatable_utils.pull_and_inflate_object_from_tree,
    ):
        defaults = function.__kwdefaults__
        defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap
