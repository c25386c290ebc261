"""``allfed analyze KIND``: differentially private descriptive statistics across the sites.

Every kind asks each site one question (one noisy release, recorded in the site's ledger and
checked by its policy) and writes ``OUT/analysis.json`` (sites, privacy, pooled results) with
``OUT/<kind>.json`` and ``OUT/<kind>.html``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from federation.cli_options import (
    AsJson,
    LedgerDir,
    Policies,
    parse_site_files,
    parse_sites,
    writable_directory,
)
from federation.errors import AllfedError

if TYPE_CHECKING:
    from federation.wire.queries import AnalysisRequest

out_console = Console()
err_console = Console(stderr=True)


def analyze(
    kind: Annotated[str, typer.Argument(show_default=False)],
    study: Annotated[Path, typer.Option(help="The study spec (TOML): levels, bounds.")],
    out: Annotated[Path, typer.Option(help="Folder for analysis.json and the table.")],
    columns: Annotated[
        list[str] | None, typer.Argument(help="The columns the kind takes.", show_default=False)
    ] = None,
    by: Annotated[
        str | None, typer.Option(help="Stratify by this group or categorical column.")
    ] = None,
    bins: Annotated[
        str | None, typer.Option(help="histogram: bin edges, comma-separated: 18,40,65,90.")
    ] = None,
    intervals: Annotated[
        str | None,
        typer.Option(
            help="km: interval ends in days, comma-separated: 182,365,730 (default: the "
            "study's intervals)."
        ),
    ] = None,
    delta: Annotated[
        float | None, typer.Option(help="Delta (default: the spec's privacy delta).")
    ] = None,
    accountant: Annotated[
        str | None, typer.Option(help="prv or rdp (default: the spec's privacy accountant).")
    ] = None,
    site: Annotated[
        list[str] | None,
        typer.Option(help="Simulation: NAME=PATH of a site's data file; repeat."),
    ] = None,
    policy: Policies = None,
    ledger_dir: LedgerDir = None,
    superlink: Annotated[
        str | None,
        typer.Option(help="Deployment: ask the SuperNodes of this SuperLink connection instead."),
    ] = None,
    app: Annotated[
        Path, typer.Option(help="Deployment: the allfed Flower app (its pyproject folder).")
    ] = Path("."),
    expected_sites: Annotated[
        int, typer.Option(min=0, help="Deployment: sites to wait for (0: the study's min-sites).")
    ] = 0,
    target_epsilon: Annotated[
        float | None, typer.Option(help="Epsilon each site spends on this (its noise's budget).")
    ] = None,
    epsilon: Annotated[float | None, typer.Option(hidden=True)] = None,  # the old name
    as_json: AsJson = False,
) -> None:
    """Differentially private cohort statistics across the sites: each site answers once with
    OpenDP noise, checked by its policy and recorded in its ledger; small counts are withheld.

    KIND is table1 (every level's count and every bounded numeric column's mean and SD), count,
    mean COLUMN..., histogram COLUMN --bins EDGES, crosstab ROW COLUMN, or km (a survival
    study's Kaplan-Meier curves, --by GROUP for one per level)."""
    from federation.simulation import analyze as run_analysis
    from federation.wire.queries import KINDS, AnalysisRequest, build_query
    from federation.wire.spec import load_spec

    if kind not in KINDS:
        raise AllfedError(f"unknown analysis {kind!r}; expected one of {', '.join(KINDS)}")
    spec = load_spec(study)
    request = AnalysisRequest(
        kind=kind,
        epsilon=_budget(target_epsilon, epsilon),
        delta=delta if delta is not None else spec.privacy.delta,
        accountant=accountant or spec.privacy.accountant,
        columns=tuple(columns or ()),
        by=by,
        bins=_edges(bins, "--bins") if bins is not None else (),
        intervals=_edges(intervals, "--intervals") if intervals is not None else (),
    )
    build_query(request, spec)  # a request the spec cannot answer fails here, not at the sites
    writable_directory(out, what="the analysis")
    _warn_about_left_out_columns(spec, kind)
    if superlink is not None:
        if site or policy or ledger_dir:
            raise AllfedError(
                "--superlink asks the deployed sites, whose nodes hold their own data, policy "
                "and ledger: leave out --site, --policy and --ledger-dir"
            )
        summary = _on_deployment(study, out, superlink, app, expected_sites, request)
        recorded = "each site's own ledger"
    else:
        if not site:
            raise AllfedError("name the sites: --site NAME=PATH (or --superlink for deployment)")
        # every release is recorded: in the sites' own ledgers, else beside the output
        ledger_dir = ledger_dir or out / "ledgers"
        writable_directory(ledger_dir, "--ledger-dir", "the sites' ledgers")
        with (err_console if as_json else out_console).status(f"asking {len(site)} site(s)..."):
            summary = run_analysis(
                spec,
                parse_site_files(site),
                request,
                out,
                policies=parse_sites(policy or [], "--policy"),
                ledger_dir=ledger_dir,
            )
        recorded = f"{ledger_dir}/NAME.sqlite"
    for name, answer in summary["sites"].items():
        if answer["status"] != "ok":
            line = f"site {name} {answer['status']}: {answer['reason']}"
            err_console.print(line, highlight=False)
    if as_json:
        print(json.dumps(summary))
    else:
        _print(summary, out, kind, recorded)
    if summary["status"] != "completed":
        err_console.print(f"[red]analysis failed:[/] {summary['error']}")
        raise typer.Exit(1)


def _on_deployment(
    study: Path,
    out: Path,
    superlink: str,
    app: Path,
    expected_sites: int,
    request: AnalysisRequest,
) -> dict[str, Any]:
    """``flwr run`` the analysis on a SuperLink, wait, and read its ``analysis.json``."""
    from federation.deploy.runs import COMPLETED, launch

    outcome = launch(
        study.resolve(),
        out.resolve(),
        superlink=superlink,
        app=app,
        expected_sites=expected_sites,
        on_status=lambda line: err_console.print(line, highlight=False),
        analysis=request.to_json(),
    )
    if outcome.code != COMPLETED or outcome.summary is None:
        err_console.print(outcome.message, highlight=False, soft_wrap=True)
        raise typer.Exit(outcome.code)
    return outcome.summary  # the run directory's analysis.json


def _budget(target_epsilon: float | None, epsilon: float | None) -> float:
    """``--target-epsilon``, as every command names a privacy budget; ``--epsilon`` is its old
    name here, kept hidden for one release."""
    if target_epsilon is not None and epsilon is not None and target_epsilon != epsilon:
        raise AllfedError("--epsilon is the old name of --target-epsilon: give one")
    budget = target_epsilon if target_epsilon is not None else epsilon
    if budget is None:
        raise AllfedError("give --target-epsilon, the epsilon each site spends on the analysis")
    return budget


def _edges(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(edge) for edge in text.split(","))
    except ValueError:
        raise AllfedError(f"{option} {text!r}: expected numbers separated by commas") from None


def _print(summary: dict[str, Any], out: Path, kind: str, recorded: str) -> None:
    if kind == "km":
        _print_km(summary)
    else:
        _print_table(summary, kind)
    privacy = summary["privacy"]
    out_console.print(
        f"Each site spent epsilon {privacy['epsilon']:g} at delta {privacy['delta']:g} "
        f"({privacy['accountant']}), recorded in {recorded}. "
        f"Tables: {out / (kind + '.json')}, {out / (kind + '.html')}"
    )


def _print_km(summary: dict[str, Any]) -> None:
    """One life table per curve: at risk, events, censored, survival (95% CI) per interval."""
    from federation.server.km_page import curve_title

    result = summary["result"]
    for curve in result["curves"]:
        table = Table(title=f"{summary['study']}: Kaplan-Meier, {curve_title(curve, result)}")
        table.add_column("interval (days)")
        for header in ("at risk", "events", "censored", "survival", "95% CI"):
            table.add_column(header, justify="right")
        for point in curve["points"]:
            ci = point["survival_ci"]
            table.add_row(
                point["interval"],
                *(_shown(point, f) for f in ("at_risk", "events", "censored", "survival")),
                "" if ci is None else f"{ci[0]:.3f} to {ci[1]:.3f}",
            )
        out_console.print(table)


def _shown(point: dict[str, Any], field: str) -> str:
    """A life table's value, or withheld (the dissemination rule) or n/a (its reason in the
    JSON)."""
    from federation.server.style import NA, WITHHELD

    value = point[field]
    if value is None:
        return WITHHELD if field in point["withheld_reason"] else NA
    return f"{value:.3f}" if field == "survival" else str(value)


def _print_table(summary: dict[str, Any], kind: str) -> None:
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


def _warn_about_left_out_columns(spec, kind: str) -> None:
    """Table 1 leaves out what it cannot count under DP: say which columns and why."""
    if kind != "table1":
        return
    unbounded = [c for c in spec.features.numeric if c not in spec.features.bounds]
    undeclared = [
        g
        for g in spec.study.groups
        if g not in spec.study.group_levels and g not in spec.features.categorical
    ]
    for columns, why in (
        (unbounded, "have no [features] bounds"),
        (undeclared, "have no [study] group-levels"),
    ):
        if columns:
            err_console.print(
                f"[yellow]warning:[/] {', '.join(columns)} {why}, so Table 1 leaves them out",
                highlight=False,
            )


def _value(entry: dict[str, Any]) -> str:
    """``count (percent%)`` or ``mean (SD)``; withheld (the dissemination rule) or n/a (too
    uncertain), the reason in the JSON's ``withheld_reason`` or ``na_reason``, where the table
    holds the number back."""
    from federation.server.style import NA, WITHHELD

    if not entry:  # a column the table has no entry for, as the page shows it
        return WITHHELD

    def held(field: str) -> str:
        return WITHHELD if field in entry.get("withheld_reason", {}) else NA

    if "mean" in entry:
        if entry["mean"] is None:
            return held("mean")
        sd = NA if entry["sd"] is None else f"{entry['sd']:.2f}"
        return f"{entry['mean']:.2f} ({sd})"
    if entry.get("count") is None:
        return held("count")
    percent = held("percent") if entry.get("percent") is None else f"{entry['percent']:.1f}%"
    return f"{entry['count']} ({percent})"
