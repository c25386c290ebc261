"""Command-line pieces that several ``allfed`` commands share: the sites and their governance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from federation.errors import AllfedError

Sites = Annotated[list[str], typer.Option(help="NAME=PATH of a site's data file; repeat.")]
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
