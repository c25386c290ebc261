"""The synthetic cohort generator: deterministic, plausible, non-IID, and spec-consistent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from federation.synth import (
    BOUNDS,
    COLUMNS,
    MISSING_RATES,
    RACES,
    site_names,
    study_toml,
    synthesize_cohort,
    true_risk,
    write_cohort,
)
from federation.wire.spec import load_spec, parse_spec


@pytest.fixture(scope="module")
def cohort() -> dict[str, pd.DataFrame]:
    return synthesize_cohort(n_sites=3, records_per_site=2000, seed=7)


def test_same_seed_same_frames_different_seed_different() -> None:
    first, again = synthesize_cohort(2, 300, seed=1), synthesize_cohort(2, 300, seed=1)
    assert list(first) == list(again)
    for site in first:
        pd.testing.assert_frame_equal(first[site], again[site])
    other = synthesize_cohort(2, 300, seed=2)
    assert any(not first[s].equals(other[s]) for s in first)


def test_adding_sites_keeps_earlier_sites() -> None:
    small, large = synthesize_cohort(2, 200, seed=3), synthesize_cohort(4, 200, seed=3)
    for site in small:
        pd.testing.assert_frame_equal(small[site], large[site])


def test_site_names_cycle_with_suffix() -> None:
    names = site_names(8)
    assert names[:2] == ["urban-academic", "rural-network"]
    assert names[6:] == ["urban-academic-2", "rural-network-2"]
    assert list(synthesize_cohort(8, 20)) == names


def test_sizes_vary_around_requested(cohort: dict[str, pd.DataFrame]) -> None:
    sizes = [len(df) for df in cohort.values()]
    assert all(1600 <= n <= 2400 for n in sizes)
    with pytest.raises(ValueError):
        synthesize_cohort(0, 100)


def test_columns_dtypes_and_ranges(cohort: dict[str, pd.DataFrame]) -> None:
    for df in cohort.values():
        assert tuple(df.columns) == COLUMNS
        for column in ("age", "sbp", "family_history", "consent", "outcome"):
            assert df[column].dtype == np.int64
        for column, (low, high) in BOUNDS.items():
            values = df[column].dropna()
            assert values.between(low, high).all(), column
        assert set(df["consent"]) == {0, 1} and 0.93 <= df["consent"].mean() <= 0.995
        assert set(df["outcome"]) == {0, 1}
        assert set(df["race_ethnicity"]) <= set(RACES)


def test_missingness_only_in_declared_columns(cohort: dict[str, pd.DataFrame]) -> None:
    pooled = pd.concat(cohort.values(), ignore_index=True)
    rates = pooled.isna().mean()
    for column in COLUMNS:
        if column in MISSING_RATES:
            assert 0.5 * MISSING_RATES[column] < rates[column] < 2 * MISSING_RATES[column]
        else:
            assert rates[column] == 0, column


def test_no_identifier_like_columns(cohort: dict[str, pd.DataFrame]) -> None:
    for df in cohort.values():
        for column in df.columns:
            assert not set(column.split("_")) & {"id", "name", "date", "zip", "dob", "mrn"}
            assert not pd.api.types.is_datetime64_any_dtype(df[column])
            if not pd.api.types.is_numeric_dtype(df[column]):
                assert df[column].nunique() <= len(RACES), column


def test_sites_are_not_identically_distributed(cohort: dict[str, pd.DataFrame]) -> None:
    urban, rural = cohort["urban-academic"], cohort["rural-network"]
    assert rural["age"].mean() - urban["age"].mean() > 4
    assert (rural["rurality"] == "rural").mean() > 0.7 > 0.2 > (urban["rurality"] == "rural").mean()
    assert rural["outcome"].mean() - urban["outcome"].mean() > 0.07
    for df in cohort.values():
        assert 0.1 < df["outcome"].mean() < 0.4


def test_true_model_discriminates_realistically(cohort: dict[str, pd.DataFrame]) -> None:
    risk = np.concatenate([true_risk(df, site) for site, df in cohort.items()])
    outcome = np.concatenate([df["outcome"].to_numpy() for df in cohort.values()])
    assert 0.74 <= roc_auc_score(outcome, risk) <= 0.86
    assert abs(risk.mean() - outcome.mean()) < 0.03


def test_study_toml_parses_with_arguments() -> None:
    spec = parse_spec(study_toml(name="demo", rounds=4, target_epsilon=1.5))
    assert (spec.study.name, spec.training.rounds, spec.privacy.target_epsilon) == ("demo", 4, 1.5)
    assert "race_ethnicity" in spec.study.groups
    assert "race_ethnicity" not in spec.features.columns


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_write_cohort_matches_its_spec(tmp_path, fmt: str) -> None:
    paths, spec_path = write_cohort(tmp_path / "cohort", n_sites=2, records_per_site=150, fmt=fmt)
    spec = load_spec(spec_path)
    assert set(paths) == set(site_names(2))
    for path in paths.values():
        assert path.suffix == f".{fmt}" and path.parent == tmp_path / "cohort"
        df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
        assert tuple(df.columns) == COLUMNS
        for column, levels in spec.features.categorical.items():
            assert set(df[column].dropna().astype(str)) <= set(levels), column
        for column in (*spec.features.numeric, spec.study.label, spec.study.consent):
            assert pd.api.types.is_numeric_dtype(df[column]), column
