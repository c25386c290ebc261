"""The survival evaluation release and the metrics pooled from it, on arrays: each metric read
from the noise-free histogram of a synthetic cohort against scikit-survival on the same records
(within the binning error), the release's sensitivity, and intervals and withholding under
noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import kaplan_meier_estimator

from federation.client.survival_evaluation import (
    concordance_statistics,
    concordance_terms,
    survival_release,
    survival_statistics,
)
from federation.server import survival_metrics as sm
from federation.server.evaluation import MAX_CI_WIDTH, pool, with_ranks
from federation.server.survival_evaluation import (
    SWAMPED,
    UNDEFINED,
    Horizons,
    SurvivalCell,
    cell_metrics,
    concordance_query,
    noise_swamps_records,
    read_concordance,
    read_release,
)
from federation.synth import study_toml
from federation.wire.evaluation import (
    POOLED_CELL,
    POOLED_TABLE,
    Layout,
    layout,
)
from federation.wire.spec import feature_names, model_cuts, parse_spec
from federation.wire.survival_evaluation import (
    HISTOGRAM,
    N_SCORE_BINS,
    PROBE_LEVELS,
    STAT_SHARES,
    ConcordanceRequest,
    bin_scores,
    concordance_requests_from_config,
    concordance_requests_to_config,
    histogram_shape,
    score_bins,
    score_edges,
    score_grid,
    statistic_sd,
    survival_evaluation_noise,
)
from models.registry import build_model

# The score bins of a model whose scores are standard normal (``score_edges`` gives a model's).
EDGES = norm.ppf(PROBE_LEVELS)

CUTS = (182.0, 365.0, 730.0, 1095.0, 1460.0, 1825.0)
HORIZONS = (365.0, 1095.0, 1825.0)
BASELINE = np.log([0.02, 0.02, 0.04, 0.04, 0.05, 0.05])  # hazard logits per interval
POOLED_ONLY = Layout({POOLED_TABLE: ("all",)})


def _cohort(n: int = 4000, seed: int = 0):
    """Scores of a proportional-hazards cohort, its times (days) and events, and each record's
    predicted survival at every cut under the hazard model of ``BASELINE``."""
    rng = np.random.default_rng(seed)
    score = rng.normal(0.0, 1.0, n)
    event_time = rng.exponential(3000.0 / np.exp(score))
    censor_time = rng.uniform(60.0, 2400.0, n)
    time = np.ceil(np.minimum(event_time, censor_time))
    event = event_time <= censor_time
    return score, time, event


def _histogram(score, time, event, layout=POOLED_ONLY, edges=EDGES) -> np.ndarray:
    members = {table: np.full(len(score), "all", dtype=object) for table in layout.tables}
    outcome = np.column_stack([time, event.astype(float)])
    _, values, _ = survival_statistics(outcome, score, members, layout, CUTS, edges)
    shape = (2, len(CUTS) + 1, N_SCORE_BINS)
    return values[: math.prod(shape)].reshape(shape)


@pytest.fixture(scope="module")
def cohort():
    score, time, event = _cohort()
    target = np.array(list(zip(event, time, strict=True)), dtype=[("e", bool), ("t", float)])
    return score, time, event, target, _histogram(score, time, event)


def test_harrell_c_index_matches_scikit_survival(cohort):
    score, time, event, _, hist = cohort
    harrell = concordance_index_censored(event, time, score)[0]
    assert abs(float(sm.harrell_cindex(hist)) - harrell) < 0.01
    # pairs within a score bin read from their neighbours come closer than counting them as ties
    binned = concordance_index_censored(event, time, score_bins(score, EDGES).astype(float))[0]
    assert abs(float(sm.harrell_cindex(hist)) - harrell) < abs(binned - harrell)


def test_uno_c_index_matches_scikit_survival_where_censoring_weights_matter():
    """A cohort whose scores predict early events only, so that weighting late events up
    (Uno) moves the C-index: the histogram's Uno minus Harrell is scikit-survival's (the
    binning error, shared by both, cancels), and so is Uno's C-index itself."""
    rng = np.random.default_rng(0)
    score = rng.normal(0.0, 1.0, 4000)
    event_time = np.minimum(
        rng.exponential(1500.0 / np.exp(1.5 * score)), rng.uniform(0, 6e3, 4000)
    )
    censor_time = rng.uniform(60.0, 2400.0, 4000)
    time, event = np.ceil(np.minimum(event_time, censor_time)), event_time <= censor_time
    target = np.array(list(zip(event, time, strict=True)), dtype=[("e", bool), ("t", float)])
    hist = _histogram(score, time, event)
    uno = concordance_index_ipcw(target, target, score, tau=HORIZONS[-1])[0]
    harrell = concordance_index_censored(event, time, score)[0]
    ours = float(sm.uno_cindex(hist, CUTS.index(HORIZONS[-1])))
    assert harrell - uno > 0.015  # the weights matter here
    assert abs((ours - float(sm.harrell_cindex(hist))) - (uno - harrell)) < 0.005
    assert abs(ours - uno) < 0.02


def test_time_dependent_auc_matches_scikit_survival_at_each_horizon(cohort):
    score, _, _, target, hist = cohort
    exact, _ = cumulative_dynamic_auc(target, target, score, list(HORIZONS))
    ours = [float(sm.time_auc(hist, CUTS.index(h))) for h in HORIZONS]
    assert np.allclose(ours, exact, atol=0.01), (ours, exact)


def test_integrated_brier_score_matches_scikit_survival(cohort):
    score, _, _, target, hist = cohort
    exact = integrated_brier_score(
        target, target, sm.predicted_survival(score, BASELINE), np.array(CUTS)
    )
    binned = sm.predicted_survival(bin_scores(EDGES), BASELINE)
    ours = float(sm.integrated_brier(hist, binned, CUTS, len(CUTS) - 1))
    assert abs(ours - exact) < 0.003, (ours, exact)


def test_calibration_compares_kaplan_meier_with_the_models_risk_per_risk_group(cohort):
    score, time, event, _, hist = cohort
    bins = score_bins(score, EDGES)
    binned = sm.predicted_survival(bin_scores(EDGES), BASELINE)
    exact_survival = sm.predicted_survival(score, BASELINE)
    for low, high in ((0, 4), (4, 7), (7, 10)):
        rows = (bins >= low) & (bins < high)
        for horizon in HORIZONS:
            index = CUTS.index(horizon)
            observed, predicted = sm.observed_and_predicted(hist, binned, index, slice(low, high))
            times, curve = kaplan_meier_estimator(event[rows], time[rows])
            km = curve[np.searchsorted(times, horizon, side="right") - 1]
            assert abs(float(observed) - (1 - km)) < 0.01, (low, horizon)
            assert abs(float(predicted) - (1 - exact_survival[rows, index].mean())) < 0.01


def test_one_record_moves_the_weighted_release_by_at_most_one():
    """Adding or removing any one record changes the weighted vector by at most 1 in L2 (and
    by exactly 1 for some: the shares add up), whatever cells it lies in."""
    spec = parse_spec(study_toml(task="survival"))
    cells = layout(spec)
    rng = np.random.default_rng(1)
    score, time, event = _cohort(300, seed=2)
    members = {
        table: rng.choice(np.array(levels, dtype=object), len(score))
        for table, levels in cells.tables.items()
    }
    outcome = np.column_stack([time, event.astype(float)])
    cuts = spec.study.intervals
    _, full, weights = survival_statistics(outcome, score, members, cells, cuts, EDGES)
    moves = []
    for drop in range(0, 300, 23):
        keep = np.arange(300) != drop
        kept = {table: levels[keep] for table, levels in members.items()}
        _, fewer, _ = survival_statistics(outcome[keep], score[keep], kept, cells, cuts, EDGES)
        moves.append(np.linalg.norm((full - fewer) * weights))
    assert max(moves) <= 1 + 1e-9 and max(moves) > 1 - 1e-9, moves


def test_a_noisy_release_reads_back_with_intervals_that_cover_the_exact_c_index(cohort):
    score, time, event, _, _ = cohort
    spec = parse_spec(
        study_toml(task="survival").replace("horizons = [365, 1095, 1825]", "horizons = [1825]")
    )
    outcome = np.column_stack([time, event.astype(float)])
    members = {POOLED_TABLE: np.full(len(score), "all", dtype=object)}
    record = survival_release(
        outcome, score, members, POOLED_ONLY, spec.study.intervals, EDGES, 1.0
    )
    cells = read_release(record, spec, POOLED_ONLY, 1.0)
    release = cells[POOLED_CELL]
    assert release.hist.shape == histogram_shape(spec)
    assert release.variance[HISTOGRAM] == pytest.approx(1 / STAT_SHARES[HISTOGRAM])
    metrics = cell_metrics(release, Horizons.of(spec, BASELINE, EDGES))
    exact = concordance_index_censored(event, time, score)[0]
    low, high = metrics["cindex_ci"]
    # The noise is drawn unseeded: the 95% interval doubled about its centre misses 1 in 10^4.
    centre, half = (low + high) / 2, high - low
    assert centre - half <= exact <= centre + half and high - low < 0.05, (exact, low, high)
    assert metrics["auc_1825"] is not None and metrics["observed_risk_1825"] is not None
    with pytest.raises(ValueError, match="must be"):
        read_release({**record, next(iter(record)): [1.0, 2.0]}, spec, POOLED_ONLY, 1.0)


@pytest.mark.parametrize(
    ("noise", "seed", "reason"),
    [(2.0, 0, "95% interval too wide (DP noise and sampling)"), (6.0, 1, UNDEFINED)],
)
def test_metrics_the_noise_makes_meaningless_are_withheld_with_the_reason(noise, seed, reason):
    spec = parse_spec(study_toml(task="survival"))
    score, time, event = _cohort(150, seed=3)
    shape = histogram_shape(spec)
    members = {POOLED_TABLE: np.full(len(score), "all", dtype=object)}
    outcome = np.column_stack([time, event.astype(float)])
    _, values, _ = survival_statistics(
        outcome, score, members, POOLED_ONLY, spec.study.intervals, EDGES
    )
    sd = statistic_sd(POOLED_ONLY, POOLED_TABLE, HISTOGRAM, noise)
    noisy = values[: math.prod(shape)].reshape(shape)
    noisy = noisy + np.random.default_rng(seed).normal(0, sd, shape)
    variance = {s: statistic_sd(POOLED_ONLY, POOLED_TABLE, s, noise) ** 2 for s in STAT_SHARES}
    release = SurvivalCell(noisy, len(score), float(event.sum()), variance)
    metrics = cell_metrics(release, Horizons.of(spec, BASELINE[: len(spec.study.intervals)], EDGES))
    assert metrics["cindex"] is None and metrics["na_reason"]["cindex"] == reason
    if metrics["cindex_ci"] is not None:
        assert metrics["cindex_ci"][1] - metrics["cindex_ci"][0] > MAX_CI_WIDTH


def _linear_hazard_model(spec, weight: float) -> torch.nn.Module:
    """The study's hazard model whose risk score is ``weight`` times its first numeric input."""
    model = build_model("logistic", len(feature_names(spec)), (), model_cuts(spec))
    with torch.no_grad():
        model.score[0].weight.zero_()
        model.score[0].weight[0, 0] = weight
    return model


def test_score_edges_follow_the_models_spread_from_the_spec_and_model_alone():
    """The bins are quantiles of the model's scores on the spec's public probe: a model ten
    times narrower gets edges ten times closer, and a constant or NaN-scoring model still gets a
    fixed layout of rising edges."""
    spec = parse_spec(study_toml(task="survival"))
    wide = score_edges(spec, _linear_hazard_model(spec, 1.0))
    narrow = score_edges(spec, _linear_hazard_model(spec, 0.1))
    assert len(wide) == N_SCORE_BINS - 1 and np.all(np.diff(wide) > 0)
    assert np.allclose(narrow, wide / 10, atol=1e-6)
    assert np.allclose(wide, EDGES, atol=0.1)  # the probe's first input is standard normal
    constant = score_edges(spec, _linear_hazard_model(spec, 0.0))
    broken = score_edges(spec, _linear_hazard_model(spec, float("nan")))
    for edges in (constant, broken):
        assert len(edges) == N_SCORE_BINS - 1 and np.all(np.diff(edges) > 0)


def test_a_narrow_models_c_index_is_read_without_the_ties_of_fixed_bins():
    """A DP-trained model's scores are narrow (SD 0.2 here): on bins fixed in advance (0.5 wide
    from -4 to 4) most pairs are ties and the C-index falls towards 0.5; on the model's own
    bins it stays within 0.01 of scikit-survival's on the same records."""
    spec = parse_spec(study_toml(task="survival"))
    score, time, event = _cohort()
    narrow = 0.2 * score
    exact = concordance_index_censored(event, time, narrow)[0]
    edges = score_edges(spec, _linear_hazard_model(spec, 0.2))
    ours = float(sm.harrell_cindex(_histogram(narrow, time, event, edges=edges)))
    assert abs(ours - exact) < 0.01, (ours, exact)
    fixed = np.arange(-4.0, 4.0001, 0.5)
    binned = concordance_index_censored(event, time, score_bins(narrow, fixed).astype(float))[0]
    assert exact - binned > 0.05  # what the fixed bins gave


def _seeded_release(statistics, noise: float, rng: np.random.Generator) -> dict:
    """A release as ``client.evaluation.noisy_release`` makes it, with seeded noise."""
    names, values, weights = statistics
    released = values + rng.normal(0.0, noise, len(values)) / weights
    record, start = {}, 0
    for name, length in names:
        part = released[start : start + length]
        record[name] = [float(v) for v in part] if length > 1 else float(part[0])
        start += length
    return record


def test_the_c_index_from_the_histograms_alone_agrees_with_the_exact_one_under_seeded_noise():
    """Where no rank release answers (a site failed it, an intersection's cells): three sites
    of 400 test records scored by a narrow (DP-trained) model, the study's own layout (groups
    and intersections) and release 1's noise at epsilon 3: over seeded noise draws the pooled
    C-index read from the histograms is within 0.01 of the exact one on average, its error's SD
    under 0.05, and its 95% interval covers the exact value in at least 90% of the draws."""
    spec = parse_spec(study_toml(task="survival"))
    cells = layout(spec)
    noise, _ = survival_evaluation_noise(3.0, 1e-5, "prv", 1)
    edges = score_edges(spec, _linear_hazard_model(spec, 0.3))
    horizons = Horizons.of(spec, BASELINE, edges)
    rng = np.random.default_rng(7)
    score, time, event = _cohort(1200, seed=5)
    score = 0.3 * score
    outcome = np.column_stack([time, event.astype(float)])
    sites = []
    for rows in np.array_split(np.arange(1200), 3):
        members = {
            table: rng.choice(np.array(levels, dtype=object), len(rows))
            for table, levels in cells.tables.items()
        }
        sites.append(survival_statistics(outcome[rows], score[rows], members, cells, CUTS, edges))
    exact = concordance_index_censored(event, time, score)[0]
    errors, covered = [], []
    for _ in range(40):
        released = [read_release(_seeded_release(s, noise, rng), spec, cells, noise) for s in sites]
        metrics = cell_metrics(pool(released)[POOLED_CELL], horizons)
        errors.append(metrics["cindex"] - exact)
        covered.append(metrics["cindex_ci"][0] <= exact <= metrics["cindex_ci"][1])
    assert abs(np.mean(errors)) < 0.01 and np.std(errors) < 0.05, (np.mean(errors), np.std(errors))
    assert np.mean(covered) >= 0.9


def _sites(spec, cells, n: int, parts: int, shrink: float, seed: int):
    """``parts`` sites of a cohort of ``n`` test records scored by a model of ``shrink`` times
    the true spread, each record at random levels of the layout's tables."""
    rng = np.random.default_rng(seed)
    score, time, event = _cohort(n, seed=seed)
    outcome = np.column_stack([time, event.astype(float)])
    sites = []
    for rows in np.array_split(np.arange(n), parts):
        members = {
            table: rng.choice(np.array(levels, dtype=object), len(rows))
            for table, levels in cells.tables.items()
        }
        sites.append((outcome[rows], shrink * score[rows], members))
    return sites


def test_the_rank_release_c_index_is_closer_to_the_exact_one_than_the_histograms():
    """Both releases under seeded noise at epsilon 3 (the study's layout, three sites of 400
    test records, a narrow model): release 2's C-index, pooled and per site, is unbiased, its
    error's SD well under the histogram reading's and its 95% interval covers the exact
    scikit-survival value in at least 90% of the draws."""
    spec = parse_spec(study_toml(task="survival"))
    cells = layout(spec)
    histogram_noise, rank_noise = survival_evaluation_noise(3.0, 1e-5, "prv", 1)
    edges = score_edges(spec, _linear_hazard_model(spec, 0.3))
    horizons = Horizons.of(spec, BASELINE, edges)
    sites = _sites(spec, cells, 1200, 3, 0.3, seed=5)
    statistics = [survival_statistics(y, s, m, cells, CUTS, edges) for y, s, m in sites]

    def exact(y, s):
        return concordance_index_censored(y[:, 1] > 0.5, y[:, 0], s)[0]

    pooled_exact = exact(
        np.vstack([y for y, _, _ in sites]), np.concatenate([s for _, s, _ in sites])
    )
    rng = np.random.default_rng(11)
    errors, histogram_errors, covered, site_errors = [], [], [], []
    for _ in range(30):
        released = [
            read_release(_seeded_release(st, histogram_noise, rng), spec, cells, histogram_noise)
            for st in statistics
        ]
        pooled = pool(released)
        queries = {c: q for c in cells.rank_cells() if (q := concordance_query(pooled[c]))}
        config = concordance_requests_to_config({c: q.request for c, q in queries.items()})
        requests = concordance_requests_from_config(config, cells.rank_cells(), len(CUTS) + 1)
        ranks = [
            read_concordance(
                _seeded_release(
                    concordance_statistics(y, s, m, cells, CUTS, edges, requests), rank_noise, rng
                ),
                queries, cells, rank_noise,
            )
            for y, s, m in sites
        ]  # fmt: skip
        ranked = with_ranks(pooled, ranks)[POOLED_CELL]
        metrics = cell_metrics(ranked, horizons)
        assert metrics["cindex_method"] == "rank release"
        errors.append(metrics["cindex"] - pooled_exact)
        covered.append(metrics["cindex_ci"][0] <= pooled_exact <= metrics["cindex_ci"][1])
        histogram_errors.append(
            cell_metrics(pooled[POOLED_CELL], horizons)["cindex"] - pooled_exact
        )
        first = with_ranks(released[0], [ranks[0]])[POOLED_CELL]
        site_errors.append(cell_metrics(first, horizons)["cindex"] - exact(*sites[0][:2]))
    assert abs(np.mean(errors)) < 0.005 and np.std(errors) < 0.6 * np.std(histogram_errors)
    assert np.mean(covered) >= 0.9
    assert abs(np.mean(site_errors)) < 0.01 and np.std(site_errors) < 0.04


def test_a_concordance_term_stays_within_its_bound_whatever_the_request():
    """Release 2's sensitivity: against crafted requests (shares at random, not cumulative, or
    all at 1; centers at 0, 0.5 and 1), every record's term lies within ``max(c, 1 - c)`` and
    each cell's weight is ``sqrt(share) / bound``: removing one record moves the weighted
    vector by at most 1 in L2."""
    spec = parse_spec(study_toml(task="survival"))
    cells = layout(spec)
    y, s, members = _sites(spec, cells, 300, 1, 1.0, seed=2)[0]
    rng = np.random.default_rng(0)
    size = (len(CUTS) + 1) * (N_SCORE_BINS + 1)
    for center in (0.0, 0.5, 1.0):
        for shares in (rng.uniform(0, 1, size), np.ones(size)):
            config = concordance_requests_to_config(
                {c: ConcordanceRequest(*(tuple(np.roll(shares, k)) for k in range(4)), center)
                 for c in cells.rank_cells()}
            )  # fmt: skip
            requests = concordance_requests_from_config(config, cells.rank_cells(), len(CUTS) + 1)
            bound = max(center, 1 - center)
            grid = score_grid(EDGES)
            terms = concordance_terms(y, s, CUTS, grid, requests[POOLED_CELL])
            assert np.all(np.abs(terms) <= bound + 1e-12)
            _, full, weights = concordance_statistics(y, s, members, cells, CUTS, EDGES, requests)
            for removed in rng.choice(len(y), 10, replace=False):
                keep = np.arange(len(y)) != removed
                rest = {t: m[keep] for t, m in members.items()}
                _, less, _ = concordance_statistics(
                    y[keep], s[keep], rest, cells, CUTS, EDGES, requests
                )
                assert np.linalg.norm((full - less) * weights) <= 1 + 1e-9


@pytest.mark.parametrize(
    "change",
    [
        {"later": [0.5] * 3},  # the wrong length
        {"within": [float("nan")] * 77},
        {"earlier_events": [2.0] * 77},  # outside [0, 1]
        {"center": 1.5},
        {"center": "0.5"},
        {"within_events": ["0.5"] * 77},
    ],
)
def test_a_malformed_concordance_request_is_refused(change):
    spec = parse_spec(study_toml(task="survival"))
    cells = layout(spec)
    size = (len(CUTS) + 1) * (N_SCORE_BINS + 1)
    request = ConcordanceRequest(*[(0.5,) * size] * 4, 0.5)
    config = concordance_requests_to_config({POOLED_CELL: request})
    for field, value in change.items():
        config[f"ranks.pooled.all.all.{field}"] = value
    with pytest.raises(ValueError):
        concordance_requests_from_config(config, cells.rank_cells(), len(CUTS) + 1)
    config = concordance_requests_to_config({("intersection", "x", "y"): request})
    with pytest.raises(ValueError, match="does not declare"):
        concordance_requests_from_config(config, cells.rank_cells(), len(CUTS) + 1)


@pytest.mark.parametrize(("records", "swamped"), [(4000, False), (150, True)])
def test_metrics_read_from_cleaned_bins_are_withheld_where_the_noise_outweighs_the_records(
    records, swamped
):
    """The same noise (sd 2 a bin) on a histogram of 4,000 records and of 150: on the few,
    the positive part a non-negative fit keeps from the noise outweighs them, so the integrated
    Brier score, the observed and predicted risks and the calibration groups are withheld with
    the reason; the concordance metrics, read from the noisy bins, are not."""
    spec = parse_spec(study_toml(task="survival"))
    score, time, event = _cohort(records, seed=4)
    shape = histogram_shape(spec)
    hist = _histogram(score, time, event).reshape(shape)
    noisy = hist + np.random.default_rng(0).normal(0, 2.0, shape)
    variance = dict.fromkeys(STAT_SHARES, 4.0)
    release = SurvivalCell(noisy, float(records), float(event.sum()), variance)
    assert noise_swamps_records(release) is swamped
    metrics = cell_metrics(release, Horizons.of(spec, BASELINE[: len(spec.study.intervals)], EDGES))
    read_from_cleaned = ["integrated_brier", "observed_risk_365", "observed_risk_1825"]
    if swamped:
        for name in read_from_cleaned:
            assert metrics[name] is None and metrics[f"{name}_ci"] is None
            assert metrics["na_reason"][name] == SWAMPED
        assert metrics["predicted_risk_1825"] is None
        assert all(entry["groups"] == [] for entry in metrics["calibration"])
        assert metrics["cindex_ci"] is not None  # the concordance is still read
    else:
        assert all(metrics[name] is not None for name in read_from_cleaned)
        assert metrics["predicted_risk_1825"] is not None
        assert all(entry["groups"] for entry in metrics["calibration"])
