"""Survival studies: the spec, the discrete-time hazard model and its per-record clipping, the
site's time and event checks, training that a C-index can judge against a Cox fit, and what a
survival site releases (its DP update, and its one planned DP evaluation release) and the run's
outputs show (the metrics in ``tests/test_survival_metrics.py``, on arrays).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, MessageType, RecordDict
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from torch.func import functional_call, grad, vmap
from wire import model_config, node_context, send, setup, state_of

from federation.client.data import check_table, load_site_table
from federation.client.features import clip_to_bounds, encode
from federation.client.hazard import hazard_gradient_sum
from federation.client.partition import Partition, fresh_partition
from federation.client.training import LocalSettings, train_plain
from federation.errors import DataError, SpecError
from federation.server.rounds import initial_model
from federation.server.survival_evaluation import SWAMPED
from federation.synth import study_toml, synthesize_cohort, write_cohort
from federation.wire import protocol as p
from federation.wire.evaluation import layout
from federation.wire.spec import feature_names, load_spec, model_cuts, parse_spec
from federation.wire.survival_evaluation import (
    N_SCORE_BINS,
    ConcordanceRequest,
    concordance_requests_to_config,
)
from federation.wire.survival_evaluation import histogram_keys as survival_keys
from models.registry import build_model
from models.survival import PRIOR_HAZARD_PER_YEAR, hazard_loss, interval_targets, survival_at
from privacy.ledger import Ledger

SURVIVAL = """\
[study]
task = "survival"
time = "days"
event = "died"
horizons = [365, 1095]
[features]
numeric = ["age"]
"""


# -- the spec ------------------------------------------------------------------------------------


def test_a_survival_spec_reads_back_equal_and_a_binary_one_gains_no_key():
    spec = parse_spec(SURVIVAL)
    study = spec.study
    assert (study.time, study.event, study.label) == ("days", "died", None)
    assert study.horizons == study.intervals == (365.0, 1095.0)  # intervals default: horizons
    assert parse_spec(spec.to_toml()) == spec
    binary = parse_spec(study_toml()).to_toml()
    assert not any(key in binary for key in ("time =", "event =", "horizons", "intervals"))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (('time = "days"', 'time = "days"\nlabel = "died"'), "[study] label: a survival study"),
        (("horizons = [365, 1095]", "horizons = [1095, 365]"), "[study] horizons: expected"),
        (("horizons = [365, 1095]", "horizons = [0, 365]"), "[study] horizons: expected"),
        (("horizons = [365, 1095]", "horizons = []"), "[study] horizons: expected"),
        (("horizons = [365, 1095]\n", ""), "[study] horizons: required"),
        (("[features]", "intervals = [180, 365]\n[features]"), "must include every horizon"),
        (('time = "days"', 'time = "age"'), "the time column 'age' cannot also be a feature"),
        (('event = "died"', 'event = "days"'), "time and event name the same column"),
        (('task = "survival"\n', ""), "[study] time: applies to task"),
        (('task = "survival"', 'task = "cox"'), "[study] task: 'cox' is not one of"),
    ],
)
def test_a_bad_survival_spec_gets_one_line_naming_the_key(change, problem):
    with pytest.raises(SpecError) as error:
        parse_spec(SURVIVAL.replace(*change))
    assert problem in str(error.value) and "\n" not in str(error.value)


# -- the model and its per-record clipping --------------------------------------------------------


def test_interval_targets_follow_events_and_censoring():
    cuts = torch.tensor([100.0, 300.0, 700.0])
    outcome = torch.tensor(
        [
            [0.0, 1.0],  # an event on the first day: in the first interval
            [100.0, 1.0],  # an event at a cut: in the interval it ends
            [150.0, 1.0],
            [150.0, 0.0],  # censored inside the second interval: at risk in the first only
            [300.0, 0.0],  # censored at a cut: it survived that interval
            [900.0, 1.0],  # after the last cut: censored there
        ]
    )
    at_risk, happened = interval_targets(outcome, cuts)
    assert at_risk.int().tolist() == [
        [1, 0, 0],
        [1, 0, 0],
        [1, 1, 0],
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1],
    ]
    assert happened.int().tolist() == [
        [1, 0, 0],
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 0],
        [0, 0, 0],
        [0] * 3,
    ]


def _per_record_gradients(model, x, outcome):
    """Every record's exact gradient of its own loss (torch.func), per parameter."""
    params = {name: value.detach() for name, value in model.named_parameters()}

    def own_loss(weights, row, target):
        logits = functional_call(model.score, _score_weights(weights), (row[None],))
        at_risk, happened = interval_targets(target[None], model.cuts)
        terms = torch.nn.functional.binary_cross_entropy_with_logits(
            logits + weights["baseline"], happened, reduction="none"
        )
        return (terms * at_risk).sum()

    return vmap(grad(own_loss), in_dims=(None, 0, 0))(params, x, outcome)


def _score_weights(weights):
    return {k.removeprefix("score."): v for k, v in weights.items() if k.startswith("score.")}


def _batch(seed: int, n: int = 24):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=generator) * 3
    time = torch.randint(0, 900, (n,), generator=generator).float()
    event = (torch.rand(n, generator=generator) < 0.5).float()
    return x, torch.stack([time, event], 1)


@pytest.mark.parametrize("name", ["logistic", "mlp"])
def test_each_records_gradient_is_clipped_to_the_norm_and_is_its_own(name):
    """The closed form's clipped sum is the sum of the records' exact gradients, each clipped
    to at most C as Opacus clips it; without a record the sum loses exactly its term."""
    torch.manual_seed(0)
    model = build_model(name, 5, (4,), cuts=(100.0, 300.0, 700.0))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_()
    x, outcome = _batch(1)
    c = 0.3
    per_record = _per_record_gradients(model, x, outcome)
    norms = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in per_record.values()))
    factor = hazard_gradient_sum(model, x, outcome, c)
    assert (norms > c).sum() >= len(x) // 2  # the clip binds for most records here
    clipped = {k: g * factor.reshape(-1, *[1] * (g.dim() - 1)) for k, g in per_record.items()}
    clipped_norms = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in clipped.values()))
    assert (clipped_norms <= c * (1 + 1e-5)).all()
    assert torch.allclose(factor, (c / (norms + 1e-6)).clamp(max=1.0), atol=1e-5)
    full = {name: param.grad.clone() for name, param in model.named_parameters()}
    for k, g in clipped.items():
        assert torch.allclose(full[k], g.sum(0), atol=1e-5), k
    drop = 3
    keep = torch.arange(len(x)) != drop
    hazard_gradient_sum(model, x[keep], outcome[keep], c)
    for k, param in model.named_parameters():
        assert torch.allclose(full[k] - param.grad, clipped[k][drop], atol=1e-5), k


def test_a_fresh_model_starts_at_the_prior_hazard():
    """Before any training, every record's chance of surviving each interval is the prior's
    constant hazard over the interval ends (public), not one half per interval: for the model
    the server starts a run from, whose risk score starts at zero."""
    spec = parse_spec(SURVIVAL)
    model = initial_model(spec, 1)
    assert not model.score[0].weight.detach().any()
    survival = survival_at(model, torch.randn(4, 1)).detach().numpy()
    expected = np.exp(-PRIOR_HAZARD_PER_YEAR * np.array(spec.study.intervals) / 365.25)
    assert np.allclose(survival, expected[None], atol=1e-6)
    assert set(model.state_dict()) == {"baseline", "score.0.weight"}  # the cuts never travel


def test_the_loss_of_a_batch_is_the_sum_of_its_records_losses():
    model = build_model("mlp", 5, (4,), cuts=(100.0, 300.0, 700.0))
    x, outcome = _batch(2)
    together = hazard_loss(model, x, outcome)
    alone = torch.stack([hazard_loss(model, x[i : i + 1], outcome[i : i + 1])[0] for i in range(8)])
    assert torch.allclose(together[:8], alone)
    assert model.state_dict().keys() == {
        "score.0.weight",
        "score.0.bias",
        "score.2.weight",
        "baseline",
    }


# -- the site's data ------------------------------------------------------------------------------


def _frame(**columns) -> pd.DataFrame:
    base = {
        "age": ["50", "61", "47", "70"],
        "days": ["10", "400", "0", "1200"],
        "died": ["1", "0", "1", "0"],
    }
    return pd.DataFrame({**base, **columns})


@pytest.mark.parametrize(
    ("column", "values", "problem"),
    [
        ("days", ["10", "-4", "0", "1200"], "time column 'days' is negative in 1 rows (row 3)"),
        ("days", ["10", "inf", "0", "1200"], "time column 'days' is not finite in 1 rows (row 3)"),
        ("days", ["10", "soon", "0", "12"], "time column 'days' is not a number in 1 rows (row 3)"),
        ("days", ["10", None, "0", "1200"], "time column 'days' is missing in 1 rows (row 3)"),
        ("died", ["1", "2", "0", "1"], "event column 'died' must be 0/1, true/false or yes/no"),
        ("died", ["1", None, "0", "1"], "event column 'died' is missing in 1 rows (row 3)"),
    ],
)
def test_bad_times_and_events_get_one_line_without_the_value(column, values, problem):
    spec = parse_spec(SURVIVAL)
    frame = _frame(**{column: values})
    with pytest.raises(DataError) as error:
        check_table(frame, spec, "site.csv", fresh_partition(spec, list(frame)), trainable=False)
    message = str(error.value)
    assert problem in message and "\n" not in message
    assert not any(v in message for v in ("-4", "soon", "inf", "'2'")), message


def test_a_survival_table_keeps_time_and_event_and_encodes_them_as_the_target():
    spec = parse_spec(SURVIVAL)
    frame = _frame()
    table = check_table(frame, spec, "site.csv", fresh_partition(spec, list(frame)), False)
    assert table.time.tolist() == [10.0, 400.0, 0.0, 1200.0] and table.label.tolist() == [
        1,
        0,
        1,
        0,
    ]
    _, y = encode(table, spec, np.zeros(1), np.ones(1), test=False)
    assert y.shape == (table.n_train, 2) and set(y[:, 1]) <= {0.0, 1.0}


# -- training against a Cox fit ------------------------------------------------------------------


def _pooled_rows(spec, tables):
    """The tables' train and test rows, encoded with the pooled training rows' mean and SD."""
    bounds = spec.features.bounds
    train_numeric = np.concatenate([clip_to_bounds(t.numeric[~t.is_test], spec) for t in tables])
    center, scale = np.nanmean(train_numeric, 0), np.nanstd(train_numeric, 0)
    rows = {
        test: [encode(t, spec, center, scale, test=test, bounds=bounds) for t in tables]
        for test in (False, True)
    }
    x, y = (np.concatenate(part) for part in zip(*rows[False], strict=True))
    tx, ty = (np.concatenate(part) for part in zip(*rows[True], strict=True))
    return x, y, tx, ty


def _cox_cindex(x, y, tx, ty) -> float:
    """A Cox fit's (scikit-survival, a small ridge penalty) test C-index."""
    cox = CoxPHSurvivalAnalysis(alpha=0.01).fit(x, _structured(y))
    return _cindex(ty, cox.predict(tx))


def _partition(spec, frame):
    return fresh_partition(spec, list(frame.columns))


def _cindex(outcome: np.ndarray, risk: np.ndarray) -> float:
    return concordance_index_censored(outcome[:, 1] > 0.5, outcome[:, 0], risk)[0]


def _structured(outcome: np.ndarray) -> np.ndarray:
    return np.array([(bool(e), t) for t, e in outcome], dtype=[("event", bool), ("time", float)])


def test_the_hazard_model_ranks_as_well_as_a_cox_fit_on_the_same_rows():
    """Non-private local training of the discrete-time model on pooled synthetic rows: its
    test C-index is within 0.01 of a Cox fit's (scikit-survival) on the same rows."""
    spec = parse_spec(study_toml(task="survival"))
    tables = [
        check_table(frame.astype(str).where(frame.notna()), spec, name, _partition(spec, frame))
        for name, frame in synthesize_cohort(3, 700, seed=5, task="survival").items()
    ]
    x, y, tx, ty = _pooled_rows(spec, tables)
    model = build_model("logistic", x.shape[1], cuts=model_cuts(spec))
    train_plain(
        model, x, y, LocalSettings(epochs=30, batch_size=64, learning_rate=0.3, max_grad_norm=1.0)
    )
    with torch.no_grad():
        risk = model(torch.from_numpy(tx)).squeeze(-1).numpy()
    ours, reference = _cindex(ty, risk), _cox_cindex(x, y, tx, ty)
    assert reference > 0.7
    assert abs(ours - reference) < 0.01, (ours, reference)


# -- what a survival site releases ---------------------------------------------------------------


@pytest.fixture(scope="module")
def survival_cohort(tmp_path_factory):
    files, spec_path = write_cohort(
        tmp_path_factory.mktemp("survival"), 2, 400, seed=7, task="survival"
    )
    spec = load_spec(spec_path).with_overrides(
        training={"rounds": 2}, privacy={"accountant": "rdp"}
    )
    return spec, files


def _survival_content(spec, server_round: int) -> RecordDict:
    model = build_model(
        spec.model.name, len(feature_names(spec)), spec.model.hidden, model_cuts(spec)
    )
    return RecordDict(
        {p.ARRAYS: ArrayRecord(model.state_dict()), p.CONFIG: model_config(spec, server_round)}
    )


def test_a_survival_site_sends_its_update_and_only_its_admitted_dp_evaluation(
    survival_cohort, tmp_path
):
    """Against an aggregator that asks for every release: the train reply is the DP update and
    the whitelisted accounting keys; the evaluate and ranks replies are the two evaluation
    releases the ledger planned at setup, each recorded before it is computed (the layout's
    keys, noisy, at the planned noise) with its epsilon; a crafted rank request (an undeclared
    cell, shares of the wrong length) is refused, and a second evaluation too."""
    spec, files = survival_cohort
    ledger = tmp_path / "ledger.sqlite"
    context = node_context(next(iter(files.values())), spec, ledger=ledger)
    assert state_of(setup(context)) == p.OK
    trained = send(context, MessageType.TRAIN, _survival_content(spec, 1))
    assert set(trained) == {p.ARRAYS, p.METRICS}
    assert set(trained[p.METRICS]) == set(p.TRAIN_METRICS)
    update = trained[p.ARRAYS].to_torch_state_dict()
    assert list(update) == ["baseline", "score.0.weight"] and update["baseline"].abs().sum() > 0
    book = Ledger(ledger)
    planned = [item for item in book.run("run-1")["planned"] if item[1] == "test"]
    assert [item[0] for item in planned] == ["evaluation-histograms", "evaluation-ranks"]
    reply = send(context, MessageType.EVALUATE, _survival_content(spec, 2))
    assert state_of(reply) == p.OK and set(reply) == {p.METRICS}
    metrics = dict(reply[p.METRICS])
    keys = set(survival_keys(layout(spec).cells))
    assert set(metrics) == keys | {p.EPSILON, p.NOISE_MULTIPLIER}
    assert metrics[p.NOISE_MULTIPLIER] == planned[0][2]
    entries = np.concatenate([np.ravel(metrics[k]) for k in keys])
    assert len(entries) > 1000 and np.mean(entries != np.round(entries)) > 0.99  # noisy
    cells = layout(spec).rank_cells()
    size = (len(model_cuts(spec)) + 1) * (N_SCORE_BINS + 1)
    shares = tuple(np.linspace(0.0, 0.5, size))
    request = ConcordanceRequest(shares, shares, shares, shares, 0.6)
    for crafted in (
        {("intersection", "sex x race_ethnicity", "x"): request},  # not a rank cell
        {cells[0]: ConcordanceRequest(shares[:-1], shares, shares, shares, 0.6)},
    ):
        content = _survival_content(spec, 2)
        content[p.CONFIG].update(concordance_requests_to_config(crafted))
        refused = send(context, p.EVALUATE_RANKS, content)
        assert state_of(refused) == p.REFUSED and not dict(refused.get(p.METRICS, {}))
    content = _survival_content(spec, 2)
    content[p.CONFIG].update(concordance_requests_to_config(dict.fromkeys(cells, request)))
    ranked = send(context, p.EVALUATE_RANKS, content)
    assert state_of(ranked) == p.OK and set(ranked) == {p.METRICS}
    sums = {f"ranks.{kind}.{p.encode_name(c)}.{p.encode_name(v)}.concordance"
            for kind, c, v in cells}  # fmt: skip
    assert set(ranked[p.METRICS]) == sums | {p.EPSILON, p.NOISE_MULTIPLIER}
    assert ranked[p.METRICS][p.NOISE_MULTIPLIER] == planned[1][2]
    assert ranked[p.METRICS][p.EPSILON] > metrics[p.EPSILON]
    assert [r["mechanism"] for r in book.releases()] == [
        "gaussian-sums",
        "dp-sgd",
        "evaluation-histograms",
        "evaluation-ranks",
    ]
    assert {r["partition"] for r in book.releases()[-2:]} == {"test"}
    for message_type in (p.EVALUATE_RANKS, MessageType.EVALUATE):  # used up
        refused = send(context, message_type, _survival_content(spec, 2))
        assert state_of(refused) == p.REFUSED and not dict(refused.get(p.METRICS, {}))
    assert len(book.releases()) == 4


def _run_tables(spec, sites: dict[str, Path], run: Path) -> list:
    """Every site's table with the partition its node pinned in its ledger in the run."""
    tables = []
    for name, path in sites.items():
        book = Ledger(run / "ledgers" / f"{name}.sqlite")
        partition = Partition(book.partition_definition(), book.partition_secret())
        tables.append(load_site_table(path, spec, partition))
    return tables


def _final_scores(spec, tables: list, run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every site's test rows (time, event) and the run's final risk scores, encoded as the
    nodes encode them (the card's scaling and bounds)."""
    card = json.loads((run / "model_card.json").read_text(encoding="utf-8"))
    pooled = [row for row in card["scaling"] if row["source"] == "federation"]
    bounds = {row["feature"]: tuple(row["bounds"]) for row in card["scaling"] if row["bounds"]}
    model = build_model(
        card["model"]["name"],
        len(card["features"]),
        card["model"]["hidden"],
        card["model"]["intervals"],
    )
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    outcomes, risks = [], []
    for table in tables:
        center = np.array([row["center"] for row in pooled])
        scale = np.array([row["scale"] for row in pooled])
        x, y = encode(table, spec, center, scale, test=True, bounds=bounds)
        with torch.no_grad():
            risks.append(model(torch.from_numpy(x)).squeeze(-1).numpy())
        outcomes.append(y)
    return np.concatenate(outcomes), np.concatenate(risks)


@pytest.mark.slow
def test_a_dp_survival_run_ranks_like_cox_and_releases_its_metrics(tmp_path):
    """End to end at epsilon 3 on a synthetic survival cohort: the run completes, the final
    model's exact test C-index is within 0.03 of a Cox fit's on the pooled training rows, the
    released C-index's interval holds the exact one, and the summary, the model card and the
    report show the released metrics; each site's only test-partition releases are its planned
    evaluation's two."""
    from federation.simulation import simulate

    files, spec_path = write_cohort(tmp_path / "data", 2, 1000, seed=3, task="survival")
    spec = load_spec(spec_path).with_overrides(training={"rounds": 5})
    summary = simulate(spec, files, tmp_path / "run")
    assert summary["status"] == "completed", summary["error"]
    assert (summary["time"], summary["event"]) == ("time", "event")
    assert all(abs(s["epsilon"] - 3.0) < 0.01 for s in summary["sites"].values())
    for name in files:
        releases = Ledger(tmp_path / "run" / "ledgers" / f"{name}.sqlite").releases()
        test = [r["mechanism"] for r in releases if r["partition"] == "test"]
        assert test == ["evaluation-histograms", "evaluation-ranks"]
    tables = _run_tables(spec, files, tmp_path / "run")
    outcome, risk = _final_scores(spec, tables, tmp_path / "run")
    x, y, tx, ty = _pooled_rows(spec, tables)
    assert len(ty) == len(outcome)
    ours, cox = _cindex(outcome, risk), _cox_cindex(x, y, tx, ty)
    assert ours > cox - 0.03, (ours, cox)
    pooled = summary["metrics"]["pooled"]
    # The interval, doubled about its centre (a 95% interval misses 1 in 20), holds the exact
    # C-index; at these sizes (about 500 test records) the noise may make it n/a.
    low, high = pooled["cindex_ci"]
    assert 1.5 * low - 0.5 * high <= ours <= 1.5 * high - 0.5 * low, (pooled, ours)
    assert pooled["cindex_method"] == "rank release"
    assert pooled["na_reason"].get("integrated_brier") != SWAMPED  # release 1 is mostly records
    if pooled["cindex"] is None:
        assert pooled["na_reason"]["cindex"] == "95% interval too wide (DP noise and sampling)"
    else:
        assert abs(pooled["cindex"] - ours) < high - low < 0.4, (pooled, ours)
    assert set(summary["metrics"]["per_site"]) == set(files)
    card = (tmp_path / "run" / "model_card.md").read_text(encoding="utf-8")
    report = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "| Harrell's C-index (discrimination) |" in card
    assert "time-dependent AUC at day 1825" in card
    assert "not released" not in card
    assert "C-index (Harrell)" in report and "AUC at day 365" in report


def test_a_survival_runs_summary_report_and_card_show_its_released_metrics(tmp_path):
    """What the survival evaluator leaves a survival run (pooled metrics of a noise-free
    release), as the summary, the model card and the report show it."""
    from federation.server.model_card import build_model_card, render_model_card
    from federation.server.outputs import RunDirectory
    from federation.server.state import RunState
    from federation.server.summary import conclude, privacy_header

    state = RunState.start(parse_spec(SURVIVAL))
    state.metrics = {"pooled": _released_metrics(), "per_site": {"a": _released_metrics()}}
    summary = conclude(RunDirectory(tmp_path), state, "completed", None)
    assert (summary["time"], summary["event"], summary["horizons"]) == ("days", "died", [365, 1095])
    assert summary["label"] is None and summary["metrics"]["pooled"] == state.metrics["pooled"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "predicting the risk of <b>died</b>" in page
    assert "C-index (Harrell)" in page and "AUC at day 1095" in page
    assert "Observed risk by day 365" in page and "not released" not in page
    assert "ROC curve" not in page
    model = build_model("logistic", 1, cuts=model_cuts(state.spec))
    card = render_model_card(
        build_model_card(
            state.spec,
            model.state_dict(),
            rounds=1,
            scaling=[],
            privacy=privacy_header(state),
            sites={},
            metrics=summary["metrics"],
            evaluated_round=1,
            diagnostics=[],
        )
    )
    cindex = summary["metrics"]["pooled"]["cindex"]
    assert f"| Harrell's C-index (discrimination) | {cindex:.3f} (" in card
    assert "| time-dependent AUC at day 1095 |" in card and "| site | C-index |" in card


def _released_metrics() -> dict:
    """A survival cell's metrics as ``server.survival_evaluation.cell_metrics`` gives them,
    from a noise-free histogram of a small synthetic cohort."""
    from federation.server.survival_evaluation import Horizons, SurvivalCell, cell_metrics
    from federation.wire.survival_evaluation import (
        PROBE_LEVELS,
        histogram_shape,
        score_bins,
        time_bins,
    )

    spec = parse_spec(SURVIVAL)
    rng = np.random.default_rng(0)
    score = rng.normal(0, 1, 400)
    time = np.ceil(rng.exponential(900 / np.exp(score)))
    event = (rng.random(400) < 0.7).astype(int)
    shape = histogram_shape(spec)
    hist = np.zeros(shape)
    edges = np.quantile(score, PROBE_LEVELS)
    np.add.at(hist, (event, time_bins(time, spec.study.intervals), score_bins(score, edges)), 1)
    release = SurvivalCell(
        hist, 400.0, float(event.sum()), dict.fromkeys(("hist", "records", "events"), 1e-6)
    )
    return cell_metrics(release, Horizons.of(spec, np.log([0.2, 0.3]), edges))
