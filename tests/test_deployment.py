"""A real deployment on loopback: SuperLink and SuperNodes as separate processes, TLS, node auth.

One federation (SuperLink + three registered SuperNodes, the ``federation`` fixture of
``conftest.py``) is shared by the module; every process is stopped at the end, also when a test
fails (``LocalFederation.stop`` in a ``finally``). A federation burns CPU while idle (every
process polls), so the module keeps one; the test that kills a node runs last.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import run_allfed

from federation.deploy.certs import make_certificates, make_node_key
from federation.deploy.local import CONNECTION
from federation.deploy.runs import COMPLETED, FAILED, PENDING, run_config, run_status
from federation.errors import AllfedError

pytestmark = pytest.mark.deployment


def test_study_completes_over_tls_with_node_auth(federation, tmp_path):
    fed, files, study = federation
    out = tmp_path / "run"
    run_id = fed.launch(study, out, expected_sites=len(files))
    try:
        assert fed.wait_for_run(run_id, timeout=240) == "finished:completed"
    except BaseException:
        print(fed.logs())
        print(run_status(out).message)
        raise
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["rounds"] == 1
    assert sorted(summary["sites"]) == sorted(files)
    assert all(site["status"] == "ok" for site in summary["sites"].values())
    for name in ("model.pt", "metrics.jsonl", "report.html", "model_card.json"):
        assert (out / name).exists(), name
    assert run_status(out).code == COMPLETED


def test_allfed_analyze_asks_the_deployed_sites(federation, tmp_path):
    """`allfed analyze --superlink`: the central team's command, the sites' own nodes."""
    fed, files, study = federation
    out = tmp_path / "analysis"
    result = run_allfed(
        "analyze", "count", "--by", "sex", "--study", str(study), "--target-epsilon", "1",
        "--delta", "1e-6", "--out", str(out), "--superlink", CONNECTION,
        "--app", str(fed.app_copy()), "--expected-sites", str(len(files)),
        env=fed.env, timeout=180,
    )  # fmt: skip
    if result.returncode != 0:
        print(fed.logs())
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "analysis.json").read_text())
    assert summary["status"] == "completed" and sorted(summary["sites"]) == sorted(files)
    assert all(site["epsilon"] <= 1.0 for site in summary["sites"].values())
    counts = {row["level"]: row["count"] for row in summary["result"]["rows"]}
    assert set(counts) == {"female", "male"} and all(c > 20 for c in counts.values())
    assert (out / "count.html").exists() and "each site's own ledger" in result.stdout
    assert run_status(out).code == COMPLETED


def test_unregistered_node_key_is_refused(federation, tmp_path):
    fed, files, _ = federation
    private, _ = make_node_key(tmp_path / "stranger")
    node = fed.start_node(
        "stranger",
        next(iter(files.values())),
        private,
        fed.certs.ca_cert,
        extra=["--max-retries", "1"],
        fast=False,  # refused before any ClientApp runs: plain flower-supernode starts faster
    )
    try:
        log = log_until_accepted_or_gone(node, 60)
        assert "SuperNode ID:" not in log
        assert "Failed to activate SuperNode" in log or "PERMISSION_DENIED" in log.upper()
    finally:
        node.stop()


def log_until_accepted_or_gone(node, timeout: float) -> str:
    """The node's log once the SuperLink accepted it, it exited, or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and node.alive():
        if "SuperNode ID:" in node.output():
            break
        time.sleep(0.5)
    return node.output()


def test_node_without_the_ca_cannot_connect(federation, tmp_path):
    fed, files, _ = federation
    private, public = make_node_key(tmp_path / "no-ca")
    fed.register(public)  # registered, so only TLS can keep it out
    node = fed.start_node(
        "no-ca",
        next(iter(files.values())),
        private,
        root_certificates=None,
        extra=["--max-retries", "1", "--max-wait-time", "5"],
        fast=False,
    )
    try:
        log = log_until_accepted_or_gone(node, 60)
        # gRPC's verdict on the SuperLink's certificate, and Flower's reading of it (it gives up
        # at once instead of retrying): the TLS check, not anything else, kept the node out.
        assert "CERTIFICATE_VERIFY_FAILED" in log, log[-3000:]
        assert "SSL/TLS handshake error detected." in log, log[-3000:]
        # No progress: never activated, never pulled a message of any run, and gone.
        assert "SuperNode ID:" not in log and "[RUN " not in log, log[-3000:]
        assert not node.alive()
    finally:
        node.stop()


def test_certificates_and_keys(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    files = make_certificates(tmp_path / "certs", ["superlink.example.org", "10.0.0.5"])
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    for private in (files.ca_key, files.server_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(AllfedError, match="already exist"):
        make_certificates(tmp_path / "certs", ["localhost"])
    with pytest.raises(AllfedError, match="not a DNS name"):
        make_certificates(tmp_path / "other", ["https://x"])
    key, public = make_node_key(tmp_path / "node")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    load_ssh_private_key(key.read_bytes(), password=None)


def test_run_status_exit_codes(tmp_path):
    assert run_status(tmp_path).code == PENDING
    (tmp_path / "summary.json").write_text(
        json.dumps({"status": "failed", "error": "setup: only 1 site(s) left", "sites": {}})
    )
    outcome = run_status(tmp_path)
    assert outcome.code == FAILED and "only 1 site" in outcome.message
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from federation.cli import main; main()",
            "run",
            "status",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == FAILED and "failed" in done.stderr


def test_forked_tasks_draw_different_random_numbers():
    """The warm executor forks every task from one parent; each child reseeds (``_reseed``), or
    every task would repeat the same draws."""
    from federation.deploy.node import _reseed

    draws = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # as ForkExecutor's child does
            _reseed()
            os.write(write, torch.rand(4).numpy().tobytes())
            os._exit(0)
        os.waitpid(pid, 0)
        draws.append(os.read(read, 64))
        os.close(read)
        os.close(write)
    assert draws[0] != draws[1]


def test_cli_certs_and_keygen(tmp_path: Path):
    assert run_allfed("certs", "--out", str(tmp_path / "c"), "--host", "127.0.0.1").returncode == 0
    again = run_allfed("certs", "--out", str(tmp_path / "c"), "--host", "127.0.0.1")
    assert again.returncode == 2 and "already exist" in again.stderr
    assert run_allfed("node", "keygen", "--out", str(tmp_path / "k")).returncode == 0
    assert (tmp_path / "k" / "node.key.pub").exists()


def _tampered_app(fed, root: Path, clientapp: str, marker: Path) -> Path:
    """A copy of the app the central team could ship: its pyproject names ``clientapp``, and it
    carries a module of its own and a modified copy of one of the site node's modules, each
    writing ``marker`` when imported."""
    app = root / "tampered-app"
    shutil.copytree(fed.app_copy(), app)
    payload = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran at the site')\n"
    (app / "evilapp.py").write_text(
        payload + "from federation.client.app import make_client_app\n\napp = make_client_app()\n"
    )
    handlers = app / "federation" / "client" / "handlers.py"
    handlers.write_text(payload + handlers.read_text())
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text().replace(
        'clientapp = "federation.client.app:app"', f'clientapp = "{clientapp}"'
    )
    pyproject.write_text(text)
    return app


def _launch_app(fed, app: Path, study: Path, out: Path, sites: int) -> str:
    config = run_config(study, out, sites)
    answer = fed.flwr("run", str(app), CONNECTION, "--run-config", str(config), "--format", "json")
    assert "run-id" in answer, answer
    return str(answer["run-id"])


def test_a_fab_never_runs_its_code_at_a_site(federation, tmp_path):
    """`allfed node start` runs the site's installed node only: a FAB naming another ClientApp
    is refused (the central team sees why, the site logs it), and a FAB carrying a modified
    copy of the node's own modules still gets the site's code; no FAB module is ever imported."""
    fed, files, study = federation
    marker = tmp_path / "marker"
    evil = _tampered_app(fed, tmp_path / "evil", "evilapp:app", marker)
    out = tmp_path / "refused"
    run_id = _launch_app(fed, evil, study, out, len(files))
    try:
        fed.wait_for_run(run_id, timeout=240)
        summary = json.loads((out / "summary.json").read_text())
    except BaseException:
        print(fed.logs())
        raise
    assert summary["status"] == "failed"
    for name in files:
        assert summary["sites"][name]["status"] == "refused"
        assert summary["sites"][name]["reason"].startswith("untrusted-app")
    assert "refused a task: the app's ClientApp component is 'evilapp:app'" in fed.logs()
    assert not marker.exists()

    tampered = _tampered_app(fed, tmp_path / "copy", "federation.client.app:app", marker)
    out = tmp_path / "completed"
    run_id = _launch_app(fed, tampered, study, out, len(files))
    try:
        assert fed.wait_for_run(run_id, timeout=240) == "finished:completed"
    except BaseException:
        print(fed.logs())
        raise
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert not marker.exists()  # the sites ran their own handlers, not the FAB's copy


def wait_for_rounds(out: Path, rounds: int, timeout: float) -> None:
    """Until the run directory has recorded ``rounds`` completed rounds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rounds:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {rounds} rounds in {out} after {timeout:g} s")


def stop_quietly(fed, *run_ids: str | None) -> None:
    """After a failure: stop the test's runs so that the next test's rounds do not wait behind
    them at the shared nodes."""
    for run_id in filter(None, run_ids):
        with contextlib.suppress(Exception):
            fed.stop_run(run_id)


def test_a_stopped_server_resumes_from_its_checkpoint(federation, tmp_path):
    """The aggregator dies after a round (``flwr stop``); a new run with ``resume`` continues
    from the checkpoint and completes every round once."""
    fed, files, study = federation
    spec = tmp_path / "study.toml"  # under DP: each node's default ledger holds what it spent
    spec.write_text(study.read_text().replace("rounds = 1", "rounds = 6"))
    out = tmp_path / "run"
    first, second = fed.launch(spec, out, expected_sites=len(files)), None
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
        stop_quietly(fed, first, second)
        raise
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 6
    rounds = [
        json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    assert rounds == list(range(1, 7))
    assert all(site["status"] == "ok" for site in summary["sites"].values())


def test_a_site_killed_mid_run_is_marked_failed_and_the_run_goes_on(federation, tmp_path):
    """Last of the module: the killed node stays registered with the SuperLink."""
    fed, files, study = federation
    spec = tmp_path / "study.toml"
    text = study.read_text().replace("rounds = 1", "rounds = 2")
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
        stop_quietly(fed, run_id)
        raise
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2
    assert summary["sites"]["doomed"]["status"] == "failed"
    assert "no reply within 15 s" in summary["sites"]["doomed"]["reason"]
    assert all(summary["sites"][n]["status"] == "ok" for n in files)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2]
