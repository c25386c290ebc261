"""Additive evaluation statistics: all that a site's evaluate reply says about its scores.

A site never sends per-record scores. It sends counts and sums that add across sites and
records, so the server pools sites by summing them. Metrics that are ratios of sums (Brier, log
loss, the confusion matrix, calibration) are then exact; ranking metrics (AUROC, AUPRC) are
exact up to ties within one fine score bin. Bins sit on the logit scale: a risk model's scores
crowd near 0 (or 1), where a uniform probability grid would lump many records together.

Record layout (``to_record(prefix)``; every value an int, float, list[int] or list[float]):

- ``{prefix}.n_bins``: N_BINS, so a site and a server on different grids cannot mix.
- ``{prefix}.hist_pos.bins`` / ``.hist_pos.counts`` (and ``hist_neg``): the histograms, sparse:
  strictly increasing bin indices of the nonzero bins, and their counts (> 0).
- ``{prefix}.tp``, ``.fp``, ``.tn``, ``.fn``: the confusion matrix at THRESHOLD.
- ``{prefix}.threshold_coarsened``: how many of the pooled record sets had to merge score bins
  across THRESHOLD (a class with 1..min-cell-count records on one side): their confusion
  matrix is then not the exact one, and the threshold metrics are withheld, never shown as 0.
- ``{prefix}.sum_sq_error``, ``.sum_log_loss``, ``.sum_score``, ``.sum_score_pos``: float sums.
- ``{prefix}.cal_count``, ``.cal_sum_y`` (list[int]) and ``.cal_sum_p`` (list[float]): per
  calibration bin (CAL_BINS equal-width probability bins) the records, events and summed scores.

Groups (``groups_to_record``) nest the same layout under ``{prefix}.{column}.{level}``, with the
column and level names percent-encoded (dots too) so that a key splits on dots unambiguously. A
withheld level sends only ``{prefix}.{column}.{level}.withheld = 1``. The intersection of two group
columns (``intersect_groups``) is one more column, named ``"A x B"`` with levels ``"a | b"``, so it
travels, pools and is withheld exactly like a single column.

Representation (``counts_to_record``): the records of each group level as
``{prefix}.{column}.{level}.count``, or ``{prefix}.{column}.{level}.withheld = 1`` when withheld.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from itertools import combinations, pairwise
from numbers import Integral, Real
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd

from privacy.disclosure import is_disclosive

LOGIT_MIN, LOGIT_MAX = -12.0, 12.0  # scores beyond (p < 6e-6 or > 1 - 6e-6) share an end bin
N_BINS = 4800  # bin width 0.005 on the logit scale; the threshold 0.5 (logit 0) is a bin edge
THRESHOLD = 0.5
CAL_BINS = 10
LOG_LOSS_EPS = 1e-7
MISSING_LEVEL = "missing"
WITHHELD = "withheld"
COUNT = "count"
INTERSECTION = " x "  # joins two group column names
LEVEL_JOIN = " | "  # joins their levels

_HISTS = ("hist_pos", "hist_neg")
_COUNTS = ("tp", "fp", "tn", "fn")
_FLAGS = ("threshold_coarsened",)  # additive like the counts, but never a count of records
_SUMS = ("sum_sq_error", "sum_log_loss", "sum_score", "sum_score_pos")
_CAL_COUNTS = ("cal_count", "cal_sum_y")
_CAL_SUMS = ("cal_sum_p",)
_KEYS = frozenset(
    [
        "n_bins",
        *(f"{h}.{part}" for h in _HISTS for part in ("bins", "counts")),
        *_COUNTS,
        *_FLAGS,
        *_SUMS,
        *_CAL_COUNTS,
        *_CAL_SUMS,
    ]
)
_SLACK = 1e-9  # relative rounding allowed when checking a float sum against its count


@dataclass
class ScoreStats:
    """Additive evaluation statistics of one set of records (a site, a group level, or pooled)."""

    hist_pos: np.ndarray  # int64 [N_BINS]: positives per logit-scale score bin
    hist_neg: np.ndarray  # int64 [N_BINS]: negatives per logit-scale score bin
    sum_sq_error: float  # sum of (p - y)^2
    sum_log_loss: float  # sum of -[y log p + (1 - y) log(1 - p)], p clipped to LOG_LOSS_EPS
    sum_score: float  # sum of p
    sum_score_pos: float  # sum of p over positives
    tp: int  # confusion matrix at THRESHOLD (p >= THRESHOLD predicts positive)
    fp: int
    tn: int
    fn: int
    cal_count: np.ndarray  # int64 [CAL_BINS]: records per equal-width probability bin
    cal_sum_y: np.ndarray  # int64 [CAL_BINS]: positives per probability bin
    cal_sum_p: np.ndarray  # float64 [CAL_BINS]: summed scores per probability bin
    threshold_coarsened: int = 0  # record sets whose confusion matrix is coarsened (see above)

    @property
    def n(self) -> int:
        return int(self.hist_pos.sum() + self.hist_neg.sum())

    @property
    def n_pos(self) -> int:
        return int(self.hist_pos.sum())

    @classmethod
    def from_scores(cls, y: np.ndarray, p: np.ndarray) -> ScoreStats:
        """The statistics of labels ``y`` (0/1) scored with probabilities ``p``."""
        y, p = _checked_scores(y, p)
        cal = np.minimum(np.floor(p * CAL_BINS), CAL_BINS - 1).astype(np.int64)
        return cls._of(y, p, score_bins(p), p >= THRESHOLD, cal)

    @classmethod
    def released(cls, y: np.ndarray, p: np.ndarray, min_cell_count: int) -> ScoreStats | None:
        """What a site may release about these records: coarsened statistics, or None when the
        events or non-events number 1..min_cell_count (then no coarsening can hide them).

        Each class's fine score bins are merged (``coarse_bins``) until every bin holds 0 or more
        than ``min_cell_count`` of its records; every record is then placed at its merged bin's
        representative fine bin, and the confusion matrix and calibration counts are taken from
        the coarse bins, so each released count is a sum of safe counts and no small count can
        be recovered by subtraction. The float sums stay exact.
        """
        y, p = _checked_scores(y, p)
        pos = y == 1
        if is_disclosive(int(pos.sum()), min_cell_count) or is_disclosive(
            int((~pos).sum()), min_cell_count
        ):
            return None
        fine = score_bins(p)
        placed = np.empty_like(fine)
        for mask in (pos, ~pos):
            hist = np.bincount(fine[mask], minlength=N_BINS)
            placed[mask] = coarse_bins(hist, min_cell_count)[fine[mask]]
        risk = 1.0 / (1.0 + np.exp(-_bin_logit(placed)))
        cal = np.minimum(np.floor(risk * CAL_BINS), CAL_BINS - 1).astype(np.int64)
        predicted = placed >= THRESHOLD_BIN
        stats = cls._of(y, p, placed, predicted, cal)
        stats.threshold_coarsened = int(not np.array_equal(predicted, p >= THRESHOLD))
        return stats

    @classmethod
    def _of(
        cls,
        y: np.ndarray,
        p: np.ndarray,
        bins: np.ndarray,
        predicted: np.ndarray,
        cal: np.ndarray,
    ) -> ScoreStats:
        """The statistics of checked labels and scores, with each record's score bin, whether it
        is predicted positive and its calibration bin given (exact or coarsened)."""
        pos = y == 1
        clipped = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        return cls(
            hist_pos=np.bincount(bins[pos], minlength=N_BINS).astype(np.int64),
            hist_neg=np.bincount(bins[~pos], minlength=N_BINS).astype(np.int64),
            sum_sq_error=float(np.sum((p - y) ** 2)),
            sum_log_loss=float(-np.sum(np.where(pos, np.log(clipped), np.log1p(-clipped)))),
            sum_score=float(np.sum(p)),
            sum_score_pos=float(np.sum(p[pos])),
            tp=int(np.sum(pos & predicted)),
            fp=int(np.sum(~pos & predicted)),
            tn=int(np.sum(~pos & ~predicted)),
            fn=int(np.sum(pos & ~predicted)),
            cal_count=np.bincount(cal, minlength=CAL_BINS).astype(np.int64),
            cal_sum_y=np.bincount(cal[pos], minlength=CAL_BINS).astype(np.int64),
            cal_sum_p=np.bincount(cal, weights=p, minlength=CAL_BINS).astype(np.float64),
        )

    @classmethod
    def empty(cls) -> ScoreStats:
        """The statistics of no records: the identity for ``+``."""
        return cls.from_scores(np.zeros(0, dtype=np.int64), np.zeros(0))

    def __add__(self, other: ScoreStats) -> ScoreStats:
        if not isinstance(other, ScoreStats):
            return NotImplemented
        return ScoreStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoreStats):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
        )

    def to_record(self, prefix: str) -> dict[str, int | float | list[int] | list[float]]:
        """Flat MetricRecord items under ``prefix`` (layout in the module docstring)."""
        record: dict[str, int | float | list[int] | list[float]] = {f"{prefix}.n_bins": N_BINS}
        for name in _HISTS:
            hist = getattr(self, name)
            nonzero = np.flatnonzero(hist)
            record[f"{prefix}.{name}.bins"] = nonzero.tolist()
            record[f"{prefix}.{name}.counts"] = hist[nonzero].tolist()
        record.update({f"{prefix}.{name}": int(getattr(self, name)) for name in _COUNTS + _FLAGS})
        record.update({f"{prefix}.{name}": float(getattr(self, name)) for name in _SUMS})
        for name in _CAL_COUNTS:
            record[f"{prefix}.{name}"] = [int(v) for v in getattr(self, name)]
        for name in _CAL_SUMS:
            record[f"{prefix}.{name}"] = [float(v) for v in getattr(self, name)]
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any], prefix: str) -> ScoreStats:
        """Inverse of ``to_record``; ValueError names the first problem in a malformed record."""
        _check_keys(record, prefix)
        key = f"{prefix}.n_bins"
        if _int(record, key) != N_BINS:
            raise ValueError(f"{key} is {record[key]}, expected {N_BINS}")
        stats = cls(
            **{name: _sparse_histogram(record, f"{prefix}.{name}") for name in _HISTS},
            **{name: _int(record, f"{prefix}.{name}") for name in _COUNTS + _FLAGS},
            **{name: _float(record, f"{prefix}.{name}") for name in _SUMS},
            **{
                name: np.array(_int_list(record, f"{prefix}.{name}", CAL_BINS), dtype=np.int64)
                for name in _CAL_COUNTS
            },
            **{
                name: np.array(_float_list(record, f"{prefix}.{name}", CAL_BINS))
                for name in _CAL_SUMS
            },
        )
        _check_consistent(stats, prefix)
        return stats


def score_bins(p: np.ndarray) -> np.ndarray:
    """Each probability's fine bin on the logit scale; 0 and 1 land in the end bins."""
    with np.errstate(divide="ignore"):
        logit = np.log(p) - np.log1p(-p)
    position = np.floor((logit - LOGIT_MIN) * (N_BINS / (LOGIT_MAX - LOGIT_MIN)))
    return np.clip(position, 0, N_BINS - 1).astype(np.int64)


THRESHOLD_BIN = N_BINS // 2  # the first fine bin at or above THRESHOLD (logit 0)


def _bin_logit(index: np.ndarray) -> np.ndarray:
    return LOGIT_MIN + (index + 0.5) * ((LOGIT_MAX - LOGIT_MIN) / N_BINS)


def _preferred_cuts() -> list[int]:
    """Fine bin edges worth keeping: the threshold and the calibration bins' edges."""
    edges = score_bins(np.arange(1, CAL_BINS) / CAL_BINS).tolist()
    return sorted({THRESHOLD_BIN, *edges} - {0})


def coarse_bins(hist: np.ndarray, min_cell_count: int) -> np.ndarray:
    """For every fine bin of one class's histogram, the fine bin its records are released at.

    The threshold is a hard cut: each side is coarsened on its own, so the confusion matrix at
    0.5 stays exact, unless one side holds 1..``min_cell_count`` records (then the sides are
    merged, and ``ScoreStats.released`` says so). Within a side, adjacent fine bins are merged,
    left to right, until each merged bin holds 0 or more than ``min_cell_count`` records; a
    short tail joins the bins before it; the calibration edges are kept as cuts where both sides
    allow it. A merged bin is released at its records' mean fine bin (an aggregate of more than
    ``min_cell_count`` scores). Each class is merged on its own, so events and non-events are
    never forced into ties.
    """
    sides = [(0, THRESHOLD_BIN), (THRESHOLD_BIN, N_BINS)]
    if any(is_disclosive(int(hist[lo:hi].sum()), min_cell_count) for lo, hi in sides):
        sides = [(0, N_BINS)]
    placed = np.arange(N_BINS)
    for side_lo, side_hi in sides:
        cuts = [side_lo, *(c for c in _preferred_cuts() if side_lo < c < side_hi), side_hi]
        for lo, hi in _merge_runs(hist, list(pairwise(cuts)), min_cell_count):
            units = [(i, i + 1) for i in range(lo, hi)]
            for a, b in _merge_runs(hist, units, min_cell_count):
                weight = hist[a:b]
                if weight.sum():
                    placed[a:b] = round(float(np.average(np.arange(a, b), weights=weight)))
    return placed


def _merge_runs(
    hist: np.ndarray, units: list[tuple[int, int]], min_cell_count: int
) -> list[tuple[int, int]]:
    """Join consecutive ``units`` (fine index ranges) into groups that each hold 0 or more than
    ``min_cell_count`` records, left to right; a small tail joins the groups before it."""
    below = np.concatenate([[0], np.cumsum(hist)]).tolist()  # records below each fine edge
    groups: list[tuple[int, int]] = []
    start = units[0][0]
    for _, hi in units:
        if below[hi] - below[start] > min_cell_count:
            groups.append((start, hi))
            start = hi
    end = units[-1][1]
    while groups and is_disclosive(int(below[end] - below[start]), min_cell_count):
        start = groups.pop()[0]
    if start < end:
        groups.append((start, end))
    return groups


def _checked_scores(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 0/1 and scores as float64 in [0, 1], or ValueError."""
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} must be 1-D of equal length")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("scores must be probabilities in [0, 1] (no NaN)")
    return y.astype(np.int64), p


# -- record validation: a site's reply is untrusted input ------------------------------------


def _check_keys(record: Mapping[str, Any], prefix: str) -> None:
    """Every expected key present and no unexpected one under ``prefix`` (nothing extra leaks)."""
    start = f"{prefix}."
    present = {k[len(start) :] for k in record if isinstance(k, str) and k.startswith(start)}
    if missing := sorted(_KEYS - present):
        raise ValueError(f"missing keys under {prefix!r}: {', '.join(missing)}")
    if extra := sorted(present - _KEYS):
        raise ValueError(f"unexpected keys under {prefix!r}: {', '.join(extra)}")


def _int(record: Mapping[str, Any], key: str) -> int:
    value = record[key]
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative int, got {value!r}")
    return int(value)


def _float(record: Mapping[str, Any], key: str) -> float:
    value = record[key]
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _int_list(record: Mapping[str, Any], key: str, length: int | None = None) -> list[int]:
    values = record[key]
    if not isinstance(values, list) or (length is not None and len(values) != length):
        raise ValueError(
            f"{key} must be a list of ints" + (f" of length {length}" if length is not None else "")
        )
    return [_int({key: v}, key) for v in values]


def _float_list(record: Mapping[str, Any], key: str, length: int) -> list[float]:
    values = record[key]
    if not isinstance(values, list) or len(values) != length:
        raise ValueError(f"{key} must be a list of {length} numbers")
    return [_float({key: v}, key) for v in values]


def _sparse_histogram(record: Mapping[str, Any], key: str) -> np.ndarray:
    """A dense histogram from strictly increasing in-range bins and positive counts."""
    bins = np.array(_int_list(record, f"{key}.bins"), dtype=np.int64)
    counts = np.array(_int_list(record, f"{key}.counts", len(bins)), dtype=np.int64)
    if np.any(np.diff(bins) <= 0) or np.any(bins >= N_BINS):
        raise ValueError(f"{key}.bins must be strictly increasing indices below {N_BINS}")
    if np.any(counts == 0):
        raise ValueError(f"{key}.counts must be positive (zero bins are left out)")
    hist = np.zeros(N_BINS, dtype=np.int64)
    hist[bins] = counts
    return hist


def _check_consistent(stats: ScoreStats, prefix: str) -> None:
    """The parts of one record must describe the same records (catches garbled replies)."""
    n, n_pos = stats.n, stats.n_pos
    problems = {
        "tp + fn != positives": stats.tp + stats.fn != n_pos,
        "fp + tn != negatives": stats.fp + stats.tn != n - n_pos,
        "calibration counts do not sum to n": int(stats.cal_count.sum()) != n,
        "calibration events do not sum to positives": int(stats.cal_sum_y.sum()) != n_pos,
        "calibration events exceed counts": bool(np.any(stats.cal_sum_y > stats.cal_count)),
        "calibration score sums out of range": not all(
            map(_within, stats.cal_sum_p, stats.cal_count)
        ),
        "sum_score out of range": not _within(stats.sum_score, n),
        "sum_score_pos out of range": not _within(stats.sum_score_pos, n_pos),
        "sum_sq_error out of range": not _within(stats.sum_sq_error, n),
        "sum_log_loss out of range": not _within(stats.sum_log_loss, -math.log(LOG_LOSS_EPS) * n),
    }
    if failed := [name for name, bad in problems.items() if bad]:
        raise ValueError(f"inconsistent statistics under {prefix!r}: {'; '.join(failed)}")


def _within(value: float, upper: float) -> bool:
    return 0 <= value <= upper * (1 + _SLACK)


# -- groups ----------------------------------------------------------------------------------


def group_stats(
    y: np.ndarray, p: np.ndarray, groups: Mapping[str, np.ndarray], min_cell_count: int
) -> dict[str, dict[str, ScoreStats | None]]:
    """Per group column and level present in the data: its statistics, or None when withheld.

    A level with 1..min_cell_count records, events or non-events is withheld (small-cell
    suppression), and more levels until the withheld ones add up to no small count; a released
    level's statistics are coarsened (``ScoreStats.released``). A level's existence is released,
    its count is not. Missing values form the level ``"missing"``.
    """
    y, p = _checked_scores(y, p)
    result: dict[str, dict[str, ScoreStats | None]] = {}
    for column, values in groups.items():
        levels = _level_names(values, len(y), column)
        stats = {
            str(level): _level_stats(y, p, levels == level, min_cell_count)
            for level in np.unique(levels)
        }
        result[column] = _complementary(y, levels, stats, min_cell_count)
    return result


def _level_names(values: np.ndarray, n: int, column: str) -> np.ndarray:
    values = np.asarray(values, dtype=object)
    if values.shape != (n,):
        raise ValueError(f"group {column!r} has shape {values.shape}, expected ({n},)")
    return np.array([MISSING_LEVEL if pd.isna(v) else str(v) for v in values], dtype=object)


def _level_stats(
    y: np.ndarray, p: np.ndarray, mask: np.ndarray, min_cell_count: int
) -> ScoreStats | None:
    if is_disclosive(int(mask.sum()), min_cell_count):
        return None
    return ScoreStats.released(y[mask], p[mask], min_cell_count)


def _complementary(
    y: np.ndarray,
    levels: np.ndarray,
    stats: dict[str, ScoreStats | None],
    min_cell_count: int,
) -> dict[str, ScoreStats | None]:
    """Withhold more levels until the withheld ones together hold no small count of records,
    events or non-events: the site's totals are released, so their sum could be recovered."""

    def counts(chosen: set[str]) -> tuple[int, int, int]:
        mask = np.isin(levels, list(chosen))
        return int(mask.sum()), int(y[mask].sum()), int((1 - y[mask]).sum())

    withheld = {level for level, s in stats.items() if s is None}
    while len(withheld) < len(stats) and any(
        is_disclosive(c, min_cell_count) for c in counts(withheld)
    ):
        shown = sorted(set(stats) - withheld, key=lambda lv: (int((levels == lv).sum()), lv))
        withheld.add(shown[0])
    return {level: None if level in withheld else s for level, s in stats.items()}


def groups_to_record(
    stats: Mapping[str, Mapping[str, ScoreStats | None]], prefix: str = "group"
) -> dict[str, int | float | list[int] | list[float]]:
    """Flat MetricRecord items for ``group_stats`` output; withheld levels send only a flag."""
    record: dict[str, int | float | list[int] | list[float]] = {}
    for column, levels in stats.items():
        for level, level_stats in levels.items():
            base = f"{prefix}.{encode_name(column)}.{encode_name(level)}"
            if level_stats is None:
                record[f"{base}.{WITHHELD}"] = 1
            else:
                record.update(level_stats.to_record(base))
    return record


def groups_from_record(
    record: Mapping[str, Any], prefix: str = "group"
) -> dict[str, dict[str, ScoreStats | None]]:
    """Inverse of ``groups_to_record``; ValueError on a malformed key or level."""
    result: dict[str, dict[str, ScoreStats | None]] = {}
    for (column, level), names in _fields_by_level(record, prefix).items():
        stats = _level_from_record(record, f"{prefix}.{column}.{level}", names)
        result.setdefault(decode_name(column), {})[decode_name(level)] = stats
    return result


def _fields_by_level(record: Mapping[str, Any], prefix: str) -> dict[tuple[str, str], set[str]]:
    """The field names under each encoded ``{prefix}.{column}.{level}`` of ``record``."""
    start = f"{prefix}."
    fields_by_level: dict[tuple[str, str], set[str]] = {}
    for key in record:
        if not (isinstance(key, str) and key.startswith(start)):
            continue
        parts = key[len(start) :].split(".", 2)
        if len(parts) != 3:
            raise ValueError(f"malformed group key {key!r}")
        fields_by_level.setdefault((parts[0], parts[1]), set()).add(parts[2])
    return fields_by_level


def _level_from_record(record: Mapping[str, Any], base: str, names: set[str]) -> ScoreStats | None:
    if WITHHELD not in names:
        return ScoreStats.from_record(record, base)
    _check_withheld(record, base, names)
    return None


def _check_withheld(record: Mapping[str, Any], base: str, names: set[str]) -> None:
    """A withheld level carries the int 1 under ``.withheld`` and nothing else."""
    key = f"{base}.{WITHHELD}"
    if names != {WITHHELD}:
        raise ValueError(f"{key} is set but the level also carries statistics")
    if record[key] != 1 or isinstance(record[key], bool | float):
        raise ValueError(f"{key} must be the int 1, got {record[key]!r}")


def encode_name(name: str) -> str:
    """Percent-encoding with dots escaped too, so that a name never contains the separator."""
    return quote(name, safe="", errors="surrogatepass").replace(".", "%2E")


def decode_name(text: str) -> str:
    """Inverse of ``encode_name``; only canonical encodings, so two keys never mean one name."""
    name = unquote(text, errors="surrogatepass")
    if encode_name(name) != text:
        raise ValueError(f"group name {text!r} is not canonically encoded")
    return name


def intersection_name(first: str, second: str) -> str:
    """The column name of the intersection of two group columns."""
    return f"{first}{INTERSECTION}{second}"


def intersect_groups(groups: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every pair of group columns (in the given order) as one column of joined levels.

    Subgroups such as "Black women" are where a model that looks fine per column can fail;
    as ordinary columns they go through ``group_stats`` and its suppression unchanged.
    """
    levels = {
        column: _level_names(values, len(values), column) for column, values in groups.items()
    }
    return {
        intersection_name(first, second): np.array(
            [f"{a}{LEVEL_JOIN}{b}" for a, b in zip(levels[first], levels[second], strict=True)],
            dtype=object,
        )
        for first, second in combinations(levels, 2)
    }


# -- representation --------------------------------------------------------------------------


def level_counts(
    groups: Mapping[str, np.ndarray], min_cell_count: int
) -> dict[str, dict[str, int | None]]:
    """Records per group column and level, None where withheld.

    A level with 1..min_cell_count records is withheld. The site's total is public, so the
    withheld levels of a column must not add up to a small count either (it could be recovered
    by subtraction): then the smallest released levels are withheld too, until they do not.
    """
    result: dict[str, dict[str, int | None]] = {}
    for column, values in groups.items():
        levels, counts = np.unique(_level_names(values, len(values), column), return_counts=True)
        result[column] = _suppressed(
            dict(zip(map(str, levels), map(int, counts), strict=True)), min_cell_count
        )
    return result


def _suppressed(counts: dict[str, int], min_cell_count: int) -> dict[str, int | None]:
    """Primary and complementary small-cell suppression of one column's level counts."""
    withheld = {level for level, count in counts.items() if is_disclosive(count, min_cell_count)}
    while len(withheld) < len(counts) and is_disclosive(
        sum(counts[level] for level in withheld), min_cell_count
    ):
        withheld.add(min(set(counts) - withheld, key=lambda level: (counts[level], level)))
    return {level: None if level in withheld else count for level, count in counts.items()}


def counts_to_record(counts: Mapping[str, Mapping[str, int | None]], prefix: str) -> dict[str, int]:
    """Flat MetricRecord items for ``level_counts`` output; withheld levels send only a flag."""
    record: dict[str, int] = {}
    for column, levels in counts.items():
        for level, count in levels.items():
            base = f"{prefix}.{encode_name(column)}.{encode_name(level)}"
            if count is None:
                record[f"{base}.{WITHHELD}"] = 1
            else:
                record[f"{base}.{COUNT}"] = int(count)
    return record


def counts_from_record(record: Mapping[str, Any], prefix: str) -> dict[str, dict[str, int | None]]:
    """Inverse of ``counts_to_record``; ValueError on a malformed key or a small count."""
    result: dict[str, dict[str, int | None]] = {}
    for (column, level), names in _fields_by_level(record, prefix).items():
        base = f"{prefix}.{column}.{level}"
        if WITHHELD in names:
            _check_withheld(record, base, names)
            count = None
        elif names == {COUNT}:
            count = _int(record, f"{base}.{COUNT}")
            if is_disclosive(count):
                raise ValueError(f"{base}.{COUNT} is a small cell that must have been withheld")
        else:
            raise ValueError(f"unexpected keys under {base!r}: {', '.join(sorted(names))}")
        result.setdefault(decode_name(column), {})[decode_name(level)] = count
    return result
