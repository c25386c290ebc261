"""The Flower internals allfed patches, checked against the installed Flower.

``allfed node start`` changes how the SuperNode waits by replacing the ``time`` module that
``flwr.supernode.start_client_internal`` sleeps with, wrapping its ``_push_messages`` (which
wakes the executor) and its ``_pull_and_store_message`` (which, when it pulled nothing, has a
reply left in the in-memory node state pushed), plugs its forking executor into
``flwr.supercore.superexec.run_superexec`` through that module's ``get_executor`` global and
makes that loop sleep on a wake-up pipe (``federation.deploy.wake``); every allfed process
shortens the retry of Flower's object pulls through the keyword defaults of two functions
(``federation.wire.transfer``). None is a public API: a Flower release that renames them would
leave a node that silently polls every 3 s, runs Flower's own executor, waits a second per
object, or leaves a late reply unsent. These tests read the installed modules (no server
started) and say which internal moved.
"""

import ast
import inspect
import os
import select
import textwrap
import threading
import time
import tomllib
import types
from importlib.metadata import version
from pathlib import Path

import flwr.supercore.superexec.run_superexec as superexec
import flwr.superlink.grid.http_grid as http_grid
import flwr.supernode.runtime.run_clientapp as run_clientapp
import flwr.supernode.start_client_internal as loop
from flwr.app import Message, Metadata, RecordDict
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.superexec.executor import Executor, LaunchResult
from flwr.supernode.nodestate import NodeStateFactory
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from federation.deploy import wake
from federation.deploy.node import TASK_POLL_ENV, ForkExecutor
from federation.wire import transfer

ROOT = Path(__file__).resolve().parents[1]


def _calls(tree: ast.AST, owner: str | None, name: str) -> list[ast.Call]:
    """Calls in ``tree`` of ``owner.name(...)`` (of the bare ``name`` when ``owner`` is None)."""

    def matches(target: ast.expr) -> bool:
        if owner is None:
            return isinstance(target, ast.Name) and target.id == name
        return (
            isinstance(target, ast.Attribute)
            and target.attr == name
            and isinstance(target.value, ast.Name)
            and target.value.id == owner
        )

    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and matches(n.func)]


def _tree(function) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(function)))


def test_installed_flower_is_in_the_range_pyproject_declares():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (flwr,) = [d for d in declared if d.startswith("flwr[")]
    specifier = SpecifierSet(flwr.split("]", 1)[1])
    assert specifier.contains(Version(version("flwr"))), (
        f"flwr {version('flwr')} is installed, outside pyproject's {specifier}: re-check every "
        "internal tests/test_flower_internals.py names before widening the range"
    )
    assert not specifier.contains("1.43.0"), "the flwr range needs an upper bound"


def test_supernode_loop_sleeps_through_its_module_time():
    assert getattr(loop, "time", None) is time, (
        "flwr.supernode.start_client_internal no longer imports the time module as `time`: "
        "federation.deploy.wake.patch_node_loop cannot shorten the SuperNode's waits"
    )
    tree = _tree(loop.start_client_internal)
    sleeps = _calls(tree, "time", "sleep")
    idle = [
        call
        for call in sleeps
        if isinstance(call.args[0], ast.Constant) and call.args[0].value >= 1
    ]
    assert idle, (
        "start_client_internal's idle wait is no longer a `time.sleep(N)` of a second or more: "
        "federation.deploy.wake.NodeTime patches nothing; find the new wait"
    )
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.While)]
    assert any(call in list(ast.walk(w)) for w in loops for call in idle), (
        "start_client_internal's idle `time.sleep` is no longer inside its polling loop"
    )
    replies = _calls(_tree(loop._push_messages), "time", "sleep")
    assert any(isinstance(c.args[0], ast.Constant) and c.args[0].value < 1 for c in replies), (
        "_push_messages no longer waits for a task's reply with a `time.sleep` under a second"
    )


def test_supernode_loop_calls_push_messages_after_it_stored_a_message():
    """``patch_node_loop`` wakes the executor from ``_push_messages``: it must be the module
    global that the loop calls once ``_pull_and_store_message`` returned a run."""
    body = _tree(loop.start_client_internal)
    (pulled,) = _calls(body, None, "_pull_and_store_message")
    (pushed,) = _calls(body, None, "_push_messages")
    assert (pulled.lineno, pulled.col_offset) < (pushed.lineno, pushed.col_offset)
    assert callable(getattr(loop, "_push_messages", None))


def test_supernode_loop_pulls_with_its_state_as_a_keyword_and_pushes_on_a_run():
    """``patch_node_loop`` reads the node state from ``_pull_and_store_message``'s ``state``
    keyword, and the loop pushes whenever that returns a run (it skips the push on None)."""
    body = _tree(loop.start_client_internal)
    (pulled,) = _calls(body, None, "_pull_and_store_message")
    assert "state" in {k.arg for k in pulled.keywords}, (
        "start_client_internal no longer passes `state=` to _pull_and_store_message"
    )
    skips = [
        n
        for n in ast.walk(body)
        if isinstance(n, ast.If)
        and isinstance(n.test, ast.Compare)
        and isinstance(n.test.ops[0], ast.Is)
        and any(isinstance(s, ast.Continue) for s in n.body)
    ]
    assert skips, "start_client_internal no longer skips the push only when nothing was pulled"


def _node_message(run_id: int, reply_to: str = "") -> Message:
    """A message (a reply where ``reply_to`` names one) as the node state stores it."""
    metadata = Metadata(
        run_id=run_id, message_id="", src_node_id=1, dst_node_id=5, reply_to_message_id=reply_to,
        group_id="", created_at=time.time(), ttl=60.0, message_type="train",
    )  # fmt: skip
    message = Message(RecordDict(), metadata=metadata)
    message.metadata.__dict__["_message_id"] = message.object_id
    return message


def test_a_reply_left_waiting_is_pushed_at_the_next_empty_poll():
    """A reply stored after the push that followed its run's message (the stale reply of a
    stopped run took that push) is pushed by Flower's own ``_push_messages`` at the next poll
    that brings nothing, and a poll that brings a message is left as it was."""
    stores = ObjectStoreFactory()
    state, store = NodeStateFactory(stores).state(), stores.store()  # as the SuperNode's
    module = types.ModuleType("loop")
    module._push_messages = loop._push_messages
    module._pull_and_store_message = lambda **kwargs: None  # the poll brings nothing
    read, write = wake.wake_pipe()
    try:
        wake.patch_node_loop(module, 0.05, write)
        assert module._pull_and_store_message(state=state) is None  # nothing waits
        census = _node_message(42)
        state.store_message(census)
        assert module._pull_and_store_message(state=state) is None  # not a reply
        loop._insert_message(_node_message(42, census.metadata.message_id), state, store)
        sent = []
        run_id = module._pull_and_store_message(state=state)
        assert run_id == 42
        module._push_messages(
            state=state,
            object_store=store,
            send=lambda message, tree, runtime: sent.append(message) or (set(), "session"),
            push_object=lambda *args: None,
        )
        assert [m.metadata.reply_to_message_id for m in sent] == [census.metadata.message_id]
        assert module._pull_and_store_message(state=state) is None  # pushed: nothing waits
        module._pull_and_store_message = wake._with_waiting_replies(lambda **kwargs: 7)
        assert module._pull_and_store_message(state=state) == 7
    finally:
        os.close(read)
        os.close(write)


def test_node_time_shortens_the_idle_poll_and_the_reply_wait():
    node_time = wake.NodeTime(poll=0.05, wait=0.01)
    started = time.monotonic()
    node_time.sleep(3)  # the idle poll
    node_time.sleep(0.5)  # the reply wait
    assert time.monotonic() - started < 0.5
    assert node_time.monotonic() >= started and node_time.time() > 0


def test_node_time_polls_less_often_while_idle_and_soon_again_after_a_message():
    node_time = wake.NodeTime(poll=0.005, wait=0.005, cap=0.15)
    for _ in range(17):  # 0.005 s x 1.25 per empty poll reaches the 0.15 s cap in 16
        node_time.sleep(3)
    started = time.monotonic()
    node_time.sleep(3)
    assert time.monotonic() - started >= 0.14
    node_time.active()
    started = time.monotonic()
    node_time.sleep(3)
    assert time.monotonic() - started < 0.1


def test_patched_node_loop_wakes_the_executor_then_pushes():
    calls = []
    module = types.ModuleType("loop")
    module._push_messages = lambda *args, **kwargs: calls.append((args, kwargs))
    module._pull_and_store_message = lambda **kwargs: None
    read, write = wake.wake_pipe()
    try:
        wake.patch_node_loop(module, 0.05, write)
        module._push_messages("state", send="send")
        woken, _, _ = select.select([read], [], [], 1.0)
        assert woken and os.read(read, 16) == b"\0", "the executor was not woken"
        assert calls == [(("state",), {"send": "send"})]
        assert isinstance(module.time, wake.NodeTime)
    finally:
        os.close(read)
        os.close(write)


def test_the_executors_sleep_ends_on_a_wake_up_and_survives_the_supernodes_end():
    read, write = wake.wake_pipe()
    clock = wake.WakeableTime(read)
    threading.Timer(0.1, os.write, (write, b"\0")).start()
    started = time.monotonic()
    clock.sleep(5)
    assert time.monotonic() - started < 2  # woken, not the 5 s poll
    os.close(write)  # the SuperNode is gone: no busy loop on the closed pipe, plain sleeps
    clock.sleep(0.01)
    started = time.monotonic()
    clock.sleep(0.2)
    assert time.monotonic() - started >= 0.19


def test_superexec_loop_sleeps_through_its_module_time():
    assert getattr(superexec, "time", None) is time, (
        "run_superexec no longer imports the time module as `time`: "
        "federation.deploy.wake.patch_executor_loop cannot wake the executor"
    )
    loops = [n for n in ast.walk(_tree(superexec.run_superexec)) if isinstance(n, ast.While)]
    assert any(_calls(w, "time", "sleep") for w in loops), (
        "run_superexec's task loop no longer waits with `time.sleep`: nothing wakes it"
    )


def test_object_pulls_take_their_retry_waits_from_keyword_defaults():
    """``wire.transfer`` sets the keyword defaults of Flower's two pull functions; the callers
    that pull messages must leave them to those defaults."""
    for function in (
        inflatable_utils.pull_objects,
        inflatable_utils.pull_and_inflate_object_from_tree,
    ):
        defaults = function.__kwdefaults__ or {}
        assert {"initial_backoff", "backoff_cap"} <= set(defaults), (
            f"{function.__name__} no longer takes initial_backoff and backoff_cap as keyword "
            "defaults: federation.wire.transfer.fast_object_pulls changes nothing"
        )
    callers = (
        (http_grid.HttpGrid.pull_messages, "pull_objects"),
        (loop._pull_and_store_message, "pull_objects"),
        (run_clientapp.pull_task_input, "pull_and_inflate_object_from_tree"),
    )
    for caller, name in callers:
        calls = _calls(_tree(caller), None, name)
        assert calls, f"{caller.__qualname__} no longer calls {name}"
        for call in calls:
            passed = {k.arg for k in call.keywords}
            assert not passed & {"initial_backoff", "backoff_cap"}, (
                f"{caller.__qualname__} passes its own pull backoff: fast_object_pulls is ignored"
            )


def test_fast_object_pulls_retry_an_object_on_its_way_within_milliseconds():
    pending = {"head": 2}  # not there for the first two pulls: Flower waits 1 s, then 2 s

    def pull(object_id: str) -> bytes:
        if pending[object_id]:
            pending[object_id] -= 1
            raise ObjectUnavailableError(object_id)
        return b"content"

    saved = {
        f: dict(f.__kwdefaults__)
        for f in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    }
    try:
        transfer.fast_object_pulls()
        started = time.monotonic()
        assert inflatable_utils.pull_objects(["head"], pull) == {"head": b"content"}
        assert time.monotonic() - started < 1.0
    finally:
        for function, defaults in saved.items():
            function.__kwdefaults__ = defaults


def test_superexec_takes_its_executor_from_the_module_global():
    assert callable(getattr(superexec, "get_executor", None)), (
        "flwr.supercore.superexec.run_superexec has no get_executor global: "
        "federation.deploy.node.run_executor cannot install its ForkExecutor"
    )
    assert _calls(_tree(superexec.run_superexec), None, "get_executor"), (
        "run_superexec no longer calls the module's get_executor: the ForkExecutor is ignored"
    )
    parameters = inspect.signature(superexec.run_superexec).parameters
    used = {
        "runtime_api_address", "insecure", "root_certificates_path", "superexec_auth_secret",
        "parent_pid", "runtime_dependency_install", "executor_type",
    }  # fmt: skip
    assert used <= set(parameters), f"run_superexec lost {sorted(used - set(parameters))}"
    assert TASK_POLL_ENV in inspect.getsource(superexec), (
        f"run_superexec no longer reads {TASK_POLL_ENV}: the executor polls at Flower's default"
    )


def test_fork_executor_implements_flower_executor_protocol():
    wanted = {
        name
        for name, member in vars(Executor).items()
        if callable(member) and not name.startswith("_")
    }
    assert wanted, "flwr's Executor protocol has no methods any more"
    missing = sorted(name for name in wanted if not callable(getattr(ForkExecutor, name, None)))
    assert not missing, f"ForkExecutor lacks Flower Executor methods {missing}"
    for name in wanted:
        ours = inspect.signature(getattr(ForkExecutor, name)).parameters
        theirs = inspect.signature(getattr(Executor, name)).parameters
        required = [
            p
            for p in theirs.values()
            if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
        ]
        for parameter in required:
            assert parameter.name in ours or any(p.kind is p.VAR_KEYWORD for p in ours.values()), (
                f"ForkExecutor.{name} does not take Flower's {parameter.name!r}"
            )
    assert LaunchResult.accepted() is not None
