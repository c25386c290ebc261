"""The aggregator as a Flower ServerApp, for simulation and for a real SuperLink: a training run,
or (run config ``analysis``) a descriptive analysis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federation.server.analysis import AnalysisRun
from federation.server.grid import PollingGrid
from federation.server.outputs import load_checkpoint
from federation.server.rounds import RoundCallback
from federation.server.run import StudyRun
from federation.wire import protocol as p
from federation.wire.protocol import site_entries
from federation.wire.queries import AnalysisRequest
from federation.wire.spec import StudySpec, spec_from_run_config


@dataclass(frozen=True)
class RunSettings:
    """The study to run, where to write its run directory, who to tell after each round, and how
    many sites to wait for before it starts (``min-sites`` when unknown)."""

    spec: StudySpec
    out: Path
    on_round: RoundCallback | None = None
    expected_sites: int | None = None
    checkpoint: dict[str, Any] | None = None  # a run directory's checkpoint: resume that run
    analysis: AnalysisRequest | None = None  # answer this descriptive analysis instead of training


def settings_from_run_config(context: Context) -> RunSettings:
    """Deployment (``flwr run``): the study and output folder from the run config;
    ``resume = "DIR"`` continues the run in DIR (same spec) from its last completed round."""
    run = context.run_config
    spec = spec_from_run_config(run)
    resume = str(run.get(p.RUN_RESUME) or "")
    out = Path(resume or str(run.get(p.RUN_OUT) or "runs/latest"))
    checkpoint = load_checkpoint(out, spec.to_toml()) if resume else None
    expected = int(run.get(p.RUN_EXPECTED_SITES) or 0) or len(site_entries(run)) or None
    analysis = str(run.get(p.RUN_ANALYSIS) or "")
    return RunSettings(
        spec=spec,
        out=out,
        expected_sites=expected,
        checkpoint=checkpoint,
        analysis=AnalysisRequest.from_json(analysis) if analysis else None,
    )


def make_server_app(
    resolve: Callable[[Context], RunSettings] = settings_from_run_config,
) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = resolve(context)
        # Flower's deployment Grid waits 3 s between pulls of replies; PollingGrid, 0.1 s.
        if settings.analysis is not None:
            AnalysisRun(
                PollingGrid(grid),
                settings.spec,
                settings.analysis,
                settings.out,
                settings.expected_sites,
            ).run()
            return
        StudyRun(
            PollingGrid(grid),
            settings.spec,
            settings.out,
            settings.on_round,
            settings.expected_sites,
            settings.checkpoint,
        ).run()

    return server_app


app = make_server_app()
