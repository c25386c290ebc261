"""Everything one run has learnt so far, in one place: what each phase of the run adds to,
what a checkpoint saves after every round, and what the summary and model card report."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from federation.server.sites import Roster
from federation.wire.spec import StudySpec


@dataclass
class RunState:
    """One run's state. ``spec`` is the study as given until the census plans the training
    settings it leaves out; ``study_text`` stays the spec as given (a resume must match it)."""

    spec: StudySpec
    run_key: str  # sent with every message: a site's ledger ties its releases to this run
    study_text: str
    sites: Roster = field(default_factory=Roster)
    smallest_n_train: int = 0  # the census's: what the training settings were planned for
    rounds_done: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per round, metrics.jsonl's
    # The pooled standardization (center, scale) of the pooled numeric columns.
    scaling: tuple[list[float], list[float]] = ([], [])
    scaling_warnings: dict[str, str] = field(default_factory=dict)  # column -> why replaced
    estimated_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # private
    # The latest evaluation of the global model.
    metrics: dict[str, Any] = field(default_factory=dict)
    representation: dict[str, Any] = field(default_factory=dict)
    diagnostics: list[str] = field(default_factory=list)
    evaluated_round: int | None = None

    @classmethod
    def start(cls, spec: StudySpec, run_key: str | None = None) -> RunState:
        """A run of ``spec``: a new run key, or the resumed run's."""
        return cls(spec=spec, run_key=run_key or secrets.token_hex(8), study_text=spec.to_toml())

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """The bounds the run clips and pools with: declared, and privately estimated."""
        return {**self.spec.features.bounds, **self.estimated_bounds}

    def require_sites(self, stage: str) -> None:
        """Fail the run when fewer than ``min-sites`` sites are left after ``stage``."""
        self.sites.require(stage, self.spec.training.min_sites)
