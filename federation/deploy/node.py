"""``allfed node start``: Flower's SuperNode with a warm ClientApp executor, for rounds in seconds.

By default a SuperNode starts a fresh ``flwr-clientapp`` process for every message, which spends
about 6 s importing torch, Opacus and pandas before it trains for a fraction of a second. Flower's
``--isolation process`` mode lets another process take the SuperNode's tasks (over its local
Runtime API) and run them however it likes; this module is that process. It imports the site
node's code once, then forks a child per task that runs Flower's own ``run_clientapp`` with the
token it was handed, so each task starts in milliseconds and still runs in a process of its own
that exits when the task ends (no state leaks between messages beyond Flower's node state).

The child runs the site's installed node and nothing from the FAB that ``flwr run`` ships
(``deploy.task``): it never installs the FAB or puts it on the import path, and it refuses a
task whose FAB names another ClientApp component. A site that pins its allfed version therefore
runs exactly the code it vetted, whatever the central team sends.

The SuperNode itself is Flower's ``flower-supernode``, run in this process with the operator's
own arguments; only how it and the executor wait is changed (``deploy.wake``): the SuperNode
polls the SuperLink every ``--poll-interval`` seconds when idle (3 s in Flower) and wakes the
executor as soon as a task is ready, and a forked task hands what it read and computed back to
the executor for the tasks after it (``deploy.warm``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from federation.deploy import wake
from federation.wire.transfer import fast_object_pulls

# What a ClientApp task imports: loaded once in the executor, before it forks any child. Beside
# the node's code: Flower's task input and output functions, and torch._dynamo, which torch
# imports lazily the first time an optimizer is built (seconds, in every task, if left to it).
PRELOAD = (
    "federation.client.app",
    "federation.deploy.task",
    "federation.deploy.warm",
    "torch._dynamo",
    "flwr.supernode.runtime.run_clientapp",
)

DEFAULT_POLL_INTERVAL = 0.2  # seconds between a SuperNode's polls of the SuperLink when idle
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's own knob for the executor's poll


class ForkExecutor:
    """A Flower SuperExec executor that forks a preloaded process per ClientApp task."""

    def __init__(self) -> None:
        self.children: set[int] = set()

    def get_eligible_capacity(
        self,
        supported_task_types: set[Any],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[Any], set[str]]:
        from flwr.supercore.constant import TaskType

        return {t for t in supported_task_types if t == TaskType.CLIENT_APP}, set()

    def wait_for_capacity(self, task_type: Any = None, **_: Any) -> None:
        """Forking has no capacity gate."""

    def launch(self, spec: Any) -> Any:
        from flwr.supercore.superexec.executor import LaunchResult

        from federation.deploy import warm

        certificates = (
            Path(spec.root_certificates_path).read_bytes()
            if spec.root_certificates_path and not spec.insecure
            else None
        )
        sys.stdout.flush()
        sys.stderr.flush()
        back, out = os.pipe()  # the child's cache entries come back on it (``deploy.warm``)
        pid = os.fork()
        if pid == 0:  # the child: run exactly one task, then leave without unwinding the parent
            code = 1
            try:
                # Flower's signal handlers, inherited, close this executor on the way out: the
                # copy in the child must not stop the tasks its parent started before it.
                self.children.clear()
                os.close(back)
                code = _child(spec, certificates, out)
            finally:
                os._exit(code)
        os.close(out)
        threading.Thread(target=warm.receive, args=(back,), daemon=True).start()
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children so none is left a zombie."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _child(spec: Any, certificates: bytes | None, pipe: int) -> int:
    """A forked child's life: its task (its reply is pushed before anything else), then what
    it added to the caches, sent back to the executor on ``pipe``; the exit code."""
    from federation.deploy import warm

    _reseed()
    before = warm.marks()
    code = _profiled(_run_task, spec, certificates)
    try:
        warm.send(pipe, warm.added(before))
    except Exception:  # the next task reads and checks again: slower, never wrong
        import traceback

        traceback.print_exc()
    return code


PROFILE_ENV = "ALLFED_PROFILE_DIR"  # set to a folder: one cProfile file per task, for tuning


def _profiled(task: Any, *args: Any) -> int:
    folder = os.environ.get(PROFILE_ENV)
    if not folder:
        return task(*args)
    import cProfile

    profile = cProfile.Profile()
    try:
        return profile.runcall(task, *args)
    finally:
        profile.dump_stats(os.path.join(folder, f"task-{os.getpid()}.prof"))


def _reseed() -> None:
    """Fresh global random states in a forked child: every child inherits the parent's, and
    without this each task would draw the same numbers as the one before. (The DP path draws
    from a generator of its own, seeded from the OS; this covers everything else.)"""
    import random

    import numpy as np
    import torch

    random.seed()
    np.random.seed()
    torch.seed()


def _run_task(spec: Any, certificates: bytes | None) -> int:
    """The site's own task runner for one token (``deploy.task``); the process exit code."""
    from federation.deploy.task import run_site_task

    code = 1
    try:
        code = run_site_task(
            spec.runtime_api_address, spec.token, spec.insecure, certificates, spec.parent_pid
        )
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def run_executor(
    runtime_api_address: str,
    insecure: bool,
    root_certificates: str | None,
    secret_file: str | None,
    parent_pid: int | None,
    wake_fd: int | None = None,
) -> None:
    """Preload the node's code, then serve the SuperNode's tasks with ``ForkExecutor``, asking
    for the next one as soon as a byte arrives on ``wake_fd`` (``deploy.wake``)."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    os.environ.setdefault(TASK_POLL_ENV, str(wake.IDLE_POLL))  # woken sooner by the SuperNode
    fast_object_pulls()  # a forked task pulls its message while the SuperNode still receives it
    from flwr.supercore.superexec import run_superexec as superexec
    from flwr.supercore.superexec.executor.config import ExecutorType

    executor = ForkExecutor()
    superexec.get_executor = lambda *_, **__: executor  # Flower offers no executor plug-in yet
    if wake_fd is not None:
        wake.patch_executor_loop(superexec, wake_fd)
    secret = Path(secret_file).read_bytes() if secret_file else None
    superexec.run_superexec(
        runtime_api_address=runtime_api_address,
        insecure=insecure,
        root_certificates_path=root_certificates,
        superexec_auth_secret=secret,
        parent_pid=parent_pid,
        runtime_dependency_install=False,
        executor_type=ExecutorType.SUBPROCESS,
    )


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args``."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def start_node(supernode_args: list[str], poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
    """Run ``flower-supernode SUPERNODE_ARGS`` in process isolation with a warm executor child.

    The executor is a child process watching this one (``--parent-pid``); it talks to the
    SuperNode's Runtime API on localhost, authenticated by a fresh random secret, and this
    process wakes it through a pipe when a task is ready (``deploy.wake``).
    """
    args = [a for a in supernode_args if a not in ("--isolation=subprocess",)]
    if _option(args, "--isolation") not in (None, "process"):
        raise SystemExit("allfed node start runs the SuperNode with --isolation process")
    if _option(args, "--isolation") is None:
        args += ["--isolation", "process"]
    host = _option(args, "--host") or "127.0.0.1"
    port = _option(args, "--port") or "9094"
    runtime_tls = _option(args, "--ssl-certfile") is not None
    runtime_ca = _option(args, "--ssl-ca-certfile")
    secret_dir = tempfile.mkdtemp(prefix="allfed-node-")
    secret_file = os.path.join(secret_dir, "superexec.secret")
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    if _option(args, "--superexec-auth-secret-file") is None:
        args += ["--superexec-auth-secret-file", secret_file]
    else:
        secret_file = str(_option(args, "--superexec-auth-secret-file"))
    connect = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    command = [
        sys.executable,
        "-m",
        "federation.deploy.node",
        "executor",
        "--runtime-api-address",
        f"{connect}:{port}",
        "--secret-file",
        secret_file,
        "--parent-pid",
        str(os.getpid()),
    ]
    wake_read, wake_write = wake.wake_pipe()
    command += ["--wake-fd", str(wake_read)]
    if runtime_tls and runtime_ca:
        command += ["--root-certificates", runtime_ca]
    else:
        command += ["--insecure"]
    executor = subprocess.Popen(command, pass_fds=(wake_read,))
    os.close(wake_read)
    try:
        import flwr.supernode.start_client_internal as loop
        from flwr.supernode.cli.flower_supernode import flower_supernode

        wake.patch_node_loop(loop, poll_interval, wake_write)
        fast_object_pulls()  # the SuperNode pulls a message while the ServerApp still pushes it
        sys.argv = ["flower-supernode", *args]
        flower_supernode()
    finally:
        executor.terminate()
        try:
            executor.wait(timeout=5)
        except subprocess.TimeoutExpired:
            executor.kill()
        for path in (Path(secret_dir) / "superexec.secret", Path(secret_dir)):
            with contextlib.suppress(OSError):
                path.unlink() if path.is_file() else path.rmdir()


def _executor_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m federation.deploy.node executor")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates")
    parser.add_argument("--secret-file")
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--wake-fd", type=int)
    args = parser.parse_args(argv)
    run_executor(
        args.runtime_api_address,
        args.insecure,
        args.root_certificates,
        args.secret_file,
        args.parent_pid,
        args.wake_fd,
    )


if __name__ == "__main__":  # ``executor ...`` (started by start_node) or ``start ...``
    if sys.argv[1:2] == ["executor"]:
        _executor_main(sys.argv[2:])
    elif sys.argv[1:2] == ["start"]:
        start_node(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m federation.deploy.node executor|start ARGS...")
