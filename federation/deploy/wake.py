"""How a site's node waits: briefly where waiting costs nothing, woken where Flower would poll.

Flower's SuperNode loop (``flwr.supernode.start_client_internal``) sleeps 3 s between polls of
the SuperLink when idle, and 0.5 s between looks at its own in-memory state while it waits for a
task's reply; its SuperExec (``flwr.supercore.superexec.run_superexec``) asks the SuperNode's
Runtime API for a task every ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` seconds. A round waits on all
three. Polling faster is no answer on a machine that runs many nodes: each poll is an HTTP
request, and at 20 a second the executors of three idle nodes keep half a core busy.

So the SuperNode's idle poll (a request to the SuperLink) starts at ``poll`` seconds after each
message and slows down while nothing comes, its look at its own state (no request at all) takes
``STATE_WAIT`` seconds, and the executor sleeps on a pipe that the SuperNode writes a byte to as
soon as it has stored a message and created its task: the task is acquired at once, and an idle
executor asks only every ``IDLE_POLL`` seconds.

The same loop pushes replies only right after it pulled a message, and only those ready by then.
A reply that is stored later waits in the node's state for the next message: a message of a
stopped run that Flower stored (with its task) before it ignored it is still answered, that
stale reply takes the push after the next run's first message, and the next run's own reply is
left behind while that run waits for it, so the run stays ``running`` for ever (seen when a
stopped run is resumed at once). So whenever a poll brings nothing, a reply waiting in the
node's state is pushed as after a message.

Flower has no hook for any of it; ``tests/test_flower_internals.py`` checks that the module
globals replaced here, and the node state read here, are still what Flower's loops use.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

IDLE_POLL = 1.0  # seconds between an idle executor's requests for a task (Flower's default)
STATE_WAIT = 0.02  # seconds between the SuperNode's looks at its own state for a task's reply
POLL_GROWTH = 1.25  # each empty poll of the SuperLink waits this much longer than the last
POLL_CAP = 1.0  # seconds: the longest wait between two polls of the SuperLink


class NodeTime:
    """``time`` for Flower's SuperNode loop. Its idle wait (a second or more) starts at ``poll``
    seconds after the node's last message and grows by ``POLL_GROWTH`` with every empty poll, up
    to ``cap``: the next message of a round comes soon after a reply, and a node that waits on
    the others for long asks the SuperLink less and less often (ten nodes polling every 0.2 s
    through a 30 s round cost the SuperLink more CPU than the round's work). Its shorter waits,
    on its own state, take at most ``wait`` seconds."""

    def __init__(self, poll: float, wait: float = STATE_WAIT, cap: float = POLL_CAP) -> None:
        self._poll, self._wait, self._cap = poll, wait, max(cap, poll)
        self._next = poll

    def sleep(self, seconds: float) -> None:
        if seconds < 1:
            time.sleep(min(seconds, self._wait))
            return
        time.sleep(self._next)
        self._next = min(self._next * POLL_GROWTH, self._cap)

    def active(self) -> None:
        """A message came: poll at the shortest interval again."""
        self._next = self._poll

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class WakeableTime:
    """``time`` for Flower's SuperExec loop: a sleep ends early when a byte arrives on ``fd``
    (the SuperNode created a task); once the SuperNode is gone (end of file), plain sleeps."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def sleep(self, seconds: float) -> None:
        if self._fd is None:
            time.sleep(seconds)
            return
        ready, _, _ = select.select([self._fd], [], [], seconds)
        if ready and not os.read(self._fd, 4096):
            os.close(self._fd)
            self._fd = None

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def wake_pipe() -> tuple[int, int]:
    """A pipe for waking the executor: (read end, to pass to it; write end, never blocking)."""
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETFL, fcntl.fcntl(write, fcntl.F_GETFL) | os.O_NONBLOCK)
    return read, write


def patch_node_loop(loop: ModuleType, poll: float, wake_fd: int) -> None:
    """Make ``flwr.supernode.start_client_internal`` (``loop``) wait as ``NodeTime`` says,
    write a byte to ``wake_fd`` every time it has a message's task ready to run, and push a
    reply left waiting at its next empty poll."""
    clock = NodeTime(poll)
    loop.time = clock  # type: ignore[attr-defined]
    loop._push_messages = _waking(loop._push_messages, wake_fd, clock)  # type: ignore[attr-defined]
    pull = loop._pull_and_store_message  # type: ignore[attr-defined]
    loop._pull_and_store_message = _with_waiting_replies(pull)  # type: ignore[attr-defined]


def _with_waiting_replies(pull: Callable[..., int | None]) -> Callable[..., int | None]:
    """``pull``, which returns the run of the message it stored or None (nothing pulled, or a
    message ignored), returning the run of a reply still waiting in the node's state where it
    pulled nothing: Flower's loop then pushes it."""

    def pull_and_store_message(**kwargs: Any) -> int | None:  # the loop passes keywords
        run_id = pull(**kwargs)
        if run_id is None:
            return _waiting_reply_run(kwargs["state"])
        return run_id

    pull_and_store_message.__wrapped__ = pull  # type: ignore[attr-defined]
    return pull_and_store_message


def _waiting_reply_run(state: Any) -> int | None:
    """The run of a reply in Flower's in-memory node state that no push has taken yet, if any
    (read without taking it: the push that follows takes it)."""
    with state.lock_msg_store:
        for entry in state.msg_store.values():
            metadata = entry.message.metadata
            if not entry.is_retrieved and metadata.reply_to_message_id:
                return metadata.run_id
    return None


def _waking(push: Callable[..., None], wake_fd: int, clock: NodeTime) -> Callable[..., None]:
    def push_messages(*args: Any, **kwargs: Any) -> None:
        # A full pipe already holds a wake-up; a closed one means the executor is gone.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(wake_fd, b"\0")
        try:
            push(*args, **kwargs)
        finally:
            clock.active()

    push_messages.__wrapped__ = push  # type: ignore[attr-defined]
    return push_messages


def patch_executor_loop(superexec: ModuleType, wake_fd: int) -> None:
    """Make ``flwr.supercore.superexec.run_superexec`` sleep on ``wake_fd`` between requests."""
    superexec.time = WakeableTime(wake_fd)  # type: ignore[attr-defined]
