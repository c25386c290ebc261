"""What the aggregator knows about each site of a run, and which of them are still in it.

A site's facts (status, epsilon and the accounting behind it) are kept per site and never
averaged; only whitelisted facts from its replies ever get here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from federation.wire import protocol as p

log = logging.getLogger("allfed.server")


class RunFailed(Exception):
    """The run could not go on (too few sites left); the summary says why."""


@dataclass
class SiteRecord:
    """What the aggregator knows about one site; only whitelisted facts ever get here."""

    name: str
    status: str = p.OK
    reason: str | None = None
    n_train: int = 0
    n_test: int | None = None  # noisy, from the evaluation release; None: not published
    epsilon: float | None = None  # the training partition's
    evaluation_epsilon: float | None = None  # the test partition's
    delta: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int = 0
    other_releases: list[dict[str, float]] = field(default_factory=list)
    epsilon_by_round: list[dict[str, Any]] = field(default_factory=list)  # the trajectory
    rejected_updates: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, state: str, reason: str) -> None:
        self.status, self.reason = state, reason
        log.warning("site %s %s: %s", self.name, state, reason)

    def note_release(self, metrics: Any, noise_key: str) -> None:
        """A one-shot release a reply says it made (its noise multiplier), for the summary."""
        if noise_key in metrics:
            self.other_releases.append(
                {"noise_multiplier": float(metrics[noise_key]), "sample_rate": 1.0, "steps": 1}
            )


class Roster(dict[int, SiteRecord]):
    """The run's sites by node id. A site that failed stays here (the summary reports it);
    only the active ones are sent anything. A site without a node (it did not rejoin a resumed
    run) has a negative id."""

    def active(self) -> set[int]:
        return {node for node, site in self.items() if site.status == p.OK}

    def require(self, stage: str, min_sites: int) -> None:
        """Fail the run when fewer than ``min_sites`` sites are left after ``stage``."""
        active = len(self.active())
        if active < min_sites:
            raise RunFailed(
                f"{stage}: only {active} site(s) left, the study needs min-sites = {min_sites}"
            )

    def require_unique_names(self) -> None:
        """Two nodes with one site name would merge two sites' facts: fail the run instead."""
        seen: set[str] = set()
        for site in self.values():
            if site.name in seen:
                raise RunFailed(
                    f"two nodes call themselves {site.name!r}; site names must be unique"
                )
            seen.add(site.name)
