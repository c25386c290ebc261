"""One SQLAlchemy Core statement per cohort, the same on DuckDB and PostgreSQL.

Every concept id, window and age bound is a bound parameter; table and column names come from
``federation.omop.cdm``. The statement is a chain of CTEs, one per step of the cohort, so the
site check can count each step (the attrition) with the very query the node runs:

    events -> observed (in an observation period, enough prior observation)
           -> aged (age at index) -> new (no prior outcome) -> entries (time at risk)

(a survival study's last step is ``followed``, the entries with follow-up: ``survival``), and
then one pass per domain table over its rows whose concept is in a covariate's concept set,
as FeatureExtraction does: the cost grows with those rows, not with covariates times table size.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from federation.omop.cdm import COLUMNS, DOMAINS, Cdm, integer
from federation.omop.survival import TIME, follow_up
from federation.wire.cohort import (
    AgeCovariate,
    Cohort,
    ConceptSet,
    DemographicCovariate,
    MeasurementCovariate,
    Outcome,
    PresenceCovariate,
    SurvivalOutcome,
)

LABEL = "label"  # the outcome's (a survival study's event) column in the result; renamed later


def needed_columns(cohort: Cohort) -> dict[str, set[str]]:
    """Which CDM tables and columns this cohort reads (the site check reports the rest)."""
    needed: dict[str, set[str]] = {
        "person": {"person_id", "year_of_birth"},
        "observation_period": set(COLUMNS["observation_period"]),
        "concept": set(COLUMNS["concept"]),
        "cdm_source": {"cdm_version"},
    }
    sets = cohort.concept_sets().values()
    if any(s.descendants for s in sets):
        needed["concept_ancestor"] = set(COLUMNS["concept_ancestor"])
    outcome = _outcome(cohort)
    domains = {cohort.target.domain}
    if outcome.domain in DOMAINS:
        domains.add(outcome.domain)
    else:
        needed["death"] = set(COLUMNS["death"])
    for covariate in cohort.covariates.values():
        if isinstance(covariate, DemographicCovariate):
            needed["person"].add(f"{covariate.kind}_concept_id")
        elif isinstance(covariate, PresenceCovariate | MeasurementCovariate):
            domains.add(covariate.kind)
    for domain in domains:
        d = DOMAINS[domain]
        needed.setdefault(d.table, set()).update({"person_id", d.concept, d.date})
    if any(isinstance(c, MeasurementCovariate) for c in cohort.covariates.values()):
        needed["measurement"].update({"value_as_number", "unit_concept_id"})
    return needed


def codeset(cdm: Cdm, concepts: ConceptSet) -> sa.Select:
    """Circe's concept set: the listed concepts and, with descendants, every valid concept
    below them."""
    concept = cdm["concept"]
    cid = concept.column("concept_id")
    listed = sa.select(cid.label("concept_id")).where(cid.in_(list(concepts.concepts)))
    if not concepts.descendants:
        return listed
    ancestor = cdm["concept_ancestor"]
    below = (
        sa.select(ancestor.column("descendant_concept_id").label("concept_id"))
        .join(concept.table, cid == ancestor.column("descendant_concept_id"))
        .where(ancestor.column("ancestor_concept_id").in_(list(concepts.concepts)))
        .where(concept.column("invalid_reason").is_(None))
    )
    return sa.union(listed, below)


def _events(cdm: Cdm, domain: str, concepts: ConceptSet):
    """(table, person_id, date) of the domain's events whose concept is in the set."""
    d = DOMAINS[domain]
    table = cdm[d.table]
    in_set = table.column(d.concept).in_(codeset(cdm, concepts))
    return table, table.column("person_id"), table.column(d.date), in_set


@dataclass(frozen=True)
class CohortQuery:
    """The cohort's steps (for the attrition) and the final select of its rows."""

    steps: tuple[tuple[str, sa.CTE], ...]
    rows: sa.Select
    labels: dict[str, str]  # covariate name -> its column in ``rows`` (names are not SQL)
    checks: sa.Select | None = None  # a survival cohort's date checks (``survival.check_dates``)


def _outcome(cohort: Cohort) -> Outcome | SurvivalOutcome:
    outcome = cohort.outcome or cohort.survival
    assert outcome is not None  # the cohort's validator wants one
    return outcome


def build(cdm: Cdm, cohort: Cohort) -> CohortQuery:
    target, outcome = cohort.target, _outcome(cohort)
    _, person_id, date, in_set = _events(cdm, target.domain, target)
    if target.events == "first":
        events = sa.select(person_id.label("person_id"), sa.func.min(date).label("index_date"))
        events = events.where(in_set).group_by(person_id)
    else:
        events = sa.select(person_id.label("person_id"), date.label("index_date"))
        events = events.where(in_set).distinct()
    events = events.cte("events")

    op = cdm["observation_period"]
    person = cdm["person"]
    start = op.column("observation_period_start_date")
    end = op.column("observation_period_end_date")
    age = sa.cast(sa.extract("year", events.c.index_date), sa.Integer) - sa.cast(
        person.column("year_of_birth"), sa.Integer
    )
    demographics = [
        person.column(f"{c.kind}_concept_id").label(c.kind)
        for c in cohort.covariates.values()
        if isinstance(c, DemographicCovariate)
    ]
    observed = (
        sa.select(
            events.c.person_id,
            events.c.index_date,
            end.label("observation_end"),
            age.label("age"),
            *dict((col.name, col) for col in demographics).values(),
        )
        .join(
            op.table,
            sa.and_(
                op.column("person_id") == events.c.person_id,
                events.c.index_date >= start,
                events.c.index_date <= end,
            ),
        )
        .join(person.table, person.column("person_id") == events.c.person_id)
        .where(events.c.index_date >= start + integer(target.prior_observation))
        .cte("observed")
    )
    aged = sa.select(observed)
    if target.age is not None:
        aged = aged.where(observed.c.age.between(integer(target.age[0]), integer(target.age[1])))
    aged = aged.cte("aged")

    fresh = sa.select(aged)
    if outcome.prior_outcome_lookback is not None:
        assert isinstance(outcome, ConceptSet) and outcome.concepts
        prior = _flag(
            cdm, aged, outcome.domain, outcome, (-outcome.prior_outcome_lookback, -1)
        ).cte("prior_outcome")
        fresh = fresh.where(
            ~sa.exists().where(
                prior.c.person_id == aged.c.person_id, prior.c.index_date == aged.c.index_date
            )
        )
    fresh = fresh.cte("new")

    checks = None
    if isinstance(outcome, SurvivalOutcome):
        in_set = None if outcome.domain not in DOMAINS else _events(cdm, outcome.domain, outcome)[3]
        survival = follow_up(cdm, outcome, events, fresh, LABEL, in_set)
        entries, checks, last_step = survival.entries, survival.checks, "followed"
    else:
        entries, last_step = _at_risk(cdm, fresh, outcome), "entries"
    columns: list[sa.ColumnElement] = [
        entries.c.person_id,
        entries.c.index_date,
        entries.c[LABEL],
        *([entries.c[TIME]] if checks is not None else []),
    ]
    labels = {name: f"covariate_{i}" for i, name in enumerate(cohort.covariates)}
    query_from = entries
    presence: dict[str, sa.CTE] = {}
    for kind in dict.fromkeys(
        c.kind for c in cohort.covariates.values() if isinstance(c, PresenceCovariate)
    ):
        these = {
            labels[n]: c
            for n, c in cohort.covariates.items()
            if isinstance(c, PresenceCovariate) and c.kind == kind
        }
        presence[kind] = _presence(cdm, entries, kind, these).cte(f"{kind}_covariates")
    for name, covariate in cohort.covariates.items():
        label = labels[name]
        if isinstance(covariate, AgeCovariate):
            columns.append(entries.c.age.label(label))
        elif isinstance(covariate, DemographicCovariate):
            columns.append(entries.c[covariate.kind].label(label))
        elif isinstance(covariate, MeasurementCovariate):
            part = _latest(cdm, entries, covariate).cte(f"{label}_latest")
            query_from = query_from.outerjoin(part, _same_entry(part, entries))
            columns.append(part.c.value.label(label))
        else:
            part = presence[covariate.kind]
            columns.append(sa.func.coalesce(part.c[label], 0).label(label))
    for part in presence.values():
        query_from = query_from.outerjoin(part, _same_entry(part, entries))
    rows = (
        sa.select(*columns)
        .select_from(query_from)
        .order_by(entries.c.person_id, entries.c.index_date)
    )
    steps = (
        ("events", events),
        ("observed", observed),
        ("aged", aged),
        ("new", fresh),
        (last_step, entries),
    )
    return CohortQuery(steps, rows, labels, checks)


def _at_risk(cdm: Cdm, fresh: sa.CTE, outcome: Outcome) -> sa.CTE:
    """A binary study's entries: the label is the outcome in the window, and an entry without it
    needs the time at risk."""
    label = _flag(cdm, fresh, outcome.domain, outcome, outcome.window).cte("outcome")
    has_outcome = label.c.person_id.is_not(None)
    at_risk = fresh.c.observation_end >= fresh.c.index_date + integer(
        outcome.window[0] + outcome.required_time_at_risk
    )
    return (
        sa.select(
            fresh,
            sa.case((has_outcome, 1), else_=0).label(LABEL),
        )
        .outerjoin(
            label,
            sa.and_(
                label.c.person_id == fresh.c.person_id, label.c.index_date == fresh.c.index_date
            ),
        )
        .where(sa.or_(has_outcome, at_risk))
        .cte("entries")
    )


def _same_entry(part, entries) -> sa.ColumnElement:
    return sa.and_(
        part.c.person_id == entries.c.person_id, part.c.index_date == entries.c.index_date
    )


def _presence(cdm: Cdm, entries, domain: str, covariates: dict[str, PresenceCovariate]):
    """Every presence covariate of one domain in one pass over its table, as FeatureExtraction
    and Circe do with their codesets table: the concept sets, each tagged with its covariate
    and window, are joined to the domain's rows once, and the hits pivoted to one 0/1 column
    per covariate."""
    d = DOMAINS[domain]
    table = cdm[d.table]
    tagged = sa.union_all(
        *(
            sa.select(
                integer(i).label("covariate"),
                integer(c.window[0]).label("window_start"),
                integer(c.window[1]).label("window_end"),
                codeset(cdm, c).subquery().c.concept_id,
            )
            for i, c in enumerate(covariates.values())
        )
    ).cte(f"{domain}_codesets")
    date = table.column(d.date)
    hits = (
        sa.select(entries.c.person_id, entries.c.index_date, tagged.c.covariate)
        .select_from(table.table)
        .join(tagged, tagged.c.concept_id == table.column(d.concept))
        .join(entries, entries.c.person_id == table.column("person_id"))
        .where(date >= entries.c.index_date + tagged.c.window_start)
        .where(date <= entries.c.index_date + tagged.c.window_end)
        .distinct()
        .subquery()
    )
    return sa.select(
        hits.c.person_id,
        hits.c.index_date,
        *(
            sa.func.max(sa.case((hits.c.covariate == integer(i), 1), else_=0)).label(label)
            for i, label in enumerate(covariates)
        ),
    ).group_by(hits.c.person_id, hits.c.index_date)


def _flag(cdm: Cdm, entries, domain: str, concepts: ConceptSet, window) -> sa.Select:
    """The entries with an event of the set within ``window`` days of index (one row each)."""
    table, person_id, date, in_set = _events(cdm, domain, concepts)
    return (
        sa.select(entries.c.person_id, entries.c.index_date)
        .join(
            table.table,
            sa.and_(
                person_id == entries.c.person_id,
                date >= entries.c.index_date + integer(window[0]),
                date <= entries.c.index_date + integer(window[1]),
            ),
        )
        .where(in_set)
        .group_by(entries.c.person_id, entries.c.index_date)
    )


def _latest(cdm: Cdm, entries, covariate: MeasurementCovariate) -> sa.Select:
    """Each entry's latest value of the measurement in the window, in a declared unit (ties on
    one day: the largest value, so that every engine picks the same)."""
    table, person_id, date, in_set = _events(cdm, "measurement", covariate)
    value = table.column("value_as_number")
    ranked = (
        sa.select(
            entries.c.person_id,
            entries.c.index_date,
            value.label("value"),
            sa.func.row_number()
            .over(
                partition_by=(entries.c.person_id, entries.c.index_date),
                order_by=(date.desc(), value.desc()),
            )
            .label("ordinal"),
        )
        .join(
            table.table,
            sa.and_(
                person_id == entries.c.person_id,
                date >= entries.c.index_date + integer(covariate.window[0]),
                date <= entries.c.index_date + integer(covariate.window[1]),
            ),
        )
        .where(in_set)
        .where(table.column("unit_concept_id").in_(list(covariate.units)))
        .where(value.is_not(None))
        .subquery()
    )
    return sa.select(ranked.c.person_id, ranked.c.index_date, ranked.c.value).where(
        ranked.c.ordinal == 1
    )
