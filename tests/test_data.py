"""Site data checks and encoding: what the node accepts, refuses, and how it encodes."""

import gzip
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from federation.client import data as site_data
from federation.client.data import read_table, table_warnings
from federation.client.features import encode, scaling_sums, site_scaling
from federation.client.partition import Partition, requested_definition
from federation.client.site import SiteSettings, site_table
from federation.errors import DataError, SpecError
from federation.wire.encoding import categorical_inputs
from federation.wire.spec import feature_names, parse_spec
from privacy.policy import SitePolicy

SECRET = bytes(range(32))  # a fixed site secret: the same partition in every test

SPEC = parse_spec(
    """
[study]
label = "y"
groups = ["race"]
group-levels = { race = ["Black", "White", "Asian"] }
consent = "consent"
seed = 3
[features]
numeric = ["age", "bmi"]
categorical = { sex = ["female", "male"], smoking = ["never", "current"] }
missing = { bmi = "impute", smoking = "drop" }
bounds = { age = [18, 90], bmi = [15, 60] }
""",
    source="spec",
)


def frame(n=100, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(20, 85, n),
            "bmi": rng.normal(28, 4, n).round(1),
            "sex": rng.choice(["female", "male"], n),
            "smoking": rng.choice(["never", "current"], n),
            "race": rng.choice(["Black", "White", "Asian"], n),
            "consent": 1,
            "y": rng.integers(0, 2, n),
        }
    )


def load_site_table(path, spec, trainable=True, secret=SECRET):
    """The node's table of ``path`` under the partition a site with ``secret`` would pin."""
    columns = list(read_table(path, spec.features.na_values).columns) if path.is_file() else []
    definition = requested_definition(SitePolicy(), spec, columns)
    return site_data.load_site_table(path, spec, Partition(definition, secret), trainable)


def write(df, tmp_path, name="site.csv"):
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    return path


def test_valid_file_loads_and_the_sites_secret_fixes_its_partition(tmp_path):
    df = frame(1000)
    path = write(df, tmp_path)
    first, second = load_site_table(path, SPEC), load_site_table(path, SPEC)
    assert first.n_train + first.n_test == 1000
    assert 250 <= first.n_test <= 350  # test-fraction 0.3
    assert np.array_equal(first.is_test, second.is_test)
    # The same records in another order, or with others added, keep their partition.
    shuffled = write(df.sample(frac=1.0, random_state=1), tmp_path, "shuffled.csv")
    order = df.sample(frac=1.0, random_state=1).index.to_numpy()
    assert np.array_equal(load_site_table(shuffled, SPEC).is_test, first.is_test[order])
    grown = write(pd.concat([df, frame(50, seed=9)]), tmp_path, "grown.csv")
    assert np.array_equal(load_site_table(grown, SPEC).is_test[:1000], first.is_test)
    # Another site (another secret) splits differently.
    other = load_site_table(path, SPEC, secret=bytes(32))
    assert not np.array_equal(other.is_test, first.is_test)


def test_a_records_test_membership_is_the_hmac_of_its_cells_as_pinned(tmp_path):
    """The key a pinned partition hashes: the record's cells as text, in column-name order,
    joined by the unit separator (empty for a missing one). Changing how it is built would
    move records between train and test at every site that pinned its partition."""
    df = frame(200)
    df.loc[[3, 4], "bmi"] = np.nan
    path = write(df, tmp_path)
    text = read_table(path)
    keys = [
        "\x1f".join("" if pd.isna(v) else str(v) for v in row)
        for row in text[sorted(text.columns)].itertuples(index=False)
    ]
    units = [
        int.from_bytes(hmac.new(SECRET, k.encode(), hashlib.sha256).digest()[:8], "big") / 2**64
        for k in keys
    ]
    assert np.array_equal(load_site_table(path, SPEC).is_test, np.array(units) < 0.3)


def test_csv_and_parquet_give_the_same_table(tmp_path):
    """Typed Parquet columns with missing values (float NaN, None in text) read as the CSV."""
    df = frame()
    df["bmi"] = df["bmi"].astype(float)
    df.loc[[1, 2, 3], "bmi"] = np.nan
    df.loc[[4, 5], "smoking"] = None
    csv, parquet = (
        load_site_table(write(df, tmp_path), SPEC),
        load_site_table(write(df, tmp_path, "site.parquet"), SPEC),
    )
    assert np.allclose(csv.numeric, parquet.numeric, equal_nan=True)
    assert np.array_equal(csv.categorical, parquet.categorical)
    assert np.array_equal(csv.is_test, parquet.is_test)


def test_labels_stored_as_booleans_or_yes_no_read_as_the_consent_column_does(tmp_path):
    df = frame()
    numeric = load_site_table(write(df, tmp_path), SPEC).label
    words = df.assign(y=df["y"].map({1: "Yes", 0: "no"}))
    assert np.array_equal(load_site_table(write(words, tmp_path), SPEC).label, numeric)
    booleans = df.assign(y=df["y"].astype(bool))
    parquet = write(booleans, tmp_path, "site.parquet")
    assert np.array_equal(load_site_table(parquet, SPEC).label, numeric)


def test_values_outside_the_bounds_are_a_warning_and_a_declared_plausible_range_decides(
    tmp_path,
):
    df = frame().astype({"age": float})
    df.loc[[0, 1], "age"] = [-5.0, 150.0]  # plausible by default: bounds [18, 90] +- 72
    path = write(df, tmp_path)
    table = load_site_table(path, SPEC)
    assert table_warnings(table, SPEC, str(path)) == [
        f"{path}: column 'age' has 2 values outside its bounds [18, 90]; they are clipped to "
        "the bounds"
    ]
    strict = SPEC.with_overrides(features={"plausible": {"age": (0.0, 120.0)}})
    with pytest.raises(DataError, match=r"'age' has 2 values outside its plausible range "):
        load_site_table(path, strict)
    narrow = SPEC.to_toml().replace(
        "[features.plausible]\n", "[features.plausible]\nage = [20, 80]\n"
    )
    with pytest.raises(SpecError, match=r"plausible.age: must contain its bounds \[18, 90\]"):
        parse_spec(narrow, source="spec")


def test_only_consented_rows_are_used(tmp_path):
    df = frame()
    df.loc[:39, "consent"] = 0
    assert (
        load_site_table(write(df, tmp_path), SPEC).n_train
        + load_site_table(write(df, tmp_path), SPEC).n_test
        == 60
    )


def test_missing_values_follow_the_rules(tmp_path):
    df = frame()
    df.loc[[1, 2, 3], "bmi"] = np.nan
    df.loc[[4, 5], "smoking"] = np.nan
    table = load_site_table(write(df, tmp_path), SPEC)
    assert table.n_train + table.n_test == 98  # smoking: drop
    assert np.isnan(table.numeric[:, 1]).sum() == 3  # bmi: impute


def test_split_column_is_respected(tmp_path):
    spec = parse_spec(SPEC.to_toml().replace("seed = 3", 'seed = 3\nsplit = "part"'))
    df = frame()
    df["part"] = ["test" if i % 4 == 0 else "train" for i in range(100)]
    table = load_site_table(write(df, tmp_path), spec)
    assert table.n_test == 25


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.drop(columns="bmi"), "missing column 'bmi'"),
        (lambda d: d.drop(columns="race"), "missing column 'race'"),
        (
            lambda d: d.assign(age=d["age"].astype(object).where(d.index != 7, "old")),
            r"column 'age' is numeric in the spec but has 1 non-numeric values \(row 9\)",
        ),
        (
            lambda d: d.assign(age=d["age"].astype(float).where(d.index != 0, np.inf)),
            r"column 'age' has 1 infinite values \(row 2\)",
        ),
        (
            lambda d: d.assign(age=d["age"].astype(float).where(d.index != 0, 1e300)),
            r"column 'age' has 1 values outside its plausible range \[-54, 162\] \(row 2\); "
            r"correct them, or declare the range in \[features\] plausible.age",
        ),
        (
            lambda d: d.assign(age=d["age"].astype(float).where(d.index > 2, np.nan)),
            r"column 'age' has 3 missing values \(rows 2, 3, 4\) and the spec has no rule",
        ),
        (
            lambda d: d.assign(y=d["y"].where(d.index != 5, 2)),
            r"label column 'y' must be 0/1, true/false or yes/no",
        ),
        (
            lambda d: d.assign(sex=d["sex"].where(d.index != 10, "unknown")),
            r"column 'sex' has 1 values that are not among its declared levels \(row 12\)",
        ),
        (lambda d: d.assign(consent="maybe"), "consent column 'consent' has 100 values"),
        (lambda d: d.assign(consent=0), "no record has consent"),
        (lambda d: d.head(30), "training records .* DP training needs at least 30"),
        (lambda d: d.assign(ssn="x"), "column 'ssn' looks like a direct identifier"),
        (lambda d: d.assign(**{"Date of Birth": "x"}), "looks like a direct identifier"),
    ],
)
def test_bad_data_gets_one_line_naming_the_problem(tmp_path, change, message):
    path = write(change(frame()), tmp_path)
    with pytest.raises(DataError, match=message) as error:
        load_site_table(path, SPEC)
    text = str(error.value)
    assert "\n" not in text and str(path) in text
    assert "old" not in text and "unknown'" not in text  # never quotes a participant's value


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"age,bmi,sex,smoking,race,consent,y\n", "header only"),
        (b"\xff\xfe\x00\x01binary\x00garbage", "NUL bytes"),
        (b"age,bmi\n1,\xe9\n", r"not UTF-8 text .* \(line 2\)"),
        (b"age,age,bmi\n1,2,3\n", "column 'age' appears twice"),
        (b"a,b\n1,2\n3,4,5,6\n", r"1 row does not have the header's 2 fields \(row 3\)"),
    ],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "site.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_site_table(path, SPEC)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_site_table(tmp_path / "absent.csv", SPEC)
    with pytest.raises(DataError, match="is a directory"):
        load_site_table(tmp_path, SPEC)


def test_encoding_is_standardized_reference_coded_and_imputed(tmp_path):
    df = frame()
    df.loc[0, "bmi"] = np.nan
    table = load_site_table(write(df, tmp_path), SPEC)
    center, scale = site_scaling(table, SPEC)
    x, y = encode(table, SPEC, center, scale, test=False)
    assert x.shape == (table.n_train, len(feature_names(SPEC)))
    assert np.allclose(x[:, 0].mean(), 0, atol=1e-5) and np.allclose(x[:, 0].std(), 1, atol=1e-3)
    assert np.isfinite(x).all()
    train = df[~table.is_test]
    assert feature_names(SPEC)[2:] == ["sex=male", "smoking=current"]  # the first: reference
    np.testing.assert_array_equal(x[:, 2], (train["sex"] == "male") - 0.5)  # centred: - 1/L
    np.testing.assert_array_equal(x[:, 3], (train["smoking"] == "current") - 0.5)
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_a_missing_level_is_the_mean_of_its_columns_levels():
    codes = np.array([-1, 0, 1, 2])  # missing, the reference, the second and third levels
    third = 1 / 3
    expected = [[0, 0], [-third, -third], [1 - third, -third], [-third, 1 - third]]
    np.testing.assert_allclose(categorical_inputs(codes, 3), expected)


def test_scaling_sums_are_bounded_per_record(tmp_path):
    table = load_site_table(write(frame(), tmp_path), SPEC)
    total, squares, counts = scaling_sums(table, SPEC)
    # Values mapped into [0, 1] by their bounds: each record adds at most 1 to each sum.
    assert (total <= counts).all() and (squares <= counts).all()
    assert (counts == table.n_train).all()


def test_declared_missing_markers_become_missing_values(tmp_path):
    df = frame().astype({"bmi": object})
    df.loc[[3, 4], "bmi"] = "?"
    path = write(df, tmp_path)
    with pytest.raises(DataError, match="list the marker in \\[features\\] na-values"):
        load_site_table(path, SPEC)
    spec = SPEC.with_overrides(features={"na_values": ("?",)})
    assert np.isnan(load_site_table(path, spec).numeric[:, 1]).sum() == 2
    parquet = write(df.astype({"bmi": str}), tmp_path, "site.parquet")
    assert np.isnan(load_site_table(parquet, spec).numeric[:, 1]).sum() == 2


def test_a_single_class_site_is_allowed_with_a_warning(tmp_path):
    path = write(frame().assign(y=1), tmp_path)
    table = load_site_table(path, SPEC)
    assert table_warnings(table, SPEC, str(path)) == [f"{path}: every training record has label 1"]
    assert table_warnings(load_site_table(write(frame(), tmp_path), SPEC), SPEC, "x") == []


# -- the malformed-file corpus, through the real CLI --------------------------------------------

PLANTED = "Zq7PLANTEDxv"  # a participant's value that must never be echoed
CORPUS_SPEC = SPEC.to_toml().replace("seed = 3", 'seed = 3\nsplit = "part"')


def corpus_frame(n=100):
    df = frame(n).astype(object)
    df["part"] = ["test" if i % 4 == 0 else "train" for i in range(n)]
    return df


def _plant(column, row=7):
    def change(df):
        df.loc[row, column] = PLANTED
        return df

    return change


def _csv(change=None):
    def build(path):
        df = corpus_frame()
        (change(df) if change else df).to_csv(path, index=False)
        return path

    return build


def _bytes(content: bytes, name="site.csv"):
    def build(path):
        target = path.with_name(name)
        target.write_bytes(content)
        return target

    return build


def _text(edit, name="site.csv"):
    def build(path):
        target = path.with_name(name)
        target.write_text(edit(corpus_frame().to_csv(index=False)), encoding="utf-8")
        return target

    return build


def _parquet(change=None):
    def build(path):
        target = path.with_name("site.parquet")
        df = corpus_frame()
        (change(df) if change else df).astype(str).to_parquet(target)
        return target

    return build


def _replace_line(number, edit):
    def apply(text):
        lines = text.splitlines()
        lines[number - 1] = edit(lines[number - 1])
        return "\n".join(lines) + "\n"

    return apply


def _truncated_parquet(path):
    target = _parquet()(path)
    target.write_bytes(target.read_bytes()[:300])
    return target


def _duplicate_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = path.with_name("site.parquet")
    pq.write_table(pa.table([pa.array([1, 2]), pa.array([3, 4])], names=["age", "age"]), target)
    return target


GOOD_CSV = corpus_frame().to_csv(index=False)
HEADER = GOOD_CSV.splitlines()[0]

CORPUS = {
    "missing-file": (lambda p: p.with_name("absent.csv"), "file not found"),
    "directory": (lambda p: p.parent, "is a directory"),
    "empty-file": (_bytes(b""), "file is empty"),
    "blank-lines-only": (_bytes(b"\n\n\n"), "no header row"),
    "header-only": (_bytes(HEADER.encode() + b"\n"), "header only, no records"),
    "binary-garbage": (_bytes(b"\x00\x01\x02" + PLANTED.encode() + b"\xff\xfe\x00"), "NUL bytes"),
    "gzip-file": (
        _bytes(gzip.compress(GOOD_CSV.encode())),
        "not a text file|not UTF-8",
    ),
    "utf16-text": (_bytes(GOOD_CSV.encode("utf-16")), "NUL bytes"),
    "latin1-text": (
        _bytes(GOOD_CSV.replace("White", "Whit\u00e9" + PLANTED).encode("latin-1")),
        r"not UTF-8 text .* lines cannot be decoded",
    ),
    "semicolon-delimiter": (_text(lambda t: t.replace(",", ";")), "semicolon-separated"),
    "tab-delimiter": (_text(lambda t: t.replace(",", "\t")), "tab-separated"),
    "ragged-long-row": (
        _text(_replace_line(9, lambda line: f"{line},{PLANTED}")),
        r"1 row does not have the header's 8 fields \(row 9\)",
    ),
    "ragged-short-row": (
        _text(_replace_line(5, lambda line: line.rsplit(",", 2)[0])),
        r"1 row does not have the header's 8 fields \(row 5\)",
    ),
    "unterminated-quote": (_text(lambda t: t + f'"{PLANTED},1,2\n'), "fields|malformed CSV"),
    "duplicate-column": (
        _text(lambda t: t.replace("bmi", "age", 1)),
        "column 'age' appears twice",
    ),
    "missing-label-column": (_csv(lambda d: d.drop(columns="y")), "missing column 'y'"),
    "missing-feature-column": (_csv(lambda d: d.drop(columns="bmi")), "missing column 'bmi'"),
    "non-numeric-value": (_csv(_plant("age")), r"'age' is numeric .* 1 non-numeric values"),
    "infinity": (
        _csv(lambda d: d.assign(bmi=d["bmi"].where(d.index != 3, "inf"))),
        r"'bmi' has 1 infinite values \(row 5\)",
    ),
    "negative-infinity": (
        _csv(lambda d: d.assign(age=d["age"].where(d.index != 3, "-Infinity"))),
        "infinite values",
    ),
    "missing-without-rule": (
        _csv(lambda d: d.assign(age=d["age"].where(d.index > 1, None))),
        r"'age' has 2 missing values \(rows 2, 3\) and the spec has no rule",
    ),
    "label-not-binary": (_csv(_plant("y")), "label column 'y' must be 0/1, true/false or yes/no"),
    "label-two": (
        _csv(lambda d: d.assign(y=d["y"].where(d.index != 0, 2))),
        r"must be 0/1, true/false or yes/no; 1 rows are not \(row 2\)",
    ),
    "label-missing": (
        _csv(lambda d: d.assign(y=d["y"].where(d.index != 4, None))),
        r"label column 'y' is missing in 1 rows \(row 6\)",
    ),
    "unknown-level": (_csv(_plant("sex")), "'sex' has 1 values that are not among its declared"),
    "bad-split-value": (_csv(_plant("part")), "split column 'part' must be 'train' or 'test'"),
    "bad-consent-value": (_csv(_plant("consent")), "consent column 'consent' has 1 values"),
    "no-consent": (_csv(lambda d: d.assign(consent=0)), "no record has consent"),
    "too-few-records": (
        _csv(lambda d: d.head(35)),
        r"training records .* DP training needs at least 30 \(with fewer, the noise",
    ),
    "identifier-name": (_csv(lambda d: d.assign(name=PLANTED)), "'name' looks like a direct"),
    "identifier-ssn": (_csv(lambda d: d.assign(SSN=PLANTED)), "'SSN' looks like a direct"),
    "identifier-mrn": (_csv(lambda d: d.assign(MRN=PLANTED)), "direct identifier"),
    "identifier-dob": (_csv(lambda d: d.assign(**{"date of birth": PLANTED})), "direct identifier"),
    "identifier-phone": (_csv(lambda d: d.assign(phone=PLANTED)), "direct identifier"),
    "identifier-email": (_csv(lambda d: d.assign(**{"E-mail": PLANTED})), "direct identifier"),
    "identifier-address": (_csv(lambda d: d.assign(address=PLANTED)), "direct identifier"),
    "corrupt-parquet": (_bytes(b"PAR1" + PLANTED.encode() + b"PAR1", "site.parquet"), "Parquet"),
    "truncated-parquet": (_truncated_parquet, "not a readable Parquet file"),
    "duplicate-column-parquet": (_duplicate_parquet, "column 'age' appears twice"),
    "parquet-non-numeric": (_parquet(_plant("bmi")), "'bmi' is numeric .* non-numeric"),
    "spreadsheet": (_bytes(b"PK\x03\x04" + PLANTED.encode(), "site.xlsx"), "save the sheet as CSV"),
}


def run_cli_inprocess(monkeypatch, capsys, *args):
    """The real ``allfed`` entry point (``federation.cli:main``), in this process for speed."""
    from federation.cli import main

    monkeypatch.setattr("sys.argv", ["allfed", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


@pytest.fixture
def corpus_study(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(CORPUS_SPEC)
    folder = tmp_path / "site"
    folder.mkdir()
    return study, folder / "site.csv"


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_malformed_corpus_through_site_check(kind, corpus_study, monkeypatch, capsys):
    study, path = corpus_study
    build, message = CORPUS[kind]
    target = build(path)
    code, output = run_cli_inprocess(
        monkeypatch, capsys, "site", "check", str(target), "--study", str(study)
    )
    lines = output.strip().splitlines()
    assert code == 2, output
    assert 1 <= len(lines) <= 3 and "Traceback" not in output, output
    assert PLANTED not in output and "Whit\u00e9" not in output
    assert re.search(message, output), output
    assert str(target) in output


def test_good_corpus_file_passes_site_check(corpus_study, monkeypatch, capsys):
    study, path = corpus_study
    code, output = run_cli_inprocess(
        monkeypatch, capsys, "site", "check", str(_csv()(path)), "--study", str(study)
    )
    text = " ".join(output.split())
    assert code == 0 and "ok," in text and "75 training" in text, text


def test_single_class_site_passes_with_a_one_line_warning(corpus_study, monkeypatch, capsys):
    study, path = corpus_study
    target = _csv(lambda d: d.assign(y=0))(path)
    code, output = run_cli_inprocess(
        monkeypatch, capsys, "site", "check", str(target), "--study", str(study)
    )
    text = " ".join(output.split())  # rich wraps the warning to the terminal's width
    assert code == 0 and "warning:" in text and "every training record has label 0" in text, text


@pytest.mark.parametrize("kind", ["binary-garbage", "ragged-long-row", "non-numeric-value"])
def test_console_script_exits_2_without_traceback(kind, corpus_study):
    """The installed ``allfed`` script, as an operator runs it."""
    study, path = corpus_study
    target = CORPUS[kind][0](path)
    script = shutil.which("allfed") or pytest.skip("the allfed console script is not installed")
    result = subprocess.run(
        [script, "site", "check", str(target), "--study", str(study)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert len(output.strip().splitlines()) <= 3 and "Traceback" not in output
    assert PLANTED not in output


def test_the_site_table_cache_reads_a_changed_file_again(tmp_path):
    """A node reads its table once per file version: a new extract under the same name is read
    again, even one of the same size whose old modification time was restored (``cp -p``,
    ``rsync -t``, an archive's extract)."""
    df = frame(100)
    path = write(df, tmp_path)
    columns = list(read_table(path, SPEC.features.na_values).columns)
    partition = Partition(requested_definition(SitePolicy(), SPEC, columns), SECRET)
    site = SiteSettings("urban", path, SPEC, tmp_path / "ledger.sqlite")
    first = site_table(site, partition)
    assert site_table(site, partition) is first  # read once

    time.sleep(0.05)  # file times are coarse (a clock tick); a new extract comes later than that
    flipped = df.assign(y=1 - df["y"])  # the same text length: only the labels differ
    flipped.to_csv(path, index=False)
    second = site_table(site, partition)
    assert np.array_equal(second.label, 1 - first.label)

    time.sleep(0.05)
    before = path.stat()
    df.to_csv(path, index=False)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert np.array_equal(site_table(site, partition).label, first.label)
