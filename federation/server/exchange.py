"""The message exchange with the sites: send, wait up to the round timeout, and mark the sites
that did not answer, answered with an error, or declined (with their reason) as out of the run.

Every phase of the run talks to the sites through one ``SiteExchange``, so a site that drops
out anywhere drops out the same way, and only usable replies reach the phase.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from federation.server.sites import Roster
from federation.wire import protocol as p


class SiteExchange:
    """Sends messages to the sites of ``roster`` over ``grid`` and waits ``timeout`` seconds."""

    def __init__(self, grid: Grid, roster: Roster, timeout: float) -> None:
        self.grid, self.roster, self.timeout = grid, roster, timeout

    def __call__(self, messages: list[Message]) -> list[Message]:
        """The usable replies; every other addressed site is marked failed or declined."""
        if not messages:
            return []
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        # A reply is the site's whose message it answers: Flower answers for a site itself,
        # from the ServerApp's own node, when it could not fetch the site's reply.
        addressed = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        answered = {addressed.get(r.metadata.reply_to_message_id) for r in replies}
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in answered and node in self.roster:
                self.roster[node].fail(p.FAILED, f"no reply within {self.timeout:g} s")
        usable = []
        for reply in replies:
            site = self.roster.get(addressed.get(reply.metadata.reply_to_message_id))
            if site is None:
                continue
            if reply.has_error():
                site.fail(p.FAILED, f"node error: {_node_error(reply.error.reason)}")
            elif _declined(reply):
                status = reply.content[p.STATUS]
                site.name = str(status[p.STATUS_SITE])
                site.fail(str(status[p.STATUS_STATE]), str(status[p.STATUS_REASON]))
            else:
                usable.append(reply)
        return usable

    def reject(self, node: int, reason: str) -> None:
        """A usable reply the phase itself found wrong: the site is out of the run."""
        self.roster[node].fail(p.FAILED, _short(reason))


def only_to(messages: Iterable[Message], nodes: set[int]) -> list[Message]:
    """The messages addressed to ``nodes`` (a strategy addresses every node it knows)."""
    return [m for m in messages if m.metadata.dst_node_id in nodes]


def _declined(reply: Message) -> bool:
    """A reply in which the site says it failed or refused (with its reason)."""
    status = reply.content.config_records.get(p.STATUS)
    return status is not None and status[p.STATUS_STATE] != p.OK


def _node_error(reason: str) -> str:
    """The exception's own message out of the engine's report (Ray wraps it in a traceback)."""
    messages = re.findall(r"Message: (.+?)(?:\n|$)", str(reason))
    return _short(messages[-1].rstrip("'>\" ") if messages else reason)


def _short(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
