"""What actually leaves a site: the real ClientApp answering real Flower messages in-process."""

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federation import protocol as p
from federation.client.app import SiteSettings, make_client_app
from federation.scorestats import (
    ScoreStats,
    counts_from_record,
    groups_from_record,
    intersect_groups,
)
from federation.spec import feature_names, federated_columns, load_spec
from models.registry import build_model
from privacy.accounting import GaussianRelease, compute_epsilon


@pytest.fixture()
def node(cohort):
    files, spec_path = cohort
    spec = load_spec(spec_path).with_overrides(training={"rounds": 3})
    site = SiteSettings(name="urban", data=next(iter(files.values())), spec=spec)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    return make_client_app(lambda _context: site), context, site


@pytest.fixture(autouse=True)
def server_identity():
    """Messages are created by a ServerApp; give this process the identity Flower expects."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def send(app, context, message_type, content):
    message = Message(content=content, dst_node_id=7, message_type=message_type)
    message.metadata.__dict__["_message_id"] = "test-message"
    return app(message, context)


def global_arrays(spec):
    model = build_model(spec.model.name, len(feature_names(spec)))
    return ArrayRecord(model.state_dict())


def scaling(spec):
    n = len(federated_columns(spec))
    return ConfigRecord({p.SCALING_CENTER: [0.0] * n, p.SCALING_SCALE: [1.0] * n})


def test_setup_train_evaluate_release_only_whitelisted_content(node):
    app, context, site = node
    spec = site.spec
    setup = send(app, context, p.SETUP, RecordDict({p.CONFIG: ConfigRecord()})).content
    assert set(setup.keys()) == {p.STATUS, p.METRICS}
    assert setup[p.STATUS][p.STATUS_STATE] == p.OK
    n_columns = len(federated_columns(spec))
    representation = {k for k in setup[p.METRICS] if k.startswith(f"{p.REPRESENTATION}.")}
    assert set(setup[p.METRICS].keys()) - representation == {
        p.N_TRAIN,
        p.N_TEST,
        p.SUM,
        p.SUM_SQUARES,
        p.COUNT,
        p.STANDARDIZATION_NOISE,
    }
    assert len(setup[p.METRICS][p.SUM]) == n_columns
    # Training records per group level: a count from 1 to 20 never leaves the site.
    counts = counts_from_record(setup[p.METRICS], p.REPRESENTATION)
    assert set(counts) == set(spec.study.groups)
    released = [c for levels in counts.values() for c in levels.values() if c is not None]
    assert released and all(c > 20 for c in released)
    assert all(k.endswith((".count", ".withheld")) for k in representation)
    for levels in counts.values():  # what a site withholds never adds up to a small count
        shown = sum(c for c in levels.values() if c is not None)
        assert setup[p.METRICS][p.N_TRAIN] - shown == 0 or setup[p.METRICS][p.N_TRAIN] - shown > 20

    config = scaling(spec)
    config[p.SERVER_ROUND] = 1
    epsilons = []
    for _ in range(spec.training.rounds):
        reply = send(
            app,
            context,
            MessageType.TRAIN,
            RecordDict({p.ARRAYS: global_arrays(spec), p.CONFIG: config}),
        ).content
        # Exactly the model's arrays and the whitelisted metrics: nothing else leaves.
        assert set(reply.keys()) == {p.ARRAYS, p.METRICS}
        assert list(reply[p.ARRAYS].keys()) == list(global_arrays(spec).keys())
        assert set(reply[p.METRICS].keys()) == set(p.TRAIN_METRICS)
        epsilons.append(reply[p.METRICS][p.EPSILON])
    metrics = reply[p.METRICS]
    assert epsilons == sorted(epsilons) and 0 < epsilons[-1] <= spec.privacy.target_epsilon
    # The reported epsilon is every release the site made: the standardization sums plus all
    # DP-SGD steps of all rounds, and nothing was planned that did not run.
    releases = [
        GaussianRelease(setup[p.METRICS][p.STANDARDIZATION_NOISE], 1.0, 1),
        GaussianRelease(metrics[p.NOISE_MULTIPLIER], metrics[p.SAMPLE_RATE], metrics[p.STEPS]),
    ]
    assert metrics[p.EPSILON] == pytest.approx(compute_epsilon(releases, spec.privacy.delta, "prv"))
    assert metrics[p.STEPS] == spec.training.rounds * round(1 / metrics[p.SAMPLE_RATE])
    assert metrics[p.EPSILON] >= 0.95 * spec.privacy.target_epsilon

    evaluation = send(
        app,
        context,
        MessageType.EVALUATE,
        RecordDict({p.ARRAYS: global_arrays(spec), p.CONFIG: scaling(spec)}),
    ).content
    assert set(evaluation.keys()) == {p.METRICS}
    record = evaluation[p.METRICS]
    stats = ScoreStats.from_record(record, p.SITE_STATS)
    assert stats.n == record[p.NUM_EXAMPLES]
    groups = groups_from_record(record, p.GROUP_STATS)
    assert set(groups) == set(spec.study.groups)
    crossed = groups_from_record(record, p.INTERSECTION_STATS)
    pairs = intersect_groups({g: np.array([]) for g in spec.study.groups})
    assert set(crossed) == set(pairs) and len(crossed) == 3
    for levels in [*groups.values(), *crossed.values()]:
        for level_stats in levels.values():
            assert level_stats is None or level_stats.n > 20
    assert any(s is None for levels in crossed.values() for s in levels.values())
    # Histograms of scores, never one value per record.
    for key, value in record.items():
        if isinstance(value, list):
            assert len(value) != stats.n or key.endswith((".bins", ".counts"))


def test_a_site_refuses_nothing_but_fails_cleanly_on_bad_data(cohort, tmp_path):
    files, spec_path = cohort
    spec = load_spec(spec_path)
    bad = tmp_path / "bad.csv"
    pd.read_csv(next(iter(files.values()))).drop(columns=["sbp"]).to_csv(bad, index=False)
    site = SiteSettings(name="broken", data=bad, spec=spec)
    app = make_client_app(lambda _context: site)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = send(app, context, p.SETUP, RecordDict({p.CONFIG: ConfigRecord()})).content
    assert set(reply.keys()) == {p.STATUS}
    assert reply[p.STATUS][p.STATUS_STATE] == p.FAILED
    assert "missing column 'sbp'" in reply[p.STATUS][p.STATUS_REASON]


def test_training_without_dp_sends_only_the_example_count(node):
    app, context, site = node
    spec = site.spec.with_overrides(privacy={"enabled": False})
    plain = SiteSettings(name=site.name, data=site.data, spec=spec)
    app = make_client_app(lambda _context: plain)
    config = scaling(spec)
    reply = send(
        app,
        context,
        MessageType.TRAIN,
        RecordDict({p.ARRAYS: global_arrays(spec), p.CONFIG: config}),
    )
    assert set(reply.content[p.METRICS].keys()) == {p.NUM_EXAMPLES}
    weights = reply.content[p.ARRAYS].to_torch_state_dict()
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not np.allclose(weights["0.weight"].numpy(), 0)


def test_a_site_refuses_a_delta_too_weak_for_its_size(node):
    app, context, site = node
    weak = SiteSettings(site.name, site.data, site.spec.with_overrides(privacy={"delta": 0.01}))
    app = make_client_app(lambda _context: weak)
    reply = send(app, context, p.SETUP, RecordDict({p.CONFIG: ConfigRecord()})).content
    assert reply[p.STATUS][p.STATUS_STATE] == p.REFUSED
    assert "delta 0.01 is too weak" in reply[p.STATUS][p.STATUS_REASON]


def test_a_small_test_split_is_withheld_and_the_site_still_trains(cohort, tmp_path):
    """A site whose test rows number 1 to 20 keeps that count and its evaluation to itself,
    and still takes part in training (its update is protected by DP)."""
    files, spec_path = cohort
    frame = pd.read_csv(next(iter(files.values())))
    frame["split"] = "train"
    frame.loc[frame.index[:12], "split"] = "test"
    small = tmp_path / "small-test.csv"
    frame.to_csv(small, index=False)
    spec = load_spec(spec_path).with_overrides(study={"split": "split"}, training={"rounds": 1})
    site = SiteSettings(name="small", data=small, spec=spec)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    app = make_client_app(lambda _context: site)

    setup = send(app, context, p.SETUP, RecordDict({p.CONFIG: ConfigRecord()})).content
    assert setup[p.STATUS][p.STATUS_STATE] == p.OK
    assert p.N_TEST not in setup[p.METRICS] and setup[p.METRICS][p.N_TRAIN] > 0
    content = RecordDict({p.ARRAYS: global_arrays(spec), p.CONFIG: scaling(spec)})
    trained = send(app, context, MessageType.TRAIN, content).content
    assert p.ARRAYS in trained and 0 < trained[p.METRICS][p.EPSILON] <= 3.0
    evaluated = send(app, context, MessageType.EVALUATE, content).content
    assert evaluated[p.STATUS][p.STATUS_STATE] == p.WITHHELD
    assert p.METRICS not in evaluated
