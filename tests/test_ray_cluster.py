"""``allfed simulate --ray-address``: the simulated sites run on an existing Ray cluster.

A real local cluster: ``ray start --head`` and a second node joined to it on 127.0.0.1, one CPU
each (so one site's work at a time on each), both stopped in a ``finally``. The run's sites must
have worked on both nodes, and its results must match the same study on this machine alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import invoke

from federation.errors import AllfedError
from federation.simulation import check_ray_address, simulate
from federation.wire.spec import load_spec

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict) -> subprocess.Popen:
    """``ray start ... --block`` in its own process group: stopping the group stops exactly
    this node's Ray processes (``ray stop`` would stop every Ray on the machine)."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    return subprocess.Popen(
        [ray, "start", *args, "--num-cpus", "1", "--block", "--disable-usage-stats"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_nodes(address: str, count: int, env: dict, timeout: float = 90.0) -> None:
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run(
            [ray, "status", "--address", address], env=env, capture_output=True, text=True
        )
        if status.returncode == 0 and status.stdout.count("node_") >= count:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {count} nodes")


def test_the_sites_run_on_every_node_of_a_ray_cluster_with_the_same_results(cohort, tmp_path):
    files, spec_path = cohort
    # No DP: the same study gives the same model wherever it runs (DP noise would differ).
    spec = load_spec(spec_path).with_overrides(training={"rounds": 2}, privacy={"enabled": False})
    sites = dict(files)
    ledgers = tmp_path / "ledgers"  # the sites' ledgers keep their partitions for both runs
    alone = simulate(spec, sites, tmp_path / "alone", ledger_dir=ledgers)
    assert alone["status"] == "completed"

    nodes = Path(tempfile.mkdtemp(prefix="nodes", dir=tmp_path))
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "ALLFED_TEST_RAY_NODES": str(nodes),
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    head = worker = None
    try:
        head = _ray("--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--include-dashboard", "false", "--temp-dir", temp, env=env)  # fmt: skip
        _wait_for_nodes(address, 1, env)
        worker = _ray("--address", address, "--node-ip-address", "127.0.0.1", env=env)
        _wait_for_nodes(address, 2, env)
        sys.path.insert(0, str(HERE))
        from ray_nodes import record_ray_node

        cluster = simulate(
            spec,
            sites,
            tmp_path / "cluster",
            client_mods=[record_ray_node],
            ledger_dir=ledgers,
            ray_address=address,
        )
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for process in (worker, head):
            if process is not None:
                _stop(process)
        shutil.rmtree(temp, ignore_errors=True)
    assert cluster["status"] == "completed"
    records = [line.split() for f in nodes.iterdir() for line in f.read_text().splitlines()]
    ray_nodes = {node for node, _, _ in records}
    assert len(ray_nodes) == 2, f"the sites' work ran on {len(ray_nodes)} Ray node(s)"
    assert {site for _, site, _ in records} == {"0", "1", "2"}
    assert cluster["sites"].keys() == alone["sites"].keys()
    for name in alone["sites"]:
        assert cluster["sites"][name]["n_train"] == alone["sites"][name]["n_train"]
    weights = [torch.load(run / "model.pt", weights_only=True) for run in
               (tmp_path / "alone", tmp_path / "cluster")]  # fmt: skip
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key])
    assert json.loads((tmp_path / "cluster" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("localhost", "expected HOST:PORT of the Ray head"),
        ("127.0.0.1:notaport", "expected HOST:PORT of the Ray head"),
        ("127.0.0.1:{closed}", "no Ray cluster answers there"),
    ],
)
def test_an_address_no_ray_cluster_answers_at_is_one_line(address, problem):
    address = address.format(closed=_free_port())
    with pytest.raises(AllfedError, match=problem):
        check_ray_address(address)


def test_simulate_refuses_a_dead_ray_address_before_the_run_directory(cohort, tmp_path, capsys):
    files, spec_path = cohort
    port = _free_port()
    args = ["simulate", "--study", str(spec_path), "--out", str(tmp_path / "run")]
    for name, path in files.items():
        args += ["--site", f"{name}={path}"]
    assert invoke(*args, "--ray-address", f"127.0.0.1:{port}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --ray-address 127.0.0.1:{port}: no Ray cluster answers there")
    assert "\n" not in err
    assert not (tmp_path / "run").exists()
