"""Pooled metrics from summed site statistics agree with scikit-learn on the pooled raw scores."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import numpy as np
import pytest
from flwr.app import MetricRecord
from flwr.common.serde import metric_record_from_proto, metric_record_to_proto
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from federation.scorestats import (
    CAL_BINS,
    N_BINS,
    ScoreStats,
    group_stats,
    groups_from_record,
    groups_to_record,
)
from federation.server.metrics import ROC_POINTS, compute_metrics, metrics_or_none

ODD_NAMES = ["", ".", "a.b", "x/y z", "50%", "%2E", "withheld", "tab\there", "ünï·code", "~-_"]


def cohort(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels from a logistic model and a miscalibrated, noisy logistic score (AUROC ~0.7-0.85)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    strength = rng.uniform(0.8, 2.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-(-1.5 + shift + strength * x)))).astype(np.int64)
    logit = -1.0 + 1.2 * strength * x + rng.normal(scale=0.4, size=n)
    return y, 1 / (1 + np.exp(-logit))


def sites(n_total: int, n_sites: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Unequal, non-IID sites (different prevalence) that together hold about n_total records."""
    weights = np.random.default_rng(seed).dirichlet(np.full(n_sites, 3.0))
    sizes = np.maximum(20, (weights * n_total).astype(int))
    return [cohort(int(size), seed * 100 + i, shift=0.4 * i) for i, size in enumerate(sizes)]


def pooled(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[ScoreStats, np.ndarray, np.ndarray]:
    """Site statistics summed as the server does (via the wire), and the pooled raw data."""
    total = ScoreStats.empty()
    for y, p in parts:
        total = total + ScoreStats.from_record(
            ScoreStats.from_scores(y, p).to_record("site"), "site"
        )
    return total, np.concatenate([y for y, _ in parts]), np.concatenate([p for _, p in parts])


CASES = [(200, 1, 1), (600, 2, 2), (2000, 3, 3), (5000, 4, 4), (12000, 5, 5), (20000, 6, 6)]


@pytest.mark.parametrize(("n_total", "n_sites", "seed"), CASES)
def test_pooled_metrics_match_sklearn(n_total: int, n_sites: int, seed: int) -> None:
    stats, y, p = pooled(sites(n_total, n_sites, seed))
    m = compute_metrics(stats)
    predicted = (p >= 0.5).astype(int)
    assert m["n"] == len(y) and m["n_pos"] == int(y.sum())
    assert 0.65 < m["auroc"] < 0.9
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-3)
    assert m["auprc"] == pytest.approx(average_precision_score(y, p), abs=5e-3)
    exact = {
        "prevalence": y.mean(),
        "brier": brier_score_loss(y, p),
        "log_loss": log_loss(y, p),
        "accuracy": accuracy_score(y, predicted),
        "sensitivity": recall_score(y, predicted),
        "specificity": recall_score(1 - y, 1 - predicted),
        "ppv": precision_score(y, predicted),
        "npv": precision_score(1 - y, 1 - predicted),
        "mean_predicted": p.mean(),
        "discrimination_slope": p[y == 1].mean() - p[y == 0].mean(),
        "calibration_in_the_large_observed_minus_predicted": y.mean() - p.mean(),
        "calibration_observed_expected_ratio": y.sum() / p.sum(),
        "brier_scaled": 1 - brier_score_loss(y, p) / (y.mean() * (1 - y.mean())),
    }
    for key, expected in exact.items():
        assert m[key] == pytest.approx(expected, rel=1e-9, abs=1e-12), key


def test_calibration_bins_match_raw_and_withhold_small_counts() -> None:
    rng = np.random.default_rng(11)
    p = np.concatenate([rng.uniform(0.0, 0.1, 30), rng.uniform(0.5, 0.6, 20), [1.0] * 21])
    y = (rng.random(len(p)) < p).astype(int)
    bins = compute_metrics(ScoreStats.from_scores(y, p))["calibration"]
    assert len(bins) == CAL_BINS
    low, middle, top = bins[0], bins[5], bins[9]
    assert low["count"] == 30
    assert low["mean_predicted"] == pytest.approx(p[:30].mean(), rel=1e-12)
    assert low["observed"] == pytest.approx(y[:30].mean(), rel=1e-12)
    assert middle == {
        "bin_lower": 0.5,
        "bin_upper": 0.6,
        "count": None,
        "mean_predicted": None,
        "observed": None,
    }
    assert top["count"] == 21 and top["mean_predicted"] == 1.0
    assert bins[3] == {
        "bin_lower": 0.3,
        "bin_upper": 0.4,
        "count": 0,
        "mean_predicted": None,
        "observed": None,
    }


def test_roc_curve_is_thinned_monotone_and_spans_the_square() -> None:
    stats, y, p = pooled(sites(20000, 3, 9))
    curve = compute_metrics(stats)["roc_curve"]
    assert 50 <= len(curve) <= ROC_POINTS + 1
    assert curve[0] == {"fpr": 0.0, "tpr": 0.0} and curve[-1] == {"fpr": 1.0, "tpr": 1.0}
    fpr, tpr = np.array([c["fpr"] for c in curve]), np.array([c["tpr"] for c in curve])
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, p), abs=0.01)


def delong_ci(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """DeLong's 95% interval on raw scores (midranks), as the reference for the binned one."""
    pos, neg = p[y == 1], p[y == 0]
    m, n = len(pos), len(neg)
    ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (ranks[:m] - rankdata(pos)) / n
    v01 = 1 - (ranks[m:] - rankdata(neg)) / m
    auc = v10.mean()
    se = math.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
    return auc - 1.959963984540054 * se, auc + 1.959963984540054 * se


def test_auroc_ci_matches_delong_contains_auroc_and_narrows_with_n() -> None:
    widths = []
    for n in (300, 3000, 20000):
        stats, y, p = pooled(sites(n, 2, 21))
        m = compute_metrics(stats)
        lo, hi = m["auroc_ci"]
        assert lo < m["auroc"] < hi
        assert (lo, hi) == pytest.approx(delong_ci(y, p), abs=2e-3)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def test_statistics_are_additive() -> None:
    y, p = cohort(3001, 5)
    a, b = ScoreStats.from_scores(y[:1234], p[:1234]), ScoreStats.from_scores(y[1234:], p[1234:])
    whole, summed = ScoreStats.from_scores(y, p), a + b
    for field in fields(ScoreStats):
        left, right = getattr(summed, field.name), getattr(whole, field.name)
        if np.asarray(left).dtype.kind == "f":  # float sums: equal up to summation order
            np.testing.assert_allclose(left, right, rtol=1e-12, atol=1e-12)
        else:
            assert np.array_equal(left, right), field.name
    assert ScoreStats.empty() + whole == whole == whole + ScoreStats.empty()
    assert (summed.n, summed.n_pos) == (3001, int(y.sum()))


def test_record_round_trip_is_exact_through_the_wire() -> None:
    y, p = cohort(500, 8)
    stats = ScoreStats.from_scores(y, p)
    record = MetricRecord(stats.to_record("site"))  # Flower accepts only its value types
    wire = metric_record_from_proto(metric_record_to_proto(record))
    assert ScoreStats.from_record(wire, "site") == stats
    assert ScoreStats.from_record(ScoreStats.empty().to_record("s"), "s") == ScoreStats.empty()
    assert len(stats.to_record("site")["site.hist_pos.bins"]) < N_BINS // 10  # sparse


def test_group_round_trip_with_odd_names() -> None:
    rng = np.random.default_rng(3)
    n = 30 * len(ODD_NAMES)
    y, p = (rng.random(n) < 0.3).astype(int), rng.random(n)
    levels = np.repeat(ODD_NAMES, 30)
    groups = {name: levels for name in ODD_NAMES}
    stats = group_stats(y, p, groups, min_cell_count=20)
    wire = metric_record_from_proto(metric_record_to_proto(MetricRecord(groups_to_record(stats))))
    back = groups_from_record(wire)
    assert back == stats
    assert set(back) == set(ODD_NAMES) and set(back["a.b"]) == set(ODD_NAMES)
    assert back["x/y z"]["%2E"] == ScoreStats.from_scores(y[levels == "%2E"], p[levels == "%2E"])


def test_small_cells_are_withheld_without_their_count() -> None:
    levels = np.array(["big"] * 25 + ["small"] * 5 + [None] * 21, dtype=object)
    y, p = np.tile([0, 1, 1], 17), np.linspace(0.01, 0.99, 51)
    stats = group_stats(y, p, {"site type": levels}, min_cell_count=20)
    assert set(stats["site type"]) == {"big", "small", "missing"}  # "absent" (0 rows): not listed
    assert stats["site type"]["small"] is None
    assert stats["site type"]["big"].n == 25 and stats["site type"]["missing"].n == 21
    record = groups_to_record(stats)
    small_keys = [k for k in record if k.startswith("group.site%20type.small.")]
    assert small_keys == ["group.site%20type.small.withheld"] and record[small_keys[0]] == 1
    assert not any(".absent." in k for k in record)
    assert groups_from_record(record)["site type"]["small"] is None
    assert metrics_or_none(None) is None and metrics_or_none(stats["site type"]["big"])["n"] == 25


def _valid() -> dict:
    y, p = cohort(400, 4)
    return ScoreStats.from_scores(y, p).to_record("site")


def _set(key: str, value: object):
    return lambda r: r.__setitem__(key, value)


MALFORMED = {
    "missing key": lambda r: r.pop("site.tp"),
    "unexpected key": _set("site.scores", [0.1, 0.2]),
    "other grid": _set("site.n_bins", N_BINS // 2),
    "bins/counts lengths": lambda r: r["site.hist_pos.counts"].pop(),
    "negative count": lambda r: r["site.hist_neg.counts"].__setitem__(0, -3),
    "zero count": lambda r: r["site.hist_neg.counts"].__setitem__(0, 0),
    "bin out of range": lambda r: r["site.hist_pos.bins"].__setitem__(-1, N_BINS),
    "unsorted bins": lambda r: r["site.hist_pos.bins"].reverse(),
    "float count": _set("site.tp", 3.0),
    "non-finite sum": _set("site.sum_log_loss", math.inf),
    "nan sum": _set("site.sum_score", math.nan),
    "short calibration": lambda r: r["site.cal_count"].pop(),
    "inconsistent confusion": lambda r: r.__setitem__("site.tp", r["site.tp"] + 1),
    "sum beyond count": _set("site.sum_sq_error", 1e9),
}


@pytest.mark.parametrize("corrupt", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_site_record_raises_value_error(corrupt) -> None:
    record = _valid()
    corrupt(record)
    with pytest.raises(ValueError):
        ScoreStats.from_record(record, "site")


@pytest.mark.parametrize(
    "record",
    [
        {"group.sex": 1},
        {"group.sex.f.withheld": 2},
        {"group.sex.f.withheld": 1, "group.sex.f.tp": 0},
        {"group.sex.a%2eb.withheld": 1},  # not canonical: two keys could name one level
        {"group.sex.%FF.withheld": 1},
        {"group.sex.f.n_bins": N_BINS},
    ],
)
def test_malformed_group_record_raises_value_error(record: dict) -> None:
    with pytest.raises(ValueError):
        groups_from_record(record)


@pytest.mark.parametrize(
    ("y", "p"),
    [([0, 1], [0.5, 1.5]), ([0, 1], [0.5, math.nan]), ([0, 2], [0.1, 0.2]), ([0, 1], [0.1])],
)
def test_bad_scores_raise_value_error(y: list, p: list) -> None:
    with pytest.raises(ValueError):
        ScoreStats.from_scores(np.array(y), np.array(p))


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_has_no_ranking_metrics(label: int) -> None:
    m = compute_metrics(ScoreStats.from_scores(np.full(50, label), np.linspace(0, 1, 50)))
    assert m["auroc"] is None and m["auprc"] is None and m["auroc_ci"] is None
    assert m["brier_scaled"] is None and m["roc_curve"] == []
    json.dumps(m, allow_nan=False)


def test_no_records_gives_valid_json() -> None:
    m = compute_metrics(ScoreStats.empty())
    assert m["n"] == 0 and m["prevalence"] is None and m["brier"] is None
    json.dumps(m, allow_nan=False)


def test_extreme_probabilities() -> None:
    p = np.array([0.0, 1.0, 1e-12, 1 - 1e-12, 0.3, 0.7, 0.0, 1.0] * 5)
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0] * 5)
    stats = ScoreStats.from_record(ScoreStats.from_scores(y, p).to_record("x"), "x")
    m = compute_metrics(stats)
    json.dumps(m, allow_nan=False)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    expected = -np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    assert m["log_loss"] == pytest.approx(expected, rel=1e-9)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-12)
    # Beyond the logit range scores share an end bin: 0 and 1e-12 tie, as do 1 - 1e-12 and 1.
    assert m["auroc"] == pytest.approx(roc_auc_score(y, np.clip(p, 1e-6, 1 - 1e-6)), abs=1e-12)
    assert (stats.hist_neg[0], stats.hist_pos[0], stats.hist_neg[-1], stats.hist_pos[-1]) == (
        10,
        5,
        5,
        10,
    )
