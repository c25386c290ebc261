"""The site against a hostile aggregator: crafted messages sent as Flower sends them to the
ClientApp that pyproject.toml names, each site's policy and ledger from its node config as in
deployment (or no ledger named: the node keeps one under FLWR_HOME). Every attack must be
refused or fully accounted; what does leave is inspected."""

from __future__ import annotations

import re
import tomllib

import numpy as np
import pandas as pd
import pytest
import tomli_w
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from wire import (
    census,
    evaluate,
    evaluate_ranks,
    global_arrays,
    model_config,
    node_context,
    numbers,
    reason_of,
    scaling,
    send,
    setup,
    state_of,
    train,
)

from federation.client.handlers import planned_settings
from federation.client.site import default_ledger, settings_from_context, site_partition, site_table
from federation.wire import protocol as p
from federation.wire.evaluation import (
    EVAL_PREFIX,
    HIST_POS,
    POOLED_CELL,
    RECORDS,
    key,
    layout,
    score_bins,
)
from federation.wire.spec import feature_names, load_spec, parse_spec
from privacy.ledger import Ledger
from privacy.refusal import is_public_reason

LEDGER_MODES = ["named", "default"]


@pytest.fixture()
def study(cohort):
    files, spec_path = cohort
    spec = load_spec(spec_path).with_overrides(
        training={"rounds": 3}, privacy={"accountant": "rdp"}
    )
    return spec, next(iter(files.values()))


def context_for(spec, data, tmp_path, mode="named", policy=None, run_id=1, site="urban"):
    ledger = tmp_path / "ledger.sqlite" if mode == "named" else None
    return node_context(data, spec, site=site, policy=policy, ledger=ledger, run_id=run_id)


def ledger_of(context) -> Ledger:
    node = context.node_config
    return Ledger(
        node.get(p.NODE_LEDGER) or default_ledger(str(node[p.NODE_SITE]), node[p.NODE_DATA])
    )


def write_policy(tmp_path, text: str):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def assert_declined(reply, state=p.REFUSED, check: str | None = None):
    """A declined message gets a status and nothing else, its reason a vocabulary phrase."""
    assert set(reply) == {p.STATUS}, sorted(reply)
    assert reply[p.STATUS][p.STATUS_STATE] == state
    reason = reason_of(reply)
    assert is_public_reason(reason), reason
    if check:
        assert reason.startswith(check), reason


@pytest.mark.parametrize("mode", LEDGER_MODES)
def test_a_site_requiring_dp_refuses_a_run_without_it_and_every_later_message(
    study, tmp_path, mode
):
    spec, data = study
    plain = spec.with_overrides(privacy={"enabled": False})
    context = context_for(
        plain, data, tmp_path, mode, write_policy(tmp_path, "require-dp = true\n")
    )
    assert_declined(census(context), check="dp-required")  # not even the public count
    assert_declined(setup(context), check="dp-required")
    assert_declined(train(context, plain), check="dp-required")
    assert_declined(evaluate(context, plain), check="dp-required")
    assert not ledger_of(context).releases()


@pytest.mark.parametrize("mode", LEDGER_MODES)
def test_a_refused_setup_admits_nothing_that_a_train_message_could_use(study, tmp_path, mode):
    spec, data = study
    greedy = spec.with_overrides(privacy={"target_epsilon": 50.0})
    policy = write_policy(tmp_path, "max-epsilon-per-run = 3.0\n")
    context = context_for(greedy, data, tmp_path, mode, policy)
    assert_declined(setup(context), check="epsilon-above-policy")
    assert_declined(train(context, greedy), check="epsilon-above-policy")
    # Even with the honest spec in the run config, the refused run key trains nothing.
    honest = context_for(spec, data, tmp_path, mode, policy)
    assert_declined(train(honest, spec, **{p.RUN_KEY: "run-1"}), check="no-admitted-run")
    assert not ledger_of(context).releases()


@pytest.mark.parametrize("mode", LEDGER_MODES)
def test_train_and_evaluate_without_setup_are_refused(study, tmp_path, mode):
    spec, data = study
    context = context_for(spec, data, tmp_path, mode)
    assert_declined(train(context, spec), check="no-admitted-run")
    assert_declined(evaluate(context, spec), check="no-admitted-run")
    assert_declined(train(context, spec, **{p.RUN_KEY: "made-up"}), check="no-admitted-run")


@pytest.mark.parametrize("mode", LEDGER_MODES)
def test_setup_again_resets_nothing_and_the_admitted_plan_holds(study, tmp_path, mode):
    spec, data = study
    context = context_for(spec, data, tmp_path, mode)
    setup(context)
    epsilons = []
    for server_round in range(1, 4):
        epsilons.append(train(context, spec, server_round)[p.METRICS][p.EPSILON])
        assert state_of(setup(context)) == p.OK  # again and again, under the same run key
    assert_declined(train(context, spec, 4), check="plan-exhausted")
    # A new Flower run (fresh node state) under the same run key: still the same plan.
    again = context_for(spec, data, tmp_path, mode, run_id=2)
    setup(again)
    assert_declined(train(again, spec, 5), check="plan-exhausted")
    assert all(e <= spec.privacy.target_epsilon for e in epsilons)
    book = ledger_of(context)
    assert book.lifetime_epsilons(1e-5, "rdp")["train"] == pytest.approx(epsilons[-1], rel=1e-6)
    assert sum(1 for r in book.releases() if r["mechanism"] == "dp-sgd") == 3


def test_the_census_says_only_the_public_count_and_admits_and_spends_nothing(study, tmp_path):
    spec, data = study
    context = context_for(spec, data, tmp_path)
    reply = census(context)
    assert {name: set(record) for name, record in reply.items()} == {
        p.STATUS: {p.STATUS_SITE, p.STATUS_STATE, p.STATUS_REASON},
        p.METRICS: {p.N_TRAIN},
    }
    site = settings_from_context(context)
    table = site_table(site, site_partition(site, ledger_of(context)))
    assert reply[p.METRICS][p.N_TRAIN] == table.n_train
    book = ledger_of(context)
    assert book.runs() == [] and book.releases() == []
    assert_declined(train(context, spec), check="no-admitted-run")  # a census admits no run


def test_the_aggregators_smallest_count_resizes_the_plan_never_the_budget(study, tmp_path):
    """The census count the aggregator reports back only sizes the settings the spec leaves to
    the planner: a lie moves the batches, rounds and learning rate, and the site's noise still
    meets its budget; a count above the site's own is capped by it; a malformed one refused."""
    spec, data = study
    spec = spec.with_overrides(training={"rounds": None})  # rounds planned too
    plans, n_trains = {}, {}
    for lie in (1, 10**9, None):
        context = context_for(spec, data, tmp_path / str(lie))
        config = {} if lie is None else {p.SMALLEST_N_TRAIN: lie}
        reply = setup(context, **config)
        assert state_of(reply) == p.OK
        n_trains[lie] = reply[p.METRICS][p.N_TRAIN]  # each context's site draws its partition
        run = ledger_of(context).run("run-1")
        plans[lie] = run["settings"], run["planned"]
        trained = train(context, spec)
        assert trained[p.METRICS][p.EPSILON] <= spec.privacy.target_epsilon
        book = ledger_of(context)
        assert book.lifetime_epsilons(1e-5, "rdp")["train"] <= spec.privacy.target_epsilon
    settings = {lie: plan[0] for lie, plan in plans.items()}
    assert (
        settings[1]["training"]["steps_per_round"] == 1 and settings[1]["training"]["rounds"] == 20
    )
    alone = planned_settings(spec.planned(n_trains[None]))
    assert settings[None]["training"] == alone  # the site alone
    capped = planned_settings(spec.planned(n_trains[10**9]))
    assert settings[10**9]["training"] == capped  # capped at the site's own count
    for bad in (0, -3, "700", True, 2.5):
        context = context_for(spec, data, tmp_path / f"bad-{bad!r}")
        reply = setup(context, **{p.SMALLEST_N_TRAIN: bad})
        assert_declined(reply, check="bad-config-value")
        assert ledger_of(context).releases() == []


def test_a_run_trains_with_the_settings_it_was_admitted_with(study, tmp_path):
    """A fresh node state (another Flower run, a restarted node) reads the settings from the
    ledger: a later setup's other count changes nothing."""
    spec, data = study
    context = context_for(spec, data, tmp_path)
    assert state_of(setup(context, **{p.SMALLEST_N_TRAIN: 64})) == p.OK
    admitted = ledger_of(context).run("run-1")
    assert admitted["settings"]["training"]["steps_per_round"] == 1
    again = context_for(spec, data, tmp_path, run_id=2)
    assert state_of(setup(again, **{p.SMALLEST_N_TRAIN: 10**6})) == p.OK
    restarted = context_for(spec, data, tmp_path, run_id=3)
    metrics = train(restarted, spec, **{p.RUN_KEY: "run-1"})[p.METRICS]
    dp_sgd = next(r for r in admitted["planned"] if r[0] == "dp-sgd")
    assert metrics[p.SAMPLE_RATE] == dp_sgd[3] == 1.0 and metrics[p.STEPS] == 1
    assert ledger_of(context).run("run-1")["settings"] == admitted["settings"]


@pytest.fixture()
def unbounded(study):
    """The study with no declared bounds for sbp: the sites estimate them privately."""
    spec, data = study
    bounds = {c: b for c, b in spec.features.bounds.items() if c != "sbp"}
    return spec.with_overrides(features={"bounds": bounds}), data


def test_bounds_are_estimated_from_a_release_and_the_sums_follow_once(unbounded, tmp_path):
    """Setup releases the noisy bounds histograms (admitted and recorded first), not the sums;
    the scaling message releases the sums once, clipped to whatever bounds the aggregator
    sends (their sensitivity does not depend on them), and the same reply comes back if it is
    asked again, with other bounds or not; every release is within the budget."""
    spec, data = unbounded
    context = context_for(spec, data, tmp_path)
    assert_declined(scaling(context, sbp=[100.0, 140.0]), check="no-admitted-run")
    first = setup(context)
    assert state_of(first) == p.OK
    released = set(first[p.METRICS])
    assert p.BOUNDS_HISTOGRAMS in released and p.SUM not in released
    book = ledger_of(context)
    assert [r["mechanism"] for r in book.releases()] == ["bounds-histograms"]
    crafted = scaling(context, sbp=[119.0, 121.0])  # a narrow pair around one value
    assert state_of(crafted) == p.OK
    assert set(crafted[p.METRICS]) == set(p.SCALING_METRICS)
    again = scaling(context, sbp=[0.0, 1000.0])
    assert dict(again[p.METRICS]) == dict(crafted[p.METRICS])  # the same release, not a new one
    assert [r["mechanism"] for r in book.releases()] == ["bounds-histograms", "gaussian-sums"]
    assert book.run("run-1")["settings"]["bounds"] == {"sbp": [119.0, 121.0]}
    trained = train(context, spec, **{p.RUN_KEY: "run-1"}, **_scaling_of(spec, {"sbp"}))
    assert trained[p.METRICS][p.EPSILON] <= spec.privacy.target_epsilon


def _scaling_of(spec, estimated: set[str]) -> dict:
    """A scaling config for the declared and the estimated columns (unit center and scale)."""
    n = sum(1 for c in spec.features.numeric if c in spec.features.bounds or c in estimated)
    return {p.SCALING_CENTER: [0.0] * n, p.SCALING_SCALE: [1.0] * n}


@pytest.mark.parametrize(
    "bounds",
    [
        {"age": [0.0, 120.0]},  # declared already: not the aggregator's to move
        {"nonexistent": [0.0, 1.0]},
        {"sbp": [140.0, 100.0]},
        {"sbp": [100.0, float("inf")]},
        {"sbp": [100.0]},
    ],
)
def test_bounds_that_are_not_the_studys_to_estimate_are_refused(unbounded, tmp_path, bounds):
    spec, data = unbounded
    context = context_for(spec, data, tmp_path)
    setup(context)
    assert_declined(scaling(context, **bounds), check="bad-config-value")
    assert [r["mechanism"] for r in ledger_of(context).releases()] == ["bounds-histograms"]


def test_a_run_key_cannot_be_reused_for_another_spec(study, tmp_path):
    spec, data = study
    context = context_for(spec, data, tmp_path)
    setup(context)
    other = spec.with_overrides(training={"rounds": 30})
    hijack = context_for(other, data, tmp_path, run_id=2)
    assert_declined(setup(hijack), check="run-key-in-use")
    assert_declined(train(hijack, other, **{p.RUN_KEY: "run-1"}), check="spec-changed")
    # and within the admitted Flower run, a changed spec in the run config is refused too
    context.run_config[p.RUN_STUDY] = other.to_toml()
    assert_declined(train(context, other), check="spec-changed")


def test_a_lifetime_budget_holds_across_runs(study, tmp_path):
    spec, data = study
    policy = write_policy(tmp_path, "lifetime-epsilon = 4.0\nmax-epsilon-per-run = 3.0\n")
    first = context_for(spec, data, tmp_path, policy=policy)
    assert state_of(setup(first, "run-1")) == p.OK
    second = context_for(spec, data, tmp_path, policy=policy, run_id=2)
    assert_declined(setup(second, "run-2"), check="lifetime-budget")  # run-1's plan is reserved
    book = ledger_of(first)
    assert [r["status"] for r in book.runs()] == ["admitted", "refused"]


def crafted_threshold_model(spec, table, column="age", threshold=60.0):
    """A logistic model that saturates on a threshold of raw age (the pooled scaling the
    aggregator sends says where 60 is): a counting query if the site answered exactly."""
    names = feature_names(spec)
    model = global_arrays(spec).to_torch_state_dict()
    weight = torch.zeros_like(model["0.weight"])
    weight[0, names.index(column)] = 50.0
    model["0.weight"] = weight
    model["0.bias"] = torch.tensor([-50.0 * (threshold - 50.0) / 10.0])
    return ArrayRecord(model)


def test_a_crafted_model_gets_noise_not_a_count(study, tmp_path):
    """Evaluate with a model that puts everyone above age 60 at score 1 and the rest at 0: the
    exact reply would count them. What leaves differs from the exact counts by the planned
    noise, holds no whole number, and a second evaluation is refused."""
    spec, data = study
    context = context_for(spec, data, tmp_path)
    setup(context)
    n = len(spec.features.numeric)
    center, scale = [0.0] * n, [1.0] * n
    center[spec.features.numeric.index("age")], scale[spec.features.numeric.index("age")] = (
        50.0,
        10.0,
    )
    crafted = crafted_threshold_model(spec, None)
    config = {p.SCALING_CENTER: center, p.SCALING_SCALE: scale}
    content = RecordDict({p.ARRAYS: crafted, p.CONFIG: model_config(spec, **config)})
    reply = send(context, "evaluate", content)
    metrics = reply[p.METRICS]
    released = [v for k, v in metrics.items() if k.startswith(EVAL_PREFIX)]
    assert not [v for v in numbers(released) if float(v).is_integer()]
    # The exact statistics the site computed under the noise, recomputed here.
    site = settings_from_context(context)
    table = site_table(site, site_partition(site, ledger_of(context)))
    age = table.numeric[table.is_test, spec.features.numeric.index("age")]
    above = age > 60
    y = table.label[table.is_test].astype(int)
    exact_pos = np.bincount(score_bins(np.where(above[y == 1], 1.0, 0.0)), minlength=22)
    noisy_pos = np.array(metrics[key(EVAL_PREFIX, POOLED_CELL, HIST_POS)])
    noise = float(metrics[p.NOISE_MULTIPLIER])
    cells = layout(spec)
    sd = cells.histogram_sd(POOLED_CELL[:2], HIST_POS, noise)
    standardized = (noisy_pos - exact_pos) / sd
    assert 0.5 < standardized.std() < 1.6  # the planned noise, not an exact count
    records = metrics[key(EVAL_PREFIX, POOLED_CELL, RECORDS)]
    assert abs(records - len(y)) > 1e-6
    assert_declined(send(context, "evaluate", content), check="plan-exhausted")


def test_the_partition_is_the_sites_whatever_the_spec_says(study, tmp_path):
    spec, data = study
    frame = pd.read_csv(data)
    frame["split"] = np.where(np.arange(len(frame)) % 2, "test", "train")
    with_split = tmp_path / "with-split.csv"
    frame.to_csv(with_split, index=False)

    def test_rows(run_spec, run_id):
        context = node_context(with_split, run_spec, ledger=tmp_path / "l.sqlite", run_id=run_id)
        assert state_of(setup(context, f"run-{run_id}")) == p.OK
        site = settings_from_context(context)
        return site_table(site, site_partition(site, ledger_of(context))).is_test.copy()

    pinned = test_rows(spec, 1)
    assert 0.2 < pinned.mean() < 0.4  # the site's keyed partition at the default 0.3
    moved = spec.with_overrides(study={"seed": 99, "test_fraction": 0.9})
    assert np.array_equal(test_rows(moved, 2), pinned)
    by_column = spec.with_overrides(study={"split": "split"})
    assert np.array_equal(test_rows(by_column, 3), pinned)  # not the column's alternation


def test_a_file_whose_columns_change_is_refused_rather_than_repartitioned(study, tmp_path):
    spec, data = study
    context = node_context(data, spec, ledger=tmp_path / "l.sqlite")
    setup(context)
    frame = pd.read_csv(data)
    frame["new_lab"] = 1.0
    changed = tmp_path / "changed.csv"
    frame.to_csv(changed, index=False)
    later = node_context(changed, spec, ledger=tmp_path / "l.sqlite", run_id=2)
    assert_declined(setup(later, "run-2"), p.FAILED, "partition-changed")


def test_a_group_column_without_declared_levels_is_refused_before_the_data_is_read(study, tmp_path):
    spec, _ = study
    raw = tomllib.loads(spec.to_toml())
    raw["study"]["groups"] = ["bmi"]
    text = tomli_w.dumps(raw)
    context = node_context(tmp_path / "not-there.csv", spec, ledger=tmp_path / "l.sqlite")
    context.run_config[p.RUN_STUDY] = text
    reply = setup(context)
    assert_declined(reply, p.FAILED, "spec-invalid")
    with pytest.raises(Exception, match="declared levels"):
        parse_spec(text)


def test_only_declared_levels_name_anything_that_leaves(study, tmp_path):
    """Undeclared values of a group column are counted as (other), never named."""
    spec, data = study
    frame = pd.read_csv(data)
    frame.loc[frame.index[:40], "race_ethnicity"] = "Zzyzx-only-here"
    odd = tmp_path / "odd.csv"
    frame.to_csv(odd, index=False)
    context = node_context(odd, spec, ledger=tmp_path / "l.sqlite")
    setup(context)
    train(context, spec)
    reply = evaluate(context, spec)
    assert not [k for k in reply[p.METRICS] if "Zzyzx" in k]
    declared = set(spec.study.group_levels["race_ethnicity"]) | {"(other)"}
    levels = {
        k.split(".")[3] for k in reply[p.METRICS] if k.startswith("eval.group.race_ethnicity.")
    }
    assert {p.decode_name(level) for level in levels} == declared


@pytest.mark.parametrize(
    ("change", "check", "column"),
    [
        (lambda f: f.drop(columns=["sbp"]), "missing-column", "sbp"),
        (lambda f: f.assign(bmi=["n/a-" + str(i) for i in range(len(f))]), "bad-values", "bmi"),
        (lambda f: f.assign(outcome=[7] * len(f)), "bad-label", "outcome"),
        (lambda f: f.assign(smoking=["weekly"] * len(f)), "undeclared-level", "smoking"),
    ],
)
def test_reasons_name_the_check_and_the_column_never_a_count_row_path_or_value(
    study, tmp_path, change, check, column
):
    spec, data = study
    bad = tmp_path / "site-file-name-secret.csv"
    change(pd.read_csv(data)).to_csv(bad, index=False)
    reply = setup(node_context(bad, spec, ledger=tmp_path / "l.sqlite"))
    assert_declined(reply, p.FAILED, check)
    reason = reason_of(reply)
    assert f"({column})" in reason
    assert not re.search(r"\d", reason) and "secret" not in reason and "weekly" not in reason


@pytest.mark.parametrize(
    "message_type", ["query.dump", "query.setup_again", "train.custom", "evaluate.raw", "query"]
)
def test_unknown_message_kinds_are_refused(study, tmp_path, message_type):
    spec, data = study
    context = context_for(spec, data, tmp_path)
    setup(context)
    content = RecordDict({p.CONFIG: ConfigRecord(), p.ARRAYS: global_arrays(spec)})
    assert_declined(send(context, message_type, content), check="unknown-message")


def test_unknown_settings_and_records_are_refused(study, tmp_path):
    spec, data = study
    context = context_for(spec, data, tmp_path)
    setup(context)
    extra_setting = train(context, spec, **{"learning-rate": 100.0})
    assert_declined(extra_setting, check="unknown-config-key")
    content = RecordDict(
        {
            p.ARRAYS: global_arrays(spec),
            p.CONFIG: model_config(spec),
            "metrics": MetricRecord({"x": 1.0}),
        }
    )
    assert_declined(send(context, "train", content), check="unexpected-record")
    setup_with_study = RecordDict({p.CONFIG: ConfigRecord({p.RUN_KEY: "x", "seed": 3})})
    assert_declined(send(context, p.SETUP, setup_with_study), check="unknown-config-key")
    assert not any(r["round"] > 0 for r in ledger_of(context).releases())


def test_a_malformed_model_or_scaling_is_refused(study, tmp_path):
    spec, data = study
    context = context_for(spec, data, tmp_path)
    setup(context)
    broken = global_arrays(spec).to_torch_state_dict()
    broken["0.weight"][0, 0] = float("nan")
    assert_declined(train(context, spec, arrays=ArrayRecord(broken)), check="bad-model")
    wrong = {"0.weight": torch.zeros(1, 3), "0.bias": torch.zeros(1)}
    assert_declined(evaluate(context, spec, arrays=ArrayRecord(wrong)), check="bad-model")
    n = len(spec.features.numeric)
    bad_scale = {p.SCALING_SCALE: [0.0] * n}
    assert_declined(train(context, spec, **bad_scale), check="bad-config-value")
    # Nothing was spent on the refused messages.
    assert not [r for r in ledger_of(context).releases() if r["mechanism"] == "dp-sgd"]


def test_rank_requests_outside_the_declared_cells_or_bounds_are_refused(study, tmp_path):
    spec, data = study
    context = context_for(spec, data, tmp_path)
    setup(context)
    first = evaluate(context, spec)
    config = model_config(spec)
    martian = f"ranks.group.race_ethnicity.{p.encode_name('Martian')}"
    config[f"{martian}.cdf_pos"] = config[f"{martian}.cdf_neg"] = [0.0] * 23
    config[f"{martian}.center"] = 0.5
    content = RecordDict({p.ARRAYS: global_arrays(spec), p.CONFIG: config})
    assert_declined(send(context, p.EVALUATE_RANKS, content), check="bad-config-value")
    huge = model_config(spec)
    huge["ranks.pooled.all.all.cdf_pos"] = [1e6] * 23
    huge["ranks.pooled.all.all.cdf_neg"] = [0.5] * 23
    huge["ranks.pooled.all.all.center"] = 0.5
    content = RecordDict({p.ARRAYS: global_arrays(spec), p.CONFIG: huge})
    assert_declined(send(context, p.EVALUATE_RANKS, content), check="bad-config-value")
    # The honest release 2 still goes through, once.
    assert p.METRICS in evaluate_ranks(context, spec, first)
    assert_declined(evaluate_ranks(context, spec, first), check="plan-exhausted")


def test_whatever_an_honest_run_sends_holds_no_exact_count_but_the_public_ones(study, tmp_path):
    spec, data = study
    context = context_for(spec, data, tmp_path)
    replies = [setup(context)]
    replies += [train(context, spec, r) for r in (1, 2, 3)]
    replies.append(evaluate(context, spec))
    replies.append(evaluate_ranks(context, spec, replies[-1]))
    for reply in replies:
        assert state_of(reply) == p.OK
        for name, record in reply.items():
            if name != p.METRICS:
                continue
            for metric, value in record.items():
                whole = [v for v in numbers(value) if float(v).is_integer()]
                if metric not in (p.N_TRAIN, p.NUM_EXAMPLES, p.STEPS):
                    assert not whole, metric


def test_an_analysis_is_admitted_once_and_within_the_policy(study, tmp_path):
    from federation.wire.queries import AnalysisRequest

    spec, data = study
    policy = write_policy(tmp_path, "max-epsilon-per-run = 1.0\n")
    context = context_for(spec, data, tmp_path, policy=policy)
    request = AnalysisRequest("count", 0.5, 1e-6, "rdp")
    config = {p.ANALYSIS_REQUEST: request.to_json(), p.RUN_KEY: "a-1"}
    first = send(context, p.ANALYZE, RecordDict({p.CONFIG: ConfigRecord(config)}))
    assert state_of(first) == p.OK
    assert_declined(send(context, p.ANALYZE, RecordDict({p.CONFIG: ConfigRecord(config)})))
    greedy = AnalysisRequest("count", 5.0, 1e-6, "rdp")
    config = {p.ANALYSIS_REQUEST: greedy.to_json(), p.RUN_KEY: "a-2"}
    assert_declined(
        send(context, p.ANALYZE, RecordDict({p.CONFIG: ConfigRecord(config)})),
        check="epsilon-above-policy",
    )
    assert [r["mechanism"] for r in ledger_of(context).releases()] == ["analysis-count"]
