"""The DP evaluation release: what a site says about a model's scores on its test partition.

Shared by the site (which computes and noises it, ``client.evaluation``) and the aggregator
(which pools and reads it, ``server.evaluation``), so both derive the same cells from the study
spec alone. Nothing here depends on data.

One evaluation of a model is two Gaussian releases on the site's test partition, each admitted
by the site's ledger before it is computed:

1. **Histograms** (message ``evaluate``): for every cell (the site's whole test partition, every
   declared level of every group column, every level of every intersection of two group
   columns) the records per class in each of ``N_BINS`` score bins on fixed logit edges (the
   same for both classes and every site), the records and the events, the sum of residuals
   ``y - p`` and the sum of squared errors ``(p - y)^2``. Every metric but the AUROC is read
   from these.
2. **Ranks** (message ``evaluate.ranks``): per cell, two sums of public functions the
   aggregator sends, the cell's pooled class CDFs ``F`` (positives) and ``G`` (negatives) from
   release 1: over the cell's positives ``G(score) - c``, over its negatives
   ``F(score) - (1 - c)``, with ``c`` the AUROC of those CDFs. The AUROC is then
   ``c + rank_pos / n_pos - rank_neg / n_neg``, whose error is the product of the two CDFs'
   errors (second order: ``-integral (G_true - G) d(F_true - F)``) where a one-sided mean of
   ``G`` carries ``G``'s error itself; each sum is measured from every record's exact score, so
   the noise is that of two bounded sums, where a histogram's AUROC carries the noise of every
   bin (measured: ``benchmarks/evaluation.py``).

Sensitivity (add/remove one record): in release 1, a record lies in exactly one cell of each
table (the pooled table, each group column, each intersection); there it adds 1 to one bin of
its class's histogram, 1 to the records, 1 to the events if it is one, its residual (in [-1, 1])
and its squared error (in [0, 1]). Each table's statistics are weighted by the square root of
their share of the release (``table_shares`` x ``STAT_SHARES``; the two histograms are disjoint
and share one part), so the weighted vector moves by at most 1 in L2. In release 2, a record
adds to one of its cell's two sums per table (its class's), at most ``max(c, 1 - c)`` in
absolute value; dividing each cell by that bound and weighting by the table's share again gives
L2 sensitivity 1. Each release is therefore one
Gaussian mechanism of noise multiplier ``z`` (sample rate 1), and the two compose as Gaussians.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from federation.wire.protocol import decode_name, encode_name
from federation.wire.queries import level_names
from federation.wire.spec import StudySpec
from privacy.accounting import GaussianRelease, calibrate_noise, compute_epsilon

# Score bins: open tails below and above, and 0.5-wide bins on the logit scale between.
# logit 0 (risk 0.5, the threshold of the threshold metrics) is an edge.
INNER_EDGES = np.arange(-6.0, 4.0001, 0.5)
N_BINS = len(INNER_EDGES) + 1
THRESHOLD = 0.5
THRESHOLD_BIN = int(np.searchsorted(INNER_EDGES, 0.0)) + 1  # first bin at or above the threshold
_TAIL_LOW, _TAIL_HIGH = 1 / (1 + math.exp(-INNER_EDGES[0])), 1 / (1 + math.exp(-INNER_EDGES[-1]))

POOLED, GROUP, INTERSECTION = "pooled", "group", "intersection"
ALL = "all"
INTERSECTION_JOIN = " x "  # joins two group column names
LEVEL_JOIN = " | "  # joins their levels

Table = tuple[str, str]  # (kind, column)
Cell = tuple[str, str, str]  # (kind, column, level)
POOLED_TABLE: Table = (POOLED, ALL)
POOLED_CELL: Cell = (POOLED, ALL, ALL)

HIST_POS, HIST_NEG, RECORDS, EVENTS = "hist_pos", "hist_neg", "records", "events"
RESIDUALS, SQUARED_ERRORS = "residuals", "squared_errors"
RANK_POS, RANK_NEG = "rank_pos", "rank_neg"  # release 2: the sums over each class
HISTOGRAMS = (HIST_POS, HIST_NEG)
# Within a table; a record is in one class, so the two histograms share one part. The
# histograms feed the rank release's CDFs (whose error enters the AUROC at second order only),
# the calibration plot and fits; the residuals give calibration-in-the-large, so they get more.
STAT_SHARES = {
    HIST_POS: 0.5,
    HIST_NEG: 0.5,
    RECORDS: 0.1,
    EVENTS: 0.1,
    RESIDUALS: 0.2,
    SQUARED_ERRORS: 0.1,
}

# Of an evaluation's rho, release 1's; release 2 (the AUROCs) gets the rest. The AUROC's noise
# is that of release 2's sums, so it gets the larger part (measured: benchmarks/evaluation.py).
HISTOGRAM_SHARE = 0.35
# Each release's split between its tables: the pooled AUROC is the headline, so release 2 ranks
# the pooled cell and the group levels only; intersections' AUROCs come from their histograms
# (their cells are small, and mostly withheld anyway).
GROUPS_SHARE = {False: 0.3, True: 0.2}  # by release: False the histograms, True the ranks
INTERSECTIONS_SHARE = {False: 0.1, True: 0.0}

EVAL_PREFIX, RANKS_PREFIX = "eval", "ranks"
CDF_POS, CDF_NEG, CENTER = "cdf_pos", "cdf_neg", "center"


def score_bins(p: np.ndarray) -> np.ndarray:
    """Each probability's score bin (0 and 1 land in the tails)."""
    with np.errstate(divide="ignore"):
        logit = np.log(p) - np.log1p(-p)
    return np.searchsorted(INNER_EDGES, logit, side="right").astype(np.int64)


def bin_logits() -> np.ndarray:
    """A representative logit per bin: the centre of an inner bin, a quarter-bin past a tail's
    edge (where a calibrated model's few tail records lie)."""
    centres = (INNER_EDGES[:-1] + INNER_EDGES[1:]) / 2
    return np.concatenate([[INNER_EDGES[0] - 0.25], centres, [INNER_EDGES[-1] + 0.25]])


def cdf_at(p: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    """A CDF given at the bin edges (``N_BINS + 1`` values, from the lowest edge to the
    highest), evaluated at scores ``p``: linear in the logit within an inner bin, linear in the
    risk within a tail."""
    cdf = np.asarray(cdf, dtype=float)
    bins = score_bins(p)
    with np.errstate(divide="ignore"):
        logit = np.log(p) - np.log1p(-p)
    low = np.concatenate([[-np.inf], INNER_EDGES])[bins]
    high = np.concatenate([INNER_EDGES, [np.inf]])[bins]
    with np.errstate(invalid="ignore"):
        fraction = np.where(
            bins == 0,
            p / _TAIL_LOW,
            np.where(
                bins == N_BINS - 1,
                (p - _TAIL_HIGH) / (1 - _TAIL_HIGH),
                (logit - low) / (high - low),
            ),
        )
    fraction = np.clip(np.nan_to_num(fraction, nan=0.5), 0.0, 1.0)
    return cdf[bins] + fraction * (cdf[bins + 1] - cdf[bins])


@dataclass(frozen=True)
class Layout:
    """The cells of one study's evaluation release, and each table's share of it."""

    tables: dict[Table, tuple[str, ...]]  # table -> its levels, in order

    @property
    def cells(self) -> list[Cell]:
        return [(kind, column, level) for (kind, column), levels in self.tables.items()
                for level in levels]  # fmt: skip

    def table_shares(self, ranks: bool = False) -> dict[Table, float]:
        """How release 1 (``ranks`` False) or 2 splits between its tables: ``GROUPS_SHARE`` and
        ``INTERSECTIONS_SHARE`` equally among the columns of their kind, the rest (and a
        missing kind's share) to the pooled table. A table of share 0 is not in the release."""
        by_kind: dict[str, list[Table]] = {}
        for table in self.tables:
            by_kind.setdefault(table[0], []).append(table)
        shares = {GROUP: GROUPS_SHARE[ranks], INTERSECTION: INTERSECTIONS_SHARE[ranks]}
        pooled = 1.0 - sum(share for kind, share in shares.items() if kind in by_kind)
        result = {POOLED_TABLE: pooled}
        for kind, share in shares.items():
            for table in by_kind.get(kind, []):
                result[table] = share / len(by_kind[kind])
        return result

    def rank_cells(self) -> list[Cell]:
        """The cells release 2 may rank."""
        shares = self.table_shares(ranks=True)
        return [cell for cell in self.cells if shares[cell[:2]] > 0]

    def histogram_sd(self, table: Table, statistic: str, noise_multiplier: float) -> float:
        """Noise SD of one statistic of release 1 in ``table`` (natural units)."""
        share = self.table_shares()[table] * STAT_SHARES[statistic]
        return noise_multiplier / math.sqrt(share)

    def rank_sd(self, table: Table, center: float, noise_multiplier: float) -> float:
        """Noise SD of each of one cell's two rank sums in release 2 (natural units)."""
        bound = max(center, 1.0 - center)
        return noise_multiplier * bound / math.sqrt(self.table_shares(ranks=True)[table])


def layout(spec: StudySpec) -> Layout:
    """The study's evaluation cells: the pooled cell, every declared level of every group column
    (``queries.level_names``: a categorical feature's levels, or ``group-levels`` and
    ``(other)``), and every pair of group columns' levels. Never a value seen in the data."""
    tables: dict[Table, tuple[str, ...]] = {POOLED_TABLE: (ALL,)}
    levels = {column: level_names(spec, column) for column in spec.study.groups}
    for column, names in levels.items():
        tables[(GROUP, column)] = names
    for first, second in combinations(spec.study.groups, 2):
        tables[(INTERSECTION, intersection_name(first, second))] = tuple(
            f"{a}{LEVEL_JOIN}{b}" for a in levels[first] for b in levels[second]
        )
    return Layout(tables)


def intersection_name(first: str, second: str) -> str:
    return f"{first}{INTERSECTION_JOIN}{second}"


def key(prefix: str, cell: Cell, statistic: str) -> str:
    """The wire key of one statistic of one cell (names percent-encoded: a key splits on dots)."""
    kind, column, level = cell
    return f"{prefix}.{kind}.{encode_name(column)}.{encode_name(level)}.{statistic}"


def parse_key(text: str, prefix: str) -> tuple[Cell, str]:
    """Inverse of ``key``; ValueError on anything else."""
    parts = text.split(".")
    if len(parts) != 5 or parts[0] != prefix:
        raise ValueError(f"malformed evaluation key {text!r}")
    return (parts[1], decode_name(parts[2]), decode_name(parts[3])), parts[4]


def histogram_keys(cells: list[Cell]) -> dict[str, tuple[Cell, str]]:
    """Every key of release 1 for ``cells``, with its cell and statistic."""
    return {
        key(EVAL_PREFIX, cell, statistic): (cell, statistic)
        for cell in cells
        for statistic in STAT_SHARES
    }


@dataclass(frozen=True)
class RankRequest:
    """What release 2 asks of one cell: over its positives the sum of ``cdf_neg(score) - center``,
    over its negatives the sum of ``cdf_pos(score) - (1 - center)`` (CDFs at the bin edges)."""

    cdf_pos: tuple[float, ...]
    cdf_neg: tuple[float, ...]
    center: float

    def check(self) -> None:
        """ValueError unless this is a request a site may answer (its sensitivity is bounded)."""
        for cdf in (self.cdf_pos, self.cdf_neg):
            values = np.asarray(cdf, dtype=float)
            if values.shape != (N_BINS + 1,) or not np.all(np.isfinite(values)):
                raise ValueError(f"a rank CDF must be {N_BINS + 1} finite numbers")
            if np.any(values < 0) or np.any(values > 1):
                raise ValueError("a rank CDF must lie in [0, 1]")
        if not (math.isfinite(self.center) and 0.0 <= self.center <= 1.0):
            raise ValueError("a rank center must lie in [0, 1]")


def rank_requests_to_config(requests: Mapping[Cell, RankRequest]) -> dict[str, object]:
    config: dict[str, object] = {}
    for cell, request in requests.items():
        config[key(RANKS_PREFIX, cell, CDF_POS)] = [float(v) for v in request.cdf_pos]
        config[key(RANKS_PREFIX, cell, CDF_NEG)] = [float(v) for v in request.cdf_neg]
        config[key(RANKS_PREFIX, cell, CENTER)] = float(request.center)
    return config


def rank_requests_from_config(
    config: Mapping[str, object], allowed: list[Cell]
) -> dict[Cell, RankRequest]:
    """The requests in a ``evaluate.ranks`` config: only declared cells, each complete and
    bounded; ValueError otherwise."""
    requests = {}
    for cell, values in rank_fields(config, allowed, (CDF_POS, CDF_NEG)).items():
        cdfs = values[CDF_POS], values[CDF_NEG]
        request = RankRequest(*(tuple(cdf) for cdf in cdfs), float(values[CENTER]))
        request.check()
        requests[cell] = request
    return requests


def rank_fields(
    config: Mapping[str, object], allowed: list[Cell], lists: tuple[str, ...]
) -> dict[Cell, dict[str, Any]]:
    """Per requested cell of a ``evaluate.ranks`` config, its fields: each of ``lists`` a list
    of numbers (as floats) and ``center`` a number; ValueError on an undeclared cell, an unknown
    or missing field, or a value of another type. Shared by the binary and survival requests."""
    fields: dict[Cell, dict[str, object]] = {}
    for name, value in config.items():
        if not name.startswith(f"{RANKS_PREFIX}."):
            continue
        cell, statistic = parse_key(name, RANKS_PREFIX)
        if statistic not in (*lists, CENTER):
            raise ValueError(f"unknown rank field {statistic!r}")
        fields.setdefault(cell, {})[statistic] = value
    known = set(allowed)
    parsed: dict[Cell, dict[str, Any]] = {}
    for cell, values in fields.items():
        if cell not in known:
            raise ValueError("a rank request names a cell the study does not declare")
        if set(values) != {*lists, CENTER}:
            raise ValueError(f"a rank request needs {', '.join(lists)} and center")
        center = values[CENTER]
        if isinstance(center, bool) or not isinstance(center, int | float):
            raise ValueError("a rank center must be a number")
        parsed[cell] = {CENTER: float(center)}
        for statistic in lists:
            value = values[statistic]
            if not isinstance(value, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value
            ):
                raise ValueError(f"a rank {statistic} must be a list of numbers")
            parsed[cell][statistic] = tuple(float(v) for v in value)
    return parsed


def evaluation_noise(
    epsilon: float,
    delta: float,
    accountant: str,
    evaluations: int,
    histogram_share: float = HISTOGRAM_SHARE,
) -> tuple[float, float]:
    """Noise multipliers (release 1, release 2) of each evaluation such that all
    ``evaluations`` of a run, two releases each, compose to at most ``epsilon`` at ``delta`` on
    the test partition. Two Gaussians of noise z1 and z2 compose as one of noise z with
    1/z^2 = 1/z1^2 + 1/z2^2, so the pair splits one calibrated Gaussian's rho by
    ``histogram_share``; the composed epsilon is then checked with the accountant itself."""
    z = calibrate_noise(epsilon, delta, 1.0, evaluations, accountant)
    while True:
        pair = (z / math.sqrt(histogram_share), z / math.sqrt(1.0 - histogram_share))
        releases = [GaussianRelease(noise, 1.0, evaluations) for noise in pair]
        if compute_epsilon(releases, delta, accountant) <= epsilon:
            return pair
        z *= 1.001
