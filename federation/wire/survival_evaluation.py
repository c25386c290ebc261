"""The DP evaluation release of a survival model: what a site says about a model's risk scores
and its test partition's follow-up.

Shared by the site (which computes and noises it, ``client.survival_evaluation``) and the
aggregator (which pools and reads it, ``server.survival_evaluation``), so both derive the same
cells and bins from the study spec alone. Nothing here depends on data.

One evaluation of a survival model is one Gaussian release on the site's test partition,
admitted by the site's ledger before it is computed (message ``evaluate``; a survival study
plans no second, ``evaluate.ranks``, release). For every cell of the binary release's layout
(``federation.wire.evaluation.layout``: the pooled cell, every declared level of every group
column, every level of every intersection of two of them) it holds

- a 3-D histogram: records by status (censored in the interval, or an event in it), by time
  interval (the spec's hazard intervals ``(0, c_1], ..., (c_{K-1}, c_K]`` and ``(c_K, inf)``)
  and by risk-score bin (``SCORE_EDGES`` on the linear predictor, the model's ``s(x)``: the
  same public edges at every site), flattened in that order;
- the cell's records and its events.

Every pooled metric (Harrell's and Uno's C-index, the time-dependent AUC and the Brier score
at the horizons, calibration against Kaplan-Meier) is post-processing of the summed
histograms (``server.survival_metrics``); the predicted survival of a score bin follows from
the model's baseline hazards, which the aggregator holds.

Sensitivity (add/remove one record): a record lies in exactly one cell of each table (the pooled
table, each group column, each intersection); there it adds 1 to exactly one entry of the
histogram (its status, its interval, its score bin), 1 to the records and 1 to the events if it
is one. Each table's statistics are weighted by the square root of their share of the release
(``Layout.table_shares()`` x ``STAT_SHARES``, whose three parts add to 1), so the weighted
vector moves by at most ``sqrt(sum over tables of share x (0.8 + 0.1 + 0.1)) = 1`` in L2. The
release is therefore one Gaussian mechanism of noise multiplier ``z`` (sample rate 1) per
evaluation, composed in the site's accountant with everything else it releases.
"""

from __future__ import annotations

import math

import numpy as np

from federation.wire.evaluation import EVAL_PREFIX, Cell, Layout, key
from federation.wire.spec import StudySpec
from privacy.accounting import calibrate_noise

# Risk-score bins on the linear predictor (a log hazard odds ratio): open tails below and above,
# 0.5-wide bins between. The C-index counts two records in one bin as a tie (1/2).
SCORE_EDGES = np.arange(-4.0, 4.0001, 0.5)
N_SCORE_BINS = len(SCORE_EDGES) + 1
CENSORED, EVENT = 0, 1

HISTOGRAM, RECORDS, EVENTS = "hist", "records", "events"
STAT_SHARES = {HISTOGRAM: 0.8, RECORDS: 0.1, EVENTS: 0.1}


def score_bins(score: np.ndarray) -> np.ndarray:
    """Each linear predictor's score bin (non-finite scores land in the tails, NaN low)."""
    score = np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf)
    return np.searchsorted(SCORE_EDGES, score, side="right").astype(np.int64)


def bin_scores() -> np.ndarray:
    """A representative score per bin: an inner bin's centre, a quarter-bin past a tail's edge."""
    centres = (SCORE_EDGES[:-1] + SCORE_EDGES[1:]) / 2
    return np.concatenate([[SCORE_EDGES[0] - 0.25], centres, [SCORE_EDGES[-1] + 0.25]])


def time_bins(time: np.ndarray, cuts: tuple[float, ...]) -> np.ndarray:
    """Each time's interval: k for ``(c_{k-1}, c_k]`` (time 0 in the first), ``len(cuts)`` after
    the last cut."""
    return np.searchsorted(np.asarray(cuts, dtype=float), time, side="left").astype(np.int64)


def histogram_shape(spec: StudySpec) -> tuple[int, int, int]:
    """(status, time interval, score bin) of one cell's histogram."""
    return 2, len(spec.study.intervals) + 1, N_SCORE_BINS


def histogram_keys(cells: list[Cell]) -> dict[str, tuple[Cell, str]]:
    """Every key of the release for ``cells``, with its cell and statistic."""
    return {
        key(EVAL_PREFIX, cell, statistic): (cell, statistic)
        for cell in cells
        for statistic in STAT_SHARES
    }


def statistic_sd(layout: Layout, table: tuple[str, str], statistic: str, noise: float) -> float:
    """Noise SD of one entry of ``statistic`` in ``table`` (natural units)."""
    return noise / math.sqrt(layout.table_shares()[table] * STAT_SHARES[statistic])


def survival_evaluation_noise(
    epsilon: float, delta: float, accountant: str, evaluations: int
) -> float:
    """The noise multiplier of each evaluation such that all ``evaluations`` of a run compose to
    at most ``epsilon`` at ``delta`` on the test partition."""
    return calibrate_noise(epsilon, delta, 1.0, evaluations, accountant)
