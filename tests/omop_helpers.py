"""Shared pieces of the OMOP tests: a study spec with every covariate kind, and an independent
pandas computation of its cohort from Eunomia's raw tables (the oracle the SQL is held to)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

STUDY = """\
[study]
name = "omop-test"
label = "gi_bleed"
groups = ["gender"]

[features]
numeric = ["age", "peptic_ulcer", "aspirin", "diclofenac", "temperature"]
categorical = { gender = ["8507", "8532"], race = ["8527", "8516", "other"], \
ethnicity = ["38003563", "0"] }
missing = { temperature = "impute", ethnicity = "impute" }

[cohort.target]
domain = "drug"
concepts = [1118084, 1124300]
events = "{events}"
prior-observation = 365
age = [18, 120]

[cohort.outcome]
domain = "condition"
concepts = [192671]
window = [1, 365]

[cohort.covariates.age]
kind = "age"
[cohort.covariates.gender]
kind = "gender"
[cohort.covariates.race]
kind = "race"
[cohort.covariates.ethnicity]
kind = "ethnicity"
[cohort.covariates.peptic_ulcer]
kind = "condition"
concepts = [4027663]
window = [-36500, 0]
[cohort.covariates.aspirin]
kind = "drug"
concepts = [1112807]
window = [-365, 0]
[cohort.covariates.diclofenac]
kind = "drug"
concepts = [1124300]
window = [0, 0]
descendants = false
[cohort.covariates.temperature]
kind = "measurement"
concepts = [3006322]
window = [-365, 0]
units = [586323]
"""
# The tables the test cohorts read.
TABLES = [
    "person",
    "observation_period",
    "condition_occurrence",
    "drug_exposure",
    "measurement",
    "concept",
    "concept_ancestor",
    "cdm_source",
]


def study_text(events: str = "first") -> str:
    return STUDY.replace("{events}", events)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def duckdb_source(path: Path, database: Path) -> Path:
    return write(path, f'[omop]\nengine = "duckdb"\npath = "{database}"\n')


def cdm_tables(database: Path, names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """Raw CDM tables with lower-case column names, dates as timestamps."""
    import duckdb

    with duckdb.connect(str(database), read_only=True) as con:
        tables = {}
        for name in names:
            frame = con.execute(f"SELECT * FROM {name}").df()
            frame.columns = [c.lower() for c in frame.columns]
            for column in frame.columns:
                if column.endswith("_date"):
                    frame[column] = pd.to_datetime(frame[column])
            tables[name] = frame
    tables["concept_ancestor"] = tables["concept_ancestor"].astype({"ancestor_concept_id": "int64"})
    return tables


def below_concepts(ancestor: pd.DataFrame, concepts: list[int]) -> set[int]:
    found = ancestor[ancestor.ancestor_concept_id.isin(concepts)].descendant_concept_id
    return set(concepts) | set(found.astype(int))


def target_entries(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The test study's first-event target cohort: person, index date, its observation period's
    start and end, and year of birth."""
    person, op, drugs = tables["person"], tables["observation_period"], tables["drug_exposure"]
    op = op.assign(start=op.observation_period_start_date, end=op.observation_period_end_date)
    target = drugs[
        drugs.drug_concept_id.isin(below_concepts(tables["concept_ancestor"], [1118084, 1124300]))
    ]
    index = target.groupby("person_id").drug_exposure_start_date.min().rename("index_date")
    entries = index.reset_index().merge(op[["person_id", "start", "end"]], on="person_id")
    entries = entries[(entries.index_date >= entries.start) & (entries.index_date <= entries.end)]
    entries = entries[entries.index_date >= entries.start + pd.Timedelta(days=365)]
    entries = entries.merge(person[["person_id", "year_of_birth"]], on="person_id")
    return entries[(entries.index_date.dt.year - entries.year_of_birth).between(18, 120)]


def survival_oracle(
    database: Path, outcome: str, window: tuple[int, int] | None = None
) -> pd.DataFrame:
    """The survival test study's cohort in pandas, without any of the SQL: ``outcome`` is
    ``"death"`` or ``"gi_bleed"`` (the condition concept set 192671 with descendants); time is
    days from index to the first event in the window, else to the earlier of the observation
    period's end and the window's end; entries without follow-up are left out."""
    names = ("person", "observation_period", "drug_exposure", "concept_ancestor")
    tables = cdm_tables(
        database, (*names, "death" if outcome == "death" else "condition_occurrence")
    )
    entries = target_entries(tables).reset_index(drop=True)
    start = 1 if window is None else window[0]
    censor = entries.end
    if window is not None:
        censor = censor.where(
            censor <= entries.index_date + pd.Timedelta(days=window[1]),
            entries.index_date + pd.Timedelta(days=window[1]),
        )
    if outcome == "death":
        events = tables["death"].rename(columns={"death_date": "date"})
    else:
        conditions = tables["condition_occurrence"]
        events = conditions[
            conditions.condition_concept_id.isin(
                below_concepts(tables["concept_ancestor"], [192671])
            )
        ].rename(columns={"condition_start_date": "date"})
    start_day = entries.index_date + pd.Timedelta(days=start)
    pairs = (
        entries[["person_id"]]
        .assign(start_day=start_day, censor=censor)
        .reset_index()
        .merge(events[["person_id", "date"]], on="person_id")
    )
    in_window = pairs[(pairs.date >= pairs.start_day) & (pairs.date <= pairs.censor)]
    event_date = in_window.groupby("index").date.min().reindex(entries.index)
    early = pairs[pairs.date < pairs.start_day]["index"].unique()
    dead_early = entries.index.isin(early) & (outcome == "death")
    has_event = event_date.notna()
    followed = (censor >= entries.index_date + pd.Timedelta(days=max(start, 1))) & ~dead_early
    entries = entries.assign(
        event=has_event.astype(int),
        time=(event_date.where(has_event, censor) - entries.index_date).dt.days,
    )[has_event | followed]
    return entries.sort_values(["person_id", "index_date"]).reset_index(drop=True)


def oracle(database: Path) -> pd.DataFrame:
    """The test study's first-event cohort computed in pandas, without any of the SQL: label
    and the condition and drug flags by person and index date."""
    tables = cdm_tables(
        database,
        (
            "person",
            "observation_period",
            "drug_exposure",
            "condition_occurrence",
            "concept_ancestor",
        ),
    )
    drugs, conditions = tables["drug_exposure"], tables["condition_occurrence"]
    ancestor = tables["concept_ancestor"]

    def below(concepts: list[int]) -> set[int]:
        return below_concepts(ancestor, concepts)

    entries = target_entries(tables)

    def flag(events, date, concepts, lo, hi) -> np.ndarray:
        hits = entries[["person_id", "index_date"]].merge(
            events[events.iloc[:, 2].isin(concepts)][["person_id", date]], on="person_id"
        )
        days = (hits[date] - hits.index_date).dt.days
        hits = hits[(days >= lo) & (days <= hi)].drop_duplicates(["person_id", "index_date"])
        keys = set(zip(hits.person_id, hits.index_date, strict=True))
        pairs = zip(entries.person_id, entries.index_date, strict=True)
        return np.array([(p, d) in keys for p, d in pairs], dtype=int)

    conditions = conditions[["person_id", "condition_start_date", "condition_concept_id"]]
    conditions.insert(2, "concept", conditions.pop("condition_concept_id"))
    drugs = drugs[["person_id", "drug_exposure_start_date", "drug_concept_id"]]
    drugs.insert(2, "concept", drugs.pop("drug_concept_id"))
    outcome_set = below([192671])
    entries = entries.assign(
        label=flag(conditions, "condition_start_date", outcome_set, 1, 365),
        peptic_ulcer=flag(conditions, "condition_start_date", below([4027663]), -36500, 0),
        aspirin=flag(drugs, "drug_exposure_start_date", below([1112807]), -365, 0),
        diclofenac=flag(drugs, "drug_exposure_start_date", {1124300}, 0, 0),
    )
    at_risk = entries.end >= entries.index_date + pd.Timedelta(days=1 + 364)
    entries = entries[(entries.label == 1) | at_risk]
    return entries.sort_values(["person_id", "index_date"]).reset_index(drop=True)


def survival_text(outcome: str = "death", window: tuple[int, int] | None = None) -> str:
    """The test study as a survival study: time ``days``, event ``died`` (death) or
    ``gi_bleed`` (the GI-bleed concept set), in ``window`` or to the end of observation."""
    event = "died" if outcome == "death" else "gi_bleed"
    declared = (
        'domain = "death"' if outcome == "death" else 'domain = "condition"\nconcepts = [192671]'
    )
    if window is not None:
        declared += f"\nwindow = [{window[0]}, {window[1]}]"
    text = study_text().replace(
        'label = "gi_bleed"',
        f'task = "survival"\ntime = "days"\nevent = "{event}"\nhorizons = [365, 730]',
    )
    binary = '[cohort.outcome]\ndomain = "condition"\nconcepts = [192671]\nwindow = [1, 365]'
    return text.replace(binary, f"[cohort.survival]\n{declared}")


def plant_deaths(database: Path) -> None:
    """A death table for a CDM copy (Eunomia's is empty): a quarter of the persons die on the
    last day of their observation, as Synthea's do; a quarter 60 days after it (a death the
    observation did not see, which censoring ignores; none after the source's last day); and a
    quarter 400 days before it, after their last drug exposure (so after any index date)."""
    import duckdb

    end = "observation_period_end_date"
    last_drug = (
        "(SELECT max(drug_exposure_start_date) FROM drug_exposure d "
        "WHERE d.person_id = o.person_id)"
    )
    with duckdb.connect(str(database)) as con:
        con.execute(
            f"CREATE TABLE death AS SELECT person_id, CASE person_id % 4 WHEN 0 THEN {end} "
            f"WHEN 1 THEN {end} + 60 ELSE {end} - 400 END AS death_date, "
            f"32817 AS death_type_concept_id FROM observation_period o WHERE person_id % 4 = 0 "
            f"OR (person_id % 4 = 1 AND {end} < DATE '2019-01-01') "
            f"OR (person_id % 4 = 2 AND {end} - 400 > {last_drug})"
        )
