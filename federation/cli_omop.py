"""``allfed site check`` on an OMOP source: the site report for the operator, then the same
checks the node makes."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from federation.client.data import PERSON_COLUMN, SiteTable, check_table
from federation.client.partition import Partition
from federation.omop.report import STEP_NAMES, SiteReport, raise_for_unknown, site_report
from federation.wire.spec import StudySpec


def check_source(path: Path, spec: StudySpec, console: Console, partition: Partition) -> SiteTable:
    """Print what the cohort finds in the source; raise as the node would refuse."""
    report = site_report(path, spec)
    print_report(report, spec, console)
    raise_for_unknown(report, str(path))
    persons = report.records.str.split(":").str[0]
    frame = report.frame.assign(**{PERSON_COLUMN: persons})
    return check_table(frame, spec, str(path), partition)


def print_report(report: SiteReport, spec: StudySpec, console: Console) -> None:
    console.print(
        f"[bold]{report.source}[/]: OMOP CDM {report.cdm_version} "
        "(these counts are exact and stay at this site)",
        highlight=False,
    )
    sets = Table(title="concept sets", title_justify="left")
    for column in ("[cohort]", "table", "listed", "with descendants", "records", "unknown ids"):
        sets.add_column(column, justify="left" if column in ("[cohort]", "table") else "right")
    for c in report.concept_sets:
        unknown = ", ".join(map(str, c.unknown)) or "-"
        sets.add_row(
            c.place,
            c.domain_table,
            str(c.listed),
            str(c.resolved),
            str(c.records),
            f"[red]{unknown}[/]" if c.unknown else unknown,
        )
    console.print(sets)
    for c in report.concept_sets:
        if c.records == 0 and not c.unknown:
            console.print(
                f"[yellow]warning:[/] [cohort] {c.place}: no record of {c.domain_table} has a "
                "concept of this set",
                highlight=False,
            )
    if report.unknown:
        return
    steps = Table(title="cohort", title_justify="left")
    steps.add_column("step")
    steps.add_column("entries", justify="right")
    for name, count in report.steps:
        steps.add_row(STEP_NAMES[name], str(count))
    console.print(steps)
    if not report.entries:
        return
    share = report.outcomes / report.entries
    role = "event" if spec.study.task == "survival" else "outcome"
    console.print(
        f"{report.entries} entries of {report.persons} persons; {role} "
        f"{spec.study.outcome!r} in {report.outcomes} ({share:.1%})",
        highlight=False,
    )
    if spec.study.task == "survival":
        days = report.frame[spec.study.time].astype(int)
        console.print(
            f"{report.entries - report.outcomes} censored; time {spec.study.time!r}: median "
            f"{days.median():g} days (from {days.min()} to {days.max()})",
            highlight=False,
        )
    covariates = Table(title="covariates", title_justify="left")
    for column in ("column", "kind", "present", "missing", "levels"):
        covariates.add_column(
            column, justify="right" if column in ("present", "missing") else "left"
        )
    for c in report.covariates:
        levels = ", ".join(f"{k}: {v}" for k, v in c.levels.items())
        covariates.add_row(
            c.name,
            c.kind,
            _share(c.present, report.entries),
            _share(c.missing, report.entries),
            levels,
        )
    console.print(covariates)


def _share(count: int, total: int) -> str:
    return f"{count} ({count / total:.0%})"
