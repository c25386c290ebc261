"""One federated training run, driven from the aggregator, phase by phase.

1. Wait for the nodes, then the census and the sites' setup (``site_setup``): a fresh run also
   estimates private bounds and pools the scaling; a resumed run restores them from its
   checkpoint (``checkpoint``) and matches the sites that came back to its own.
2. The rounds (``rounds``): train, validate, aggregate, evaluate, checkpoint.
3. The outputs (``summary``): the final model and its card, ``summary.json``, ``report.html``.

Every phase talks to the sites through one ``SiteExchange`` and adds what it learns to one
``RunState``; whatever ends the run, the summary is written from that state.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federation.server.checkpoint import planned_for, rejoin, restore
from federation.server.exchange import SiteExchange
from federation.server.grid import wait_for_nodes
from federation.server.outputs import RunDirectory
from federation.server.rounds import RoundCallback, RoundLoop, initial_model
from federation.server.site_setup import census, estimate_private_bounds, pool_scaling, set_up_sites
from federation.server.sites import RunFailed
from federation.server.state import RunState
from federation.server.strategy import build_strategy
from federation.server.summary import conclude, write_final_model
from federation.wire.spec import StudySpec, feature_names


class StudyRun:
    """Runs ``spec`` over the nodes of ``grid`` and writes the run directory ``out``."""

    def __init__(
        self,
        grid: Grid,
        spec: StudySpec,
        out: Path,
        on_round: RoundCallback | None = None,
        expected_sites: int | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        """``on_round`` is told after every round (its checkpoint written); ``expected_sites``
        nodes are waited for (``min-sites`` when None); ``checkpoint`` (from
        ``outputs.load_checkpoint`` of ``out``) resumes that run."""
        self.grid, self.on_round, self.expected_sites = grid, on_round, expected_sites
        self.checkpoint = checkpoint
        self.outputs = RunDirectory(out, resume=checkpoint is not None)
        self.state = RunState.start(spec, str(checkpoint["run_key"]) if checkpoint else None)

    def run(self) -> dict[str, Any]:
        """The run's summary; a run that fails writes its summary too, then raises."""
        self.outputs.start_log()
        try:
            arrays = self._train()
            write_final_model(self.outputs, self.state, arrays)
            return conclude(self.outputs, self.state, "completed", None)
        except RunFailed as error:
            self._end_if_stopped()
            conclude(self.outputs, self.state, "failed", str(error))
            raise
        except Exception as error:
            self._end_if_stopped()
            conclude(self.outputs, self.state, "failed", f"{type(error).__name__}: {error}")
            raise
        finally:
            self.outputs.stop_log()

    def _end_if_stopped(self) -> None:
        """Before a failed run writes its summary, one call to the SuperLink: a run its operator
        stopped (``flwr stop``) ends there, with no summary, as Flower ends a stopped run's
        ServerApp at its next call. A stop that lands mid-round fails the sites' replies (Flower
        answers for them with an error) a moment before Flower's own stop reaches the ServerApp,
        and a "failed" summary would then blame the sites for the stop; the run resumes from its
        checkpoint instead. Any other error of the call leaves the failure to be written."""
        with contextlib.suppress(Exception):
            self.grid.get_node_ids()

    def _train(self) -> ArrayRecord:
        """The final global model: the setup phases, then every round still to run."""
        state = self.state
        timeout, min_sites = state.spec.training.round_timeout, state.spec.training.min_sites
        exchange = SiteExchange(self.grid, state.sites, timeout)  # the census plans neither
        nodes = wait_for_nodes(self.grid, self.expected_sites or min_sites, timeout)
        nodes = census(exchange, state, nodes, planned_for(self.checkpoint))
        strategy = build_strategy(state.spec)  # planned now: every training setting is set
        if self.checkpoint is None:
            arrays = self._start(exchange, nodes)
        else:
            arrays = self._resume(exchange, nodes, strategy)
        return RoundLoop(state, exchange, strategy, self.outputs, self.on_round).run(arrays)

    def _start(self, exchange: SiteExchange, nodes: list[int]) -> ArrayRecord:
        """A fresh run: set up the sites, pool the scaling; the model starts from scratch."""
        state = self.state
        released = set_up_sites(exchange, state, nodes)
        state.require_sites("setup")
        pool_scaling(state, estimate_private_bounds(exchange, state, released))
        return ArrayRecord(initial_model(state.spec, len(feature_names(state.spec))).state_dict())

    def _resume(self, exchange: SiteExchange, nodes: list[int], strategy: Strategy) -> ArrayRecord:
        """A resumed run: the checkpoint's model and state, and the sites that came back."""
        arrays = restore(self.checkpoint, self.state, strategy, self.outputs)
        set_up_sites(exchange, self.state, nodes)  # after restore: it sends the rounds done
        rejoin(self.checkpoint, self.state)
        self.state.require_sites("setup")
        return arrays
