"""The `allfed` console entry point as a user runs it: in a process of its own, or in this one."""

import os
import subprocess
import sys

from federation.cli import main


def run_allfed(*args: str, cwd=None, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`allfed ARGS` in a fresh process (wide console, so lines are not wrapped)."""
    return subprocess.run(
        [sys.executable, "-c", "from federation.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**(env if env is not None else os.environ), "COLUMNS": "200"},
        timeout=timeout,
    )


def invoke(*args: str) -> int:
    """`allfed ARGS` in this process (output to capsys); its exit code."""
    old, sys.argv = sys.argv, ["allfed", *args]
    try:
        main()
    except SystemExit as done:
        return done.code or 0
    finally:
        sys.argv = old
    return 0
