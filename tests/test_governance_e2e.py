"""End to end: every message leaving every site, and a lifetime budget across two runs."""

import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord

from federation.simulation import simulate
from federation.wire import protocol as p
from federation.wire.spec import load_spec
from privacy.ledger import Ledger

SENTINEL = 47.654321  # planted as one participant's BMI
# The dissemination rule, written out here rather than taken from privacy.disclosure: no exact
# count from 1 to 20 (the threshold itself included) may leave a site; zero may.
MIN_CELL_COUNT = 20


@dataclass(frozen=True)
class Capture:
    """A Flower mod around the real ClientApp: writes every reply as it leaves the node."""

    folder: str

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        records = {}
        for name, record in reply.content.items():
            if isinstance(record, ArrayRecord):
                values = {k: a.numpy().tolist() for k, a in record.items()}
                kind = "arrays"
            else:
                values, kind = (
                    dict(record),
                    "metrics" if isinstance(record, MetricRecord) else "config",
                )
            records[name] = {"kind": kind, "values": values}
        entry = {"type": msg.metadata.message_type, "records": records}
        Path(self.folder, f"{uuid.uuid4().hex}.json").write_text(json.dumps(entry))
        return reply


def numbers(value):
    if isinstance(value, list):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


def small_counts(message: dict, min_cell_count: int = MIN_CELL_COUNT) -> list[str]:
    """The count keys of a captured reply holding an exact count from 1 to ``min_cell_count``
    (inclusive): an integral value, even as a float; a non-integral one is noise, not a count."""
    found = []
    for name, record in message["records"].items():
        if record["kind"] == "arrays":
            continue
        for key, value in record["values"].items():
            if not any(re.fullmatch(k, key) for k in p.COUNT_KEYS):
                continue
            if any(float(v).is_integer() and 1 <= v <= min_cell_count for v in numbers(value)):
                found.append(f"{name}/{key}")
    return found


def reply_of(values: dict, kind: str = "metrics") -> dict:
    return {"type": p.SETUP, "records": {p.METRICS: {"kind": kind, "values": values}}}


@pytest.mark.parametrize("count", [1, 19, 20, 20.0, [0, 20], [21, 5]])
def test_an_exact_count_up_to_the_threshold_is_found(count):
    for key in (p.N_TRAIN, p.NUM_EXAMPLES, p.COUNT, "cell.all.sex.F.count"):
        assert small_counts(reply_of({key: count})) == [f"{p.METRICS}/{key}"]


@pytest.mark.parametrize("count", [0, 21, 20.5, 1e6, [0, 0, 21]])
def test_zero_counts_above_the_threshold_and_noisy_values_pass(count):
    assert small_counts(reply_of({p.N_TRAIN: count, "cell.all.sex.F.count": count})) == []


def test_only_count_keys_and_no_arrays_are_read_as_counts():
    assert small_counts(reply_of({p.EPSILON: 3.0, "cell.all.sex.F.sum": 7.0})) == []
    assert small_counts(reply_of({"layer.weight": [[5.0]]}, kind="arrays")) == []


@pytest.mark.slow
def test_every_message_leaving_the_sites_and_the_lifetime_budget(cohort, tmp_path):
    files, spec_path = cohort
    planted = tmp_path / "planted.csv"
    frame = pd.read_csv(next(iter(files.values())))
    frame.loc[5, "bmi"] = SENTINEL
    frame.to_csv(planted, index=False)
    sites = {"planted": planted, **dict(list(files.items())[1:])}
    policies = {}
    for name in sites:
        policies[name] = tmp_path / f"{name}.toml"
        # Two epsilon-3 runs of 2 rounds compose to about 3.98 (PRV, sampling rate 1/7).
        policies[name].write_text("lifetime-epsilon = 3.9\nmax-epsilon-per-run = 3.0\n")
    spec = load_spec(spec_path).with_overrides(training={"rounds": 2})
    captured = tmp_path / "captured"
    captured.mkdir()
    ledgers = tmp_path / "ledgers"

    first = simulate(
        spec,
        sites,
        tmp_path / "run1",
        client_mods=[Capture(str(captured))],
        policies=policies,
        ledger_dir=ledgers,
    )
    assert first["status"] == "completed"
    messages = [json.loads(f.read_text()) for f in captured.iterdir()]
    assert len(messages) >= len(sites) * (1 + 2 * 2)
    model_keys = None
    for message in messages:
        kind = p.KINDS[message["type"]]
        for name, record in message["records"].items():
            assert p.REPLY_RECORDS[kind][name] == record["kind"]
            if record["kind"] == "arrays":
                model_keys = model_keys or list(record["values"])
                assert list(record["values"]) == model_keys  # only the model's declared arrays
                continue
            for key in record["values"]:
                assert any(re.fullmatch(k, key) for k in p.REPLY_KEYS[kind][name])
        assert small_counts(message) == []
        flat = [
            v
            for r in message["records"].values()
            for v in numbers(list(r["values"].values()))
            if r["kind"] != "arrays"
        ]
        flat += [
            v
            for r in message["records"].values()
            if r["kind"] == "arrays"
            for v in numbers(list(r["values"].values()))
        ]
        assert not np.isclose(flat, SENTINEL, rtol=0, atol=1e-6).any()
        assert str(SENTINEL) not in json.dumps(message)
    for name in sites:
        site = first["sites"][name]
        assert site["status"] == "ok"
        assert [r["round"] for r in site["epsilon_by_round"]] == [1, 2]
        assert Ledger(ledgers / f"{name}.sqlite").lifetime_epsilon(1e-5, "prv") <= 3.0

    # The same study again through the CLI: every site refuses it, with the reason.
    command = [sys.executable, "-c", "from federation.cli import main; main()", "simulate"]
    command += ["--study", str(spec_path), "--out", str(tmp_path / "run2")]
    command += ["--ledger-dir", str(ledgers), "--rounds", "2"]
    for name, path in sites.items():
        command += ["--site", f"{name}={path}", "--policy", f"{name}={policies[name]}"]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    second = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert second["status"] == "failed"
    for name in sites:
        site = second["sites"][name]
        assert site["status"] == "refused"
        assert site["reason"].startswith("lifetime-budget")
        assert Ledger(ledgers / f"{name}.sqlite").lifetime_epsilon(1e-5, "prv") <= 3.9
