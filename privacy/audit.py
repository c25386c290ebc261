"""Statistics of an empirical privacy audit: how well a membership attack does, and the epsilon
it proves.

An audit inserts ``m`` canaries, each included in training independently with probability 1/2,
and scores every canary with an attack (higher: more likely a member). The ROC of the scores
says how well the attack separates members from non-members; the one-run bound of

    Thomas Steinke, Milad Nasr, Matthew Jagielski. "Privacy Auditing with One (1) Training Run".
    NeurIPS 2023, arXiv:2305.08846 (Theorem 3.1)

turns the attack's most confident guesses into an epsilon that the training cannot be below:
under (epsilon, delta)-DP the number ``v`` of correct guesses among ``r`` is stochastically
dominated by Binomial(r, e^eps / (1 + e^eps)) plus a delta term, so an epsilon at which ``v``
correct guesses would be too unlikely (p-value under 1 - confidence) is ruled out. A DP claim
above the lower bound is consistent with the audit; a bound above the claim is a violation
(the claim is false with the stated confidence). The bound needs no retraining, which is what
makes auditing a federated run affordable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

CONFIDENCE = 0.95
# Guess this share of the canaries as members (top scores) and as many as non-members (bottom).
GUESS_FRACTIONS = (0.05, 0.1, 0.2, 0.3)
_SEARCH_STEPS = 60


@dataclass(frozen=True)
class AttackROC:
    """How well one attack's scores separate members from non-members."""

    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_0_1pct_fpr: float


@dataclass(frozen=True)
class EpsilonBound:
    """The one-run audit's result: ``correct`` of ``guesses`` membership guesses (the best of
    ``tries`` guessing rules, Bonferroni-corrected) and the epsilon range they support."""

    lower: float  # the lower bound, at ``confidence`` (one-sided)
    upper: float  # guesses this accurate are unlikely above it, at ``confidence`` (one-sided)
    estimate: float  # epsilon of randomized response with the guesses' accuracy
    guesses: int
    correct: int
    canaries: int
    attack: str
    tries: int
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


def attack_roc(scores: np.ndarray, members: np.ndarray) -> AttackROC:
    """AUC and the true-positive rate at false-positive rates of 1% and 0.1%."""
    fpr, tpr, _ = roc_curve(members, scores)
    return AttackROC(
        auc=float(roc_auc_score(members, scores)),
        tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, 0.01),
        tpr_at_0_1pct_fpr=tpr_at_fpr(fpr, tpr, 0.001),
    )


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The highest true-positive rate on the ROC curve at a false-positive rate <= ``target``
    (with few non-members that is the rate at no false positive at all)."""
    return float(tpr[fpr <= target].max())


def p_value(guesses: int, correct: int, epsilon: float, delta: float, canaries: int) -> float:
    """Probability of ``correct`` or more right guesses out of ``guesses`` under
    (epsilon, delta)-DP (Steinke et al. 2023, Theorem 3.1):
    P[Bin(r, q) >= v] + 2 m delta max_i P[v > Bin(r, q) >= v - i] / i, q = e^eps / (1 + e^eps)."""
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError("need 0 <= correct <= guesses <= canaries")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, q))
    if delta == 0 or correct == 0:
        return min(1.0, tail)
    below = stats.binom.cdf(correct - 1, guesses, q)
    i = np.arange(1, correct + 1)
    window = below - stats.binom.cdf(correct - 1 - i, guesses, q)  # P[v - i <= X <= v - 1]
    return min(1.0, tail + 2 * canaries * delta * float(np.max(window / i)))


def epsilon_lower_bound(
    guesses: int, correct: int, delta: float, canaries: int, confidence: float = CONFIDENCE
) -> float:
    """The largest epsilon that ``correct`` of ``guesses`` rejects at ``confidence``; 0 when
    not even epsilon 0 is rejected."""
    alpha = 1.0 - confidence
    if guesses == 0 or p_value(guesses, correct, 0.0, delta, canaries) >= alpha:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(guesses, correct, high, delta, canaries) < alpha:
        low, high = high, 2 * high
    for _ in range(_SEARCH_STEPS):
        middle = (low + high) / 2
        if p_value(guesses, correct, middle, delta, canaries) < alpha:
            low = middle
        else:
            high = middle
    return low


def epsilon_upper_limit(guesses: int, correct: int, confidence: float = CONFIDENCE) -> float:
    """The epsilon above which guesses as accurate as these, or less, would be unlikely: the
    log-odds of the one-sided Clopper-Pearson upper limit of the accuracy (inf when all right)."""
    if guesses == 0:
        return 0.0
    if correct == guesses:
        return math.inf
    accuracy = float(stats.beta.ppf(confidence, correct + 1, guesses - correct))
    return max(0.0, math.log(accuracy / (1.0 - accuracy)))


def one_run_bound(
    scores: Mapping[str, np.ndarray],
    members: np.ndarray,
    delta: float,
    confidence: float = CONFIDENCE,
    fractions: Sequence[float] = GUESS_FRACTIONS,
) -> EpsilonBound:
    """The best lower bound over attacks and guess counts, each try at confidence
    ``1 - (1 - confidence) / tries`` so that the best one holds at ``confidence`` (Bonferroni).

    For each fraction f, an attack guesses its top ``k = f m`` canaries as members and its
    bottom ``k`` as non-members and abstains on the rest.
    """
    members = np.asarray(members, dtype=bool)
    m = len(members)
    counts = sorted({max(1, round(f * m)) for f in fractions if round(f * m) * 2 <= m} or {1})
    tries = len(scores) * len(counts)
    per_try = 1.0 - (1.0 - confidence) / tries
    best: EpsilonBound | None = None
    for attack, values in scores.items():
        order = np.argsort(np.asarray(values), kind="stable")
        for k in counts:
            correct = int(members[order[-k:]].sum() + (~members[order[:k]]).sum())
            lower = epsilon_lower_bound(2 * k, correct, delta, m, per_try)
            if best is None or lower > best.lower:
                best = EpsilonBound(
                    lower=lower,
                    upper=epsilon_upper_limit(2 * k, correct, per_try),
                    estimate=_log_odds(correct, 2 * k),
                    guesses=2 * k,
                    correct=correct,
                    canaries=m,
                    attack=attack,
                    tries=tries,
                    confidence=confidence,
                )
    assert best is not None
    return best


def verdict(claimed: float | None, bound: EpsilonBound) -> str:
    """One line a privacy officer can act on."""
    if claimed is None:
        if bound.lower > 0:
            return f"no DP claim; leakage detected (epsilon >= {bound.lower:.2f})"
        return "no DP claim; no leakage detected at this confidence"
    if bound.lower > claimed:
        return f"VIOLATION: lower bound {bound.lower:.2f} above the claimed epsilon {claimed:g}"
    return "consistent: lower bound not above the claimed epsilon"


def _log_odds(correct: int, guesses: int) -> float:
    """Epsilon of randomized response that guesses right ``correct / guesses`` of the time."""
    if correct * 2 <= guesses:
        return 0.0
    if correct == guesses:
        return math.inf
    return math.log(correct / (guesses - correct))
