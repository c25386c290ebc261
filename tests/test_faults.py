"""Fault injection on the real simulation engine: what survives and what is recorded.

Sites misbehave by real means: a broken file, or a Flower mod around the real ClientApp that
raises, or corrupts, reshapes or scales the update the site really trained. Nothing of Flower is
mocked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, Context, Message

from federation.simulation import simulate
from federation.synth import write_cohort
from federation.wire import protocol as p
from federation.wire.spec import load_spec

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Fault:
    """A Flower client mod: site ``partition`` misbehaves in its train replies from
    ``from_round`` on. Kinds: raise, nan, shape, scale (by ``factor``)."""

    partition: int
    kind: str
    from_round: int = 1
    factor: float = -1000.0

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        mine = int(context.node_config["partition-id"]) == self.partition
        training = msg.metadata.message_type == "train"
        server_round = int(msg.content[p.CONFIG][p.SERVER_ROUND]) if training else 0
        if not (mine and training and server_round >= self.from_round):
            return call_next(msg, context)
        if self.kind == "raise":
            raise RuntimeError("injected fault: the node crashed while training")
        reply = call_next(msg, context)
        if reply.has_error() or p.ARRAYS not in reply.content:
            return reply
        trained = reply.content[p.ARRAYS]
        arrays = ArrayRecord()
        for i, (key, array) in enumerate(trained.items()):
            values = array.numpy()
            if self.kind == "nan" and i == 0:
                values = values.copy()
                values.flat[0] = np.nan
            elif self.kind == "shape" and i == 0:
                values = np.zeros((values.shape[0], values.shape[-1] + 1), dtype=values.dtype)
            elif self.kind == "scale":
                start = msg.content[p.ARRAYS][key].numpy()
                values = (start + self.factor * (values - start)).astype(values.dtype)
            arrays[key] = Array(values)
        reply.content[p.ARRAYS] = arrays
        return reply


@pytest.fixture(scope="module")
def four_sites(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("faults"), n_sites=4, records_per_site=500, seed=5)


def spec_for(spec_path, dp=True, **training):
    """Robustness, not accounting: three rounds and the quicker RDP accountant."""
    return load_spec(spec_path).with_overrides(
        training={"rounds": 3, **training}, privacy={"enabled": dp, "accountant": "rdp"}
    )


def rounds_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_broken_file_crash_nan_and_wrong_shape_are_survived(four_sites, tmp_path):
    """Five sites: one with a broken file, one that crashes in round 2, one that sends NaN, one
    that sends a wrong-shape update in round 2; the run completes on what is left."""
    files, spec_path = four_sites
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"\x00\x01binary garbage\xff\xfe")
    sites = {**files, "broken": broken}
    names = list(sites)
    faults = [Fault(1, "raise", from_round=2), Fault(2, "nan"), Fault(3, "shape", from_round=2)]
    out = tmp_path / "run"

    summary = simulate(spec_for(spec_path), sites, out, client_mods=faults)

    assert summary["status"] == "completed" and summary["rounds"] == 3, summary["error"]
    recorded = summary["sites"]
    assert recorded["broken"]["status"] == "failed"
    assert recorded["broken"]["reason"].startswith("data-unreadable")  # the detail stays there
    crashed = recorded[names[1]]
    assert crashed["status"] == "failed" and "injected fault" in crashed["reason"]
    assert crashed["epsilon"] is not None  # round 1 ran: its privacy spend stays on record
    nan_site, shape_site = recorded[names[2]], recorded[names[3]]
    assert nan_site["status"] == "ok"
    assert [r["round"] for r in nan_site["rejected_updates"]] == [1, 2, 3]
    assert "non-finite" in nan_site["rejected_updates"][0]["reason"]
    assert nan_site["epsilon"] is not None  # a rejected update was still trained: spend recorded
    assert [r["round"] for r in shape_site["rejected_updates"]] == [2, 3]
    assert "the model's is float32" in shape_site["rejected_updates"][0]["reason"]
    assert recorded[names[0]]["rejected_updates"] == []
    rows = rounds_of(out)
    assert set(rows[0]["rejected"]) == {names[2]}
    assert set(rows[1]["rejected"]) == {names[2], names[3]}
    pooled = summary["metrics"]["pooled"]
    assert np.isfinite(pooled["auroc"]) and pooled["auroc"] > 0.6
    log = (out / "run.log").read_text()
    assert f"update of site {names[2]} rejected" in log


def test_a_scaled_malicious_update_is_rejected(four_sites, tmp_path):
    """One of four sites returns its update scaled by -1000 (a model-replacement attack); update
    validation rejects it every round and the model is unharmed. Without validation FedAvg is
    taken over (tests/test_validation.py, on Flower's own aggregation, where the robust
    strategies bound the same attack), and a diverged model is a finding (tests/test_report.py)."""
    files, spec_path = four_sites
    spec = spec_for(spec_path, dp=False, strategy="fedavg", max_update_ratio=10.0)
    summary = simulate(spec, files, tmp_path / "run", client_mods=[Fault(0, "scale")])
    auroc = summary["metrics"]["pooled"]["auroc"]
    assert summary["status"] == "completed"
    assert auroc > 0.65 and not [d for d in summary["diagnostics"] if "diverged" in d]
    attacker = summary["sites"][next(iter(files))]
    assert [r["round"] for r in attacker["rejected_updates"]] == [1, 2, 3]


def test_run_below_min_sites_fails_with_reason(four_sites, tmp_path):
    """Two of three sites fail (a broken file, a crash in round 2): the run stops at round 2
    with min-sites = 2, and summary.json says why and who."""
    files, spec_path = four_sites
    first, second = list(files.items())[:2]
    broken = tmp_path / "broken.csv"
    pd.read_csv(first[1]).drop(columns="age").to_csv(broken, index=False)
    sites = {first[0]: first[1], second[0]: second[1], "broken": broken}
    out = tmp_path / "run"

    spec = spec_for(spec_path, dp=False)
    summary = simulate(spec, sites, out, client_mods=[Fault(1, "raise", 2)])

    assert summary["status"] == "failed"
    assert (
        "round 2: only 1 site(s) left" in summary["error"] and "min-sites = 2" in summary["error"]
    )
    assert summary["rounds"] == 1
    assert summary["sites"]["broken"]["status"] == "failed"
    assert summary["sites"]["broken"]["reason"].startswith("missing-column")
    assert "(age)" in summary["sites"]["broken"]["reason"]
    assert summary["sites"][second[0]]["status"] == "failed"
    assert summary["sites"][first[0]]["status"] == "ok"
