"""The part of the OMOP CDM (v5.3 and v5.4 alike) that cohorts read, bound to the tables a
database really has.

A site's CDM is not always built from the official DDL: Eunomia's DuckDB file spells columns in
upper case, stores ``value_as_number`` as text and ``ancestor_concept_id`` as a double. So the
column names are looked up in ``information_schema`` without regard to case, and a column whose
stored type is not the CDM's is cast to it in the query. Nothing here is read from a spec string:
every table and column name is one of the constants below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa

from federation.omop.errors import SourceError

ID, DATE, NUMBER, TEXT = "id", "date", "number", "text"


@dataclass(frozen=True)
class Domain:
    """A clinical event table: whose, which concept, when."""

    table: str
    concept: str
    date: str


DOMAINS = {
    "condition": Domain("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "drug": Domain("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "procedure": Domain("procedure_occurrence", "procedure_concept_id", "procedure_date"),
    "measurement": Domain("measurement", "measurement_concept_id", "measurement_date"),
    "observation": Domain("observation", "observation_concept_id", "observation_date"),
    "visit": Domain("visit_occurrence", "visit_concept_id", "visit_start_date"),
}

# Every column a cohort may read, with the CDM's type; the vocabulary tables live in the
# vocabulary schema, the rest in the CDM schema.
COLUMNS: dict[str, dict[str, str]] = {
    "person": {
        "person_id": ID,
        "year_of_birth": ID,
        "gender_concept_id": ID,
        "race_concept_id": ID,
        "ethnicity_concept_id": ID,
    },
    "observation_period": {
        "person_id": ID,
        "observation_period_start_date": DATE,
        "observation_period_end_date": DATE,
    },
    "death": {"person_id": ID, "death_date": DATE},  # a survival study's event
    "cdm_source": {"cdm_version": TEXT},
    "concept": {"concept_id": ID, "invalid_reason": TEXT},
    "concept_ancestor": {"ancestor_concept_id": ID, "descendant_concept_id": ID},
    **{
        d.table: {"person_id": ID, d.concept: ID, d.date: DATE}
        for d in DOMAINS.values()
        if d.table != "measurement"
    },
    "measurement": {
        "person_id": ID,
        "measurement_concept_id": ID,
        "measurement_date": DATE,
        "value_as_number": NUMBER,
        "unit_concept_id": ID,
    },
}
VOCABULARY_TABLES = ("concept", "concept_ancestor")
_SA_TYPES = {ID: sa.BigInteger, DATE: sa.Date, NUMBER: sa.Double, TEXT: sa.String}
# How information_schema spells a type that needs no cast (DuckDB and PostgreSQL).
_NATIVE = {
    ID: ("bigint", "integer", "int", "int4", "int8", "smallint", "hugeint"),
    DATE: ("date",),
    NUMBER: ("double", "double precision", "float", "real"),
    TEXT: ("varchar", "text", "character varying", "character"),
}


def integer(n: int) -> sa.ColumnElement:
    """An integer as a typed bound parameter: both engines add it to a date as days."""
    return sa.cast(sa.literal(n, sa.Integer), sa.Integer)


@dataclass(frozen=True)
class CdmTable:
    """One bound table: ``column(name)`` gives the CDM column, cast where the stored type is
    not the CDM's."""

    table: sa.Table
    casts: frozenset[str]
    kinds: dict[str, str]

    def column(self, name: str) -> sa.ColumnElement:
        col = self.table.c[name]
        if name in self.casts:
            return sa.cast(col, _SA_TYPES[self.kinds[name]])
        return col


@dataclass(frozen=True)
class Cdm:
    """The tables a cohort reads, as this database has them."""

    tables: dict[str, CdmTable]

    def __getitem__(self, name: str) -> CdmTable:
        return self.tables[name]


def bind(
    conn: sa.Connection,
    needed: dict[str, set[str]],
    cdm_schema: str,
    vocabulary_schema: str,
    source: str,
) -> Cdm:
    """Find every needed table and column (any case) or raise a one-line ``SourceError``."""
    schemas = {cdm_schema, vocabulary_schema}
    for schema in sorted(schemas):
        _check_schema(conn, schema, source)
    info = sa.table(
        "columns",
        sa.column("table_catalog"),
        sa.column("table_schema"),
        sa.column("table_name"),
        sa.column("column_name"),
        sa.column("data_type"),
        schema="information_schema",
    )
    rows = conn.execute(
        sa.select(info.c.table_schema, info.c.table_name, info.c.column_name, info.c.data_type)
        .where(info.c.table_catalog == sa.func.current_database())
        .where(info.c.table_schema.in_(sorted(schemas)))
        .order_by(info.c.table_schema, info.c.table_name, info.c.column_name)
    ).all()
    catalog: dict[tuple[str, str], tuple[str, dict[str, tuple[str, str]]]] = {}
    for schema, table, column, data_type in rows:
        key = (schema, table.lower())
        name, columns = catalog.setdefault(key, (table, {}))
        if name == table:  # a second table differing only in case is not ours to guess
            columns.setdefault(column.lower(), (column, str(data_type).lower()))
    tables: dict[str, CdmTable] = {}
    for table in sorted(needed):
        schema = vocabulary_schema if table in VOCABULARY_TABLES else cdm_schema
        if (schema, table) not in catalog:
            _missing_table(conn, schema, table, source)
        actual, columns = catalog[(schema, table)]
        kinds = {c: COLUMNS[table][c] for c in sorted(needed[table])}
        absent = [c for c in kinds if c not in columns]
        if absent:
            found = ", ".join(sorted(columns)[:4])
            hint = "; its header row may have been loaded as data" if _generic(columns) else ""
            raise SourceError(
                source,
                "missing-column",
                f"table {schema}.{table} has no column {absent[0]!r} (it has {found}"
                f"{', ...' if len(columns) > 4 else ''}){hint}",
            )
        table_clause = sa.Table(
            actual,
            sa.MetaData(),
            *(sa.Column(columns[c][0], _SA_TYPES[k], key=c) for c, k in kinds.items()),
            schema=schema,
        )
        casts = frozenset(
            c for c, k in kinds.items() if k == NUMBER or not columns[c][1].startswith(_NATIVE[k])
        )
        tables[table] = CdmTable(table_clause, casts, kinds)
    return Cdm(tables)


def _generic(columns: dict[str, tuple[str, str]]) -> bool:
    """Columns named column0, column1, ...: a CSV read without its header (Eunomia's empty
    tables hold their header as a row)."""
    return bool(columns) and all(re.fullmatch(r"column\d+", c) for c in columns)


def _check_schema(conn: sa.Connection, schema: str, source: str) -> None:
    schemata = sa.table(
        "schemata", sa.column("catalog_name"), sa.column("schema_name"), schema="information_schema"
    )
    found = conn.execute(
        sa.select(sa.func.count())
        .select_from(schemata)
        .where(schemata.c.schema_name == schema)
        .where(schemata.c.catalog_name == sa.func.current_database())
    ).scalar_one()
    if found:
        return
    if conn.dialect.name == "postgresql" and _pg_exists(conn, "pg_namespace", "nspname", schema):
        raise SourceError(
            source, "permission-denied", f"the database user may not use schema {schema!r}"
        )
    raise SourceError(source, "missing-table", f"the database has no schema {schema!r}")


def _missing_table(conn: sa.Connection, schema: str, table: str, source: str) -> None:
    if conn.dialect.name == "postgresql":
        tables = sa.table(
            "pg_tables", sa.column("schemaname"), sa.column("tablename"), schema="pg_catalog"
        )
        hidden = conn.execute(
            sa.select(sa.func.count())
            .select_from(tables)
            .where(tables.c.schemaname == schema)
            .where(sa.func.lower(tables.c.tablename) == table)
        ).scalar_one()
        if hidden:
            raise SourceError(
                source,
                "permission-denied",
                f"the database user may not read table {schema}.{table}",
            )
    raise SourceError(source, "missing-table", f"schema {schema!r} has no table {table!r}")


def _pg_exists(conn: sa.Connection, catalog: str, column: str, value: str) -> bool:
    table = sa.table(catalog, sa.column(column), schema="pg_catalog")
    query = sa.select(sa.func.count()).select_from(table).where(table.c[column] == value)
    return bool(conn.execute(query).scalar_one())
