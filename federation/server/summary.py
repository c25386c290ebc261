"""What a run leaves behind for its readers: the final model with its card, ``summary.json``
and then ``report.html``. The summary is written first and alone decides the run's outcome; a
report that cannot be written is logged and never fails the run."""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import ArrayRecord

from federation.server.model_card import build_model_card, scaling_rows
from federation.server.outputs import REPORT, RunDirectory
from federation.server.sites import SiteRecord
from federation.server.state import RunState
from federation.wire.spec import StudySpec

log = logging.getLogger("allfed.server")


def write_final_model(outputs: RunDirectory, state: RunState, arrays: ArrayRecord) -> None:
    """The final model and its card, with the evaluation the sites released of it."""
    spec = state.spec
    state_dict = arrays.to_torch_state_dict()
    card = build_model_card(
        spec,
        state_dict,
        rounds=state.rounds_done,
        scaling=scaling_rows(spec, *state.scaling, state.scaling_warnings, state.estimated_bounds),
        privacy=privacy_header(state),
        sites={s.name: site_summary(state, s) for s in state.sites.values()},
        metrics=state.metrics,
        evaluated_round=state.evaluated_round,
        diagnostics=state.diagnostics,
    )
    outputs.write_model(state_dict, card)


def conclude(
    outputs: RunDirectory, state: RunState, status: str, error: str | None
) -> dict[str, Any]:
    """Write the summary, then the report: the summary must not wait on (or die with) it."""
    summary = run_summary(state, status, error)
    outputs.write_summary(summary)
    started = time.perf_counter()
    try:
        outputs.write_report(summary)
    except Exception:
        log.exception("could not write %s; summary.json is complete", REPORT)
    else:
        log.info("wrote %s in %.2f s", REPORT, time.perf_counter() - started)
    return summary


def run_summary(state: RunState, status: str, error: str | None) -> dict[str, Any]:
    """``summary.json``: the run's outcome, its settings, every site's facts and the metrics."""
    spec, study = state.spec, state.spec.study
    return {
        "study": study.name,
        "task": study.task,
        "label": study.label,
        **survival_keys(spec),
        "groups": list(study.groups),
        "status": status,
        "error": error,
        "rounds": state.rounds_done,
        "planned_rounds": spec.training.rounds,
        "strategy": spec.training.strategy,
        "model": spec.model.name,
        "privacy": privacy_header(state),
        "sites": {s.name: site_summary(state, s) for s in state.sites.values()},
        "representation": state.representation,
        "evaluated_round": state.evaluated_round,
        "diagnostics": state.diagnostics,
        "scaling_warnings": state.scaling_warnings,
        "metrics": state.metrics,
    }


def survival_keys(spec: StudySpec) -> dict[str, Any]:
    """A survival study's outcome columns, horizons and hazard intervals (nothing for a binary
    study, whose summary keeps its keys)."""
    study = spec.study
    if study.task != "survival":
        return {}
    return {
        "time": study.time,
        "event": study.event,
        "horizons": list(study.horizons),
        "intervals": list(study.intervals),
    }


def privacy_header(state: RunState) -> dict[str, Any]:
    """The study's privacy settings, all None for a study without DP."""
    privacy = state.spec.privacy
    return {
        "enabled": privacy.enabled,
        "target_epsilon": privacy.target_epsilon if privacy.enabled else None,
        "delta": privacy.delta if privacy.enabled else None,
        "accountant": privacy.accountant if privacy.enabled else None,
    }


def site_summary(state: RunState, site: SiteRecord) -> dict[str, Any]:
    """One site's facts as the summary and the model card report them."""
    privacy = state.spec.privacy
    return {
        "status": site.status,
        "reason": site.reason,
        "epsilon": site.epsilon if privacy.enabled else None,
        "delta": site.delta if privacy.enabled else None,
        "noise_multiplier": site.noise_multiplier,
        "sample_rate": site.sample_rate,
        "steps": site.steps,
        "other_releases": site.other_releases,
        "accountant": privacy.accountant if privacy.enabled else None,
        "n_train": site.n_train,
        "n_test": site.n_test,
        "evaluation_epsilon": site.evaluation_epsilon,
        "participant_epsilon": _participant_epsilon(site) if privacy.enabled else None,
        "epsilon_by_round": site.epsilon_by_round,
        "rejected_updates": site.rejected_updates,
    }


def _participant_epsilon(site: SiteRecord) -> float | None:
    """A participant is in the training or the test partition, never both: the larger of the
    two partitions' epsilons."""
    spent = [e for e in (site.epsilon, site.evaluation_epsilon) if e is not None]
    return max(spent) if spent else None
