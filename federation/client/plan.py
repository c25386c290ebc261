"""A site's privacy plan of one training run: every release it will make, fixed at setup.

The plan is a function of the study spec and the site's public training-record count alone, so
the site can work it out again at any later message and check it against the plan its ledger
admitted: the standardization sums (training partition), the DP-SGD steps of every round
(training partition, calibrated after the sums so that the partition lands at the target), and
two evaluation releases per planned evaluation (test partition, calibrated to the study's
evaluation budget).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from federation.client.training import DPPlan, plan_dp
from federation.wire.evaluation import evaluation_noise
from federation.wire.spec import StudySpec
from privacy.accounting import GaussianRelease, compute_epsilon
from privacy.ledger import ALL, TEST, TRAIN, PlannedRelease
from privacy.planner import share_noise

SETUP_SUMS = "gaussian-sums"
DP_SGD = "dp-sgd"
EVALUATION_HISTOGRAMS = "evaluation-histograms"
EVALUATION_RANKS = "evaluation-ranks"


@dataclass(frozen=True)
class SitePlan:
    """Everything a site releases in a run (``setup_noise`` None: no standardization release;
    ``dp`` None: training without DP), with the evaluation's noise and count."""

    setup_noise: float | None
    dp: DPPlan | None
    evaluations: int
    histogram_noise: float
    rank_noise: float

    def releases(self) -> tuple[PlannedRelease, ...]:
        planned = []
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
        for mechanism, noise in (
            (EVALUATION_HISTOGRAMS, self.histogram_noise),
            (EVALUATION_RANKS, self.rank_noise),
        ):
            planned.append(
                PlannedRelease(mechanism, TEST, GaussianRelease(noise, 1.0, self.evaluations))
            )
        return tuple(planned)

    def setup_releases(self) -> list[PlannedRelease]:
        """What the setup reply releases (the standardization sums), if anything."""
        return [r for r in self.releases() if r.mechanism == SETUP_SUMS]

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
    """The plan of ``spec`` at a site with ``n_train`` training records (``with_sums``: it
    releases standardization sums)."""
    privacy = spec.privacy
    setup_noise = None
    if with_sums and privacy.enabled:
        setup_noise = share_noise(
            privacy.standardization_share, privacy.target_epsilon, privacy.delta
        )
    dp = None
    if privacy.enabled:
        prior = [GaussianRelease(setup_noise, 1.0, 1)] if setup_noise is not None else []
        training = spec.training
        dp = plan_dp(
            n_train,
            training.batch_size,
            training.local_epochs,
            training.rounds,
            privacy.target_epsilon,
            privacy.delta,
            privacy.accountant,
            prior,
        )
    evaluations = len(spec.training.evaluation_rounds())
    histogram_noise, rank_noise = evaluation_noise(
        privacy.evaluation_budget, privacy.delta, privacy.accountant, evaluations
    )
    return SitePlan(setup_noise, dp, evaluations, histogram_noise, rank_noise)


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
