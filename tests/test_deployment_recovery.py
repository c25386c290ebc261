"""Recovery in a real deployment on loopback: a stopped ServerApp resumes from its checkpoint,
a killed SuperNode is marked failed while the run goes on (its own federation: the killed node
stays registered with the SuperLink)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.deployment


def wait_for_rounds(out: Path, rounds: int, timeout: float) -> None:
    """Until the run directory has recorded ``rounds`` completed rounds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rounds:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {rounds} rounds in {out} after {timeout:g} s")


def test_a_stopped_server_resumes_from_its_checkpoint(federation, tmp_path):
    """The aggregator dies after a round (``flwr stop``); a new run with ``resume`` continues
    from the checkpoint and completes every round once."""
    fed, files, study = federation
    spec = tmp_path / "study.toml"  # under DP: each node's default ledger holds what it spent
    spec.write_text(study.read_text().replace("rounds = 1", "rounds = 6"))
    out = tmp_path / "run"
    first = fed.launch(spec, out, expected_sites=len(files))
    try:
        wait_for_rounds(out, 1, timeout=120)
        fed.stop_run(first)
        assert fed.wait_for_run(first, timeout=60) != "finished:completed"
        done = len((out / "metrics.jsonl").read_text().splitlines())
        assert done < 6 and not (out / "summary.json").exists()
        second = fed.launch(spec, out, expected_sites=len(files), resume=True)
        assert fed.wait_for_run(second, timeout=240) == "finished:completed"
    except BaseException:
        print(fed.logs())
        raise
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 6
    rounds = [
        json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    assert rounds == list(range(1, 7))
    assert all(site["status"] == "ok" for site in summary["sites"].values())


def test_a_site_killed_mid_run_is_marked_failed_and_the_run_goes_on(federation, tmp_path):
    """Last of the module's runs: the killed node stays registered with the SuperLink."""
    fed, files, study = federation
    spec = tmp_path / "study.toml"
    text = study.read_text().replace("rounds = 1", "rounds = 4")
    spec.write_text(text.replace("[training]", "[training]\nround-timeout = 15.0"))
    path = next(iter(files.values()))  # a second node on a site's file, as another site
    private, public = fed.node_key("doomed")
    fed.register(public)
    doomed = fed.start_node("doomed", path, private, fed.certs.ca_cert)
    fed.wait_for_node(doomed, timeout=120)
    out = tmp_path / "run"
    run_id = fed.launch(spec, out, expected_sites=len(files) + 1)
    try:
        wait_for_rounds(out, 1, timeout=180)
        os.killpg(doomed.popen.pid, signal.SIGKILL)  # the node dies without a word
        assert fed.wait_for_run(run_id, timeout=240) == "finished:completed"
    except BaseException:
        print(fed.logs())
        raise
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 4
    assert summary["sites"]["doomed"]["status"] == "failed"
    assert "no reply within 15 s" in summary["sites"]["doomed"]["reason"]
    assert all(summary["sites"][n]["status"] == "ok" for n in files)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2, 3, 4]
