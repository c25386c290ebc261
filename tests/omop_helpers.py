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


def oracle(database: Path) -> pd.DataFrame:
    """The test study's first-event cohort computed in pandas, without any of the SQL: label
    and the condition and drug flags by person and index date."""
    import duckdb

    with duckdb.connect(str(database), read_only=True) as con:

        def table(name: str) -> pd.DataFrame:
            frame = con.execute(f"SELECT * FROM {name}").df()
            frame.columns = [c.lower() for c in frame.columns]
            return frame

        person, op = table("person"), table("observation_period")
        drugs, conditions = table("drug_exposure"), table("condition_occurrence")
        ancestor = table("concept_ancestor").astype({"ancestor_concept_id": "int64"})
    for frame, column in (
        (drugs, "drug_exposure_start_date"),
        (conditions, "condition_start_date"),
    ):
        frame[column] = pd.to_datetime(frame[column])
    op["start"] = pd.to_datetime(op["observation_period_start_date"])
    op["end"] = pd.to_datetime(op["observation_period_end_date"])

    def below(concepts: list[int]) -> set[int]:
        found = ancestor[ancestor.ancestor_concept_id.isin(concepts)].descendant_concept_id
        return set(concepts) | set(found.astype(int))

    target = drugs[drugs.drug_concept_id.isin(below([1118084, 1124300]))]
    index = target.groupby("person_id").drug_exposure_start_date.min().rename("index_date")
    entries = index.reset_index().merge(op[["person_id", "start", "end"]], on="person_id")
    entries = entries[(entries.index_date >= entries.start) & (entries.index_date <= entries.end)]
    entries = entries[entries.index_date >= entries.start + pd.Timedelta(days=365)]
    entries = entries.merge(person[["person_id", "year_of_birth"]], on="person_id")
    entries = entries[(entries.index_date.dt.year - entries.year_of_birth).between(18, 120)]

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
