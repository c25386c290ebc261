"""The Flower internals ``federation.deploy.node`` patches, checked against the installed Flower.

``allfed node start`` cuts the SuperNode's idle wait by replacing the ``time`` module that
``flwr.supernode.start_client_internal`` sleeps with, and plugs its forking executor into
``flwr.supercore.superexec.run_superexec`` through that module's ``get_executor`` global. Neither
is a public API: a Flower release that renames them would leave a node that silently polls every
3 s (or runs Flower's own executor). These tests read the installed modules (no server started)
and say which internal moved.
"""

import ast
import inspect
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import flwr.supercore.superexec.run_superexec as superexec
import flwr.supernode.start_client_internal as loop
from flwr.supercore.superexec.executor import Executor, LaunchResult
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from federation.deploy.node import TASK_POLL_ENV, ForkExecutor, _FastTime, _patch_poll

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
    return ast.parse(inspect.getsource(function))


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
        "federation.deploy.node._patch_poll cannot shorten the SuperNode's idle poll"
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
        "federation.deploy.node._patch_poll patches nothing; find the new wait"
    )
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.While)]
    assert any(call in list(ast.walk(w)) for w in loops for call in idle), (
        "start_client_internal's idle `time.sleep` is no longer inside its polling loop"
    )


def test_patched_sleep_is_capped_and_the_rest_of_time_kept():
    fast = _FastTime(0.01)
    started = time.monotonic()
    fast.sleep(3)
    assert time.monotonic() - started < 1.0
    assert fast.monotonic() >= started and fast.time() > 0
    try:
        _patch_poll(loop, 0.01)
        assert isinstance(loop.time, _FastTime)
    finally:
        loop.time = time


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
