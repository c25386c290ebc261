"""How the simulation engine hands the ServerApp's messages to the simulated sites: one pass over
the pending messages per tick, not one pass per site.

Flower's simulation runtime (``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``)
asks its in-memory LinkState, every 0.1 s, for one message of each node in turn; each ask walks
every stored message and checks each one's expiry and federation. With N sites and a round's N
messages stored that is N x N checks per tick, in the process that also runs the ServerApp: at a
thousand sites a tick takes seconds of CPU and starves the rest of the run. ``deliver_pending``
does what one tick of Flower's loop does, in one walk: every undelivered message for a simulated
node, at most one per node per tick as there, checked by the LinkState's own expiry and
federation check, marked delivered and queued for the Ray workers. Flower has no setting for it;
``fast_message_dispatch`` replaces the loop's function in Flower's module (``flwr`` is pinned
below 1.43 and ``tests/test_simulation_dispatch.py`` checks the internals it uses).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from queue import Queue
from typing import Any

TICK = 0.1  # seconds between two passes, as in Flower's loop


def deliver_pending(state: Any, nodes: frozenset[int]) -> list[Any]:
    """The messages one tick hands out: undelivered, for one of ``nodes``, valid by the
    LinkState's check (expired ones it deletes), at most one per node; marked delivered."""
    from flwr.supercore.date import now

    with state.lock:
        wanted: dict[int, str] = {}
        for message_id, message in state.message_ins_store.items():
            metadata = message.metadata
            node = metadata.dst_node_id
            if node in nodes and node not in wanted and metadata.delivered_at == "":
                wanted[node] = message_id
        state._check_stored_messages(set(wanted.values()))
        found = [m for i in wanted.values() if (m := state.message_ins_store.get(i)) is not None]
        delivered_at = now().isoformat()
        for message in found:
            message.metadata.delivered_at = delivered_at
    return found


def add_messages_to_queue(
    state: Any, queue: Queue, nodes_mapping: Mapping[int, int], f_stop: threading.Event
) -> None:
    """Flower's loop with ``deliver_pending`` as its tick (same signature, same 0.1 s wait)."""
    nodes = frozenset(nodes_mapping)
    while not f_stop.is_set():
        for message in deliver_pending(state, nodes):
            queue.put(message)
        f_stop.wait(TICK)


def fast_message_dispatch() -> None:
    """Make Flower's simulation runtime in this process use ``add_messages_to_queue``."""
    from flwr.server.superlink.fleet.vce import vce_api

    vce_api.add_messages_to_queue = add_messages_to_queue
