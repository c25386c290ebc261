"""An OMOP source's cohort as the frame a site file gives: text cells, NaN where missing, one
row per cohort entry, columns named as the study's label, features and groups.

The frame then goes through ``federation.client.data.check_table`` like any site file, so
consent, missing-value rules, partitions, training, evaluation and analyses do not know where it
came from. Beside it comes each row's record identity, ``"PERSON_ID:INDEX_DATE"``: stable across
runs (for the site's fixed partition), never sent off the site, and not a column of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from federation.omop.cdm import Cdm, bind
from federation.omop.errors import SourceError
from federation.omop.failures import translate
from federation.omop.query import LABEL, CohortQuery, build, needed_columns
from federation.omop.source import Source, connect, load_source
from federation.omop.survival import TIME, check_dates
from federation.wire.cohort import (
    OTHER,
    AgeCovariate,
    Cohort,
    DemographicCovariate,
    MeasurementCovariate,
)
from federation.wire.spec import StudySpec


@dataclass(frozen=True)
class SiteRows:
    """The cohort's rows as text cells, and their record identities (aligned, same index)."""

    frame: pd.DataFrame
    records: pd.Series


def read_source(path: str | Path, spec: StudySpec) -> SiteRows:
    """Extract the study's cohort from the source described at ``path``; raise ``SourceError``."""
    where = str(path)
    source = load_source(path)  # a missing or unreadable file first: it says what to fix
    cohort = cohort_of(spec, where)
    with connect(source, where) as conn:
        cdm = prepare(conn, source, cohort, where)
        query = build(cdm, cohort)
        check(conn, query, where)
        rows = run(conn, query, where)
    if rows.empty:
        raise SourceError(
            where,
            "empty-cohort",
            "the target cohort is empty at this site (allfed site check shows each step)",
        )
    return SiteRows(to_frame(rows, spec), record_ids(rows))


def cohort_of(spec: StudySpec, where: str) -> Cohort:
    if spec.cohort is None:
        raise SourceError(
            where,
            "source-config",
            "the site's data is an OMOP source but the study spec has no [cohort] section",
        )
    return spec.cohort


def prepare(conn: sa.Connection, source: Source, cohort: Cohort, where: str) -> Cdm:
    """Bind the tables, then refuse another CDM version and unknown concept ids."""
    try:
        cdm = bind(conn, needed_columns(cohort), source.cdm, source.vocabulary, where)
        check_version(conn, cdm, cohort, where)
        unknown = unknown_concepts(conn, cdm, cohort)
    except sa.exc.DBAPIError as exc:
        raise translate(exc, where) from None
    if unknown:
        place, ids = next(iter(unknown.items()))
        raise SourceError(
            where,
            "unknown-concept",
            f"[cohort] {place}: concept id{'s' if len(ids) > 1 else ''} "
            f"{', '.join(map(str, ids))} not in the vocabulary ({source.vocabulary}.concept)",
        )
    return cdm


def cdm_version(conn: sa.Connection, cdm: Cdm) -> str | None:
    """``cdm_source.cdm_version`` as MAJOR.MINOR (``"v5.3.1"`` -> ``"5.3"``), or None."""
    import re

    column = cdm["cdm_source"].column("cdm_version")
    for (text,) in conn.execute(sa.select(column).where(column.is_not(None))).all():
        match = re.search(r"(\d+)\.(\d+)", str(text))
        if match:
            return f"{match[1]}.{match[2]}"
    return None


def check_version(conn: sa.Connection, cdm: Cdm, cohort: Cohort, where: str) -> str:
    found = cdm_version(conn, cdm)
    accepted = " or ".join(cohort.cdm_versions)
    if found is None:
        raise SourceError(
            where, "cdm-version", f"cdm_source records no CDM version; the study needs {accepted}"
        )
    if found not in cohort.cdm_versions:
        raise SourceError(
            where, "cdm-version", f"the database is CDM {found}; the study needs {accepted}"
        )
    return found


def unknown_concepts(conn: sa.Connection, cdm: Cdm, cohort: Cohort) -> dict[str, list[int]]:
    """Concept ids of each concept set that the vocabulary lacks, by where the spec names them."""
    sets = cohort.concept_sets()
    wanted = sorted({c for s in sets.values() for c in s.concepts})
    cid = cdm["concept"].column("concept_id")
    found = {int(v) for (v,) in conn.execute(sa.select(cid).where(cid.in_(wanted))).all()}
    missing = {place: [c for c in s.concepts if c not in found] for place, s in sets.items()}
    return {place: ids for place, ids in missing.items() if ids}


def check(conn: sa.Connection, query: CohortQuery, where: str) -> None:
    """Refuse the dates a survival cohort cannot have (``federation.omop.survival``)."""
    if query.checks is None:
        return
    try:
        check_dates(conn, query.checks, where)
    except sa.exc.DBAPIError as exc:
        raise translate(exc, where) from None


def run(conn: sa.Connection, query: CohortQuery, where: str) -> pd.DataFrame:
    """The cohort's rows, one column per covariate under its name."""
    try:
        result = conn.execute(query.rows)
        names = {label: name for name, label in query.labels.items()}
        keys = [names.get(k, k) for k in list(result.keys())]
        columns = list(zip(*result.tuples().fetchall(), strict=True)) or [()] * len(keys)
        return pd.DataFrame(dict(zip(keys, columns, strict=True)))
    except sa.exc.DBAPIError as exc:
        raise translate(exc, where) from None


def record_ids(rows: pd.DataFrame) -> pd.Series:
    ids = rows["person_id"].astype("int64").astype(str) + ":" + rows["index_date"].astype(str)
    return ids.rename("record")


def to_frame(rows: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """Text cells as a site file would hold them; the same on every engine."""
    cohort = spec.cohort
    assert cohort is not None
    frame = pd.DataFrame(index=rows.index)
    frame[spec.study.outcome] = _integers(rows[LABEL])
    if spec.study.task == "survival":
        frame[spec.study.time] = _integers(rows[TIME])
    for name, covariate in cohort.covariates.items():
        values = rows[name]
        if isinstance(covariate, MeasurementCovariate):
            frame[name] = _floats(values)
        elif isinstance(covariate, DemographicCovariate):
            levels = spec.features.categorical.get(name) or spec.study.group_levels.get(name)
            frame[name] = _levels(_integers(values), levels)
        else:
            assert isinstance(covariate, AgeCovariate) or covariate.kind
            frame[name] = _integers(values)
    return frame


def _integers(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    text = pd.Series(np.nan, index=values.index, dtype=object)
    present = numbers.notna()
    text[present] = numbers[present].astype("int64").astype(str)
    return text


def _floats(values: pd.Series) -> pd.Series:
    """The shortest text that reads back to the same double (numpy's, as ``repr``)."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    text = pd.Series(np.nan, index=values.index, dtype=object)
    present = np.isfinite(numbers)
    text[present] = numbers[present].to_numpy().astype(str)
    return text


def _levels(codes: pd.Series, levels: tuple[str, ...] | None) -> pd.Series:
    """A concept id not among the declared levels is ``other`` when that level is declared, and
    missing otherwise (then the spec's missing-value rule applies)."""
    if not levels:
        return codes
    fallback = OTHER if OTHER in levels else np.nan
    undeclared = codes.notna() & ~codes.isin(levels)
    return codes.where(~undeclared, fallback)
