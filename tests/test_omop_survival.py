"""Survival studies from OMOP CDM sites: time to death or to a concept set's first event,
censored at the end of observation or of the follow-up window, held to an independent pandas
computation from the CDM tables (Eunomia GiBleed in DuckDB; the PostgreSQL path is in
tests/test_omop.py, beside its server)."""

from __future__ import annotations

import re
import shutil

import duckdb
import pytest
import wire
from cli_helpers import invoke
from omop_helpers import (
    cdm_tables,
    duckdb_source,
    plant_deaths,
    study_text,
    survival_oracle,
    survival_text,
    target_entries,
    write,
)

from federation.client.data import PERSON_COLUMN, load_site_table
from federation.client.partition import Partition
from federation.errors import SpecError
from federation.omop.errors import SourceError
from federation.omop.eunomia import eunomia_file, write_sites
from federation.omop.extract import read_source
from federation.omop.report import site_report
from federation.wire.spec import parse_spec

EUNOMIA = eunomia_file()
PERSONS = Partition(
    {"method": "hash", "test_fraction": 0.3, "identity": [PERSON_COLUMN]}, b"k" * 32
)


@pytest.fixture(scope="module")
def dead_site(tmp_path_factory):
    """Eunomia as one clean site's CDM, with planted deaths (``omop_helpers.plant_deaths``)."""
    sites, _ = write_sites(tmp_path_factory.mktemp("dead"), n_sites=1)
    database = sites["site-a"].with_suffix(".duckdb")
    plant_deaths(database)
    return database


@pytest.mark.parametrize(
    ("outcome", "window"),
    [
        ("death", None),  # to the end of observation
        ("death", (1, 730)),  # censored at day 730 at the latest
        ("death", (400, 36500)),  # a window that opens late: entries dead or gone before it out
        ("death", (0, 36500)),
        ("gi_bleed", (1, 1825)),
        ("gi_bleed", None),
    ],
)
def test_time_and_event_match_an_independent_computation(tmp_path, dead_site, outcome, window):
    database = dead_site if outcome == "death" else EUNOMIA  # Eunomia's own death table is empty
    spec = parse_spec(survival_text(outcome, window))
    rows = read_source(duckdb_source(tmp_path / "site.toml", database), spec)
    expected = survival_oracle(database, outcome, window)
    assert len(rows.frame) == len(expected) > 2500
    identity = expected.person_id.astype(str) + ":" + expected.index_date.dt.strftime("%Y-%m-%d")
    assert rows.records.tolist() == identity.tolist()
    event = spec.study.event
    assert rows.frame["days"].astype(int).tolist() == expected.time.tolist()
    assert rows.frame[event].astype(int).tolist() == expected.event.tolist()
    assert 30 < expected.event.sum() < len(expected)  # events and censored entries both
    if window is not None:
        assert expected.time.max() <= window[1]
        assert expected.time.min() >= max(window[0], 1)
    assert "gi_bleed" not in rows.frame.columns or event == "gi_bleed"


def test_a_survival_site_table_has_the_specs_time_and_event(tmp_path, dead_site):
    spec = parse_spec(survival_text("death", (1, 730)))
    table = load_site_table(duckdb_source(tmp_path / "s.toml", dead_site), spec, PERSONS)
    expected = survival_oracle(dead_site, "death", (1, 730))
    assert table.n_train + table.n_test == len(expected)
    assert sorted(table.time.astype(int)) == sorted(expected.time)
    assert int(table.label.sum()) == int(expected.event.sum())


def test_site_check_counts_the_entries_without_follow_up(tmp_path, dead_site, capsys):
    window = (400, 36500)
    text = survival_text("death", window)
    source = duckdb_source(tmp_path / "s.toml", dead_site)
    report = site_report(source, parse_spec(text))
    steps = dict(report.steps)
    expected = survival_oracle(dead_site, "death", window)
    target = target_entries(
        cdm_tables(dead_site, ("person", "observation_period", "drug_exposure", "concept_ancestor"))
    )
    assert steps["new"] == len(target) and steps["followed"] == len(expected)
    assert steps["new"] - steps["followed"] > 80  # gone or dead before day 400

    spec = write(tmp_path / "study.toml", text)
    assert invoke("site", "check", "--study", str(spec), str(source)) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(rf"with follow-up after index \(the cohort\)\W+{len(expected)}", out)
    events = int(expected.event.sum())
    assert f"event 'died' in {events}" in out
    assert f"{len(expected) - events} censored; time 'days'" in out
    assert "ok," in out and "training" in out


def _first_entry(database, outcome="death", event=None):
    """(person, index date) of the first cohort entry, with the given event value if asked."""
    expected = survival_oracle(database, outcome)
    if event is not None:
        expected = expected[expected.event == event]
    first = expected.iloc[0]
    return int(first.person_id), first.index_date.strftime("%Y-%m-%d")


def test_an_entry_censored_on_its_index_day_is_left_out(tmp_path, dead_site):
    database = tmp_path / "edited.duckdb"
    shutil.copy(dead_site, database)
    person, index = _first_entry(dead_site, event=0)
    with duckdb.connect(str(database)) as con:
        con.execute(
            "UPDATE observation_period SET observation_period_end_date = CAST(? AS DATE) "
            "WHERE person_id = ?",
            [index, person],
        )
    spec = parse_spec(survival_text("death", (0, 36500)))
    rows = read_source(duckdb_source(tmp_path / "s.toml", database), spec)
    assert f"{person}:{index}" not in set(rows.records)
    assert len(rows.frame) == len(survival_oracle(dead_site, "death", (0, 36500))) - 1


# Each plants one impossible date for the first entry (person P, index I); the site refuses.
BAD_DATES = [
    (
        "death",
        "INSERT INTO death VALUES ({p}, CAST('{i}' AS DATE) - 10, 32817)",
        "death.death_date precedes the index date",
    ),
    (
        "death",
        "UPDATE observation_period SET observation_period_end_date = "
        "observation_period_start_date - 1 WHERE person_id = {p}",
        "periods of the cohort's persons that end before they start",
    ),
    (
        "gi_bleed",
        "UPDATE observation_period SET observation_period_end_date = DATE '2999-12-31' "
        "WHERE person_id = {p}",
        "end after today",
    ),
    (
        "gi_bleed",
        "INSERT INTO condition_occurrence (condition_occurrence_id, person_id, "
        "condition_concept_id, condition_start_date) VALUES (999999999, {p}, 192671, "
        "DATE '2999-01-01')",
        "dated after today or after the source's latest observation_period_end_date",
    ),
    (  # before today, but after the last day the source observed anyone
        "death",
        "DELETE FROM death WHERE person_id = {p}; INSERT INTO death VALUES ({p}, "
        "(SELECT max(observation_period_end_date) FROM observation_period) + 30, 32817)",
        "after today or after the source's latest observation_period_end_date",
    ),
]


@pytest.mark.parametrize(("outcome", "statement", "message"), BAD_DATES)
def test_dates_no_cohort_can_have_get_one_line(
    tmp_path, dead_site, capsys, outcome, statement, message
):
    database = tmp_path / "bad.duckdb"
    shutil.copy(dead_site, database)
    person, index = _first_entry(dead_site, outcome)
    planted = statement.format(p=person, i=index)
    with duckdb.connect(str(database)) as con:
        con.execute(planted)
    source = duckdb_source(tmp_path / "bad.toml", database)
    text = survival_text(outcome)
    with pytest.raises(SourceError) as caught:
        load_site_table(source, parse_spec(text), PERSONS)
    assert caught.value.reason == "bad-dates"
    spec = write(tmp_path / "study.toml", text)
    assert invoke("site", "check", "--study", str(spec), str(source)) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    said = err.split("bad.toml:", 1)[1]
    assert not re.search(r"\d", said)  # no participant, no planted date, no count

    # What the aggregator is told: the fixed reason, nothing of the message.
    context = wire.node_context(source, parse_spec(text), "bad")
    reply = wire.setup(context)
    assert wire.state_of(reply) == "failed"
    reason = wire.reason_of(reply)
    assert reason.startswith("bad-dates:")
    assert "death" not in reason and "observation" not in reason and not wire.has_digits(reason)


def test_a_source_without_a_death_table_names_it(tmp_path, capsys):
    """Eunomia's death table is its CSV header loaded as a row: the binding says so."""
    text = survival_text("death")
    spec, source = write(tmp_path / "s.toml", text), duckdb_source(tmp_path / "e.toml", EUNOMIA)
    with pytest.raises(SourceError) as caught:
        load_site_table(source, parse_spec(text), PERSONS)
    assert caught.value.reason == "missing-column"
    assert invoke("site", "check", "--study", str(spec), str(source)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "table main.death has no column 'death_date'" in err
    assert "header row may have been loaded as data" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            study_text().replace("[cohort.outcome]", "[cohort.survival]"),
            "[cohort] survival: a binary study's outcome is [cohort.outcome]",
        ),
        (
            survival_text("gi_bleed").replace("[cohort.survival]", "[cohort.outcome]"),
            "[cohort] outcome: a survival study's outcome is a time to event",
        ),
        (
            survival_text().replace('domain = "death"', 'domain = "death"\nconcepts = [4306655]'),
            'survival: concepts: death (domain = "death") has no concept set',
        ),
        (
            survival_text().replace('domain = "death"', 'domain = "procedure"'),
            "survival: concepts: required for domain = 'procedure'",
        ),
        (
            survival_text().replace(
                'domain = "death"', 'domain = "death"\nprior-outcome-lookback = 365'
            ),
            "prior-outcome-lookback: a death cannot precede the index",
        ),
        (
            survival_text("death", (-1, 365)),
            "[cohort] survival: window must start on or after the index day (0)",
        ),
        (survival_text("death", (30, 1)), "[cohort] survival: window must be [START, END]"),
        (survival_text().replace('domain = "death"', 'domain = "dead"'), "survival.domain"),
        (
            survival_text().replace('[cohort.survival]\ndomain = "death"\n', ""),
            "[cohort] needs an outcome: [cohort.outcome] for a binary study",
        ),
        (
            survival_text() + '[cohort.outcome]\ndomain = "condition"\nconcepts = [192671]\n',
            "declares both [cohort.outcome] and [cohort.survival]",
        ),
        (
            survival_text().replace('time = "days"', 'time = "age"'),
            "the time column 'age' cannot also be a feature",
        ),
    ],
)
def test_a_survival_outcome_for_the_wrong_task_or_malformed_names_the_key(text, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(text, source="study.toml")
    assert message in str(caught.value)


def test_the_survival_cohort_round_trips_through_the_run_config():
    for text in (survival_text("death"), survival_text("gi_bleed", (1, 1825))):
        spec = parse_spec(text)
        again = parse_spec(spec.to_toml())
        assert again == spec and again.cohort.survival == spec.cohort.survival
        assert again.cohort.outcome is None


def test_the_follow_up_window_is_a_bound_parameter(dead_site):
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    from federation.omop.cdm import bind
    from federation.omop.query import build, needed_columns

    spec = parse_spec(survival_text("death", (17, 4321)))
    engine = sa.create_engine(f"duckdb:///{dead_site}", connect_args={"read_only": True})
    with engine.connect() as conn:
        cdm = bind(conn, needed_columns(spec.cohort), "main", "main", "site")
    engine.dispose()
    query = build(cdm, spec.cohort)
    for statement in (query.rows, query.checks):
        compiled = statement.compile(dialect=postgresql.dialect())
        assert "4321" not in str(compiled)
    values = query.rows.compile().params.values()
    assert {17, 4321} <= {v for v in values if isinstance(v, int)}


@pytest.mark.slow
def test_a_survival_run_from_omop_sources_completes(tmp_path):
    """Two DuckDB sites, time to death within ten years, two DP rounds: the node's survival
    path takes the cohort's time and event as it takes a file's."""
    from federation.simulation import simulate

    sites, _ = write_sites(tmp_path / "data", n_sites=2)
    for source in sites.values():
        plant_deaths(source.with_suffix(".duckdb"))
    spec = parse_spec(survival_text("death", (1, 3650))).with_overrides(training={"rounds": 2})
    summary = simulate(spec, sites, tmp_path / "run")
    assert summary["status"] == "completed", summary["error"]
    assert (summary["time"], summary["event"]) == ("days", "died")
    entries = sum(
        len(survival_oracle(s.with_suffix(".duckdb"), "death", (1, 3650))) for s in sites.values()
    )
    assert [s["status"] for s in summary["sites"].values()] == ["ok", "ok"]
    # n_train is exact, n_test a DP release (its noise is a few records)
    counted = sum(s["n_train"] + s["n_test"] for s in summary["sites"].values())
    assert abs(counted - entries) < 0.05 * entries
    assert 0.6 * entries < sum(s["n_train"] for s in summary["sites"].values()) < 0.8 * entries
    assert "cindex_ci" in summary["metrics"]["pooled"]
