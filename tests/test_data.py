"""Site data checks and encoding: what the node accepts, refuses, and how it encodes."""

import numpy as np
import pandas as pd
import pytest

from federation.client.data import load_site_table, table_warnings
from federation.client.features import encode, scaling_sums, site_scaling
from federation.errors import DataError
from federation.spec import feature_names, parse_spec

SPEC = parse_spec(
    """
[study]
label = "y"
groups = ["race"]
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


def write(df, tmp_path, name="site.csv"):
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    return path


def test_valid_file_loads_and_splits_deterministically(tmp_path):
    path = write(frame(), tmp_path)
    first, second = load_site_table(path, SPEC), load_site_table(path, SPEC)
    assert first.n_train + first.n_test == 100
    assert first.n_test == 30
    assert np.array_equal(first.is_test, second.is_test)


def test_csv_and_parquet_give_the_same_table(tmp_path):
    df = frame()
    csv, parquet = (
        load_site_table(write(df, tmp_path), SPEC),
        load_site_table(write(df, tmp_path, "site.parquet"), SPEC),
    )
    assert np.allclose(csv.numeric, parquet.numeric, equal_nan=True)
    assert np.array_equal(csv.categorical, parquet.categorical)
    assert np.array_equal(csv.is_test, parquet.is_test)


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
            lambda d: d.assign(age=d["age"].astype(float).where(d.index > 2, np.nan)),
            r"column 'age' has 3 missing values \(rows 2, 3, 4\) and the spec has no rule",
        ),
        (lambda d: d.assign(y=d["y"].where(d.index != 5, 2)), r"label column 'y' must be 0 or 1"),
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
        (b"\xff\xfe\x00\x01binary\x00garbage", "not UTF-8"),
        (b"age,age,bmi\n1,2,3\n", "column 'age' appears twice"),
        (b"a,b\n1,2\n3,4,5,6\n", "line 3 has 4 fields, the header has 2"),
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


def test_encoding_is_standardized_one_hot_and_imputed(tmp_path):
    df = frame()
    df.loc[0, "bmi"] = np.nan
    table = load_site_table(write(df, tmp_path), SPEC)
    center, scale = site_scaling(table, SPEC)
    x, y = encode(table, SPEC, center, scale, test=False)
    assert x.shape == (table.n_train, len(feature_names(SPEC)))
    assert np.allclose(x[:, 0].mean(), 0, atol=1e-5) and np.allclose(x[:, 0].std(), 1, atol=1e-3)
    assert np.isfinite(x).all()
    one_hot = x[:, 2:4]
    assert set(one_hot.sum(axis=1)) == {1.0}
    assert set(np.unique(y)) <= {0.0, 1.0}


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
    assert table_warnings(table, str(path)) == [f"{path}: every training record has label 1"]
    assert table_warnings(load_site_table(write(frame(), tmp_path), SPEC), "x") == []
