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
from federation.scorestats import ScoreStats, group_stats, intersect_groups, level_counts
from scipy.special import expit

from federation.server import report
from federation.server.metrics import GroupPool, compute_metrics, publish_groups
from federation.server.outputs import REPORT, SUMMARY, RunDirectory, rebuild_report
from federation.server.run import SiteRecord, StudyRun, _representation
from federation.spec import load_spec

SITES = ("north", "south & <east>", "west")
IMAGE = 'src="data:image/svg+xml;base64,'
CHROMIUM = next(
    (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
    None,
)


def fake_run(path: Path, rounds: int = 3) -> dict:
    """A run directory whose metrics come from the real pooling code, without Flower."""
    rng = np.random.default_rng(0)
    pooled, single, crossed = ScoreStats.empty(), GroupPool(), GroupPool()
    per_site, records = {}, []
    for i, name in enumerate(SITES):
        n = 500 + 150 * i
        x = rng.normal(size=n)
        y = (rng.random(n) < expit(-1.0 + 1.6 * x)).astype(int)
        p = expit(-1.3 + 1.2 * x)
        groups = {
            "race": rng.choice(["A", "B", "C"], p=[0.75, 0.22, 0.03], size=n),
            "sex": rng.choice(["female", "male"], size=n),
        }
        stats = ScoreStats.from_scores(y, p)
        pooled, per_site[name] = pooled + stats, compute_metrics(stats)
        single.add(name, group_stats(y, p, groups, 20))
        crossed.add(name, group_stats(y, p, intersect_groups(groups), 20))
        records.append(SiteRecord(name=name, n_train=2 * n, n_test=n))
        records[-1].representation = level_counts(groups, 20)
        records[-1].epsilon = 3.0
    per_group, per_intersection = publish_groups(
        pooled, single, crossed, {"race x sex": ("race", "sex")}
    )
    metrics = {
        "pooled": compute_metrics(pooled),
        "per_site": per_site,
        "per_group": per_group,
        "per_intersection": per_intersection,
    }
    outputs = RunDirectory(path)
    for r in range(1, rounds + 1):
        epsilon = {s.name: 3.0 * (r / rounds) ** 0.6 for s in records}
        outputs.append_round({"round": r, "seconds": 1.0, "epsilon": epsilon, "metrics": metrics})
    summary = {
        "study": "fake-study",
        "task": "binary",
        "label": "outcome",
        "groups": ["race", "sex"],
        "status": "completed",
        "error": None,
        "rounds": rounds,
        "planned_rounds": rounds,
        "strategy": "fedavg",
        "model": "logistic",
        "privacy": {"enabled": True, "target_epsilon": 3.0, "delta": 1e-5, "accountant": "prv"},
        "sites": {
            s.name: {
                "status": "ok",
                "reason": None,
                "epsilon": 3.0,
                "n_train": s.n_train,
                "n_test": s.n_test,
            }
            for s in records
        },
        "representation": _representation(records),
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
    assert (
        len(svgs) == 7
    )  # rounds, epsilon, ROC, calibration, group and intersection AUROC, representation
    for svg in svgs:
        ElementTree.fromstring(base64.b64decode(svg))  # each plot is a whole SVG document
    # Nothing is fetched from elsewhere: no scripts, no links, every source a data URI.
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []
    assert "fake-study" in html and "Who took part" in html and "ε = 3.0" in html
    assert "south &amp; &lt;east&gt;" in html and "<east>" not in html
    assert "withheld" in html  # race C has 1..20 records at every site
    for words in ("AUROC (95% CI)", "Calibration slope", "E-avg (ICI)", "Sensitivity"):
        assert words in html


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
    assert "missing column &#x27;sbp&#x27;" in html and "No evaluation round finished" in html
    assert images(html) == []


def test_a_plot_that_cannot_be_drawn_is_logged_and_the_rest_is_kept(
    run_dir: Path, monkeypatch, caplog
) -> None:
    def broken(*args):
        raise ValueError("bad value")

    monkeypatch.setattr(report, "_roc_figure", broken)
    summary = json.loads((run_dir / SUMMARY).read_text())
    with caplog.at_level(logging.ERROR, logger="allfed.server"):
        html = report.render_report(summary, [])
    assert "This plot could not be drawn" in html and len(images(html)) == 4  # no rounds given
    assert "could not draw 'ROC curve'" in caplog.text


def test_a_report_that_cannot_be_written_never_fails_the_run(
    cohort, tmp_path: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(report, "render_report", lambda *args: 1 / 0)
    run = StudyRun(grid=None, spec=load_spec(cohort[1]), out=tmp_path / "run")
    with caplog.at_level(logging.ERROR, logger="allfed.server"):
        summary = run._conclude("completed", None)
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


# -- a real simulated run ----------------------------------------------------------------------

COUNT_KEYS = {"n", "n_pos", "count", "total"}


def small_counts(node, path: str = "") -> list[str]:
    """Every count-like value from 1 to 20 under ``node``, as its path."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}"
            if key in COUNT_KEYS and isinstance(value, int) and 0 < value <= 20:
                found.append(where)
            found += small_counts(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += small_counts(value, f"{path}[{i}]")
    return found


def derived_small_counts(metrics: dict) -> list[str]:
    """Counts a reader could compute from a published table: non-events of a group, events of
    a calibration bin, true positives from a group's sensitivity."""
    found = []
    for table in ("per_group", "per_intersection"):
        for column, levels in metrics[table].items():
            for level, entry in levels.items():
                m = entry["metrics"]
                if m is None:
                    continue
                derived = {"non-events": m["n"] - m["n_pos"]}
                if m["sensitivity"] is not None:
                    derived["true positives"] = round(m["sensitivity"] * m["n_pos"])
                found += [
                    f"{table}.{column}.{level} {k}" for k, v in derived.items() if 0 < v <= 20
                ]
    for name, m in [("pooled", metrics["pooled"]), *metrics["per_site"].items()]:
        for b in m["calibration"]:
            if b["observed"] is not None:
                events = round(b["observed"] * b["count"])
                if 0 < events <= 20 or 0 < b["count"] - events <= 20:
                    found.append(f"{name} calibration bin {b['bin_lower']}")
    return found


@pytest.mark.slow
def test_a_simulated_run_publishes_no_small_count_and_a_report(cohort, tmp_path: Path) -> None:
    from federation.simulation import simulate

    files, spec_path = cohort
    spec = load_spec(spec_path).with_overrides(training={"rounds": 2})
    summary = simulate(spec, files, tmp_path / "run")
    assert summary["status"] == "completed"
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    for metrics in [summary["metrics"], *(row["metrics"] for row in rows)]:
        published = {k: metrics[k] for k in ("per_group", "per_intersection")}
        published["calibration"] = [metrics["pooled"]["calibration"]] + [
            m["calibration"] for m in metrics["per_site"].values()
        ]
        assert small_counts(published) == []
        assert derived_small_counts(metrics) == []
    representation = summary["representation"]
    assert set(representation) == set(spec.study.groups)
    assert small_counts(representation) == []
    site_counts = [
        c
        for levels in representation.values()
        for e in levels.values()
        for c in e["sites"].values()
    ]
    assert all(c is None or c == 0 or c > 20 for c in site_counts) and None in site_counts

    pooled = summary["metrics"]["pooled"]
    for key in (
        "auroc_ci",
        "auprc",
        "brier_scaled",
        "calibration_intercept",
        "calibration_slope",
        "calibration_e_avg",
        "calibration_e90",
        "calibration_e_max",
    ):
        assert pooled[key] is not None, key
    # at 0.5 the counts are exact, or (a small count on one side at some site) all withheld
    at_threshold = [pooled[key] for key in ("sensitivity", "specificity", "accuracy")]
    if pooled["threshold_metrics_withheld"]:
        assert at_threshold == [None, None, None] and pooled["ppv"] is None
    else:
        assert None not in at_threshold
    assert set(summary["metrics"]["per_intersection"]) == {
        "race_ethnicity x sex",
        "race_ethnicity x rurality",
        "sex x rurality",
    }
    html = (tmp_path / "run" / REPORT).read_text(encoding="utf-8")
    assert len(images(html)) >= 4
    assert "report.html in" in (tmp_path / "run" / "run.log").read_text()
