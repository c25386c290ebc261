"""Checkpoint and resume: a stopped run continues where it was, and privacy stays exact."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from checkpoints import write_checkpoint
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.supercore.run import RunNotRunningException
from wire import LocalGrid, global_arrays, model_config, reason_of, send, state_of

from federation.client.app import make_client_app
from federation.client.site import SiteSettings
from federation.client.training import plan_dp
from federation.errors import AllfedError
from federation.server.checkpoint import restore
from federation.server.checkpoint import write_checkpoint as write_run_checkpoint
from federation.server.outputs import RunDirectory, load_checkpoint
from federation.server.run import StudyRun
from federation.server.sites import RunFailed
from federation.server.state import RunState
from federation.server.strategy import build_strategy
from federation.simulation import simulate
from federation.synth import write_cohort
from federation.wire import protocol as p
from federation.wire.spec import load_spec
from privacy.accounting import GaussianRelease
from privacy.ledger import Ledger


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Two small sites and a 4-round DP spec (RDP: its accountant is the quick one)."""
    files, spec_path = write_cohort(tmp_path_factory.mktemp("small"), 2, 300, seed=5)
    spec = load_spec(spec_path).with_overrides(
        training={"rounds": 4, "local_epochs": 1}, privacy={"accountant": "rdp"}
    )
    return files, spec


class Crash(Exception):
    """The aggregator dies after a round, as a killed process would (the test's own)."""


def crash_after(last_round: int):
    """An ``on_round`` callback that kills the run once ``last_round`` is done."""

    def on_round(server_round: int, _planned: int, _row: dict) -> None:
        if server_round == last_round:
            raise Crash(f"killed after round {server_round}")

    return on_round


def test_a_stopped_run_resumes_and_every_site_spends_exactly_its_plan(small, tmp_path):
    files, spec = small
    out, ledgers = tmp_path / "run", tmp_path / "ledgers"
    sites = [SiteSettings(n, f, spec, ledger=ledgers / f"{n}.sqlite") for n, f in files.items()]
    with pytest.raises(Crash):
        StudyRun(LocalGrid(sites, 1), spec, out, on_round=crash_after(2)).run()
    crashed = json.loads((out / "summary.json").read_text())
    assert crashed["status"] == "failed" and crashed["rounds"] == 2
    assert crashed["error"] == "Crash: killed after round 2"
    checkpoint = load_checkpoint(out, spec.to_toml())
    assert checkpoint["round"] == 2
    saved = checkpoint["state"]
    assert [row["round"] for row in saved["rows"]] == [1, 2]
    assert sorted(site["name"] for site in saved["sites"]) == sorted(files)
    assert all(site["status"] == "ok" for site in saved["sites"])
    assert saved["smallest_n_train"] > 0 and saved["scaling"][0]  # the run's plan and scaling

    summary = StudyRun(LocalGrid(sites, 2), spec, out, checkpoint=checkpoint).run()

    assert summary["status"] == "completed" and summary["rounds"] == 4
    assert summary["scaling_warnings"] == crashed["scaling_warnings"]  # pooled once, kept
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    privacy = spec.privacy
    for name in files:
        site = summary["sites"][name]
        assert site["status"] == "ok", site["reason"]
        ledger = Ledger(ledgers / f"{name}.sqlite")
        assert len(ledger.runs()) == 1  # the resume continued the run, no second admission
        releases = ledger.releases()
        dp_rounds = [r["round"] for r in releases if r["mechanism"] == "dp-sgd"]
        assert dp_rounds == [1, 2, 3, 4]
        # What an uninterrupted 4-round run plans (and reports) for this site.
        prior = [
            GaussianRelease(r["noise_multiplier"], r["sample_rate"], r["steps"])
            for r in releases
            if r["mechanism"] == "gaussian-sums"
        ]
        smallest = min(s["n_train"] for s in summary["sites"].values())
        training = spec.planned(smallest).training  # the settings the census planned
        plan = plan_dp(
            site["n_train"],
            training.batch_size_for(site["n_train"]),
            training.local_epochs,
            4,
            privacy.target_epsilon,
            privacy.delta,
            privacy.accountant,
            prior,
        )
        assert site["epsilon"] == pytest.approx(plan.epsilon_by_round[-1], rel=1e-9)
        assert site["steps"] == plan.planned_steps
        trajectory = [e["epsilon"] for e in site["epsilon_by_round"]]
        assert trajectory == pytest.approx(list(plan.epsilon_by_round), rel=1e-9)
        last_round = [r for r in releases if r["mechanism"] == "dp-sgd"][-1]
        assert last_round["run_epsilon_after"] == pytest.approx(site["epsilon"], rel=1e-6)
        # The final model was evaluated once, on the test partition's own budget.
        evaluations = [r["mechanism"] for r in releases if r["partition"] == "test"]
        assert evaluations == ["evaluation-histograms", "evaluation-ranks"]
        assert site["evaluation_epsilon"] <= privacy.evaluation_budget
        assert site["participant_epsilon"] == max(site["epsilon"], site["evaluation_epsilon"])
        assert site["epsilon"] <= privacy.target_epsilon * 1.0001
        assert site["other_releases"]  # the standardization sums, released once


class StoppingGrid(LocalGrid):
    """A deployment's grid stopped by its operator in the round after ``stop_after``, once the
    round has asked for the nodes: from then on Flower answers every message with an error (the
    sites' replies can no longer be pulled) and ends the run at its next call to the SuperLink,
    as it does for a stopped run's ServerApp (``stopped`` False: the sites fail the same way,
    but the run was not stopped)."""

    def __init__(self, sites: list[SiteSettings], stop_after: int, stopped: bool) -> None:
        super().__init__(sites, 1)
        self.stop_after, self.stops = stop_after, stopped
        self.next_round_stops = self.failing = False

    def on_round(self, server_round: int, _planned: int, _row: dict) -> None:
        self.next_round_stops = server_round == self.stop_after

    def get_node_ids(self) -> list[int]:
        if self.failing and self.stops:
            raise RunNotRunningException
        return super().get_node_ids()

    def send_and_receive(self, messages, *, timeout=None):
        self.failing = self.failing or self.next_round_stops
        if not self.failing:
            return super().send_and_receive(messages, timeout=timeout)
        unavailable = Error(code=0, reason="Reply message objects are unavailable.")
        for number, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{number}"
        return [Message(unavailable, reply_to=message) for message in messages]


@pytest.mark.parametrize("stopped", [True, False])
def test_a_run_stopped_mid_round_leaves_no_failed_summary(small, tmp_path, stopped):
    """The stop fails the round's replies before it ends the ServerApp: the run must not write
    a summary blaming the sites, and resumes from its checkpoint; sites failing on their own
    still fail the run with its summary."""
    files, spec = small
    sites = [SiteSettings(n, f, spec, ledger=tmp_path / f"{n}.sqlite") for n, f in files.items()]
    grid = StoppingGrid(sites, stop_after=2, stopped=stopped)
    out = tmp_path / "run"
    with pytest.raises(RunNotRunningException if stopped else RunFailed):
        StudyRun(grid, spec, out, on_round=grid.on_round).run()
    assert load_checkpoint(out, spec.to_toml())["round"] == 2
    if stopped:
        assert not (out / "summary.json").exists()
    else:
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "failed" and summary["rounds"] == 2
        assert all(site["status"] == "failed" for site in summary["sites"].values())


def test_the_scaling_warnings_are_restored_with_the_scaling(small, tmp_path):
    """A resumed run pools no scaling again: the warnings of the pooling (as the summary, the
    model card and the report state them) come back from the checkpoint; one written before
    the checkpoint held them restores with none."""
    _, spec = small
    state = RunState.start(spec)
    state.scaling = ([54.0, 27.5], [9.0, 4.5])
    state.scaling_warnings = {"age": "the noise swamps the spread; scaled with SD 0.2"}
    out = tmp_path / "run"
    strategy = build_strategy(spec)
    write_run_checkpoint(RunDirectory(out), state, global_arrays(spec), strategy)
    checkpoint = load_checkpoint(out, spec.to_toml())

    resumed = RunState.start(spec, checkpoint["run_key"])
    restore(checkpoint, resumed, strategy, RunDirectory(out, resume=True))
    assert resumed.scaling == state.scaling
    assert resumed.scaling_warnings == {"age": "the noise swamps the spread; scaled with SD 0.2"}

    del checkpoint["state"]["scaling_warnings"]  # as an earlier release wrote it
    older = RunState.start(spec, checkpoint["run_key"])
    restore(checkpoint, older, strategy, RunDirectory(out, resume=True))
    assert older.scaling == state.scaling and older.scaling_warnings == {}


def test_resume_refuses_a_changed_spec_and_a_missing_checkpoint(small, tmp_path):
    files, spec = small
    with pytest.raises(AllfedError, match=r"no checkpoint\.pt there") as missing:
        simulate(spec, files, tmp_path / "empty", resume=True)
    out = tmp_path / "run"
    write_checkpoint(out, spec, round_=1)
    changed = spec.with_overrides(training={"rounds": 5})
    with pytest.raises(AllfedError, match=r"the study spec changed \(training.rounds") as error:
        simulate(changed, files, out, resume=True)
    assert "was 4, now 5" in str(error.value)
    for refusal in (missing, error):
        assert "\n" not in str(refusal.value)


def test_a_site_resumes_only_a_run_its_ledger_admitted(small, tmp_path):
    files, spec = small
    site = SiteSettings("forgetful", next(iter(files.values())), spec, tmp_path / "new.sqlite")
    context = Context(run_id=2, node_id=7, node_config={}, state=RecordDict(), run_config={})
    config = ConfigRecord({p.RUN_KEY: "abc", p.RESUME_AFTER: 2})
    app = make_client_app(lambda _c: site)
    reply = send(context, p.SETUP, RecordDict({p.CONFIG: config}), app=app)
    assert state_of(reply) == p.REFUSED and reason_of(reply).startswith("resume-refused")


def test_a_round_recorded_but_never_received_is_sent_again_not_trained_again(small, tmp_path):
    """The server crashed after the site released round 3 of 3; on resume after round 2 the
    site answers round 3 with the very release it made (already spent), trains nothing new,
    and refuses anything beyond its plan."""
    files, spec = small
    spec = spec.with_overrides(training={"rounds": 3})
    site = SiteSettings("urban", next(iter(files.values())), spec, tmp_path / "l.sqlite")
    app = make_client_app(lambda _c: site)

    def run(context, resume_after, rounds):
        config = ConfigRecord({p.RUN_KEY: "run-1", p.RESUME_AFTER: resume_after})
        setup = send(context, p.SETUP, RecordDict({p.CONFIG: config}), app=app)
        assert state_of(setup) == p.OK, reason_of(setup)
        assert (p.SUM in setup[p.METRICS]) == (resume_after == 0)  # the sums: once
        replies = []
        for server_round in rounds:
            train = model_config(spec, server_round)
            content = RecordDict({p.ARRAYS: global_arrays(spec), p.CONFIG: train})
            replies.append(send(context, "train", content, app=app))
        return replies

    first = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    done = run(first, 0, (1, 2, 3))
    assert all(p.METRICS in r for r in done)
    again = Context(run_id=2, node_id=7, node_config={}, state=RecordDict(), run_config={})
    (reply, beyond) = run(again, 2, (3, 4))
    lost = done[-1][p.ARRAYS].to_torch_state_dict()
    resent = reply[p.ARRAYS].to_torch_state_dict()
    assert all(torch.equal(lost[k], resent[k]) for k in lost)
    assert dict(reply[p.METRICS]) == dict(done[-1][p.METRICS])
    assert state_of(beyond) == p.REFUSED and reason_of(beyond).startswith("plan-exhausted")
    rounds = [r["round"] for r in Ledger(site.ledger).releases() if r["mechanism"] == "dp-sgd"]
    assert rounds == [1, 2, 3]


WRITER = """
import sys
from pathlib import Path
from checkpoints import write_checkpoint
from federation.wire.spec import load_spec

spec = load_spec(sys.argv[1])
round_ = 0
while True:
    write_checkpoint(Path(sys.argv[2]), spec, round_, size=2_000_000)
    print(f"wrote {round_}", flush=True)
    round_ += 1
"""


def whole(checkpoint: dict) -> int:
    """The round of a checkpoint that is one write's, not parts of two; fails otherwise."""
    round_ = checkpoint["round"]
    weights = checkpoint["arrays"]["w"]
    assert weights.numel() == 2_000_000 and bool((weights == round_).all()), round_
    return round_


def test_the_checkpoint_is_written_atomically(small, tmp_path, monkeypatch):
    _, spec = small
    out = tmp_path / "run"
    spec_file = tmp_path / "study.toml"
    spec_file.write_text(spec.to_toml())
    directory = write_checkpoint(out, spec, round_=1)

    def dies_halfway(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk gone")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError):
        directory.write_checkpoint({"round": 2})
    monkeypatch.undo()
    assert load_checkpoint(out, spec.to_toml())["round"] == 1

    # A writer rewriting the checkpoint in a loop, read while it writes, then killed mid-write.
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(WRITER))
    paths = [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    writer = subprocess.Popen(
        [sys.executable, str(script), str(spec_file), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "wrote 0"
        seen = [whole(load_checkpoint(out, spec.to_toml())) for _ in range(5)]
        assert seen == sorted(seen)  # each read is one whole checkpoint, none older than the last
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    written = [int(line.split()[1]) for line in ["wrote 0", *writer.stdout.read().splitlines()]]
    assert written == list(range(len(written)))
    # The last write that returned, or the one it was in when killed (after its rename).
    assert whole(load_checkpoint(out, spec.to_toml())) in (written[-1], written[-1] + 1)
