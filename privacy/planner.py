"""Plan a study's DP training from its budget and each site's public training-record count.

What decides a DP federated model's utility is measured in ``benchmarks/calibration.py``; the
rules here are what those measurements support (Fed-Heart-Disease's four hospitals of 30 to
199 training records, and the demo's three sites of about 700):

- **The same number of local steps at every site.** FedAvg of sites that take different numbers
  of steps per round converges to a mix of their optima, not the pooled one: with a batch of 32,
  Fed-Heart-Disease's largest site takes 7 steps a round and its smallest 1, and even without DP
  the model reaches AUROC 0.866 with calibration slope 0.88, against 0.882 and 0.99 centrally.
  One step a round at every site (the whole training partition, sampling rate 1) reaches 0.882
  and 1.01. So each site's batch is its records divided by a common ``steps_per_round``: one for
  federations with a small site, up to ten when every site has hundreds of records.
- **Moderate noisy steps.** Noise grows with the square root of the number of steps: 10 rounds
  of 10 steps (demo) or 20 rounds of one step (small sites) at the rates below fit within
  the budget, where many rounds of many steps force noise that costs AUROC and makes
  the model over-confident (slope below 1).
- **More rounds where the budget allows them.** Twenty clipped full-batch steps leave small
  sites' model short of the optimum: from ``GENEROUS_EPSILON`` on, such federations train 40
  rounds, and so does a logistic model without DP (no noise to pay for them: Fed-Heart-Disease's
  calibration slope 1.04 against 1.11 at 20, AUROC 0.884 against 0.887). The demo's sites of
  hundreds of records, at ten steps a round, gain nothing from more rounds.
- **A logistic model's step grows with the budget and with how little its inputs vary.** Where
  every record's gradient is clipped, the step a coefficient takes is its input's share of the
  record's norm: a standardized column has variance 1, a centred indicator of a level about
  ``(1/L)(1 - 1/L)`` (a quarter for a 0/1 column, ``wire.encoding.mean_input_variance``), so
  categorical coefficients are the ones left short (calibration slope above 1: predictions
  pulled towards the mean). The noise moves every coefficient alike and costs more at a larger
  step (slope below 1). So a small federation's rate is 0.8 at epsilon 1 rising by 0.5 per
  unit of epsilon (1.8 at 3, 2.3 from ``MODERATE_EPSILON``; 1.7 over 40 rounds from
  ``GENEROUS_EPSILON``), divided by the inputs' mean variance (at least
  ``MIN_INPUT_VARIANCE``). Fed-Heart-Disease in process,
  declared bounds, mean of 24 runs at epsilon 3 (``benchmarks/heart.py --inprocess``): its 5
  numeric and 5 categorical columns (variance 0.52) at rates 2.5, 3, 3.5, 4.6 reach slope 1.15,
  1.10, 1.00, 0.98 and AUROC 0.874, 0.874, 0.873, 0.865 (centralized 0.882); with every row's
  missing values and 7 categorical columns (0.48), the planned 3.8 reaches AUROC 0.892 and slope
  1.08 where 2.5 left 1.29 (centralized 0.897, slope 0.97); the 13 standardized columns (1.0) at
  the planned 1.8 reach 0.864 and 0.98, where 3.5 and 5 make the model over-confident (0.79,
  0.69). At epsilon 8 (40 rounds) the categorical form at 2 and 4 reaches slope 1.06 and 0.96.
  At epsilon 1 the noise dominates: the planned rates reach AUROC 0.844 and 0.870 on the two
  categorical forms with slope 1.14 and 1.18 (SD about 0.18); a lower rate ranks slightly better
  and predicts everyone nearer the mean (0.5: AUROC 0.863, slope 2.4). Other models keep the
  rule below: an MLP's hidden layers do not step as one coefficient per input (the categorical
  form at epsilon 3, 12 runs: rate 3.5 slope 0.74, AUROC 0.846; 2.5 slope 0.98, AUROC 0.857),
  and a survival model's C-index needs only the ranking, which a larger step cost.
- **Sites of hundreds of records: ten rounds of several steps, at a rate that keeps a round's
  reach.** From 5 steps a round (a smallest site of 320 records) to 10, a logistic model under
  DP steps at ``MANY_STEPS_ROUND_RATE`` over the steps a round (2 at 5 steps, 1 at 10), from
  ``STRICT_EPSILON`` on; at epsilon 1 at 1, between the two in proportion. At rate 1 whatever
  the steps, the clipped steps left these federations short of the optimum: the synthetic
  cohort in process (16 runs a setting, each beside a centralized logistic regression on the
  same split; ``benchmarks/calibration.py --cohorts mid`` repeats it with rate 1 as its
  baseline row) at epsilon 3, 5, 6 and 8 steps a round, calibration slope 1.13,
  1.11, 1.07 against 0.96, 1.04, 1.04 at this rule (centralized 0.94, 0.99, 0.99), AUROC within
  0.001; at epsilon 8 (5 and 7 steps) 1.28 and 1.22 against 1.16 and 1.14 (centralized 1.11,
  1.08), at epsilon 2 (5 steps) 1.18 against 0.97 (1.01). At epsilon 1 the noise makes a larger
  step over-confident (5 and 6 steps, 20 runs: slope 0.89 and 0.94 at 10 over the steps against
  1.05 and 1.05 at rate 1, centralized 1.03 and 1.02, AUROC 0.003 lower). Without DP
  rate 1 matches the centralized slope (steps are not clipped). The cohort's 6 numeric columns
  alone (inputs' variance 1 against 0.69), 5 steps: 1.22 and 1.10 against 1.33 and 1.27 at rate
  1 (centralized 1.19, 1.14), so unlike the small sites' rate this one is not divided by the
  inputs' variance. Other models keep rate 1 (an MLP at 5 steps: slope nearer the centralized
  one at this rule, but AUROC 0.003 lower in three of four settings). The
  slope is what the rule buys: on three more splits AUROC moved by under 0.002, and on the
  split of one ``calibration.py`` invocation the under-fitted model ranked better (epsilon 3,
  24 runs: AUROC 0.805 against 0.814 at rate 1, slope 1.15 against 1.39; centralized 0.807,
  1.15).
- **Clip norm 1**, with clipping by the logit gradient (``federation.client.training``), which
  does not depend on the label. It still weights each record by the inverse of its features'
  norm, nearly every record being clipped: with no noise at all, clip norm 1 costs
  Fed-Heart-Disease 0.004 AUROC against a clip norm that cuts nothing (0.878 and 0.882, 40
  rounds). A larger clip norm raises the noise in proportion and costs more: at epsilon 3,
  clip norms 3 and 6 lose 0.001 and 0.05 AUROC against 1.

**An MLP and a survival model follow the same rules but another rate**: 2 up to
``STRICT_EPSILON``, rising to 3 at ``MODERATE_EPSILON`` (2.5 at 3), and 2 over 40 rounds from
``GENEROUS_EPSILON`` (20 rounds without DP), whatever their inputs. A survival model at epsilon
3 on Fed-TCGA-BRCA, whose 38 of 39 inputs are 0/1 columns: rates 5 and 9 reach C-index 0.781
and 0.774 against 0.814 at 2.5. Measured on its own data
(``benchmarks/survival_sweep.py``, in process, pooled-test C-index, mean (SD) of 8 runs, each
variant beside the default in the same run; Fed-TCGA-BRCA's six regions of 40 to 248 training
records, centralized Cox 0.838; the default's 8-run mean itself moved from 0.766 to 0.799
between invocations). At one full-batch step a round the sampling rate is 1 and each step's
noise grows with the square root of the steps, so over a run the noise grows as fast as the
signal: at epsilon 3, 10, 20 and 40 rounds reach 0.785 (0.040), 0.766 (0.043) and 0.769
(0.050), two steps a round 0.726 (0.072), clip norms 0.5 and 2 reach 0.770 and 0.768. A rate
below this rule's costs: 1.5 against 2.5 at epsilon 3, 0.764 (0.071) against 0.799
(0.025); 1.5 against 2 at epsilon 1, 0.661 against 0.699 (SD 0.1); the same 0.825 at epsilon
8; without DP, rate 2 reaches 0.861 and 2.5 diverges. What limits a survival study at these
sizes is DP-SGD's noise on its 77 encoded columns (each 0/1 feature is two one-hot levels, so
every row's norm is about 6 and every record with an event is clipped). The features'
encoding, not the plan, was the lever: with centred reference coding (``wire.encoding``, 39
columns) the same plan reaches 0.833 (0.017) at epsilon 3 (``benchmarks/tcga_brca.py``).

Everything is a pure function of public numbers, so the node, the server and a privacy officer
(``allfed privacy plan``) compute the same plan. The search is bounded: one noise calibration per
distinct site plan (``accounting.calibrate_noise``, itself bracketed by RDP), and the epsilon of
each planned round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from privacy.accounting import GaussianRelease, calibrate_noise, epsilon_trajectory
from privacy.limits import delta_too_weak

MAX_STEPS_PER_ROUND = 10
GENEROUS_EPSILON = 5.0  # from here on, small sites' few clipped steps a round get more rounds
# A binary logistic model's learning rate at small sites, per unit of its inputs' mean variance:
# 0.8 at epsilon 1, rising by 0.5 per unit of epsilon up to MODERATE_EPSILON (1.8 at 3), and
# GENEROUS_LOGISTIC_RATE over twice the rounds from GENEROUS_EPSILON on.
LOGISTIC_RATE_AT_1, LOGISTIC_RATE_PER_EPSILON, GENEROUS_LOGISTIC_RATE = 0.8, 0.5, 1.7
# Below this mean variance the rate rises no further: measured down to 0.48, and a column of
# many rare levels would otherwise make the standardized columns' step unstable.
MIN_INPUT_VARIANCE = 0.4
# Any other model's: 2 up to STRICT_EPSILON, rising to 3 at MODERATE_EPSILON (2.5 at 3).
STRICT_EPSILON, MODERATE_EPSILON = 2.0, 4.0
RECORDS_PER_STEP = 64  # the smallest site's records per step before a second step is planned
# A logistic model's rate times its steps a round, under DP, where sites take 5 to 10 (the
# module docstring): from STRICT_EPSILON on; 1 at epsilon 1 and between the two in proportion.
MANY_STEPS_ROUND_RATE = 10.0


@dataclass(frozen=True)
class SitePlan:
    """One site's DP-SGD plan: ``steps`` noisy steps of sampling rate ``sample_rate`` (one over
    the batches per epoch, as Opacus's Poisson loader) with ``noise_multiplier``, and the
    accountant's epsilon after each round, earlier releases included."""

    n_train: int
    batch_size: int
    sample_rate: float
    steps_per_round: int
    steps: int
    noise_multiplier: float
    epsilon_by_round: tuple[float, ...]


@dataclass(frozen=True)
class StudyPlan:
    """The settings every site trains with, and each site's plan (in the order given)."""

    target_epsilon: float
    delta: float
    accountant: str
    rounds: int
    local_epochs: int
    learning_rate: float
    max_grad_norm: float
    steps_per_round: int | None  # the same at every site; None where the batch size is given
    standardization_noise: float | None
    sites: tuple[SitePlan, ...]

    def site(self, n_train: int) -> SitePlan:
        """The plan of a site with ``n_train`` training records."""
        for plan in self.sites:
            if plan.n_train == n_train:
                return plan
        raise KeyError(f"no site with {n_train} training records in this plan")

    def as_dict(self) -> dict:
        return asdict(self)


def zcdp_budget(target_epsilon: float, delta: float) -> float:
    """The zCDP rho whose (epsilon, delta) conversion is ``target_epsilon`` at ``delta``
    (epsilon = rho + 2 sqrt(rho ln(1/delta)), Bun & Steinke 2016): the scale on which Gaussian
    releases add up, used to split a budget between releases. The accountant still composes
    the releases themselves exactly."""
    log_inverse = math.log(1 / delta)
    return (math.sqrt(log_inverse + target_epsilon) - math.sqrt(log_inverse)) ** 2


def share_noise(share: float, target_epsilon: float, delta: float) -> float:
    """Noise multiplier of a one-shot Gaussian release (sample rate 1) that takes ``share`` of
    the study's zCDP budget: rho = 1 / (2 z^2).

    A share of rho, not of epsilon: epsilon composes sub-additively, so a release calibrated
    to a tenth of epsilon on its own costs DP-SGD almost nothing and is needlessly noisy (at
    epsilon 3, noise 11.6 raises DP-SGD's noise by 0.5%; a tenth of rho, noise 5.4, by 2%)."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    return 1 / math.sqrt(2 * share * zcdp_budget(target_epsilon, delta))


def steps_per_round_for(n_train: Sequence[int]) -> int:
    """Local steps per round, the same at every site: one per ``RECORDS_PER_STEP`` records of
    the smallest site, from 1 to ``MAX_STEPS_PER_ROUND``."""
    return max(1, min(MAX_STEPS_PER_ROUND, min(n_train) // RECORDS_PER_STEP))


def default_training(
    n_train: Sequence[int],
    target_epsilon: float | None = None,
    input_variance: float | None = None,
) -> dict[str, float | int]:
    """The settings the module docstring's rules choose for sites of ``n_train`` records at
    ``target_epsilon`` (None: without DP). ``input_variance``: the mean variance of a binary
    logistic model's inputs (``wire.encoding.mean_input_variance``), whose rate is planned per
    unit of it; None for any other model (an MLP, a survival model)."""
    steps = steps_per_round_for(n_train)
    few = steps < 5  # a small site: one or a few steps a round, more rounds, a larger rate
    logistic = input_variance is not None
    if target_epsilon is None:
        rounds = 40 if logistic else 20  # no noise to pay for more steps
    else:
        rounds = 40 if target_epsilon >= GENEROUS_EPSILON else 20
    if few:
        rate = (
            logistic_learning_rate(target_epsilon, input_variance)
            if logistic
            else small_site_learning_rate(target_epsilon)
        )
    else:
        rate = many_steps_learning_rate(target_epsilon, steps) if logistic else 1.0
    return {
        "steps_per_round": steps,
        "rounds": rounds if few else 10,
        "local_epochs": 1,
        "learning_rate": rate,
        "max_grad_norm": 1.0,
    }


def logistic_learning_rate(target_epsilon: float | None, input_variance: float) -> float:
    """A binary logistic model's learning rate at small sites (the module docstring: a step in
    proportion to the budget, per unit of the inputs' mean variance)."""
    input_variance = max(input_variance, MIN_INPUT_VARIANCE)
    if target_epsilon is None:
        return 2.0  # unclipped full-batch steps: a larger one is not stable on every cohort
    if target_epsilon >= GENEROUS_EPSILON:
        return GENEROUS_LOGISTIC_RATE / input_variance
    rise = LOGISTIC_RATE_PER_EPSILON * (min(target_epsilon, MODERATE_EPSILON) - 1.0)
    return (LOGISTIC_RATE_AT_1 + rise) / input_variance


def many_steps_learning_rate(target_epsilon: float | None, steps_per_round: int) -> float:
    """A binary logistic model's learning rate where every site takes ``steps_per_round`` of 5
    to 10 steps a round (the module docstring: a round's reach kept, from ``STRICT_EPSILON``)."""
    if target_epsilon is None:
        return 1.0  # unclipped steps reach the optimum at rate 1
    full = max(1.0, MANY_STEPS_ROUND_RATE / steps_per_round)
    share = min(1.0, max(0.0, (target_epsilon - 1.0) / (STRICT_EPSILON - 1.0)))
    return 1.0 + (full - 1.0) * share


def small_site_learning_rate(target_epsilon: float | None) -> float:
    """Any other model's learning rate at small sites (the module docstring)."""
    if target_epsilon is None or target_epsilon >= GENEROUS_EPSILON:
        return 2.0
    share = (target_epsilon - STRICT_EPSILON) / (MODERATE_EPSILON - STRICT_EPSILON)
    return 2.0 + min(1.0, max(0.0, share))


def plan_site(
    n_train: int,
    batch_size: int,
    epochs: int,
    rounds: int,
    target_epsilon: float,
    delta: float,
    accountant: str,
    prior: Sequence[GaussianRelease] = (),
) -> SitePlan:
    """Sampling rate and noise for all ``rounds`` of a site's training (the node's rule:
    the sampling rate is one over the batches per epoch, an epoch that many steps)."""
    if n_train < 1 or batch_size < 1 or epochs < 1 or rounds < 1:
        raise ValueError("records, batch size, epochs and rounds must be at least 1")
    batches = math.ceil(n_train / batch_size)
    sample_rate = 1.0 / batches
    steps_per_round = epochs * batches
    steps = rounds * steps_per_round
    noise = calibrate_noise(target_epsilon, delta, sample_rate, steps, accountant, prior)
    trajectory = epsilon_trajectory(
        prior, GaussianRelease(noise, sample_rate, steps_per_round), rounds, delta, accountant
    )
    return SitePlan(n_train, batch_size, sample_rate, steps_per_round, steps, noise, trajectory)


def plan_study(
    target_epsilon: float,
    delta: float,
    accountant: str,
    n_train: Sequence[int],
    prior: Sequence[GaussianRelease] = (),
    *,
    rounds: int | None = None,
    local_epochs: int | None = None,
    batch_size: int | None = None,
    steps_per_round: int | None = None,
    learning_rate: float | None = None,
    max_grad_norm: float | None = None,
    standardization_noise: float | None = None,
    input_variance: float | None = None,
) -> StudyPlan:
    """The study's plan for sites of ``n_train`` training records each (public), after the
    ``prior`` releases every site makes first (the standardization sums).

    A setting given explicitly (the spec's) is kept; the others are chosen by the rules in the
    module docstring. A given ``batch_size`` applies to every site; otherwise each site's is its
    records over the common number of steps per round (``steps_per_round``, or the planner's).
    """
    if not n_train or min(n_train) < 1:
        raise ValueError("every site needs at least one training record")
    if not (target_epsilon > 0 and 0 < delta < 1):
        raise ValueError("target epsilon must be positive and delta in (0, 1)")
    if delta_too_weak(delta, max(n_train)):
        raise ValueError(
            f"delta {delta:g} is too weak for a site of {max(n_train)} records: keep it well "
            "below 1/records"
        )
    chosen = default_training(n_train, target_epsilon, input_variance)
    steps = steps_per_round or chosen["steps_per_round"]
    rounds = rounds or chosen["rounds"]
    local_epochs = local_epochs or chosen["local_epochs"]
    learning_rate = learning_rate or chosen["learning_rate"]
    max_grad_norm = max_grad_norm or chosen["max_grad_norm"]
    known: dict[int, SitePlan] = {}
    for n in n_train:
        if n not in known:  # sites of the same size share a plan: the search is per size
            batch = batch_size or math.ceil(n / steps)
            known[n] = plan_site(
                n, batch, local_epochs, rounds, target_epsilon, delta, accountant, prior
            )
    return StudyPlan(
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
        rounds=rounds,
        local_epochs=local_epochs,
        learning_rate=learning_rate,
        max_grad_norm=max_grad_norm,
        steps_per_round=None if batch_size else steps,
        standardization_noise=standardization_noise,
        sites=tuple(known[n] for n in n_train),
    )
