"""``allfed console``: start the read-only web console and print its address with its token."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from federation.cli_options import LedgerDir, Policies, parse_sites
from federation.errors import AllfedError

RunsDir = Annotated[
    Path | None,
    typer.Option("--runs", help="A folder of run directories (or one run directory)."),
]


def console(
    ledger_dir: LedgerDir = None,
    runs: RunsDir = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one).")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    expose: Annotated[
        bool,
        typer.Option(
            "--expose", help="Allow a --host that is not loopback (read the warning it prints)."
        ),
    ] = False,
    policy: Policies = None,
) -> None:
    """A local, read-only web console: the sites' privacy budgets, what left them, and the
    runs, one in progress live. Open the address it prints (it holds the access token)."""
    import uvicorn

    from federation.console.app import build_app
    from federation.console.views import Sources

    if ledger_dir is None and runs is None:
        raise AllfedError("give --ledger-dir DIR, --runs DIR or both: the console shows them")
    for option, folder in (("--ledger-dir", ledger_dir), ("--runs", runs)):
        if folder is not None and not folder.is_dir():
            raise AllfedError(f"{option} {folder}: not a folder")
    policies = parse_sites(policy or [], "--policy")
    for name, path in policies.items():
        if not path.is_file():
            raise AllfedError(f"--policy {name}: {path}: policy file not found")
    loopback = _is_loopback(host)
    if not loopback and not expose:
        raise AllfedError(
            f"--host {host} is not a loopback address; the console is meant to be opened on "
            "this machine (use an SSH tunnel to reach it from elsewhere), or add --expose"
        )
    sock = _listen(host, port)
    token = secrets.token_urlsafe(32)
    bound = sock.getsockname()[1]
    where = f"[{host}]" if ":" in host else host
    if not loopback:
        print(
            f"warning: listening on {host}, not loopback: anyone who can reach this machine "
            "and learns the token reads every ledger and run shown here, and plain HTTP "
            "carries the token unencrypted on the network; prefer --host 127.0.0.1 and "
            f"`ssh -L {bound}:127.0.0.1:{bound}` from the other machine",
            file=sys.stderr,
            flush=True,
        )
    sources = Sources(ledger_dir, runs, policies)
    shown = ", ".join(
        f"{label} in {folder}"
        for label, folder in (("ledgers", ledger_dir), ("runs", runs))
        if folder is not None
    )
    print(f"allfed console (read-only): {shown}", flush=True)
    print(f"open http://{where}:{bound}/?token={token}", flush=True)
    print("Ctrl-C stops it.", flush=True)
    app = build_app(sources, token, loopback=loopback)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise AllfedError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(128)  # the printed address answers at once: requests wait for the server
    return sock
