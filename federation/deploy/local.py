"""A real federation on one machine: a SuperLink and SuperNodes as separate processes on
127.0.0.1, with TLS and node authentication, for the deployment tests and the benchmark.

It follows the operator guides step by step (``make_certificates``, ``make_node_key``,
``flwr supernode register``, ``flower-supernode``/``allfed node start``, ``flwr run``) so that
what is tested is what the guides tell people to do. Every process is started in a session of
its own and its whole process group is stopped on exit, also when the caller fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from federation.deploy.certs import make_certificates, make_node_key
from federation.deploy.runs import run_config

CONNECTION = "allfed-local"
PROJECT = Path(__file__).resolve().parents[2]  # the Flower app (pyproject.toml with tool.flwr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_env(home: Path) -> dict[str, str]:
    """The environment every Flower process here gets: private FLWR_HOME, no telemetry, no
    dependency installs."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _tool(name: str) -> str:
    """A console script of this environment (flwr, flower-superlink, allfed, ...)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


NOISE = ("uvicorn.access", "ControlServicer.ListRuns", "Received successfully", "Sent successfully")
EMPTY_INFO = re.compile(r"^(\x1b\[\d+m)?INFO\s*(\x1b\[0m)?\s*:\s*$")  # Flower's blank log line


def log_digest(text: str, problems: int = 30, tail: int = 60) -> str:
    """The last ``problems`` error and warning lines of a log, then its last ``tail`` lines,
    leaving out access-log and polling lines and blank INFO lines."""
    lines = [
        line
        for line in text.splitlines()
        if line.strip() and not any(n in line for n in NOISE) and not EMPTY_INFO.match(line)
    ]
    flagged = [line for line in lines if "ERROR" in line or "WARNING" in line]
    return "\n".join(["-- errors and warnings", *flagged[-problems:], "-- last", *lines[-tail:]])


@dataclass
class Process:
    """A started process, its log file and how to stop its whole process group."""

    name: str
    popen: subprocess.Popen
    log: Path
    handle: IO[bytes]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def group_alive(self) -> bool:
        """Whether any process of its group (it and whatever it started) is still there."""
        try:
            os.killpg(self.popen.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def output(self) -> str:
        if not self.handle.closed:  # a stopped process's log is complete on disk
            self.handle.flush()
        return self.log.read_text(errors="replace")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the group, SIGKILL to whatever is left after ``grace`` seconds, and to
        descendants that moved to a group of their own (Flower's SuperExec does)."""
        below = descendants(self.popen.pid)
        try:
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)  # children left in the group
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
            for pid in below:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            self.handle.close()


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (Linux ``/proc``; empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class LocalFederation:
    """A SuperLink with TLS and SuperNode auth on loopback, plus the files the guides make."""

    root: Path
    fast: bool = True  # SuperNodes via ``allfed node start`` (warm executor) or plain Flower
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = self.root / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.env = flower_env(self.home)
        self.certs = make_certificates(self.root / "certs", ["localhost", "127.0.0.1"])
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.superlink: Process | None = None

    # -- processes ---------------------------------------------------------------------

    def _start(self, name: str, command: list[str]) -> Process:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        handle = log.open("wb")
        popen = subprocess.Popen(
            command,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches its children
            cwd=self.root,
        )
        process = Process(name, popen, log, handle)
        self.processes.append(process)
        return process

    def start_superlink(self, timeout: float = 60.0) -> Process:
        c = self.certs
        self.superlink = self._start(
            "superlink",
            [
                _tool("flower-superlink"),
                "--ssl-ca-certfile",
                str(c.ca_cert),
                "--ssl-certfile",
                str(c.server_cert),
                "--ssl-keyfile",
                str(c.server_key),
                "--enable-supernode-auth",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\nroot-certificates = "{c.ca_cert}"\n'
        )
        self._wait_for(self.superlink, "Uvicorn running on", timeout)
        return self.superlink

    def node_key(self, name: str) -> tuple[Path, Path]:
        return make_node_key(self.root / "keys" / name)

    def register(self, public_key: Path) -> int:
        """``flwr supernode register KEY.pub CONNECTION``: what the central team runs."""
        out = self.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
        return int(out["node-id"])

    def start_node(
        self,
        name: str,
        data: Path,
        private_key: Path | None,
        root_certificates: Path | None = None,
        extra: list[str] | None = None,
        fast: bool | None = None,
    ) -> Process:
        """A site's SuperNode, as the site operator guide starts it (``fast``: with the warm
        executor of ``allfed node start``; default: the federation's choice)."""
        args = [
            "--superlink",
            self.address,
            "--port",
            str(free_port()),
            "--node-config",
            f'data="{data}" site="{name}"',
        ]
        if root_certificates is not None:
            args += ["--root-certificates", str(root_certificates)]
        if private_key is not None:
            args += ["--auth-supernode-private-key", str(private_key)]
        args += extra or []
        if self.fast if fast is None else fast:
            # what ``allfed node start ARGS`` runs, without importing the whole CLI
            command = [sys.executable, "-m", "federation.deploy.node", "start", *args]
        else:
            command = [_tool("flower-supernode"), *args]
        return self._start(f"node-{name}", command)

    def _wait_for(self, process: Process, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in process.output():
                return
            if not process.alive():
                raise RuntimeError(f"{process.name} exited:\n{process.output()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{process.name}: no {text!r} within {timeout:g} s")

    def wait_for_node(self, process: Process, timeout: float = 60.0) -> None:
        """Until the SuperNode has been accepted by the SuperLink (it logs its node id)."""
        self._wait_for(process, "SuperNode ID:", timeout)

    def join_sites(self, files: dict[str, Path], timeout: float) -> list[Process]:
        """The guide's steps for every site: a node key, registered, and a node started with
        TLS; returns once the SuperLink has accepted every node."""
        nodes = []
        for name, path in files.items():
            private, public = self.node_key(name)
            self.register(public)
            nodes.append(self.start_node(name, path, private, self.certs.ca_cert))
        for node in nodes:
            self.wait_for_node(node, timeout=timeout)
        return nodes

    # -- the flwr CLI ------------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run ``flwr ARGS --format json`` and return its JSON answer."""
        done = subprocess.run(
            [_tool("flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        start = done.stdout.find("{")
        if done.returncode != 0 or start < 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout[start:])

    def launch(
        self,
        study: Path,
        out: Path,
        expected_sites: int,
        analysis: str | None = None,
        resume: bool = False,
    ) -> str:
        """``flwr run`` the app against this SuperLink; returns the run id. ``analysis`` (the
        request's JSON) makes it a descriptive analysis; ``resume`` continues the run in
        ``out`` from its checkpoint."""
        config = run_config(study, out, expected_sites, resume, analysis)
        app = self.app_copy()
        answer = self.flwr(
            "run", str(app), CONNECTION, "--run-config", str(config), "--format", "json"
        )
        return str(answer["run-id"])

    def app_copy(self) -> Path:
        """The Flower app without tests, benchmarks and caches: a small, quick FAB."""
        app = self.root / "app"
        if not app.exists():
            ignore = shutil.ignore_patterns(
                "__pycache__", "*.egg-info", ".*", "tests", "benchmarks", "docs", "runs"
            )
            app.mkdir()
            for name in ("pyproject.toml", "LICENSE", "README.md"):
                shutil.copy(PROJECT / name, app / name)
            for package in ("federation", "privacy", "models"):
                shutil.copytree(PROJECT / package, app / package, ignore=ignore)
        return app

    def stop_run(self, run_id: str) -> None:
        """``flwr stop``: the SuperLink ends the run's ServerApp where it is."""
        self.flwr("stop", run_id, CONNECTION, "--format", "json")

    def run_status(self, run_id: str) -> str:
        runs = self.flwr("list", "--run-id", run_id, "--format", "json")["runs"]
        return str(runs[0]["status"]) if runs else "unknown"

    def wait_for_run(self, run_id: str, timeout: float) -> str:
        """The run's final Flower status (``finished:completed``, ``finished:failed``, ...)."""
        deadline = time.monotonic() + timeout
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(1.0)
        raise TimeoutError(f"run {run_id} still {status!r} after {timeout:g} s")

    def logs(self) -> str:
        """What each process logged, for a failed test: its errors and warnings, then its last
        lines, without the request-by-request access log and status polls that bury them."""
        return "\n".join(f"==== {p.name}\n{log_digest(p.output())}" for p in self.processes)

    def stop(self) -> None:
        """Stop every process started here: nodes first, the SuperLink last."""
        for process in reversed(self.processes):
            process.stop()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
