"""The aggregator's side of Flower's Grid: waiting for the sites to join, and a Grid that waits
for their replies in tenths of a second rather than in 3 s steps.

Flower's deployment Grid (``HttpGrid``) sleeps 3 s between pulls while it waits for replies, so
every exchange of a round costs up to 3 s of pure waiting on the aggregator. ``PollingGrid`` keeps
every call as it is and only replaces ``send_and_receive`` by a push followed by pulls every
``poll_interval`` seconds (the simulation's in-memory Grid already polls every 0.1 s), and
makes this process retry a reply's objects that are still on their way after tens of
milliseconds rather than after 1 s (``wire.transfer``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from federation.wire.transfer import fast_object_pulls

DEFAULT_POLL_INTERVAL = 0.1


class PollingGrid(Grid):
    """``grid`` with a faster ``send_and_receive``; everything else is delegated."""

    def __init__(self, grid: Grid, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.grid, self.poll_interval = grid, poll_interval
        fast_object_pulls()

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull until every reply is in or ``timeout`` seconds have passed."""
        pending = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll_interval)
        return replies


def wait_for_nodes(grid: Grid, wanted: int, timeout: float) -> list[int]:
    """Nodes connected once ``wanted`` have joined, or when ``timeout`` runs out. Nodes register
    one by one, also in a simulation, so taking the first few would leave the later ones out."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= wanted or time.monotonic() > deadline:
            return nodes
        time.sleep(0.2)
