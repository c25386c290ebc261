"""``allfed predict``: a run's model applied to a site's own file, at the site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from federation.errors import AllfedError

out_console = Console()


def predict(
    run: Annotated[Path, typer.Option(help="The run directory (model.pt, model_card.json).")],
    data: Annotated[Path, typer.Option(help="The site's file to score (CSV or Parquet).")],
    out: Annotated[
        Path, typer.Option(help="The scores file to write (CSV); it stays at the site.")
    ],
    id_column: Annotated[
        str | None, typer.Option(help="A column of --data to copy beside each risk.")
    ] = None,
    site: Annotated[
        str | None,
        typer.Option(help="The site's name in the run (when features were scaled per site)."),
    ] = None,
    training_data: Annotated[
        Path | None, typer.Option(help="The site's data file, as its node reads it.")
    ] = None,
    ledger: Annotated[
        Path | None, typer.Option(help="The site node's ledger (its fixed partition).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
) -> None:
    """Score a site's records with a run's model, encoded exactly as the site's node encodes
    them: one risk per row, in input order (a survival model's: its score and its risk by each
    of the study's horizons).

    Run it at the site: the scores file holds a risk per participant, is no DP release and
    stays at the site. Every row that passes the node's feature checks is scored (consent and
    label are not read); a row a "drop" rule removes gets no risk and a reason. Features the
    run scaled by each site's own training rows need --site, --training-data and --ledger.
    """
    from federation.client.predict import REASON, SITE_OPTIONS, TrainingSite
    from federation.client.predict import predict as score

    given = [site is not None, training_data is not None, ledger is not None]
    if any(given) and not all(given):
        raise AllfedError(f"give {SITE_OPTIONS} together")
    training = TrainingSite(site, training_data, ledger) if all(given) else None
    scores = score(run, data, out, id_column=id_column, site=training, force=force)
    unscored = int(scores[REASON].astype(bool).sum())
    out_console.print(
        f"{escape(str(out))}: {len(scores) - unscored} risks of {len(scores)} rows"
        + (f", {unscored} not scored (a missing value under a drop rule)" if unscored else "")
        + "; the file stays at the site",
        highlight=False,
        soft_wrap=True,
    )
