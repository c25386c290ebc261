"""Deployment commands: ``allfed certs``, ``allfed node keygen|start``, ``allfed run
launch|status``.

Registered in ``federation.cli``; they follow its conventions (a user mistake is one line and
exit code 2, a failed run exit code 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from federation.cli_options import writable_directory, writable_run_directory
from federation.errors import AllfedError

node_app = typer.Typer(help="A site's node: its key and the SuperNode.", no_args_is_help=True)
run_app = typer.Typer(help="Runs on a SuperLink: launch and status.", no_args_is_help=True)

out_console = Console()
err_console = Console(stderr=True)


def certs(
    out: Annotated[Path, typer.Option(help="Folder for ca.crt, ca.key, server.crt, server.key.")],
    host: Annotated[
        list[str],
        typer.Option(help="DNS name or IP address the SuperLink is reached at; repeat."),
    ],
    days: Annotated[
        int, typer.Option(min=1, max=36500, help="Validity in days (at most 100 years).")
    ] = 825,
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Make a private CA and the SuperLink's TLS certificate and key."""
    from federation.deploy.certs import make_certificates

    writable_directory(out, what="the certificates")
    files = make_certificates(out, host, days=days, force=force)
    out_console.print(
        f"CA certificate (give to every site): {files.ca_cert}\n"
        f"CA key (keep offline): {files.ca_key}\n"
        f"SuperLink certificate and key: {files.server_cert}, {files.server_key}\n"
        f"valid for: {', '.join(host)}",
        highlight=False,
    )


@node_app.command("keygen")
def node_keygen(
    out: Annotated[Path, typer.Option(help="Folder for node.key and node.key.pub.")],
    force: Annotated[bool, typer.Option(help="Replace an existing key.")] = False,
) -> None:
    """Make the EC key pair (P-384, OpenSSH format) this site's SuperNode authenticates with."""
    from federation.deploy.certs import make_node_key

    writable_directory(out, what="the key")
    private, public = make_node_key(out, force=force)
    out_console.print(
        f"private key (stays at the site, mode 600): {private}\n"
        f"public key (send to the central team): {public}",
        highlight=False,
    )


@node_app.command(
    "start",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def node_start(
    ctx: typer.Context,
    poll_interval: Annotated[
        float,
        typer.Option(
            min=0.05,
            help="Seconds to the first poll of the SuperLink after a message; the polls slow "
            "down to one a second while nothing comes.",
        ),
    ] = 0.2,
) -> None:
    """Start Flower's SuperNode with a warm ClientApp executor; other options go to
    flower-supernode unchanged (--superlink, --root-certificates, --node-config, ...)."""
    from federation.deploy.node import start_node

    start_node(list(ctx.args), poll_interval=poll_interval)


@run_app.command("launch")
def run_launch(
    study: Annotated[Path, typer.Option(help="The study spec (a path on the SuperLink host).")],
    out: Annotated[Path, typer.Option(help="Run directory (a path on the SuperLink host).")],
    superlink: Annotated[
        str | None, typer.Option(help="Connection name in $FLWR_HOME/config.toml.")
    ] = None,
    app: Annotated[Path, typer.Option(help="The allfed Flower app (its pyproject folder).")] = Path(
        "."
    ),
    expected_sites: Annotated[
        int, typer.Option(min=0, help="Sites to wait for before setup (0: min-sites).")
    ] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run (> 0).")] = 86400.0,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out after its last completed round.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace an earlier run in --out.")] = False,
) -> None:
    """Submit a study with flwr run, wait for it, and exit 0 only if it completed."""
    from federation.deploy.runs import launch

    if resume and force:
        raise AllfedError("--resume continues the run in --out and --force replaces it; give one")
    if not timeout > 0:  # also NaN
        raise AllfedError(f"--timeout: expected seconds above 0, got {timeout:g}")
    if not resume:
        writable_run_directory(out, force)

    outcome = launch(
        study.resolve(),
        out.resolve(),
        superlink=superlink,
        app=app,
        expected_sites=expected_sites,
        timeout=timeout,
        on_status=lambda line: err_console.print(line, highlight=False),
        resume=resume,
    )
    _report(outcome)


@run_app.command("status")
def run_status_command(
    run_dir: Annotated[Path, typer.Argument(help="The run directory (holds summary.json).")],
) -> None:
    """Exit 0 if the run completed, 1 if it failed, 3 if it has no summary yet, 2 if there is no
    such run directory."""
    from federation.deploy.runs import run_status

    _report(run_status(run_dir))


def _report(outcome) -> None:
    console = out_console if outcome.code == 0 else err_console
    console.print(outcome.message, highlight=False, soft_wrap=True)
    raise typer.Exit(outcome.code)
