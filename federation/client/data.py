"""A site's data: load the file, check it against the study spec, split it, encode it.

The one boundary where participant records are read. ``allfed site check`` and the node call the
same functions, so an operator sees exactly what the node would refuse. Every error is a
``DataError`` whose message names the file, the column, how many rows and the first row numbers
(as a spreadsheet shows them: the header is row 1), and never quotes a participant's value.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from federation.client.partition import Partition
from federation.errors import DataError
from federation.omop import is_source
from federation.wire.queries import OTHER
from federation.wire.spec import StudySpec
from privacy.statistics import MISSING

MIN_TRAIN_RECORDS = 30
PERSON_COLUMN = "__allfed_person__"  # an OMOP row's person, kept beside its cells for the partition
_PARQUET = (".parquet", ".pq")
_TRUE_VALUES = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE_VALUES = {"0", "0.0", "false", "no", "n", "f"}
_IDENTIFIER = re.compile(
    r"^(first_?name|last_?name|full_?name|name|patient_?name|surname|address|street|"
    r"street_?address|ssn|social_?security(_?number)?|mrn|medical_?record(_?number)?|"
    r"dob|date_?of_?birth|birth_?date|phone|phone_?number|telephone|email|e_?mail)$"
)


@dataclass(frozen=True)
class SiteTable:
    """A site's checked, consented records, split into train and test.

    ``numeric`` holds raw numeric features (NaN where the spec says impute); ``categorical``
    holds level indices (-1 where missing and imputed); ``groups`` holds each record's group
    level: a declared level, ``(missing)`` for an imputed categorical feature, ``(other)`` for a
    group value outside its declared ``group-levels`` (never a value seen in the data). A
    survival study's ``label`` is its event (0/1) and ``time`` its time in days (None for a
    binary study).
    """

    numeric: np.ndarray
    categorical: np.ndarray
    label: np.ndarray
    is_test: np.ndarray
    groups: dict[str, np.ndarray]
    time: np.ndarray | None = None

    @property
    def n_train(self) -> int:
        return int((~self.is_test).sum())

    @property
    def n_test(self) -> int:
        return int(self.is_test.sum())


def load_site_table(
    path: str | Path, spec: StudySpec, partition: Partition, trainable: bool = True
) -> SiteTable:
    """Read ``path`` (CSV or Parquet, or an OMOP source description) and check it against
    ``spec``, its test rows those of the site's ``partition``; raise ``DataError``.
    ``trainable=False`` (descriptive analyses) skips the minimum size of DP training."""
    path = Path(path)
    if is_source(path):
        from federation.omop.extract import read_source

        rows = read_source(path, spec)
        # The person behind each row (never leaves the site) identifies it for the partition:
        # a person's entries (``events = "all"``) all fall on the same side.
        persons = rows.records.str.split(":").str[0]
        frame = rows.frame.assign(**{PERSON_COLUMN: persons})
        return check_table(frame, spec, str(path), partition, trainable=trainable)
    frame = read_table(path, spec.features.na_values)
    return check_table(frame, spec, str(path), partition, trainable=trainable)


def identity_columns(path: Path, na_values: tuple[str, ...] = ()) -> list[str]:
    """The columns that identify a record of ``path`` when the site names no record-id column:
    its whole row, or an OMOP source's person."""
    if is_source(path):
        return [PERSON_COLUMN]
    return list(read_table(path, na_values).columns)


def read_table(path: Path, na_values: tuple[str, ...] = ()) -> pd.DataFrame:
    """Every column as text (NaN for empty cells and ``na_values`` markers), so that types are
    checked by us, not guessed."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xls", ".xlsm", ".ods"):
        raise DataError(f"{path}: spreadsheet files are not read; save the sheet as CSV")
    if suffix in _PARQUET:
        _check_parquet_layout(path)
    else:
        _check_csv_layout(path)
    try:
        if suffix in _PARQUET:
            frame = pd.read_parquet(path)
            missing = frame.isna()
            frame = frame.astype(object).map(str).where(~missing, np.nan)
            frame = frame.replace(list(na_values), np.nan) if na_values else frame
        else:
            frame = pd.read_csv(
                path,
                encoding="utf-8-sig",
                dtype=str,
                keep_default_na=True,
                na_values=list(na_values),
                skipinitialspace=True,
            )
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (binary or another encoding)") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file has no header row") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: malformed CSV ({_parser_reason(exc)})") from None
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read as {suffix or 'CSV'} ({type(exc).__name__})"
        ) from None
    if frame.empty:
        raise DataError(f"{path}: header only, no records")
    # Names as the layout check read them: " age " in a header is the column age.
    return frame.rename(columns=lambda name: str(name).strip())


def _check_csv_layout(path: Path) -> None:
    """What pandas would silently accept or guess: binary content, another encoding, another
    delimiter, a repeated column name (pandas renames it ``name.1``), and rows with more or
    fewer fields than the header (pandas fills short rows with missing values)."""
    _check_utf8_text(path)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader, [])]
            _check_header(path, header)
            ragged: list[int] = []
            record = 1  # the header is row 1
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank lines are skipped, as pandas does
                record += 1
                if len(row) != len(header):
                    ragged.append(record)
        except csv.Error:
            raise DataError(
                f"{path}: malformed CSV (line {reader.line_num} cannot be parsed)"
            ) from None
    if ragged:
        rows = np.arange(2, record + 1)
        mask = np.isin(rows, ragged)
        raise DataError(
            f"{path}: {len(ragged)} {'rows do' if len(ragged) > 1 else 'row does'} not have "
            f"the header's {len(header)} fields "
            f"({first_rows(pd.Series(rows), mask)}); check for a missing or extra delimiter"
        )


def _check_utf8_text(path: Path) -> None:
    """Refuse NUL bytes (binary files, UTF-16) and lines that are not UTF-8, by line number."""
    bad: list[int] = []
    binary = False
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            binary = binary or b"\x00" in line
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(number)
    if binary:
        raise DataError(f"{path}: not a text file (it holds NUL bytes: binary, or UTF-16 text)")
    if bad:
        lines = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise DataError(
            f"{path}: not UTF-8 text (binary or another encoding): {len(bad)} lines cannot be "
            f"decoded (line{'s' if len(bad) > 1 else ''} {lines}); save the file as UTF-8 CSV"
        )


def _check_header(path: Path, header: list[str]) -> None:
    if not any(header):
        raise DataError(f"{path}: file has no header row")
    if len(header) == 1:
        for delimiter, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if delimiter in header[0]:
                raise DataError(
                    f"{path}: the header has a single column and looks {name}-separated; "
                    "allfed reads comma-separated CSV: save the file with commas"
                )
    _reject_repeated(path, header)


def _reject_repeated(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)


def _check_parquet_layout(path: Path) -> None:
    """A corrupt or truncated file, or repeated column names, before pandas tries to read it."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception:  # pyarrow raises several types for a broken file; none is the user's bug
        raise DataError(
            f"{path}: not a readable Parquet file (corrupt, truncated or another format)"
        ) from None
    _reject_repeated(path, [str(name).strip() for name in schema.names])


def check_table(
    frame: pd.DataFrame,
    spec: StudySpec,
    source: str,
    partition: Partition,
    trainable: bool = True,
) -> SiteTable:
    """Check a frame of text cells against the spec and build a ``SiteTable``."""
    reject_identifiers(frame, source)
    study = spec.study
    required = [*study.outcome_columns, *spec.features.columns, *study.groups]
    require_columns(frame, required + [c for c in (study.consent,) if c], source)

    rows = pd.Series(np.arange(len(frame)) + 2, index=frame.index)  # spreadsheet row numbers
    if study.consent:
        frame, rows = _keep_consented(frame, rows, study.consent, source)
    survival = study.task == "survival"
    label = (
        _to_label(frame[study.event], rows, study.event, source, role="event")
        if survival
        else _to_label(frame[study.label], rows, study.label, source)
    )
    time = _to_time(frame[study.time], rows, study.time, source) if survival else None
    values = check_features(frame, spec, source, rows)
    keep = values.keep

    is_test = partition.test_rows(frame, rows, source)
    categorical = dict(zip(spec.features.categorical, values.categorical.T, strict=True))
    groups = {g: _group_levels(frame, categorical, spec, g) for g in study.groups}
    table = SiteTable(
        numeric=values.numeric[keep],
        categorical=values.categorical[keep],
        label=label[keep],
        is_test=is_test[keep],
        groups={g: v[keep] for g, v in groups.items()},
        time=None if time is None else time[keep],
    )
    if trainable:
        _check_trainable(table, source)
    return table


@dataclass(frozen=True)
class FeatureValues:
    """A frame's feature columns as checked numbers, one row per frame row: raw numeric values
    (NaN where missing), categorical level indices (-1 where missing), and per row the first
    column whose "drop" rule removes it ("" for a row that is kept)."""

    numeric: np.ndarray
    categorical: np.ndarray
    dropped_by: np.ndarray

    @property
    def keep(self) -> np.ndarray:
        return self.dropped_by == ""


def require_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    """Refuse a frame without one of ``columns``, naming the first missing one."""
    missing = [c for c in dict.fromkeys(columns) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing column {missing[0]!r} required by the study spec",
            "missing-column",
            missing[0],
        )


def check_features(
    frame: pd.DataFrame, spec: StudySpec, source: str, rows: pd.Series
) -> FeatureValues:
    """The feature columns' types, declared levels and missing-value rules, checked as the node
    checks them (``rows``: the spreadsheet row number of each row, for the errors)."""
    features = spec.features
    numeric = {c: _to_numeric(frame[c], rows, c, source) for c in features.numeric}
    for column, values in numeric.items():
        _check_plausible(values, rows, column, features.plausible_range(column), source)
    categorical = {
        c: _to_levels(frame[c], rows, c, features.categorical[c], source)
        for c in features.categorical
    }
    dropped_by = np.full(len(frame), "", dtype=object)
    for column in features.columns:
        values = numeric[column] if column in numeric else categorical[column]
        absent = np.isnan(values) if column in numeric else values < 0
        if not absent.any():
            continue
        rule = features.missing.get(column)
        if rule is None:
            raise DataError(
                f"{source}: column {column!r} has {int(absent.sum())} missing values "
                f"({first_rows(rows, absent)}) and the spec has no rule for it; "
                f'add {column} = "impute" or "drop" to [features] missing',
                "missing-values",
                column,
            )
        if rule == "drop":
            dropped_by[absent & (dropped_by == "")] = column
    return FeatureValues(
        numeric=np.column_stack([numeric[c] for c in features.numeric]).astype(float)
        if features.numeric
        else np.zeros((len(frame), 0)),
        categorical=np.column_stack([categorical[c] for c in features.categorical])
        if features.categorical
        else np.zeros((len(frame), 0), dtype=int),
        dropped_by=dropped_by,
    )


def reject_identifiers(frame: pd.DataFrame, source: str) -> None:
    """Refuse columns that look like direct identifiers: an analysis file holds none."""
    for column in frame.columns:
        key = re.sub(r"[\s\-]+", "_", str(column).strip().lower())
        if _IDENTIFIER.match(key):
            raise DataError(
                f"{source}: column {column!r} looks like a direct identifier; "
                "remove it from the analysis file",
                "identifier-column",
            )


def _check_plausible(
    values: np.ndarray,
    rows: pd.Series,
    column: str,
    plausible: tuple[float, float] | None,
    source: str,
) -> None:
    """Refuse values outside the column's plausible range: a unit or entry mistake, which
    clipping to the bounds would silently turn into a patient at the bound."""
    if plausible is None:
        return
    low, high = plausible
    with np.errstate(invalid="ignore"):
        outside = (values < low) | (values > high)
    if outside.any():
        raise DataError(
            f"{source}: column {column!r} has {int(outside.sum())} values outside its plausible "
            f"range [{low:g}, {high:g}] ({first_rows(rows, outside)}); correct them, or declare "
            f"the range in [features] plausible.{column}",
            "implausible-value",
            column,
        )


def _keep_consented(frame, rows, column, source):
    text = frame[column].fillna("").astype(str).str.strip().str.lower()
    unknown = ~(text.isin(_TRUE_VALUES) | text.isin(_FALSE_VALUES) | (text == ""))
    if unknown.any():
        raise DataError(
            f"{source}: consent column {column!r} has {int(unknown.sum())} values that are not "
            f"yes/no, true/false or 1/0 ({first_rows(rows, unknown.to_numpy())})",
            "bad-consent",
            column,
        )
    consented = text.isin(_TRUE_VALUES).to_numpy()
    if not consented.any():
        raise DataError(
            f"{source}: no record has consent in column {column!r}", "no-consent", column
        )
    return frame[consented], rows[consented]


def _to_numeric(values: pd.Series, rows: pd.Series, column: str, source: str) -> np.ndarray:
    text = values.astype(object).where(values.notna(), None)
    stripped = text.map(lambda v: v.strip() if isinstance(v, str) else v)
    empty = stripped.isna() | (stripped == "")
    parsed = pd.to_numeric(stripped.where(~empty, None), errors="coerce")
    bad = parsed.isna() & ~empty
    if bad.any():
        raise DataError(
            f"{source}: column {column!r} is numeric in the spec but has {int(bad.sum())} "
            f"non-numeric values ({first_rows(rows, bad.to_numpy())}); if they mark missing "
            "values, list the marker in [features] na-values",
            "bad-values",
            column,
        )
    array = parsed.to_numpy(dtype=float)
    infinite = np.isinf(array)
    if infinite.any():
        raise DataError(
            f"{source}: column {column!r} has {int(infinite.sum())} infinite values "
            f"({first_rows(rows, infinite)})",
            "bad-values",
            column,
        )
    return array


def _to_label(
    values: pd.Series, rows: pd.Series, column: str, source: str, role: str = "label"
) -> np.ndarray:
    """A 0/1 column: the label, or (``role="event"``) a survival study's event."""
    absent = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    if absent.any():
        raise DataError(
            f"{source}: {role} column {column!r} is missing in {int(absent.sum())} rows "
            f"({first_rows(rows, absent)}); remove those records or fill the {role}",
            "bad-label" if role == "label" else "bad-event",
            column,
        )
    text = values.astype(str).str.strip().str.lower()
    parsed = np.where(text.isin(_TRUE_VALUES), 1.0, np.where(text.isin(_FALSE_VALUES), 0.0, np.nan))
    bad = np.isnan(parsed)
    if bad.any():
        raise DataError(
            f"{source}: {role} column {column!r} must be 0/1, true/false or yes/no; "
            f"{int(bad.sum())} rows are not ({first_rows(rows, bad)})",
            "bad-label" if role == "label" else "bad-event",
            column,
        )
    return parsed.astype(np.float32)


def _to_time(values: pd.Series, rows: pd.Series, column: str, source: str) -> np.ndarray:
    """A survival study's time to the event or to censoring, in days: present, finite, not
    negative (0 is allowed: an event on the day of entry)."""
    absent = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    if absent.any():
        raise DataError(
            f"{source}: time column {column!r} is missing in {int(absent.sum())} rows "
            f"({first_rows(rows, absent)}); remove those records or fill the time",
            "bad-time",
            column,
        )
    parsed = pd.to_numeric(values.astype(str).str.strip(), errors="coerce").to_numpy(dtype=float)
    checks = (
        (np.isnan(parsed), "is not a number"),
        (np.isinf(parsed), "is not finite"),
        (parsed < 0, "is negative"),
    )
    for bad, problem in checks:
        if bad.any():
            raise DataError(
                f"{source}: time column {column!r} {problem} in {int(bad.sum())} rows "
                f"({first_rows(rows, bad)}); times are days from entry to the event or to "
                "censoring",
                "bad-time",
                column,
            )
    return parsed.astype(np.float32)


def _to_levels(values, rows, column, levels, source) -> np.ndarray:
    text = values.astype(object).where(values.notna(), None)
    text = text.map(lambda v: _normalize_level(v) if v is not None else None)
    empty = text.isna() | (text == "")
    index = {level: i for i, level in enumerate(levels)}
    codes = text.map(lambda v: index.get(v, -2) if v not in (None, "") else -1).to_numpy(dtype=int)
    unknown = (codes == -2) & ~empty.to_numpy()
    if unknown.any():
        raise DataError(
            f"{source}: column {column!r} has {int(unknown.sum())} values that are not among its "
            f"declared levels ({first_rows(rows, unknown)}); declared: {', '.join(levels)}",
            "undeclared-level",
            column,
        )
    return codes


def _normalize_level(value: object) -> str:
    """Text of a level, with integral floats written as integers ("1.0" -> "1")."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _group_levels(
    frame: pd.DataFrame, categorical: dict[str, np.ndarray], spec: StudySpec, column: str
) -> np.ndarray:
    """Each record's level of group ``column``: declared levels only (the spec guarantees the
    column is a categorical feature or has ``group-levels``)."""
    if column in categorical:
        names = np.array([*spec.features.categorical[column], MISSING], dtype=object)
        return names[categorical[column]]  # code -1 (missing, imputed) picks MISSING
    declared = spec.study.group_levels[column]
    values = (
        frame[column]
        .astype(object)
        .map(lambda v: _normalize_level(v) if isinstance(v, str) else None)
    )
    return np.where(values.isin(declared), values, OTHER).astype(object)


def _check_trainable(table: SiteTable, source: str) -> None:
    if table.n_train < MIN_TRAIN_RECORDS:
        raise DataError(
            f"{source}: {table.n_train} training records after consent and missing-value rules; "
            f"DP training needs at least {MIN_TRAIN_RECORDS} (with fewer, the noise that protects "
            "each record swamps what the site can contribute)",
            "too-few-records",
        )


def table_warnings(table: SiteTable, spec: StudySpec, source: str) -> list[str]:
    """What is allowed but worth an operator's attention.

    A site whose training rows all share one label still helps a federated model (it moves the
    intercept), as Switzerland does in Fed-Heart-Disease, so it is a warning, not an error.
    Plausible values outside a column's bounds are clipped to them, which is what bounds are
    for, but many of them mean the bounds do not fit the site's population.
    """
    warnings = []
    train_labels = table.label[~table.is_test]
    if spec.study.task == "survival":
        if train_labels.max() == 0:
            warnings.append(f"{source}: no training record has an event (all are censored)")
    elif train_labels.min() == train_labels.max():
        warnings.append(f"{source}: every training record has label {int(train_labels[0])}")
    for i, column in enumerate(spec.features.numeric):
        if column not in spec.features.bounds:
            continue
        low, high = spec.features.bounds[column]
        with np.errstate(invalid="ignore"):
            outside = int(((table.numeric[:, i] < low) | (table.numeric[:, i] > high)).sum())
        if outside:
            warnings.append(
                f"{source}: column {column!r} has {outside} values outside its bounds "
                f"[{low:g}, {high:g}]; they are clipped to the bounds"
            )
    return warnings


def first_rows(rows: pd.Series, mask: np.ndarray, limit: int = 5) -> str:
    """The first row numbers where ``mask`` holds, as an error message names them."""
    numbers = rows.to_numpy()[np.asarray(mask)][:limit]
    more = ", ..." if int(np.asarray(mask).sum()) > limit else ""
    label = "row" if len(numbers) == 1 and not more else "rows"
    return f"{label} {', '.join(str(n) for n in numbers)}{more}"


def _parser_reason(exc: Exception) -> str:
    """Pandas' parser message without any cell content."""
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if match:
        expected, line, saw = match.groups()
        return f"line {line} has {saw} fields, the header has {expected}"
    return "cannot parse"
