"""A site's privacy plan of one training run: every release it will make, fixed at setup.

The plan is a function of the study spec, the training settings the site planned it with (kept
in the ledger) and the site's public training-record count alone, so the site can work it out
again at any later message and check it against the plan its ledger admitted: the
standardization sums (training partition), the DP-SGD steps of every round (training partition,
calibrated after the sums so that the partition lands at the target), and two evaluation
releases per planned evaluation (test partition, calibrated to the study's evaluation budget;
a survival study's are ``wire.survival_evaluation``'s).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from federation.client.training import DPPlan, plan_dp
from federation.wire.evaluation import evaluation_noise
from federation.wire.spec import StudySpec, estimated_columns
from federation.wire.survival_evaluation import survival_evaluation_noise
from privacy.accounting import GaussianRelease, compute_epsilon
from privacy.bounds import BOUNDS_SHARE
from privacy.ledger import ALL, TEST, TRAIN, PlannedRelease
from privacy.planner import share_noise

SETUP_SUMS = "gaussian-sums"
BOUNDS_HISTOGRAMS = "bounds-histograms"
DP_SGD = "dp-sgd"
EVALUATION_HISTOGRAMS = "evaluation-histograms"
EVALUATION_RANKS = "evaluation-ranks"


@dataclass(frozen=True)
class SitePlan:
    """Everything a site releases in a run (``setup_noise`` None: no standardization release;
    ``bounds_noise`` None: no bounds to estimate; ``dp`` None: training without DP), with the
    evaluation's noise and count (``rank_noise`` None: no rank release). Where bounds are
    estimated, setup releases their histograms and the scaling message the sums; otherwise
    setup releases the sums."""

    setup_noise: float | None
    dp: DPPlan | None
    evaluations: int
    histogram_noise: float
    rank_noise: float | None
    bounds_noise: float | None = None

    def releases(self) -> tuple[PlannedRelease, ...]:
        planned = []
        if self.bounds_noise is not None:
            planned.append(
                PlannedRelease(BOUNDS_HISTOGRAMS, TRAIN, GaussianRelease(self.bounds_noise, 1.0, 1))
            )
        if self.setup_noise is not None:
            planned.append(
                PlannedRelease(SETUP_SUMS, TRAIN, GaussianRelease(self.setup_noise, 1.0, 1))
            )
        if self.dp is not None:
            dp = self.dp
            planned.append(
                PlannedRelease(
                    DP_SGD,
                    TRAIN,
                    GaussianRelease(dp.noise_multiplier, dp.sample_rate, dp.planned_steps),
                )
            )
        evaluation = (
            (EVALUATION_HISTOGRAMS, self.histogram_noise),
            (EVALUATION_RANKS, self.rank_noise),
        )
        for mechanism, noise in evaluation if self.evaluations else ():
            if noise is None:
                continue
            planned.append(
                PlannedRelease(mechanism, TEST, GaussianRelease(noise, 1.0, self.evaluations))
            )
        return tuple(planned)

    def setup_releases(self) -> list[PlannedRelease]:
        """What the setup reply releases: the bounds histograms, else the standardization
        sums, if anything."""
        first = BOUNDS_HISTOGRAMS if self.bounds_noise is not None else SETUP_SUMS
        return [r for r in self.releases() if r.mechanism == first]

    def scaling_release(self) -> PlannedRelease | None:
        """What the scaling message releases (the sums, after the bounds), if it is planned."""
        if self.bounds_noise is None or self.setup_noise is None:
            return None
        return PlannedRelease(SETUP_SUMS, TRAIN, GaussianRelease(self.setup_noise, 1.0, 1))

    def round_release(self) -> PlannedRelease:
        dp = self.dp
        return PlannedRelease(
            DP_SGD, TRAIN, GaussianRelease(dp.noise_multiplier, dp.sample_rate, dp.steps_per_round)
        )

    def evaluation_release(self, ranks: bool) -> PlannedRelease:
        mechanism = EVALUATION_RANKS if ranks else EVALUATION_HISTOGRAMS
        noise = self.rank_noise if ranks else self.histogram_noise
        return PlannedRelease(mechanism, TEST, GaussianRelease(noise, 1.0, 1))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SitePlan:
        raw = json.loads(text)
        dp = raw["dp"]
        if dp is not None:
            dp["epsilon_by_round"] = tuple(dp["epsilon_by_round"])
            dp = DPPlan(**dp)
        return cls(**{**raw, "dp": dp})


def site_plan(spec: StudySpec, n_train: int, with_sums: bool) -> SitePlan:
    """The plan of ``spec`` (its training settings planned: ``StudySpec.planned``) at a site
    with ``n_train`` training records (``with_sums``: it releases standardization sums, after
    the bounds histograms of the columns the spec declares no bounds for)."""
    privacy = spec.privacy
    setup_noise = bounds_noise = None
    if with_sums and privacy.enabled:
        setup_noise = share_noise(
            privacy.standardization_share, privacy.target_epsilon, privacy.delta
        )
        if estimated_columns(spec):
            bounds_noise = share_noise(BOUNDS_SHARE, privacy.target_epsilon, privacy.delta)
    dp = None
    if privacy.enabled:
        prior = [GaussianRelease(z, 1.0, 1) for z in (bounds_noise, setup_noise) if z]
        training = spec.training
        dp = plan_dp(
            n_train,
            training.batch_size_for(n_train),
            training.local_epochs,
            training.rounds,
            privacy.target_epsilon,
            privacy.delta,
            privacy.accountant,
            prior,
        )
    evaluations = len(spec.training.evaluation_rounds())
    noise = survival_evaluation_noise if spec.study.task == "survival" else evaluation_noise
    histogram_noise, rank_noise = noise(
        privacy.evaluation_budget, privacy.delta, privacy.accountant, evaluations
    )
    return SitePlan(setup_noise, dp, evaluations, histogram_noise, rank_noise, bounds_noise)


def partition_epsilon(
    releases: list[PlannedRelease], partition: str, delta: float, accountant: str
) -> float:
    """The composed epsilon of ``releases`` that a participant of ``partition`` is in."""
    mine = [r.release for r in releases if r.partition in (partition, ALL)]
    return compute_epsilon(mine, delta, accountant)


def recorded(rows: list[dict]) -> list[PlannedRelease]:
    """A run's ledger rows as planned releases."""
    return [
        PlannedRelease(
            r["mechanism"],
            r["partition"],
            GaussianRelease(r["noise_multiplier"], r["sample_rate"], r["steps"]),
        )
        for r in rows
    ]
