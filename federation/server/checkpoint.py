"""The run's checkpoint: written after every completed round, restored by a resumed run.

It holds the model, the round, the strategy's state, the pooled scaling (with its warnings)
and bounds, the per-site records and the rounds' rows (``outputs.checkpoint_state``); the sites
keep their own side in their ledgers. A resumed run restores it, sends the run's key and the
rounds done in the setup config, and matches the nodes that answer to the checkpoint's sites by
name.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from federation.server.outputs import CHECKPOINT_FORMAT, RunDirectory, checkpoint_state
from federation.server.sites import SiteRecord
from federation.server.state import RunState
from federation.wire import protocol as p

log = logging.getLogger("allfed.server")

STRATEGY_STATE = ("m_t", "v_t")  # what Flower's FedOpt strategies (FedAdam) carry across rounds


def write_checkpoint(
    outputs: RunDirectory, state: RunState, arrays: ArrayRecord, strategy: Strategy
) -> None:
    """Everything a resume needs after a completed round; the sites keep their own side."""
    moments = {}
    for name in STRATEGY_STATE:  # FedAdam's (FedOpt's) moments; the others keep none
        value = getattr(strategy, name, None)
        if value:
            moments[name] = {k: torch.from_numpy(np.array(v)) for k, v in value.items()}
    outputs.write_checkpoint(
        {
            "format": CHECKPOINT_FORMAT,
            "spec": state.study_text,
            "run_key": state.run_key,
            "round": state.rounds_done,
            "arrays": arrays.to_torch_state_dict(),
            "strategy": moments,
            "state": checkpoint_state(
                scaling=list(state.scaling),
                scaling_warnings=state.scaling_warnings,
                sites=[asdict(site) for site in state.sites.values()],
                metrics=state.metrics,
                representation=state.representation,
                diagnostics=state.diagnostics,
                evaluated_round=state.evaluated_round,
                rows=state.rows,
                smallest_n_train=state.smallest_n_train,
                estimated_bounds=state.estimated_bounds,
            ),
        }
    )


def planned_for(checkpoint: dict[str, Any] | None) -> int | None:
    """The smallest site's training-record count the checkpoint's run was planned for."""
    saved = checkpoint["state"].get("smallest_n_train") if checkpoint else None
    return int(saved) if saved else None


def restore(
    checkpoint: dict[str, Any], state: RunState, strategy: Strategy, outputs: RunDirectory
) -> ArrayRecord:
    """Put the checkpoint's scaling, bounds, evaluation and rounds into ``state``, its moments
    into ``strategy`` and its rows into ``metrics.jsonl`` (a crash may have left one more);
    returns its model. The sites are matched after their setup (``rejoin``)."""
    saved = checkpoint["state"]
    state.rounds_done = int(checkpoint["round"])
    center, scale = saved["scaling"]
    state.scaling = (list(center), list(scale))
    # A resume pools nothing again, so the pooling's warnings come back with its scaling
    # (a checkpoint written before they were saved has none).
    state.scaling_warnings = dict(saved.get("scaling_warnings", {}))
    state.estimated_bounds = {
        c: (float(low), float(high)) for c, (low, high) in saved["estimated_bounds"].items()
    }
    state.metrics, state.rows = saved["metrics"], list(saved["rows"])
    state.representation = saved["representation"]
    state.diagnostics = list(saved["diagnostics"])
    state.evaluated_round = saved["evaluated_round"]
    for name, value in checkpoint["strategy"].items():
        setattr(strategy, name, {k: t.numpy() for k, t in value.items()})
    outputs.rewrite_rounds(state.rows)
    log.info("resuming run %s after round %d", state.run_key, state.rounds_done)
    return ArrayRecord(dict(checkpoint["arrays"]))


def rejoin(checkpoint: dict[str, Any], state: RunState) -> None:
    """Match the nodes that answered the resumed setup to the checkpoint's sites by name:
    a site keeps its record (failed stays failed), one not in the run or not back fails."""
    saved = {s["name"]: SiteRecord(**s) for s in checkpoint["state"]["sites"]}
    joined = dict(state.sites)
    state.sites.clear()
    for node, site in joined.items():
        record = saved.pop(site.name, None)
        if record is None:
            site.fail(p.FAILED, "not a site of the run being resumed")
            record = site
        elif record.status == p.OK and site.status != p.OK:
            record.fail(site.status, site.reason or "")
        state.sites[node] = record
    for missing, record in enumerate(saved.values(), start=1):
        if record.status == p.OK:
            record.fail(p.FAILED, "did not rejoin the resumed run")
        state.sites[-missing] = record  # no node: never sent anything
