"""Command-line pieces that several ``allfed`` commands share: the sites and their governance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from federation.errors import AllfedError

Sites = Annotated[list[str], typer.Option(help="NAME=PATH of a site's data file; repeat.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Policies = Annotated[
    list[str] | None, typer.Option(help="NAME=PATH of a site's privacy policy; repeat.")
]
LedgerDir = Annotated[
    Path | None, typer.Option(help="Folder of the sites' ledgers (NAME.sqlite each).")
]


def parse_sites(values: list[str], option: str = "--site") -> dict[str, Path]:
    """``NAME=PATH`` options as a name -> path mapping; a malformed or repeated name is an error."""
    sites: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise AllfedError(f"{option} {value!r}: expected NAME=PATH")
        if name in sites:
            raise AllfedError(f"{option} {name}: given twice; site names must be unique")
        sites[name.strip()] = Path(path.strip())
    return sites


def parse_site_files(values: list[str]) -> dict[str, Path]:
    """``--site NAME=PATH`` options. The same records given as two sites would count every
    participant twice, for privacy and for the metrics: one file (or source) is one site."""
    sites = parse_sites(values)
    seen: dict[Path, str] = {}
    for name, path in sites.items():
        key = path.resolve()
        if key in seen:
            raise AllfedError(
                f"--site {name}: {path} is also site {seen[key]}'s file; each site needs its own"
            )
        seen[key] = name
    return sites


def writable_run_directory(out: Path, force: bool, option: str = "--out") -> None:
    """Refuse to write over an earlier run (``--force`` replaces it, ``--resume`` continues it)
    and find an unwritable destination before any site starts, not after."""
    from federation.server.outputs import CHECKPOINT, METRICS, SUMMARY

    if not force and any((out / name).exists() for name in (SUMMARY, METRICS, CHECKPOINT)):
        raise AllfedError(
            f"{option} {out}: already holds a run; pass --force to replace it "
            "(or --resume to continue it)"
        )
    writable_directory(out, option, "the run directory")


def writable_directory(out: Path, option: str = "--out", what: str = "there") -> None:
    """Make ``out`` and check that files can be written in it, before any work: an unwritable
    destination is one line naming it, never a traceback after the work is done."""
    if out.exists() and not out.is_dir():
        raise AllfedError(f"{option} {out}: cannot write {what} (a file, not a folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".allfed-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or error
        raise AllfedError(f"{option} {out}: cannot write {what} ({reason})") from None
