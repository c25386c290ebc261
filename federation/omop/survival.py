"""A survival study's outcome in the cohort query: each entry's time to the event or to
censoring, in days from index, and the checks of the dates it rests on.

The event is death (the ``death`` table) or the first event of a concept set in the follow-up
window; censoring is at the earlier of the end of the observation period that holds the index
date and the window's end. An event after censoring does not count (the entry is censored), as
CohortMethod truncates the time at risk at the end of observation. Entries without follow-up are
left out: censored on the index day, or before the window opens, or dead before it opens; the
site check counts them (the step ``followed``).

Dates no cohort can have refuse the site rather than being dropped, since dropping them would
bias the times without the operator knowing: a death before the index, an observation period
that ends before it starts, an observation period ending after today, an outcome dated after
today or after the source's latest observation.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import sqlalchemy as sa

from federation.omop.cdm import DOMAINS, Cdm, CdmTable, integer
from federation.omop.errors import SourceError
from federation.wire.cohort import DEATH, SurvivalOutcome

TIME = "time"  # the time column in the result; the extraction renames it
# Each check's column in the checks row, and what the operator is told when it is 1.
CHECKS = {
    "death_before_index": "death.death_date precedes the index date in entries of the cohort "
    "(records dated after a death); fix the death table or those records",
    "period_reversed": "observation_period has periods of the cohort's persons that end before "
    "they start; fix observation_period_end_date",
    "period_after_today": "observation_period has periods holding an index date that end after "
    "today (an open period written as a future date?); end each period at the last date the "
    "source observed",
    "event_in_future": "the survival outcome has events of the cohort's entries dated after "
    "today or after the source's latest observation_period_end_date; fix those dates",
}


@dataclass(frozen=True)
class FollowUp:
    """The cohort's entries with their event and time, and the one-row select of its checks."""

    entries: sa.CTE
    checks: sa.Select


def follow_up(
    cdm: Cdm,
    survival: SurvivalOutcome,
    events: sa.CTE,
    fresh: sa.CTE,
    label: str,
    in_set: sa.ColumnElement | None,
) -> FollowUp:
    """``fresh``'s entries (person, index date, observation end, ...) with ``label`` (1 for an
    event) and ``TIME``; ``in_set`` selects the outcome's rows of its domain table (None for
    death)."""
    index = fresh.c.index_date
    censor = fresh.c.observation_end
    if survival.end is not None:
        censor = sa.func.least(censor, index + integer(survival.end))
    table, date = _outcome_table(cdm, survival)
    death = in_set is None
    in_window = sa.and_(date >= index + integer(survival.start), date <= censor)
    # Death is looked at from the start of time (one before the index is an error); a concept
    # set's events from the index on (earlier ones are the person's history).
    on = table.column("person_id") == fresh.c.person_id
    dates = (
        sa.select(
            fresh.c.person_id,
            fresh.c.index_date,
            sa.func.min(sa.case((in_window, date))).label("event_date"),
            sa.func.min(date).label("earliest"),
            sa.func.max(date).label("latest"),
        )
        .join(table.table, on if death else sa.and_(on, date >= index))
        .where(*([] if death else [in_set]))
        .group_by(fresh.c.person_id, fresh.c.index_date)
        .cte("survival_dates")
    )
    same_entry = sa.and_(dates.c.person_id == fresh.c.person_id, dates.c.index_date == index)
    joined = fresh.outerjoin(dates, same_entry)
    has_event = dates.c.event_date.is_not(None)
    followed = censor >= index + integer(max(survival.start, 1))
    if death:  # dead before the window opens: no follow-up, whatever the observation says
        dead = dates.c.earliest < index + integer(survival.start)
        followed = sa.and_(followed, sa.not_(sa.func.coalesce(dead, False)))
    time = sa.cast(sa.func.coalesce(dates.c.event_date, censor) - index, sa.Integer)
    entries = (
        sa.select(
            fresh,
            sa.case((has_event, 1), else_=0).label(label),
            time.label(TIME),
        )
        .select_from(joined)
        .where(sa.or_(has_event, followed))
        .cte("followed")
    )
    return FollowUp(entries, _checks(cdm, events, fresh, dates, joined, death))


def _outcome_table(cdm: Cdm, survival: SurvivalOutcome) -> tuple[CdmTable, sa.ColumnElement]:
    if survival.domain == DEATH:
        table = cdm["death"]
        return table, table.column("death_date")
    d = DOMAINS[survival.domain]
    table = cdm[d.table]
    return table, table.column(d.date)


def _checks(cdm: Cdm, events, fresh, dates, joined, death: bool) -> sa.Select:
    """One row, one 0/1 column per check of ``CHECKS``."""
    op = cdm["observation_period"]
    start = op.column("observation_period_start_date")
    end = op.column("observation_period_end_date")
    today = sa.literal(datetime.date.today(), sa.Date)
    latest_observed = sa.select(sa.func.max(end)).scalar_subquery()
    reversed_period = sa.exists().where(
        op.column("person_id").in_(sa.select(events.c.person_id)), end < start
    )

    def flag(condition) -> sa.ColumnElement:
        return sa.func.coalesce(sa.func.max(sa.case((condition, 1), else_=0)), 0)

    before_index = dates.c.earliest < fresh.c.index_date if death else sa.false()
    return sa.select(
        flag(before_index).label("death_before_index"),
        sa.case((reversed_period, 1), else_=0).label("period_reversed"),
        flag(fresh.c.observation_end > today).label("period_after_today"),
        flag(sa.or_(dates.c.latest > today, dates.c.latest > latest_observed)).label(
            "event_in_future"
        ),
    ).select_from(joined)


def check_dates(conn: sa.Connection, checks: sa.Select, where: str) -> None:
    """Refuse a source whose survival dates no cohort can have, with the first problem found."""
    row = conn.execute(checks).one()._mapping
    for name, message in CHECKS.items():
        if row[name]:
            raise SourceError(where, "bad-dates", message)
