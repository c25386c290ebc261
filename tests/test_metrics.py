"""Pooled metrics from summed site statistics agree with scikit-learn on the pooled raw scores."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import numpy as np
import pytest
from flwr.app import MetricRecord
from flwr.common.serde import metric_record_from_proto, metric_record_to_proto
from scipy.optimize import brentq
from scipy.special import expit, logit
from scipy.stats import rankdata
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from federation.scorestats import (
    CAL_BINS,
    N_BINS,
    ScoreStats,
    counts_from_record,
    counts_to_record,
    group_stats,
    groups_from_record,
    groups_to_record,
    intersect_groups,
    level_counts,
)
from federation.server.metrics import (
    ROC_POINTS,
    THRESHOLD_METRICS,
    GroupPool,
    compute_metrics,
    group_metrics,
    publish_groups,
)

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
    p = np.concatenate(
        [
            rng.uniform(0.0, 0.1, 50),  # 25 events: shown
            rng.uniform(0.3, 0.4, 41),  # 20 events: the count shows, the observed risk does not
            rng.uniform(0.5, 0.6, 20),  # 20 records: withheld
            [1.0] * 21,  # 21 events, no non-events: shown
        ]
    )
    y = np.concatenate([np.tile([0, 1], 25), [1] * 20 + [0] * 21, [1] * 20, [1] * 21])
    bins = compute_metrics(ScoreStats.from_scores(y, p))["calibration"]
    assert len(bins) == CAL_BINS
    low, fourth, middle, top = bins[0], bins[3], bins[5], bins[9]
    assert low["count"] == 50 and low["observed"] == 0.5
    assert low["mean_predicted"] == pytest.approx(p[:50].mean(), rel=1e-12)
    assert fourth["count"] == 41 and fourth["observed"] is None
    assert fourth["mean_predicted"] == pytest.approx(p[50:91].mean(), rel=1e-12)
    assert middle == {
        "bin_lower": 0.5,
        "bin_upper": 0.6,
        "count": None,
        "mean_predicted": None,
        "observed": None,
    }
    assert top["count"] == 21 and top["mean_predicted"] == 1.0 and top["observed"] == 1.0
    assert bins[2] == {
        "bin_lower": 0.2,
        "bin_upper": 0.3,
        "count": 0,
        "mean_predicted": None,
        "observed": None,
    }


@pytest.mark.parametrize(("n_total", "n_sites", "seed"), CASES[2:])
def test_calibration_bins_match_sklearn(n_total: int, n_sites: int, seed: int) -> None:
    stats, y, p = pooled(sites(n_total, n_sites, seed))
    observed, predicted = calibration_curve(y, p, n_bins=CAL_BINS, strategy="uniform")
    shown = [b for b in compute_metrics(stats)["calibration"] if b["observed"] is not None]
    reference = {round(mean, 12): obs for obs, mean in zip(observed, predicted, strict=True)}
    assert len(shown) >= 3
    for b in shown:
        assert b["observed"] == pytest.approx(reference[round(b["mean_predicted"], 12)], abs=1e-12)


def test_roc_curve_is_thinned_monotone_and_spans_the_square() -> None:
    stats, y, p = pooled(sites(20000, 3, 9))
    curve = compute_metrics(stats)["roc_curve"]
    assert 50 <= len(curve) <= ROC_POINTS + 1
    assert curve[0] == {"fpr": 0.0, "tpr": 0.0} and curve[-1] == {"fpr": 1.0, "tpr": 1.0}
    fpr, tpr = np.array([c["fpr"] for c in curve]), np.array([c["tpr"] for c in curve])
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, p), abs=0.01)
    # Each point is a vertex of sklearn's curve: a threshold between two distinct raw scores.
    ref_fpr, ref_tpr, _ = roc_curve(y, p, drop_intermediate=False)
    vertices = np.column_stack([ref_fpr, ref_tpr])
    for point in curve:
        assert np.min(np.abs(vertices - [point["fpr"], point["tpr"]]).sum(axis=1)) < 1e-12


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
    n = 80 * len(ODD_NAMES)
    y, p = (rng.random(n) < 0.5).astype(int), rng.random(n)
    levels = np.repeat(ODD_NAMES, 80)
    groups = {name: levels for name in ODD_NAMES}
    stats = group_stats(y, p, groups, min_cell_count=20)
    wire = metric_record_from_proto(metric_record_to_proto(MetricRecord(groups_to_record(stats))))
    back = groups_from_record(wire)
    assert back == stats
    assert set(back) == set(ODD_NAMES) and set(back["a.b"]) == set(ODD_NAMES)
    mask = levels == "%2E"
    assert back["x/y z"]["%2E"] == ScoreStats.released(y[mask], p[mask], 20)


def test_small_cells_are_withheld_without_their_count() -> None:
    # big: 30 events, 30 non-events; small: 5 records; missing: 22 events, 23 non-events.
    levels = np.array(["big"] * 60 + ["small"] * 5 + [None] * 45, dtype=object)
    y = np.array([0, 1] * 30 + [1, 1, 0, 1, 0] + [1] * 22 + [0] * 23)
    p = np.linspace(0.01, 0.99, len(y))
    stats = group_stats(y, p, {"site type": levels}, min_cell_count=20)
    assert set(stats["site type"]) == {"big", "small", "missing"}  # "absent" (0 rows): not listed
    assert stats["site type"]["small"] is None
    # The site's total is released, so "small" = total - big - missing: missing goes too.
    assert stats["site type"]["missing"] is None
    assert stats["site type"]["big"].n == 60
    record = groups_to_record(stats)
    small_keys = [k for k in record if k.startswith("group.site%20type.small.")]
    assert small_keys == ["group.site%20type.small.withheld"] and record[small_keys[0]] == 1
    assert not any(".absent." in k for k in record)
    assert groups_from_record(record)["site type"]["small"] is None
    assert group_metrics(None) is None and group_metrics(stats["site type"]["big"])["n"] == 60


def test_a_confusion_matrix_coarsened_across_the_threshold_is_withheld_not_zero() -> None:
    """5 non-events score above 0.5: releasing FP = 5 is disclosive and coarsening moves them
    below; the pooled specificity must then be withheld, never reported as exactly 1."""
    rng = np.random.default_rng(4)
    y = np.array([0] * 200 + [1] * 100)
    p = np.concatenate([rng.uniform(0.05, 0.45, 195), rng.uniform(0.55, 0.9, 5),
                        rng.uniform(0.2, 0.95, 100)])  # fmt: skip
    exact = ScoreStats.from_scores(y, p)
    released = ScoreStats.released(y, p, min_cell_count=20)
    assert exact.fp == 5 and released.fp != 5 and released.threshold_coarsened == 1
    assert compute_metrics(exact)["specificity"] < 1
    clean = ScoreStats.released(*_two_classes(500, seed=5), min_cell_count=20)
    assert clean.threshold_coarsened == 0 and compute_metrics(clean)["specificity"] is not None
    pooled = ScoreStats.from_record((released + clean).to_record("site"), "site")
    assert pooled.threshold_coarsened == 1
    assert all(compute_metrics(pooled)[key] is None for key in THRESHOLD_METRICS)
    assert compute_metrics(pooled)["auroc"] is not None


def _two_classes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, expit(rng.normal(2.0 * y - 1.0, 1.0))


def test_a_level_with_few_events_is_withheld() -> None:
    levels = np.array(["a"] * 100 + ["b"] * 100, dtype=object)
    y = np.array([1] * 10 + [0] * 90 + [1, 0] * 50)
    stats = group_stats(y, np.linspace(0.01, 0.99, 200), {"g": levels}, min_cell_count=20)
    assert stats["g"]["a"] is None  # 10 events: withheld although the level has 100 records
    assert stats["g"]["b"] is None  # and "b" too: the site's totals minus "b" would give "a"


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


# -- calibration intercept, slope and E-statistics --------------------------------------------

MISCALIBRATED = {
    "cohort": lambda y, p: p,
    "overconfident": lambda y, p: expit(2.5 * logit(p) + 0.5),
    "underconfident": lambda y, p: expit(0.4 * logit(p) - 0.8),
}


def lowess_errors(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """E-statistics of R's lowess(p, y, f = 2/3, iter = 0) computed record by record."""
    order = np.argsort(p, kind="stable")
    x, y = p[order], y[order].astype(np.float64)
    n = len(x)
    needed = max(min(int(2 / 3 * n + 1e-7), n), 2)
    fitted = np.empty(n)
    for start in range(0, n, 400):
        at = x[start : start + 400]
        distance = np.abs(x[None, :] - at[:, None])
        radius = np.partition(distance, needed - 1, axis=1)[:, needed - 1 : needed]
        ratio = np.divide(distance, radius, out=np.zeros_like(distance), where=radius > 0)
        tricube = np.where(ratio <= 0.001, 1.0, (1 - ratio**3) ** 3)
        weight = np.where(distance <= 0.999 * radius, tricube, 0.0)
        weight /= weight.sum(axis=1, keepdims=True)
        centre = weight @ x
        spread = np.einsum("ij,ij->i", weight, (x[None, :] - centre[:, None]) ** 2)
        slope = np.where(np.sqrt(spread) > 0.001 * (x[-1] - x[0]), (at - centre) / spread, 0.0)
        weight *= 1 + slope[:, None] * (x[None, :] - centre[:, None])
        fitted[start : start + 400] = weight @ y
    error = np.abs(fitted - x)
    return {
        "calibration_e_avg": error.mean(),
        "calibration_e50": np.quantile(error, 0.5, method="inverted_cdf"),
        "calibration_e90": np.quantile(error, 0.9, method="inverted_cdf"),
        "calibration_e_max": error.max(),
    }


@pytest.mark.parametrize("shape", MISCALIBRATED.values(), ids=MISCALIBRATED.keys())
@pytest.mark.parametrize(("n_total", "n_sites", "seed"), CASES[:5])
def test_calibration_fit_matches_sklearn(n_total: int, n_sites: int, seed: int, shape) -> None:
    parts = [(y, shape(y, p)) for y, p in sites(n_total, n_sites, seed)]
    stats, y, p = pooled(parts)
    m = compute_metrics(stats)
    line = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logit(p)[:, None], y)
    at_slope_one = brentq(lambda a: np.sum(y - expit(a + logit(p))), -20, 20)
    # Records sit at their fine bin's centre logit: off by at most 0.0025 from their own.
    assert m["calibration_slope"] == pytest.approx(line.coef_[0, 0], abs=2e-3)
    assert m["calibration_line_intercept"] == pytest.approx(line.intercept_[0], abs=2e-3)
    assert m["calibration_intercept"] == pytest.approx(at_slope_one, abs=2e-3)


@pytest.mark.parametrize("shape", MISCALIBRATED.values(), ids=MISCALIBRATED.keys())
@pytest.mark.parametrize(("n_total", "n_sites", "seed"), CASES[:4])
def test_calibration_errors_match_lowess_on_raw_scores(n_total, n_sites, seed, shape) -> None:
    parts = [(y, shape(y, p)) for y, p in sites(n_total, n_sites, seed)]
    stats, y, p = pooled(parts)
    m = compute_metrics(stats)
    for key, expected in lowess_errors(y, p).items():
        assert m[key] == pytest.approx(expected, abs=2e-3), key
    assert m["calibration_e50"] <= m["calibration_e90"] <= m["calibration_e_max"]
    # The published curve sits on a fixed grid, with more than 20 records on either side.
    grid = np.array([c["predicted"] for c in m["calibration_smoothed"]])
    assert len(grid) >= 3 and np.allclose(grid * 100, np.round(grid * 100))
    assert (p <= grid[0]).sum() > 20 and (p >= grid[-1]).sum() > 20


def test_calibration_of_a_calibrated_model_is_near_ideal() -> None:
    rng = np.random.default_rng(5)
    p = expit(rng.normal(-1.0, 1.2, 40000))
    y = (rng.random(len(p)) < p).astype(int)
    m = compute_metrics(ScoreStats.from_scores(y, p))
    assert abs(m["calibration_intercept"]) < 0.05 and abs(m["calibration_slope"] - 1) < 0.05
    assert m["calibration_e_avg"] < 0.01


def test_separated_or_single_class_scores_have_no_calibration_fit() -> None:
    y = np.array([0] * 30 + [1] * 30)
    separated = compute_metrics(ScoreStats.from_scores(y, np.where(y == 1, 0.9, 0.1)))
    assert separated["calibration_slope"] is None  # the slope would be infinite
    assert separated["calibration_intercept"] == pytest.approx(0.0, abs=1e-2)  # symmetric
    single = compute_metrics(ScoreStats.from_scores(np.zeros(40, int), np.linspace(0, 0.5, 40)))
    assert single["calibration_slope"] is None and single["calibration_intercept"] is None
    assert single["calibration_e_avg"] == pytest.approx(np.linspace(0, 0.5, 40).mean(), abs=1e-3)
    json.dumps(separated, allow_nan=False)
    json.dumps(single, allow_nan=False)


# -- groups: derived counts, intersections, complementary suppression, representation --------


def test_group_metrics_leave_out_what_reveals_a_small_count() -> None:
    y, p = cohort(400, 2)
    stats = ScoreStats.from_scores(y, np.minimum(p, 0.45) + (np.arange(400) < 10) * 0.5)
    assert 0 < stats.tp + stats.fp <= 10  # only ten records are flagged at 0.5
    m = group_metrics(stats)
    assert all(m[key] is None for key in THRESHOLD_METRICS)
    assert m["roc_curve"] == [] and m["auroc"] == compute_metrics(stats)["auroc"]
    big = ScoreStats.from_scores(np.tile([0, 1], 100), np.tile([0.3, 0.7], 100))
    assert group_metrics(big)["sensitivity"] == 1.0


def test_intersections_are_columns_of_joined_levels() -> None:
    groups = {"sex": np.array(["f", "m", "f"]), "race": np.array(["A", None, "B"], dtype=object)}
    groups["site type"] = np.array(["x", "y", "x"])
    crossed = intersect_groups(groups)
    assert list(crossed) == ["sex x race", "sex x site type", "race x site type"]
    assert list(crossed["sex x race"]) == ["f | A", "m | missing", "f | B"]


def stats_of(n: int, n_pos: int) -> ScoreStats:
    return ScoreStats.from_scores(np.array([1] * n_pos + [0] * (n - n_pos)), np.full(n, 0.3))


def counts(table: dict) -> dict:
    return {
        column: {
            level: None if e["metrics"] is None else e["metrics"]["n"]
            for level, e in levels.items()
        }
        for column, levels in table.items()
    }


def test_a_group_that_subtraction_would_reveal_is_withheld() -> None:
    single = GroupPool()
    single.add("a", {"sex": {"f": stats_of(300, 100), "m": stats_of(200, 60), "x": None}})
    single.add("b", {"sex": {"f": stats_of(100, 30), "m": stats_of(25, 1)}})
    pooled = stats_of(300 + 200 + 100 + 25 + 5, 100 + 60 + 30 + 1 + 2)
    per_group, _ = publish_groups(pooled, single, GroupPool(), {})
    # m pools to 225 records but 61 events, fine; x (5 records at site a) is unseen, and showing
    # f and m would reveal it as 630 - 400 - 225: so m, the smaller, is withheld too.
    assert counts(per_group) == {"sex": {"f": 400, "m": None, "x": None}}
    assert per_group["sex"]["x"]["withheld_at"] == ["a"]


def test_an_intersection_cell_that_its_row_would_reveal_is_withheld() -> None:
    single, crossed = GroupPool(), GroupPool()
    single.add("a", {"sex": {"f": stats_of(200, 80), "m": stats_of(200, 80)}})
    single.add("a", {"race": {"A": stats_of(190, 76), "B": stats_of(210, 84)}})
    crossed.add(
        "a",
        {
            "sex x race": {
                "f | A": stats_of(100, 40),
                "f | B": stats_of(100, 40),
                "m | A": stats_of(90, 36),
                "m | B": stats_of(110, 44),
            }
        },
    )
    crossed.stats["sex x race"]["f | A"] = stats_of(95, 38)  # 5 records of f | A not shown
    pooled = stats_of(400, 160)
    per_group, per_intersection = publish_groups(
        pooled, single, crossed, {"sex x race": ("sex", "race")}
    )
    assert counts(per_group) == {"sex": {"f": 200, "m": 200}, "race": {"A": 190, "B": 210}}
    # The four cells leave 5 of the 400 records unseen: the smallest (m | A) goes, but the rest
    # (95) gives it back and row f still leaves 5, so f | A goes too. Now the table leaves 190,
    # and what a reader can work out for f | A (100) and m | A (90) includes the 5.
    assert counts(per_intersection) == {
        "sex x race": {"f | A": None, "f | B": 100, "m | A": None, "m | B": 110}
    }


def test_representation_counts_are_suppressed_with_their_complement() -> None:
    levels = np.array(["a"] * 100 + ["b"] * 30 + ["c"] * 25 + ["d"] * 5 + [None] * 3, dtype=object)
    table = level_counts({"race": levels, "all": np.array(["x"] * len(levels))}, 20)
    # d (5) and missing (3) are small, and together 8: c, the smallest shown level, goes too.
    assert table["race"] == {"a": 100, "b": 30, "c": None, "d": None, "missing": None}
    assert table["all"] == {"x": 163}
    record = counts_to_record(table, "representation")
    assert (
        record["representation.race.d.withheld"] == 1
        and "representation.race.d.count" not in record
    )
    wire = metric_record_from_proto(metric_record_to_proto(MetricRecord(record)))
    assert counts_from_record(wire, "representation") == table


@pytest.mark.parametrize(
    "record",
    [
        {"representation.race.a.count": 7},
        {"representation.race.a.count": -1},
        {"representation.race.a.count": 30.0},
        {"representation.race.a.withheld": 1, "representation.race.a.count": 30},
        {"representation.race.a.total": 30},
        {"representation.race": 30},
    ],
)
def test_malformed_representation_raises_value_error(record: dict) -> None:
    with pytest.raises(ValueError):
        counts_from_record(record, "representation")
