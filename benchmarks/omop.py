"""Cohort extraction from an OMOP CDM: time per 10,000 persons on DuckDB and on PostgreSQL,
beside reading the same site table from Parquet, on Eunomia scaled up with new person ids.

Eunomia GiBleed (2,694 persons) is replicated K times with new person and record ids (K = 93
gives 250,542 persons, 6.1 million conditions, 6.3 million drug exposures, 4.1 million
measurements). Every scale extracts the demo's GI-bleed study (4 demographic, 14 concept-set
covariates) and a small one (demographics and one concept set), so the per-covariate cost shows.
Each time is the median of ``--repeats`` runs of what the node does before ``check_table``:
``read_source`` (connect, bind, check the CDM version and the concepts, run the query, build the
frame of text cells) for a source, ``read_table`` for the same frame written as a Parquet site
file; ``check_table``, which both then go through, is timed once beside them. Correctness:
every engine's frame must equal the DuckDB one, and the cohort must be exactly K times
Eunomia's (each replica is the same people under new ids).

PostgreSQL is Debian's server started for the run (``tests/pgserver.py``), loaded by COPY, timed
without and then with the indexes of OHDSI's CDM DDL on the tables the cohort reads.

    python benchmarks/omop.py --json omop.json [--scales 10,40,93] [--repeats 3] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' PG server
from pgserver import load_cdm, pg_bin, postgres_server

from federation.client.data import check_table, read_table
from federation.client.partition import fresh_partition
from federation.omop.eunomia import CLINICAL, SHARED, STUDY, write_sites
from federation.omop.extract import read_source
from federation.wire.spec import parse_spec

EUNOMIA_PERSONS = 2694
OFFSET = 10_000  # Eunomia's person ids are below it: replica k's ids are k * OFFSET + id
TABLES = [
    "person",
    "observation_period",
    "condition_occurrence",
    "drug_exposure",
    "concept",
    "concept_ancestor",
    "cdm_source",
]
# OHDSI CDM DDL indexes on what the cohort reads (person_id clustered in their DDL).
INDEXES = [
    ("person", "person_id"),
    ("observation_period", "person_id"),
    ("condition_occurrence", "person_id"),
    ("condition_occurrence", "condition_concept_id"),
    ("drug_exposure", "person_id"),
    ("drug_exposure", "drug_concept_id"),
    ("concept", "concept_id"),
    ("concept_ancestor", "ancestor_concept_id"),
    ("concept_ancestor", "descendant_concept_id"),
]
SMALL = """\
[study]
name = "eunomia-small"
label = "gi_bleed"
[features]
numeric = ["age", "aspirin"]
categorical = { gender = ["8507", "8532"], race = ["8527", "8516", "8515", "other"], \
ethnicity = ["38003563", "other"] }
[cohort.target]
domain = "drug"
concepts = [1118084, 1124300]
age = [18, 120]
[cohort.outcome]
domain = "condition"
concepts = [192671]
prior-outcome-lookback = 99999
[cohort.covariates.age]
kind = "age"
[cohort.covariates.gender]
kind = "gender"
[cohort.covariates.race]
kind = "race"
[cohort.covariates.ethnicity]
kind = "ethnicity"
[cohort.covariates.aspirin]
kind = "drug"
concepts = [1112807]
"""


def scaled_cdm(clean: Path, replicas: int, out: Path) -> dict[str, int]:
    """Eunomia's clinical tables ``replicas`` times with new person and row ids; the
    vocabulary once. Returns the row counts."""
    out.unlink(missing_ok=True)
    counts = {}
    with duckdb.connect(str(out)) as con:
        con.execute("ATTACH ? AS src (READ_ONLY)", [str(clean)])
        for table in (*CLINICAL, *SHARED):
            if table not in CLINICAL:
                con.execute(f"CREATE TABLE {table} AS SELECT * FROM src.{table}")
            else:
                own = f"{table.removesuffix('_occurrence').removesuffix('_exposure')}_id"
                own = {
                    "condition_id": "condition_occurrence_id",
                    "drug_id": "drug_exposure_id",
                    "procedure_id": "procedure_occurrence_id",
                    "visit_id": "visit_occurrence_id",
                }.get(own, own)
                columns = {
                    c
                    for (c,) in con.execute(
                        "SELECT column_name FROM information_schema.columns WHERE table_catalog = "
                        "'src' AND table_name = ?",
                        [table],
                    ).fetchall()
                }
                replace = [f"person_id + k * {OFFSET} AS person_id"]
                if own in columns and own != "person_id":
                    replace.append(f"{own} + k * 1000000000 AS {own}")
                con.execute(
                    f"CREATE TABLE {table} AS SELECT * EXCLUDE (k) REPLACE ({', '.join(replace)}) "
                    f"FROM src.{table}, range({replicas}) AS r(k) ORDER BY person_id"
                )
            counts[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        con.execute("DETACH src")
    return counts


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="10,40,93", help="replicas of Eunomia, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server in the finally
    scales = [int(s) for s in args.scales.split(",")]
    specs = {
        "gi-bleed (18 covariates)": parse_spec(STUDY),
        "small (5 covariates)": parse_spec(SMALL),
    }
    work = Path(tempfile.mkdtemp(prefix="allfed-omop-bench-"))
    sites, _ = write_sites(work / "clean", n_sites=1)
    clean = sites["site-a"].with_suffix(".duckdb")
    base = {name: len(read_source(sites["site-a"], spec).frame) for name, spec in specs.items()}
    results = []
    server = postgres_server() if not args.no_postgres and pg_bin() else None
    pg = server.__enter__() if server else None
    try:
        for replicas in scales:
            database = work / f"scaled-{replicas}.duckdb"
            build_start = time.perf_counter()
            counts = scaled_cdm(clean, replicas, database)
            build = time.perf_counter() - build_start
            persons = counts["person"]
            duck_source = work / f"duck-{replicas}.toml"
            duck_source.write_text(f'[omop]\nengine = "duckdb"\npath = "{database}"\n')
            row = {
                "replicas": replicas,
                "persons": persons,
                "rows": counts,
                "duckdb_build_s": round(build, 2),
                "studies": {},
            }
            engines = {"duckdb": duck_source}
            if pg is not None:
                import psycopg

                schema = f"scaled{replicas}"
                load_start = time.perf_counter()
                load_cdm(database, pg.url(), schema, TABLES)
                row["postgresql_load_s"] = round(time.perf_counter() - load_start, 2)
                pg_source = work / f"pg-{replicas}.toml"
                pg_source.write_text(
                    f'[omop]\nengine = "postgresql"\nhost = "{pg.host}"\nport = {pg.port}\n'
                    f'dbname = "postgres"\nuser = "{pg.superuser}"\n'
                    f'password-env = "ALLFED_BENCH_PG"\ncdm-schema = "{schema}"\n'
                )
                import os

                os.environ["ALLFED_BENCH_PG"] = pg.password
                engines["postgresql"] = pg_source
            for study, spec in specs.items():
                entries = base[study] * replicas
                timing = {}
                reference = read_source(duck_source, spec)
                assert len(reference.frame) == entries, (study, len(reference.frame), entries)
                parquet = work / f"site-{replicas}.parquet"
                reference.frame.to_parquet(parquet, index=False)
                for engine, source in list(engines.items()) + (
                    [("postgresql+indexes", engines["postgresql"])] if pg is not None else []
                ):
                    if engine == "postgresql+indexes" and not row.get("indexed"):
                        index_start = time.perf_counter()
                        with psycopg.connect(pg.url(), autocommit=True) as conn:
                            for table, column in INDEXES:
                                conn.execute(f"CREATE INDEX ON {schema}.{table} ({column})")
                            for table in TABLES:
                                conn.execute(f"ANALYZE {schema}.{table}")
                        row["postgresql_index_s"] = round(time.perf_counter() - index_start, 2)
                        row["indexed"] = True
                    rows = read_source(source, spec)
                    assert rows.frame.equals(reference.frame), (engine, study)
                    assert rows.records.equals(reference.records), (engine, study)
                    timing[engine] = median_seconds(
                        lambda s=source, p=spec: read_source(s, p), args.repeats
                    )
                timing["parquet"] = median_seconds(
                    lambda f=parquet, p=spec: read_table(f, p.features.na_values), args.repeats
                )
                pd.testing.assert_frame_equal(
                    read_table(parquet), reference.frame, check_dtype=False
                )  # the same cells (a file's columns are pandas' text dtype)
                checks = median_seconds(
                    lambda f=reference.frame, p=spec: check_table(
                        f, p, "bench", fresh_partition(p, list(f.columns))
                    ),
                    args.repeats,
                )
                row["studies"][study] = {
                    "entries": entries,
                    "extraction_s": {k: round(v, 3) for k, v in timing.items()},
                    "extraction_s_per_10k_persons": {
                        k: round(v / persons * 10_000, 4) for k, v in timing.items()
                    },
                    "check_table_s": round(checks, 3),
                }
                print(
                    f"{persons:>9,} persons  {study:<26} {entries:>8,} entries  "
                    + "  ".join(f"{k} {v:.2f} s" for k, v in timing.items())
                    + f"  (then check_table {checks:.2f} s)",
                    flush=True,
                )
            results.append(row)
    finally:
        if server is not None:
            server.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "omop extraction",
        "eunomia_persons": EUNOMIA_PERSONS,
        "repeats": args.repeats,
        "scales": results,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
