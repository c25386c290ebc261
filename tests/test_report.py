"""report.html: self-contained, readable, never a small count, never the reason a run fails."""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from cli_helpers import invoke
from scipy.special import expit

from federation.client.evaluation import histogram_release, rank_release
from federation.server import evaluation as ev
from federation.server import report, report_figures
from federation.server.outputs import REPORT, SUMMARY, RunDirectory, rebuild_report
from federation.server.state import RunState
from federation.server.summary import conclude
from federation.wire.evaluation import GROUP, INTERSECTION, POOLED_TABLE, evaluation_noise, layout
from federation.wire.spec import load_spec, parse_spec

SITES = ("north", "south & <east>", "west")
SPEC = parse_spec(
    """
[study]
label = "outcome"
groups = ["race", "sex"]
group-levels = { race = ["A", "B", "C"] }
[features]
numeric = ["x"]
categorical = { sex = ["female", "male"] }
""",
    source="spec",
)
CHROMIUM = next(
    (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
    None,
)


def fake_run(path: Path, rounds: int = 3, scores=None) -> dict:
    """A run directory whose metrics come from the real releases and pooling, without Flower."""
    rng = np.random.default_rng(0)
    cells = layout(SPEC)
    noise1, noise2 = evaluation_noise(3.0, 1e-5, "rdp", 1)
    parts = []
    for i in range(len(SITES)):
        n = 1800 + 600 * i
        x = rng.normal(size=n)
        y = (rng.random(n) < expit(-1.0 + 1.6 * x)).astype(int)
        p = expit(-1.3 + 1.2 * x) if scores is None else scores(x)
        race = rng.choice(["A", "B", "C"], p=[0.75, 0.22, 0.03], size=n).astype(object)
        sex = rng.choice(["female", "male"], size=n).astype(object)
        members = {
            POOLED_TABLE: np.full(n, "all", dtype=object),
            (GROUP, "race"): race,
            (GROUP, "sex"): sex,
            (INTERSECTION, "race x sex"): np.array(
                [f"{a} | {b}" for a, b in zip(race, sex, strict=True)], dtype=object
            ),
        }
        parts.append((y, p, members))
    sites = {
        name: ev.read_histograms(histogram_release(y, p, m, cells, noise1), cells, noise1)
        for name, (y, p, m) in zip(SITES, parts, strict=True)
    }
    pooled = ev.pool(sites.values())
    requests = {c: r for c in cells.rank_cells() if (r := ev.rank_request(pooled[c])) is not None}
    ranks = [
        ev.read_ranks(rank_release(y, p, m, cells, requests, noise2), requests, cells, noise2)
        for y, p, m in parts
    ]
    pooled = ev.reconcile(ev.with_ranks(pooled, ranks), cells)
    metrics = ev.evaluation_tables(sites, pooled, cells)
    outputs = RunDirectory(path)
    for r in range(1, rounds + 1):
        epsilon = {name: 3.0 * (r / rounds) ** 0.6 for name in SITES}
        row = {"round": r, "seconds": 1.0, "epsilon": epsilon, "metrics": None}
        if r == rounds:
            row["metrics"] = metrics
        outputs.append_round(row)
    summary = {
        "study": "fake-study",
        "task": "binary",
        "label": "outcome",
        "groups": ["race", "sex"],
        "status": "completed",
        "error": None,
        "rounds": rounds,
        "planned_rounds": rounds,
        "evaluated_round": rounds,
        "strategy": "fedavg",
        "model": "logistic",
        "privacy": {"enabled": True, "target_epsilon": 3.0, "delta": 1e-5, "accountant": "prv"},
        "sites": {
            name: {
                "status": "ok",
                "reason": None,
                "epsilon": 3.0,
                "evaluation_epsilon": 2.99,
                "n_train": 2 * (1800 + 600 * i),
                "n_test": ev.published_count(sites[name][("pooled", "all", "all")].records),
            }
            for i, name in enumerate(SITES)
        },
        "representation": ev.representation(sites, pooled, cells),
        "diagnostics": sorted({d for d in (metrics["pooled"].get("diagnostics") or [])}),
        "metrics": metrics,
    }
    outputs.write_summary(summary)
    return summary


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    fake_run(tmp_path / "run")
    rebuild_report(tmp_path / "run")
    return tmp_path / "run"


def images(html: str) -> list[str]:
    return re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html)


def test_report_is_self_contained_readable_and_has_the_plots(run_dir: Path) -> None:
    (run_dir / REPORT).unlink()
    assert invoke("report", str(run_dir)) == 0  # `allfed report` rebuilds it
    html = (run_dir / REPORT).read_text(encoding="utf-8")
    svgs = images(html)
    assert len(svgs) == 6  # ROC, calibration, epsilon, group and intersection AUROC, who
    for svg in svgs:
        ElementTree.fromstring(base64.b64decode(svg))  # each plot is a whole SVG document
    # Nothing is fetched from elsewhere: no scripts, no links, every source a data URI.
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []
    assert "fake-study" in html and "Who took part" in html and "ε = 3.0" in html
    assert "south &amp; &lt;east&gt;" in html and "<east>" not in html
    assert "20 or fewer records" in html  # race C has few records at every site
    for words in ("AUROC (95% interval)", "Calibration slope", "E-avg (ICI)", "Sensitivity"):
        assert words in html
    assert "What differential privacy does to these numbers" in html
    # Every published metric is shown with its interval, or as n/a with its reason.
    pooled = json.loads((run_dir / SUMMARY).read_text())["metrics"]["pooled"]
    for name, reason in pooled["na_reason"].items():
        assert pooled[name] is None and reason
    assert html.count(" to ") >= 10 and "Findings" not in html


def test_report_of_a_run_that_failed_before_any_round(tmp_path: Path) -> None:
    summary = {
        "study": "s",
        "status": "failed",
        "error": "setup: only 1 site(s) left, the study needs min-sites = 2",
        "rounds": 0,
        "sites": {"a": {"status": "failed", "reason": "missing column 'sbp'"}},
        "metrics": {},
    }
    html = report.render_report(summary, [])
    assert "The run failed:" in html and "min-sites = 2" in html
    assert "missing column &#39;sbp&#39;" in html and "No evaluation finished" in html
    assert 'font-family: -apple-system, "Segoe UI"' in html  # CSS reads no entities
    assert images(html) == []


def test_a_plot_that_cannot_be_drawn_is_logged_and_the_rest_is_kept(
    run_dir: Path, monkeypatch, caplog
) -> None:
    def broken(*args):
        raise ValueError("bad value")

    monkeypatch.setattr(report_figures, "roc_figure", broken)
    summary = json.loads((run_dir / SUMMARY).read_text())
    with caplog.at_level(logging.ERROR, logger="allfed.server"):
        html = report.render_report(summary, [])
    assert "This plot could not be drawn" in html and len(images(html)) == 4  # no rounds given
    assert "could not draw 'ROC curve'" in caplog.text


def test_a_report_that_cannot_be_written_never_fails_the_run(
    cohort, tmp_path: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(report, "render_report", lambda *args: 1 / 0)
    state = RunState.start(load_spec(cohort[1]))
    with caplog.at_level(logging.ERROR, logger="allfed.server"):
        summary = conclude(RunDirectory(tmp_path / "run"), state, "completed", None)
    assert summary["status"] == "completed"
    assert json.loads((tmp_path / "run" / SUMMARY).read_text())["status"] == "completed"
    assert not (tmp_path / "run" / REPORT).exists()
    assert "could not write report.html" in caplog.text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "no summary.json here"),
        (lambda d: (d / SUMMARY).write_text("{not json"), "not valid JSON"),
        (lambda d: (d / SUMMARY).write_text("[1, 2]"), "not an allfed run summary"),
    ],
)
def test_report_command_on_a_bad_run_directory_exits_2(tmp_path: Path, capsys, make, message):
    make(tmp_path)
    assert invoke("report", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary to render the report with")
def test_report_renders_in_a_headless_browser(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,6000",
            (run_dir / REPORT).as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as image:
        assert image.size == (1280, 6000)
        pixels = np.asarray(image.convert("RGB"))
    # Plots drawn, not blank: many colours, and plot colours (the pooled ROC's near-black,
    # the sites' blue) in the lower part of the page where the figures are.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    blue = np.all(np.abs(pixels[1500:].astype(int) - [31, 119, 180]) < 12, axis=-1)
    assert blue.sum() > 2000


def test_a_diverged_model_is_a_finding_not_a_score(tmp_path: Path) -> None:
    """Scores saturated at 0 and 1 (a model whose updates blew up): the summary and the page
    say so first; no AUROC reads as if the model discriminated."""
    summary = fake_run(tmp_path / "run", scores=lambda x: expit(1e4 * np.sign(x - 2)))
    assert any("diverged" in d for d in summary["diagnostics"])
    html = (rebuild_report(tmp_path / "run")).read_text(encoding="utf-8")
    assert "Findings" in html and "diverged" in html
    assert html.index("Findings") < html.index("Results on all sites")


# -- a real simulated run ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_simulated_run_publishes_dp_metrics_with_intervals_and_a_report(
    cohort, tmp_path: Path
) -> None:
    from federation.simulation import simulate

    files, spec_path = cohort
    spec = load_spec(spec_path).with_overrides(
        training={"rounds": 2}, privacy={"accountant": "rdp"}
    )
    summary = simulate(spec, files, tmp_path / "run")
    assert summary["status"] == "completed" and summary["evaluated_round"] == 2
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["metrics"] is not None for row in rows] == [False, True]  # the final model only
    pooled = summary["metrics"]["pooled"]
    assert pooled["auroc_method"] == "rank release"
    for name, value in pooled.items():
        if f"{name}_ci" in pooled and value is not None:
            low, high = pooled[f"{name}_ci"]
            assert low <= value <= high, name
    for levels in summary["representation"].values():
        for entry in levels.values():
            counts = [entry["total"], *entry["sites"].values()]
            assert all(c is None or c > 20 for c in counts)
    for table in ("per_group", "per_intersection"):
        for levels in summary["metrics"][table].values():
            for entry in levels.values():
                assert (entry["metrics"] is None) == (entry["withheld_reason"] is not None)
                if entry["metrics"] is not None:
                    assert entry["metrics"]["n"] > 20
    for site in summary["sites"].values():
        assert site["participant_epsilon"] == max(site["epsilon"], site["evaluation_epsilon"])
    html = (tmp_path / "run" / REPORT).read_text(encoding="utf-8")
    assert len(images(html)) >= 4
    assert "report.html in" in (tmp_path / "run" / "run.log").read_text()


def _survival_pooled() -> dict:
    """A survival cell's metrics in the shape ``server.survival_evaluation`` releases them."""
    groups = [
        {"mean_predicted": 0.05, "observed": 0.04, "observed_ci": [0.02, 0.07]},
        {"mean_predicted": 0.12, "observed": 0.15, "observed_ci": [0.10, 0.20]},
        {"mean_predicted": 0.30, "observed": None, "observed_ci": None},  # too uncertain
    ]
    later = [{**g, "mean_predicted": 2 * g["mean_predicted"]} for g in groups[:2]]
    return {
        "n": 400,
        "cindex": 0.71,
        "cindex_ci": [0.66, 0.76],
        "calibration": [{"horizon": 365, "groups": groups}, {"horizon": 1095, "groups": later}],
    }


def test_a_survival_report_plots_calibration_by_horizon_and_the_c_index_by_group() -> None:
    pooled = _survival_pooled()
    figure = report_figures.survival_calibration_figure(pooled)
    drawn = [c.lines[0].get_data() for c in figure.axes[0].containers]
    assert len(drawn) == 2  # one series per horizon, the n/a group left out
    np.testing.assert_allclose(drawn[0][0], [0.05, 0.12])
    np.testing.assert_allclose(drawn[0][1], [0.04, 0.15])
    np.testing.assert_allclose(drawn[1][0], [0.10, 0.24])
    assert report_figures.survival_calibration_figure({"calibration": []}) is None

    per_group = {
        "sex": {
            "female": {"metrics": {"cindex": 0.74, "cindex_ci": [0.68, 0.8], "n": 210}},
            "male": {"metrics": None, "withheld_reason": "20 or fewer records"},
        }
    }
    forest = report_figures.forest_figure(per_group, ["sex"], pooled, metric="cindex", label="C")
    texts = [t.get_text() for t in forest.axes[0].texts]
    assert texts == ["withheld"] and forest.axes[0].get_xlabel() == "C (95% interval)"
    marks = [line.get_xdata() for line in forest.axes[0].lines if line.get_marker() == "s"]
    assert [list(m) for m in marks] == [[0.74]]

    rounds = [{"round": n, "metrics": {"pooled": {"cindex": c, "cindex_ci": [c - 0.05, c + 0.05]}}}
              for n, c in ((5, 0.65), (10, 0.71))]  # fmt: skip
    line = report_figures.rounds_figure(rounds, "cindex", "C-index").axes[0].lines[0]
    assert list(line.get_ydata()) == [0.65, 0.71]
    assert report_figures.rounds_figure(rounds) is None  # no AUROC in a survival run's rounds

    summary = {
        "study": "s", "status": "completed", "task": "survival", "rounds": 10,
        "horizons": [365, 1095], "groups": ["sex"], "sites": {},
        "metrics": {"pooled": pooled, "per_site": {}, "per_group": per_group},
    }  # fmt: skip
    html = report.render_report(summary, rounds)
    for title in ("Calibration by horizon", "Pooled C-index over the evaluated rounds",
                  "C-index by group"):  # fmt: skip
        assert f">{title}<" in html, title
    assert "ROC curve" not in html
