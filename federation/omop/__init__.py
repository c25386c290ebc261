"""Sites whose records are an OMOP CDM database (DuckDB embedded, PostgreSQL in production).

``source`` reads the site-local source description and connects; ``cohort`` is the study spec's
``[cohort]`` section; ``cdm`` binds the CDM tables the database really has; ``query`` builds the
one SQLAlchemy Core statement per cohort; ``extract`` turns its rows into the same frame of text
cells a site file gives; ``report`` is what ``allfed site check`` prints for the operator;
``eunomia`` writes the demo's sites from PyPI's Eunomia GiBleed CDM.
"""
