"""Sites whose records are an OMOP CDM database (DuckDB embedded, PostgreSQL in production).

``source`` reads the site-local source description and connects; ``cdm`` binds the CDM tables
the database really has; ``query`` builds the one SQLAlchemy Core statement per cohort;
``extract`` turns its rows into the same frame of text cells a site file gives; ``report`` is
what ``allfed site check`` prints for the operator; ``eunomia`` writes the demo's sites from
PyPI's Eunomia GiBleed CDM. The study spec's ``[cohort]`` section, which the aggregator reads
too, is ``federation.wire.cohort``.
"""

from __future__ import annotations

from pathlib import Path

SOURCE_SUFFIX = ".toml"


def is_source(path: str | Path) -> bool:
    """A data path names an OMOP source when it is a TOML file (site files are CSV or Parquet)."""
    return Path(path).suffix.lower() == SOURCE_SUFFIX
