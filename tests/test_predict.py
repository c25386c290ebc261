"""`allfed predict` against the node's own evaluation path, its refusals, the model card's
coefficients and model.onnx.

Two finished runs, each trained by the real site nodes (in-process ClientApps, no Ray): a DP
logistic model with every numeric feature scaled by the federation (sbp and cholesterol with
bounds the sites estimated privately, the others declared) and a "drop" rule, and an MLP without
DP whose features every site scaled by its own training rows.
"""

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from cli_helpers import invoke
from flwr.supercore.task_identity import TaskIdentity
from onnx.reference import ReferenceEvaluator
from wire import LocalGrid

from federation.client.features import encode, encode_features, resolve_scaling
from federation.client.scoring import risks
from federation.client.site import SiteSettings, site_partition, site_table
from federation.server.outputs import load_checkpoint
from federation.server.run import StudyRun
from federation.synth import write_cohort
from federation.wire.spec import feature_names, load_spec, model_cuts
from models.registry import build_model
from privacy.ledger import Ledger
from privacy.policy import simulation_policy

ESTIMATED = ("sbp", "cholesterol")


def finished_run(root, files, spec):
    """A run of ``spec`` on ``files`` by the sites' own nodes, and the sites' settings."""
    # Messages are built as a ServerApp builds them; a module fixture runs before conftest's
    # per-test identity, so set it here.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    policy = simulation_policy(spec.privacy.enabled)
    sites = [
        SiteSettings(name, path, spec, root / "ledgers" / f"{name}.sqlite", policy)
        for name, path in files.items()
    ]
    summary = StudyRun(LocalGrid(sites, 1), spec, root / "run").run()
    assert summary["status"] == "completed", summary["error"]
    study = root / "study.toml"
    study.write_text(spec.to_toml())
    return {"out": root / "run", "sites": sites, "spec": spec, "study": study, "summary": summary}


@pytest.fixture(scope="module")
def dp_run(cohort, tmp_path_factory):
    files, spec_path = cohort
    spec = load_spec(spec_path)
    declared = {c: b for c, b in spec.features.bounds.items() if c not in ESTIMATED}
    spec = spec.with_overrides(
        training={"rounds": 2},
        privacy={"accountant": "rdp"},
        features={"missing": {**spec.features.missing, "smoking": "drop"}, "bounds": declared},
    )
    two = dict(list(files.items())[:2])
    return finished_run(tmp_path_factory.mktemp("dp-run"), two, spec)


@pytest.fixture(scope="module")
def site_scaled_run(cohort, tmp_path_factory):
    files, spec_path = cohort
    spec = load_spec(spec_path).with_overrides(
        model={"name": "mlp", "hidden": (8,)},
        training={"rounds": 1},
        privacy={"enabled": False},
        features={"scaling": "site"},
    )
    two = dict(list(files.items())[1:])
    return finished_run(tmp_path_factory.mktemp("site-run"), two, spec)


def node_view(run, site):
    """What the site's node scores in evaluate: its table, and the final model (from the
    checkpoint, as the aggregator sent it) with the aggregator's scaling and the bounds the
    site's ledger kept for the run, encoded by the node's own functions."""
    spec = run["spec"]
    checkpoint = load_checkpoint(run["out"], spec.to_toml())
    cuts = model_cuts(spec)
    model = build_model(spec.model.name, len(feature_names(spec)), spec.model.hidden, cuts)
    model.load_state_dict(checkpoint["arrays"])
    ledger = Ledger(site.ledger)
    estimated = (ledger.runs()[-1]["settings"] or {}).get("bounds", {})
    bounds = {**spec.features.bounds, **{c: tuple(b) for c, b in estimated.items()}}
    table = site_table(site, site_partition(site, ledger))
    center, scale = resolve_scaling(table, spec, *checkpoint["state"]["scaling"], bounds)
    return table, model, center, scale, bounds


def predicted(out):
    return pd.read_csv(out, dtype={"reason": str}, keep_default_na=False, na_values=[""])


def node_rows(path, spec):
    """Which rows of the file the node keeps (consent, then the "drop" rules), read directly."""
    raw = pd.read_csv(path, dtype=str)
    kept = raw[spec.study.consent].isin(["1"])
    for column, rule in spec.features.missing.items():
        if rule == "drop":
            kept &= raw[column].notna()
    return kept.to_numpy()


def assert_scores_match_the_node(run, site, scores):
    table, model, center, scale, bounds = node_view(run, site)
    kept = node_rows(site.data, run["spec"])
    mine = scores["risk"].to_numpy()[kept]  # the node's rows, in the node's order
    for test in (True, False):
        x, _ = encode(table, run["spec"], center, scale, test=test, bounds=bounds)
        rows = table.is_test if test else ~table.is_test
        np.testing.assert_allclose(mine[rows], risks(model, x), rtol=0, atol=1e-6)


def test_predict_gives_the_nodes_scores_on_the_same_rows(dp_run, tmp_path, capsys):
    site = dp_run["sites"][0]
    out = tmp_path / "scores.csv"
    assert (
        invoke("predict", "--run", str(dp_run["out"]), "--data", str(site.data), "--out", str(out))
        == 0
    )
    scores = predicted(out)
    raw = pd.read_csv(site.data, dtype=str)
    assert list(scores.columns) == ["row", "risk", "reason"]
    assert scores["row"].tolist() == list(range(2, len(raw) + 2))  # every row, in input order
    assert_scores_match_the_node(dp_run, site, scores)
    # Consent is not read: a row without it is scored; a "drop" rule leaves its rows unscored.
    no_consent = (raw["consent"] == "0").to_numpy()
    dropped = raw["smoking"].isna().to_numpy()
    assert no_consent.any() and dropped.any()
    assert scores["risk"][no_consent & ~dropped].notna().all()
    assert scores["risk"][dropped].isna().all()
    assert set(scores["reason"][dropped]) == {"missing smoking (its rule is drop)"}
    assert scores["reason"][~dropped].isna().all()
    unscored = int(dropped.sum())
    assert capsys.readouterr().out.strip() == (
        f"{out}: {len(raw) - unscored} risks of {len(raw)} rows, {unscored} not scored "
        "(a missing value under a drop rule); the file stays at the site"
    )


def test_site_scaled_features_are_scaled_by_that_sites_training_rows(
    site_scaled_run, tmp_path, capsys
):
    run, site = site_scaled_run, site_scaled_run["sites"][0]
    out = tmp_path / "scores.csv"
    base = ["predict", "--run", str(run["out"]), "--data", str(site.data), "--out", str(out)]
    assert invoke(*base) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {run['out']}: age, bmi, sbp, cholesterol, hba1c, family_history were scaled "
        "by each site's own training rows; give --site, --training-data and --ledger (the "
        "site's name in the run, its data file and its node's ledger) to score as that site's "
        "node did"
    )
    options = ["--training-data", str(site.data), "--ledger", str(site.ledger)]
    assert invoke(*base, "--site", site.name, *options) == 0
    assert_scores_match_the_node(run, site, predicted(out))

    capsys.readouterr()
    assert invoke(*base, "--force", "--site", "elsewhere", *options) == 2
    names = ", ".join(s.name for s in run["sites"])
    assert capsys.readouterr().err.strip() == (
        f"error: --site elsewhere: not a site of this run ({names})"
    )
    changed = tmp_path / "changed.csv"
    pd.read_csv(site.data).iloc[:-40].to_csv(changed, index=False)
    table = site_table(
        SiteSettings(site.name, changed, run["spec"], site.ledger),
        site_partition(site, Ledger(site.ledger)),
    )
    trained = run["summary"]["sites"][site.name]["n_train"]
    option = ["--training-data", str(changed), "--ledger", str(site.ledger)]
    assert invoke(*base, "--force", "--site", site.name, *option) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --training-data {changed}: {table.n_train} training records, but site "
        f"{site.name} trained on {trained} in this run; the file or its partition changed "
        "since, so its scaling would differ"
    )


@pytest.mark.parametrize("which", ["dp_run", "site_scaled_run"])
def test_model_onnx_gives_the_same_scores_as_torch(which, request):
    run = request.getfixturevalue(which)
    site = run["sites"][0]
    table, model, center, scale, bounds = node_view(run, site)
    x, _ = encode(table, run["spec"], center, scale, test=True, bounds=bounds)
    card = json.loads((run["out"] / "model_card.json").read_text())
    graph = onnx.load(run["out"] / card["inputs"]["onnx"]["file"])
    onnx.checker.check_model(graph)
    logit, risk = ReferenceEvaluator(graph).run(None, {card["inputs"]["onnx"]["input"]: x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).squeeze(-1).numpy()
    np.testing.assert_allclose(logit, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(risk, risks(model, x), rtol=0, atol=1e-6)
    assert card["inputs"]["order"] == card["features"] == feature_names(run["spec"])


def test_the_cards_coefficients_on_the_original_scale_give_the_models_risks(dp_run, tmp_path):
    spec, site = dp_run["spec"], dp_run["sites"][0]
    card = json.loads((dp_run["out"] / "model_card.json").read_text())
    coefficients = card["coefficients"]
    assert coefficients["available"] and not coefficients["site_scaled"]
    rows = coefficients["rows"]
    assert [row["input"] for row in rows if not row["reference"]] == card["features"]
    per_unit = {(row["feature"], row["level"]): row["per_unit"] for row in rows}
    raw = pd.read_csv(site.data)
    assert raw["smoking"].isna().any()  # a missing level counts as the mean of its column's
    logit = np.full(len(raw), coefficients["intercept"])
    for row in card["scaling"]:  # clipped to the bounds; a missing value counts as the center
        values = raw[row["feature"]].clip(*row["bounds"]).fillna(row["center"])
        logit += per_unit[row["feature"], None] * values.to_numpy()
    for column, levels in spec.features.categorical.items():
        assert per_unit[column, levels[0]] == 0.0  # the reference level
        mean = np.mean([per_unit[column, level] for level in levels])
        logit += np.where(raw[column].isna(), mean, 0.0)
        for level in levels:
            logit += per_unit[column, level] * (raw[column] == level).to_numpy()
    center = np.array([row["center"] for row in card["scaling"]])
    scale = np.array([row["scale"] for row in card["scaling"]])
    numeric = raw[list(spec.features.numeric)].to_numpy(dtype=float)
    codes = np.column_stack(
        [
            raw[c].map({v: i for i, v in enumerate(levels)}).fillna(-1).astype(int).to_numpy()
            for c, levels in spec.features.categorical.items()
        ]
    )
    model = build_model("logistic", len(card["features"]))
    model.load_state_dict(torch.load(dp_run["out"] / "model.pt", weights_only=True))
    x = encode_features(numeric, codes, spec, center, scale)
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), risks(model, x), rtol=0, atol=1e-6)


def test_the_card_holds_the_released_performance_data_and_privacy(dp_run, site_scaled_run):
    summary, out = dp_run["summary"], dp_run["out"]
    card = json.loads((out / "model_card.json").read_text())
    pooled = summary["metrics"]["pooled"]
    performance = card["performance"]
    assert performance["evaluated_round"] == summary["evaluated_round"] == 2
    assert performance["n_test"] == pooled["n"]
    for key, figure in performance["pooled"].items():
        assert figure["value"] == pooled[key] and figure["ci"] == pooled[f"{key}_ci"]
        reason = pooled["na_reason"].get(key, "not released" if pooled[key] is None else None)
        assert figure["na_reason"] == reason
    for name, site in summary["sites"].items():
        assert card["sites"][name]["n_train"] == site["n_train"]
        assert card["sites"][name]["participant_epsilon"] == site["participant_epsilon"]
    assert card["data"]["n_train"] == sum(s["n_train"] for s in summary["sites"].values())
    assert card["data"]["missing"]["smoking"] == "records missing it are excluded"
    for row in card["scaling"]:  # pooled everywhere, the estimated bounds said so
        assert row["source"] == "federation" and row["bounds_estimated"] == (
            row["feature"] in ESTIMATED
        )
    text = (out / "model_card.md").read_text()
    for section in (
        "## Intended use",
        "## Data",
        "## Model",
        "### Coefficients",
        "## Performance",
        "## Privacy",
        "## Limitations",
    ):
        assert f"\n{section}\n" in text
    assert text.count("\n# ") == 0 and text.startswith("# Model card: ")
    auroc = performance["pooled"]["auroc"]
    if auroc["value"] is not None:
        assert f"| AUROC (discrimination) | {auroc['value']:.3f} ({auroc['ci'][0]:.3f} to" in text
    mlp = json.loads((site_scaled_run["out"] / "model_card.json").read_text())
    assert mlp["coefficients"] == {
        "available": False,
        "reason": "the mlp model has no per-feature coefficients",
    }
    assert any("scaled by each site's own training rows" in n for n in mlp["limitations"])


# -- refusals: exact exit code and line ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda df: df.drop(columns=["age"]),
            "{data}: missing column 'age' required by the study spec",
        ),
        (
            lambda df: df.assign(smoking=df["smoking"].where(df.index != 1, "sometimes")),
            "{data}: column 'smoking' has 1 values that are not among its declared levels "
            "(row 3); declared: never, former, current",
        ),
        (
            lambda df: df.assign(age=df["age"].astype(str).where(df.index != 0, "old")),
            "{data}: column 'age' is numeric in the spec but has 1 non-numeric values (row 2); "
            "if they mark missing values, list the marker in [features] na-values",
        ),
        (
            lambda df: df.assign(sex=df["sex"].where(df.index != 4, None)),
            "{data}: column 'sex' has 1 missing values (row 6) and the spec has no rule for it; "
            'add sex = "impute" or "drop" to [features] missing',
        ),
        (
            lambda df: df.assign(mrn=range(len(df))),
            "{data}: column 'mrn' looks like a direct identifier; remove it from the analysis file",
        ),
    ],
    ids=["missing-column", "undeclared-level", "non-numeric", "no-missing-rule", "identifier"],
)
def test_a_file_the_node_refuses_is_refused_with_the_nodes_line(
    dp_run, tmp_path, capsys, change, message
):
    data = tmp_path / "site.csv"
    # Every row consented, so that the node's check sees each changed row too.
    change(pd.read_csv(dp_run["sites"][0].data).assign(consent=1)).to_csv(data, index=False)
    out = tmp_path / "scores.csv"
    expected = "error: " + message.format(data=data)
    assert (
        invoke("predict", "--run", str(dp_run["out"]), "--data", str(data), "--out", str(out)) == 2
    )
    assert capsys.readouterr().err.strip() == expected
    assert not out.exists()
    assert invoke("site", "check", "--study", str(dp_run["study"]), str(data)) == 2
    assert capsys.readouterr().err.strip() == expected  # the node's own check, the same line


def test_predict_refuses_user_mistakes_with_one_line(dp_run, tmp_path, capsys):
    data = dp_run["sites"][0].data
    out = tmp_path / "scores.csv"
    run = dp_run["out"]
    half = tmp_path / "half-run"  # a run directory whose model is missing
    half.mkdir()
    shutil.copy(run / "model_card.json", half)
    out.write_text("earlier scores\n")
    cases = [
        (["--run", str(tmp_path / "nowhere")], f"{tmp_path / 'nowhere'}: no such run directory"),
        (["--run", str(half)], f"{half}: no model.pt (the run has not completed)"),
        (
            ["--run", str(run), "--data", str(tmp_path / "none.csv")],
            f"{tmp_path / 'none.csv'}: file not found",
        ),
        (["--run", str(run), "--id-column", "person"], f"{data}: no column 'person' (--id-column)"),
        (
            ["--run", str(run), "--out", str(out)],
            f"--out {out}: already exists; pass --force to replace it",
        ),
        (
            ["--run", str(run), "--out", str(data), "--force"],
            f"--out {data}: is the --data file; write the scores elsewhere",
        ),
        (["--run", str(run), "--site", "x"], "give --site, --training-data and --ledger together"),
    ]
    for args, message in cases:
        defaults = {"--data": str(data), "--out": str(tmp_path / "new.csv")}
        given = dict(zip(args[::2], args[1::2], strict=False))
        argv = [*args, *(a for k, v in defaults.items() if k not in given for a in (k, v))]
        assert invoke("predict", *argv) == 2, message
        err = capsys.readouterr().err
        assert err.strip() == f"error: {message}"
    assert out.read_text() == "earlier scores\n" and not (tmp_path / "new.csv").exists()
    assert (
        invoke("predict", "--run", str(run), "--data", str(data), "--out", str(out), "--force") == 0
    )
    assert len(predicted(out)) == len(pd.read_csv(data))


def test_the_id_column_is_copied_beside_each_risk_even_an_identifier(dp_run, tmp_path):
    source = pd.read_csv(dp_run["sites"][0].data)
    data = tmp_path / "patients.csv"
    ids = [f"P{i:05d}" for i in range(len(source))]
    source.drop(columns=["outcome", "consent"]).assign(mrn=ids).to_csv(data, index=False)
    out = tmp_path / "scores.csv"
    assert (
        invoke(
            "predict",
            "--run",
            str(dp_run["out"]),
            "--data",
            str(data),
            "--out",
            str(out),
            "--id-column",
            "mrn",
        )
        == 0
    )
    scores = pd.read_csv(out, dtype=str)
    assert list(scores.columns) == ["row", "mrn", "risk", "reason"]
    assert scores["mrn"].tolist() == ids


@pytest.fixture(scope="module")
def survival_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("survival-run")
    files, spec_path = write_cohort(root / "data", 2, 300, seed=11, task="survival")
    spec = load_spec(spec_path).with_overrides(training={"rounds": 2})
    return finished_run(root, files, spec)


def test_a_survival_model_scores_its_risk_by_each_horizon_as_its_baseline_hazards_give(
    survival_run, tmp_path, capsys
):
    run, site = survival_run, survival_run["sites"][0]
    spec = run["spec"]
    out = tmp_path / "scores.csv"
    args = ["predict", "--run", str(run["out"]), "--data", str(site.data), "--out", str(out)]
    assert invoke(*args) == 0
    scores = predicted(out)
    horizons = [f"risk_{h:g}d" for h in spec.study.horizons]
    assert list(scores.columns) == ["row", "score", *horizons, "reason"]

    table, model, center, scale, bounds = node_view(run, site)
    cuts = list(spec.study.intervals)
    kept = node_rows(site.data, spec)
    for test in (True, False):
        x, _ = encode(table, spec, center, scale, test=test, bounds=bounds)
        rows = scores[kept][table.is_test if test else ~table.is_test]
        with torch.no_grad():
            score = model(torch.from_numpy(x)).squeeze(-1).double().numpy()
        np.testing.assert_allclose(rows["score"], score, rtol=0, atol=1e-6)
        # S(h): the product over the intervals up to h of 1 - sigmoid(score + baseline_k).
        baseline = model.baseline.detach().double().numpy()
        for h, column in zip(spec.study.horizons, horizons, strict=True):
            last = cuts.index(h)
            hazard = 1 / (1 + np.exp(-(score[:, None] + baseline[None, : last + 1])))
            expected = 1 - np.prod(1 - hazard, axis=1)
            np.testing.assert_allclose(rows[column], expected, rtol=0, atol=1e-6)
    risk = scores[horizons].dropna().to_numpy()
    assert (np.diff(risk, axis=1) >= -1e-12).all()  # a later horizon is never less likely
    assert "risks of" in capsys.readouterr().out

    clash = tmp_path / "clash.csv"
    pd.read_csv(site.data).assign(**{horizons[0]: 1}).to_csv(clash, index=False)
    args[args.index(str(site.data))] = str(clash)
    assert invoke(*args, "--force", "--id-column", horizons[0]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --id-column {horizons[0]}: clashes with a column of the scores"
    )
