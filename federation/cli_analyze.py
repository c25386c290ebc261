"""``allfed analyze``: differentially private descriptive statistics across the sites.

Every command asks each site one question (one noisy release, recorded in the site's ledger and
checked by its policy) and writes ``OUT/analysis.json`` (sites, privacy, pooled results) with
``OUT/<kind>.json`` and ``OUT/<kind>.html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from federation.errors import AllfedError

analyze_app = typer.Typer(
    help="Differentially private cohort statistics: Table 1, counts, means, histograms.",
    no_args_is_help=True,
)
out_console = Console()
err_console = Console(stderr=True)

Study = Annotated[Path, typer.Option(help="The study spec (TOML): columns, levels, bounds.")]
Sites = Annotated[list[str], typer.Option(help="NAME=PATH of a site's data file; repeat.")]
Epsilon = Annotated[float, typer.Option(help="Epsilon each site spends on this analysis.")]
Out = Annotated[Path, typer.Option(help="Folder for analysis.json and the table.")]
Delta = Annotated[float | None, typer.Option(help="Delta (default: the spec's [privacy] delta).")]
Accountant = Annotated[
    str | None, typer.Option(help="prv or rdp (default: the spec's [privacy] accountant).")
]
By = Annotated[str | None, typer.Option(help="Stratify by this group or categorical column.")]
Policy = Annotated[
    list[str] | None, typer.Option(help="NAME=PATH of a site's privacy policy; repeat.")
]
LedgerDir = Annotated[
    Path | None, typer.Option(help="Folder of the sites' ledgers (NAME.sqlite each).")
]


@analyze_app.command()
def table1(
    study: Study,
    site: Sites,
    epsilon: Epsilon,
    out: Out,
    by: By = None,
    delta: Delta = None,
    accountant: Accountant = None,
    policy: Policy = None,
    ledger_dir: LedgerDir = None,
) -> None:
    """The first table of a clinical paper: every level's count and every bounded numeric
    column's mean (SD), overall, by site and (with --by) by group."""
    _analyze("table1", (), (), locals())


@analyze_app.command()
def count(
    study: Study,
    site: Sites,
    epsilon: Epsilon,
    out: Out,
    by: By = None,
    delta: Delta = None,
    accountant: Accountant = None,
    policy: Policy = None,
    ledger_dir: LedgerDir = None,
) -> None:
    """How many records, overall, by site and (with --by) by group."""
    _analyze("count", (), (), locals())


@analyze_app.command()
def mean(
    column: Annotated[list[str], typer.Argument(help="Numeric columns with declared bounds.")],
    study: Study,
    site: Sites,
    epsilon: Epsilon,
    out: Out,
    by: By = None,
    delta: Delta = None,
    accountant: Accountant = None,
    policy: Policy = None,
    ledger_dir: LedgerDir = None,
) -> None:
    """Mean, SD and 95% CI of numeric columns (values clipped to their declared bounds)."""
    _analyze("mean", tuple(column), (), locals())


@analyze_app.command()
def histogram(
    column: Annotated[str, typer.Argument(help="A numeric column.")],
    bins: Annotated[str, typer.Option(help="Bin edges, comma-separated: 18,40,65,90.")],
    study: Study,
    site: Sites,
    epsilon: Epsilon,
    out: Out,
    by: By = None,
    delta: Delta = None,
    accountant: Accountant = None,
    policy: Policy = None,
    ledger_dir: LedgerDir = None,
) -> None:
    """Counts per bin (values outside the edges fall into the outer bins)."""
    try:
        edges = tuple(float(edge) for edge in bins.split(","))
    except ValueError:
        raise AllfedError(f"--bins {bins!r}: expected numbers separated by commas") from None
    _analyze("histogram", (column,), edges, locals())


@analyze_app.command()
def crosstab(
    row: Annotated[str, typer.Argument(help="A categorical, group or label column.")],
    column: Annotated[str, typer.Argument(help="A second categorical or group column.")],
    study: Study,
    site: Sites,
    epsilon: Epsilon,
    out: Out,
    delta: Delta = None,
    accountant: Accountant = None,
    policy: Policy = None,
    ledger_dir: LedgerDir = None,
) -> None:
    """Counts of ROW's levels within each level of COLUMN."""
    _analyze("crosstab", (row, column), (), locals())


def _analyze(kind: str, columns: tuple[str, ...], bins: tuple[float, ...], options: dict) -> None:
    from federation.cli import parse_sites
    from federation.queries import AnalysisRequest, build_query
    from federation.simulation import analyze
    from federation.spec import load_spec

    spec = load_spec(options["study"])
    request = AnalysisRequest(
        kind=kind,
        epsilon=options["epsilon"],
        delta=options["delta"] if options["delta"] is not None else spec.privacy.delta,
        accountant=options["accountant"] or spec.privacy.accountant,
        columns=columns,
        by=options.get("by"),
        bins=bins,
    )
    build_query(request, spec)  # a request the spec cannot answer fails here, not at the sites
    with out_console.status(f"asking {len(options['site'])} site(s)..."):
        summary = analyze(
            spec,
            parse_sites(options["site"]),
            request,
            options["out"],
            policies=parse_sites(options["policy"] or [], "--policy"),
            ledger_dir=options["ledger_dir"],
        )
    _print(summary, options["out"], kind)
    if summary["status"] != "completed":
        err_console.print(f"[red]analysis failed:[/] {summary['error']}")
        raise typer.Exit(1)


def _print(summary: dict[str, Any], out: Path, kind: str) -> None:
    for name, site in summary["sites"].items():
        if site["status"] != "ok":
            err_console.print(f"site {name} {site['status']}: {site['reason']}", highlight=False)
    result = summary["result"]
    table = Table(title=f"{summary['study']}: {kind} (N = {result['total']}, noisy)")
    means = any("mean" in row for row in result["rows"])
    table.add_column("variable", overflow="fold")
    table.add_column("level", overflow="fold")
    table.add_column("overall", justify="right")
    if means:
        table.add_column("95% CI of the mean", justify="right")
    for level in result["groups"]:
        table.add_column(f"{result['by']}: {level}", justify="right", overflow="fold")
    for row in result["rows"]:
        ci = row.get("mean_ci")
        cells = [row["variable"], row["level"], _value(row)]
        if means:
            cells.append("" if ci is None else f"{ci[0]:.2f} to {ci[1]:.2f}")
        cells += [_value(row.get("groups", {}).get(level, {})) for level in result["groups"]]
        table.add_row(*cells)
    out_console.print(table)
    privacy = summary["privacy"]
    out_console.print(
        f"Each site spent epsilon {privacy['epsilon']:g} at delta {privacy['delta']:g} "
        f"({privacy['accountant']}). Tables: {out / (kind + '.json')}, {out / (kind + '.html')}"
    )


def _value(entry: dict[str, Any]) -> str:
    """``count (percent%)`` or ``mean (SD)``; withheld where the sites kept it."""
    if "mean" in entry:
        if entry["mean"] is None:
            return "withheld"
        sd = "n/a" if entry["sd"] is None else f"{entry['sd']:.2f}"
        return f"{entry['mean']:.2f} ({sd})"
    if entry.get("count") is None:
        return "withheld"
    percent = entry.get("percent")
    return f"{entry['count']}" + ("" if percent is None else f" ({percent:.1f}%)")
