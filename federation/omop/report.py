"""What ``allfed site check`` shows the operator of an OMOP site, and only them: the CDM version,
what the spec names that the database lacks, the cohort's attrition, the outcome count and each
covariate's coverage. Counts here are exact and may be small; they are printed at the site and
never sent anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from federation.omop.cdm import DOMAINS, bind
from federation.omop.errors import SourceError
from federation.omop.extract import (
    check,
    check_version,
    cohort_of,
    record_ids,
    run,
    to_frame,
    unknown_concepts,
)
from federation.omop.failures import translate
from federation.omop.query import build, codeset, needed_columns
from federation.omop.source import connect, load_source
from federation.wire.cohort import (
    AgeCovariate,
    ConceptSet,
    DemographicCovariate,
    MeasurementCovariate,
)
from federation.wire.spec import StudySpec

STEP_NAMES = {
    "events": "index events",
    "observed": "in an observation period, with the prior observation",
    "aged": "in the age range at index",
    "new": "without a prior outcome",
    "entries": "with the time at risk (the cohort)",
    "followed": "with follow-up after index (the cohort)",
}


@dataclass
class ConceptSetReport:
    place: str
    domain_table: str
    listed: int
    resolved: int  # concepts after descendants
    records: int  # rows of the domain table with a concept of the set
    unknown: list[int]


@dataclass
class CovariateReport:
    name: str
    kind: str
    present: int  # rows with a value (or with the concept set present)
    missing: int
    levels: dict[str, int] = field(default_factory=dict)


@dataclass
class SiteReport:
    source: str
    cdm_version: str
    concept_sets: list[ConceptSetReport]
    steps: list[tuple[str, int]]
    entries: int
    persons: int
    outcomes: int
    covariates: list[CovariateReport]
    frame: pd.DataFrame
    records: pd.Series

    @property
    def unknown(self) -> list[ConceptSetReport]:
        return [c for c in self.concept_sets if c.unknown]


def site_report(path: str | Path, spec: StudySpec) -> SiteReport:
    """Everything the node would compute from the source, with the counts of each step."""
    where = str(path)
    source = load_source(path)  # a missing or unreadable file first: it says what to fix
    cohort = cohort_of(spec, where)
    with connect(source, where) as conn:
        try:
            cdm = bind(conn, needed_columns(cohort), source.cdm, source.vocabulary, where)
            version = check_version(conn, cdm, cohort, where)
            unknown = unknown_concepts(conn, cdm, cohort)
            sets = [
                _concept_set(conn, cdm, place, concepts, unknown.get(place, []))
                for place, concepts in cohort.concept_sets().items()
            ]
            if unknown:
                return SiteReport(
                    source.describe(),
                    version,
                    sets,
                    [],
                    0,
                    0,
                    0,
                    [],
                    pd.DataFrame(),
                    pd.Series(dtype=str),
                )
            query = build(cdm, cohort)
            check(conn, query, where)
            steps = [
                (name, conn.execute(sa.select(sa.func.count()).select_from(cte)).scalar_one())
                for name, cte in query.steps
            ]
        except sa.exc.DBAPIError as exc:
            raise translate(exc, where) from None
        rows = run(conn, query, where)
    frame = to_frame(rows, spec) if not rows.empty else pd.DataFrame()
    covariates = (
        [_covariate(name, c, frame) for name, c in cohort.covariates.items()]
        if not rows.empty
        else []
    )
    return SiteReport(
        source=source.describe(),
        cdm_version=version,
        concept_sets=sets,
        steps=steps,
        entries=len(rows),
        persons=int(rows["person_id"].nunique()) if not rows.empty else 0,
        outcomes=int(frame[spec.study.outcome].eq("1").sum()) if not rows.empty else 0,
        covariates=covariates,
        frame=frame,
        records=record_ids(rows) if not rows.empty else pd.Series(dtype=str),
    )


def _concept_set(conn, cdm, place: str, concepts: ConceptSet, unknown) -> ConceptSetReport:
    domain = getattr(concepts, "domain", None) or concepts.kind
    d = DOMAINS[domain]
    resolved = codeset(cdm, concepts).subquery()
    n_concepts = conn.execute(sa.select(sa.func.count()).select_from(resolved)).scalar_one()
    table = cdm[d.table]
    records = conn.execute(
        sa.select(sa.func.count())
        .select_from(table.table)
        .where(table.column(d.concept).in_(codeset(cdm, concepts)))
    ).scalar_one()
    return ConceptSetReport(
        place, d.table, len(concepts.concepts), int(n_concepts), int(records), list(unknown)
    )


def _covariate(name: str, covariate, frame: pd.DataFrame) -> CovariateReport:
    values = frame[name]
    missing = int(values.isna().sum())
    if isinstance(covariate, AgeCovariate | MeasurementCovariate):
        return CovariateReport(name, covariate.kind, len(values) - missing, missing)
    if isinstance(covariate, DemographicCovariate):
        counts = values.fillna("missing").value_counts().sort_index()
        return CovariateReport(
            name,
            covariate.kind,
            len(values) - missing,
            missing,
            {str(k): int(v) for k, v in counts.items()},
        )
    return CovariateReport(name, covariate.kind, int(values.eq("1").sum()), missing)


def raise_for_unknown(report: SiteReport, where: str) -> None:
    """After printing them all, the site check fails as the node would."""
    if report.unknown:
        first = report.unknown[0]
        raise SourceError(
            where,
            "unknown-concept",
            f"[cohort] {first.place}: concept id{'s' if len(first.unknown) > 1 else ''} "
            f"{', '.join(map(str, first.unknown))} not in the vocabulary",
        )
    if report.entries == 0:
        raise SourceError(where, "empty-cohort", "the target cohort is empty at this site")
