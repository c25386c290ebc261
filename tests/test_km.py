"""DP Kaplan-Meier curves: the estimator against scikit-survival, the release's sensitivity and
noise, what is held back, what leaves a site, and `allfed analyze km`."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from cli_helpers import invoke
from flwr.app import ConfigRecord, Context, Message, RecordDict
from sksurv.nonparametric import kaplan_meier_estimator

from federation.client.app import make_client_app
from federation.client.site import SiteSettings
from federation.server.km import pooled_km
from federation.server.km_page import render_km
from federation.synth import INTERVALS, write_cohort
from federation.wire import protocol as p
from federation.wire.queries import AnalysisRequest, build_query, planned_release
from federation.wire.spec import load_spec
from privacy.kaplan_meier import (
    AFTER,
    HELD_AFTER,
    KmQuery,
    curve,
    exact_counts,
    release,
    stratum_cells,
)
from privacy.ledger import Ledger
from privacy.statistics import SMALL_COUNT

CUTS = (182.0, 365.0, 730.0, 1095.0, 1460.0, 1825.0)


def _records(seed: int, n: int = 600, censor: bool = True):
    rng = np.random.default_rng(seed)
    event_time = np.ceil(rng.weibull(1.2, n) * 2500)
    follow_up = rng.uniform(300, 2200, n) if censor else np.full(n, 5000.0)
    return np.minimum(event_time, follow_up), event_time <= follow_up


def _cells(time, event, cuts=CUTS, strata=None):
    strata = np.full(len(time), "a", dtype=object) if strata is None else strata
    query = KmQuery(tuple(dict.fromkeys(strata)), cuts)
    return query, exact_counts(query, strata, time, event)


def _sksurv_at(time, event, cuts):
    """scikit-survival's Kaplan-Meier estimate at each cut (an interval's end)."""
    x, s = kaplan_meier_estimator(event, time)
    return np.array([s[x <= c][-1] if (x <= c).any() else 1.0 for c in cuts])


def _survival(time, event, cuts=CUTS, noise_variance=0.0):
    _, exact = _cells(time, event, cuts)
    cells = np.array([exact[c] for c in stratum_cells("a", cuts)])
    return curve(cells, cuts, noise_variance)


def test_without_noise_the_curve_is_scikit_survivals_kaplan_meier_at_the_interval_ends():
    # no censoring before the last cut: the life-table curve is the Kaplan-Meier estimate
    time, event = _records(0, censor=False)
    points = _survival(time, event)
    assert [p.survival for p in points] == pytest.approx(_sksurv_at(time, event, CUTS), abs=1e-12)
    # censored throughout: within 0.01 at every cut (coarse intervals cost this much)
    for seed in (1, 2):
        time, event = _records(seed)
        exact = _sksurv_at(time, event, CUTS)
        shown = np.array([p.survival for p in _survival(time, event)])
        assert np.abs(shown - exact).max() < 0.01, shown - exact
        # the fine cuts give back the exact estimate, censored records and all
        fine = tuple(float(t) for t in np.unique(time))
        points = _survival(time, event, fine)
        shown = [p.survival for p in points if p.survival is not None]
        assert len(shown) > 100
        assert shown == pytest.approx(_sksurv_at(time, event, fine)[: len(shown)], abs=0.005)


def test_each_sites_own_curve_is_its_records_kaplan_meier_and_the_pooled_one_theirs(cohort):
    _, spec_path = cohort
    spec = load_spec(spec_path)
    strata = ("female", "male")
    query, released, records = KmQuery(strata, CUTS), {}, {}
    for seed, name in ((1, "a"), (2, "b")):
        time, event = _records(seed, n=900, censor=False)
        sex = np.where(np.random.default_rng(seed).random(len(time)) < 0.5, *strata)
        released[name], records[name] = exact_counts(query, sex, time, event), (time, event)
    request = AnalysisRequest("km", 1.0, 1e-6, by="sex")
    result = pooled_km(spec, request, query, released, noise=1e-9)
    assert [c["site"] for c in result["site_curves"]] == ["a", "b"]
    for site_curve in result["site_curves"]:
        exact = _sksurv_at(*records[site_curve["site"]], CUTS)
        shown = [p["survival"] for p in site_curve["points"]]
        assert shown == pytest.approx(exact, abs=1e-4)  # the result rounds to 4 places
    pooled = _sksurv_at(*map(np.concatenate, zip(*records.values(), strict=True)), CUTS)
    assert [p["survival"] for p in result["curves"][0]["points"]] == pytest.approx(pooled, abs=1e-4)
    html = render_km(result)
    assert "site a (N = 900)" in html and "site b (N = 900)" in html
    assert html.count("<figure>") == 2


def test_one_record_lies_in_exactly_one_cell():
    """The privacy claim: adding or removing any record moves the released vector by exactly
    1 in L2, so the release's sensitivity is 1; the total is the records' number."""
    rng = np.random.default_rng(3)
    time, event = _records(3, n=80)
    time[:5] = [0, 182, 1825, 1826, 9999]  # on the cuts and past the last one
    strata = rng.choice(np.array(["x", "y"], dtype=object), len(time))
    query, full = _cells(time, event, strata=strata)
    assert set(full) == set(query.cells()) and sum(full.values()) == len(time)
    for i in range(len(time)):
        keep = np.arange(len(time)) != i
        _, fewer = _cells(time[keep], event[keep], strata=strata[keep])
        moved = [full[c] - fewer.get(c, 0.0) for c in full]
        assert sorted(moved)[-1] == 1 and math.fsum(np.square(moved)) == 1
    past = [c for c in query.cells() if c[2] == AFTER]
    assert sum(full[c] for c in past) == (time > 1825).sum()  # 1825 is in (1460, 1825]
    assert full[("x" if strata[0] == "x" else "y", "km", "[0, 182]", "events" if event[0] else
                 "censored")] >= 1  # fmt: skip


def test_the_release_has_the_planned_noise_on_every_cell():
    query = KmQuery(tuple("abcdefghij"), CUTS)
    exact = {cell: float(i) for i, cell in enumerate(query.cells())}
    noisy = np.array([list(release(query, exact, 2.5).values()) for _ in range(40)])
    errors = noisy - np.array(list(exact.values()))
    assert errors.std() == pytest.approx(2.5, rel=0.05) and abs(errors.mean()) < 0.1
    assert np.abs(errors.mean(axis=0)).max() < 5 * 2.5 / math.sqrt(40)  # each cell its own
    assert not any(float(v).is_integer() for v in noisy[0])  # noisy, never rounded counts


def test_the_ci_holds_the_noise_the_estimator_feels():
    """The delta method's noise term against the spread of the estimate over noise draws."""
    time, event = _records(4, n=20_000)
    _, exact = _cells(time, event)
    cells = np.array([exact[c] for c in stratum_cells("a", CUTS)])
    sd = 40.0
    with_noise = curve(cells, CUTS, sd**2)
    without = curve(cells, CUTS, 0.0)
    pairs = zip(with_noise, without, strict=True)
    predicted = np.sqrt([w.survival_se**2 - o.survival_se**2 for w, o in pairs])
    rng = np.random.default_rng(5)
    draws = np.array(
        [[p.survival for p in curve(cells + rng.normal(0, sd, cells.size), CUTS, 0.0)]
         for _ in range(400)]
    )  # fmt: skip
    assert draws.std(axis=0) == pytest.approx(predicted, rel=0.2)


def test_a_noisy_curve_stays_monotone_in_0_1_and_is_held_back_where_few_are_at_risk():
    time, event = _records(6, n=300)
    _, exact = _cells(time, event)
    cells = np.array([exact[c] for c in stratum_cells("a", CUTS)])
    rng = np.random.default_rng(7)
    for _ in range(50):
        points = curve(cells + rng.normal(0, 6, cells.size), CUTS, 36.0)
        shown = [point.survival for point in points if point.survival is not None]
        assert all(0 <= s <= 1 for s in shown) and shown == sorted(shown, reverse=True)
        for point in points:
            if point.survival is not None:
                assert point.survival_ci[0] <= point.survival <= point.survival_ci[1]
    # 30 records, most leaving early: the curve stops where at most 20 are at risk
    few = np.array([3, 2, 2, 1, 4, 3, 0, 2, 1, 1, 0, 1, 10], dtype=float)
    points = [p.as_dict() for p in curve(few, CUTS, 0.0)]
    assert points[0]["survival"] is not None and points[0]["at_risk"] == 30
    first = next(i for i, p in enumerate(points) if p["survival"] is None)
    assert points[first]["at_risk"] is None
    assert points[first]["withheld_reason"]["survival"] == SMALL_COUNT
    assert all(p["na_reason"]["survival"] == HELD_AFTER for p in points[first + 1 :])
    assert all(p["events"] in (None, 0) for p in points)  # no count from 1 to 20 is shown


def test_few_events_against_the_noise_do_not_bias_the_curve_down():
    """2,000 records, 8 events an interval, noise SD 10 on every cell: clipping each
    interval's events at 0 would bias the 5-year survival by about -0.004; summing the noisy
    terms and then making log S monotone stays within a fifth of that."""
    cells = np.array([8.0, 50.0] * len(CUTS) + [1400.0])
    exact = curve(cells, CUTS, 0.0)[-1].survival
    rng = np.random.default_rng(1)
    draws = [curve(cells + rng.normal(0, 10, cells.size), CUTS, 100.0)[-1] for _ in range(400)]
    assert all(d.survival is not None for d in draws)
    assert abs(np.mean([d.survival for d in draws]) - exact) < 0.001


def test_a_km_request_the_spec_cannot_answer_is_named(cohort, tmp_path):
    survival = load_spec(write_cohort(tmp_path, 1, 50, task="survival")[1])
    binary = load_spec(cohort[1])
    for spec, request, message in [
        (binary, AnalysisRequest("km", 1.0, 1e-6), r'km needs a survival study \(task = "surv'),
        (survival, AnalysisRequest("km", 1.0, 1e-6, by="nope"), "'nope' is not the label, a"),
        (survival, AnalysisRequest("km", 1.0, 1e-6, columns=("age",)), "km takes no columns"),
        (survival, AnalysisRequest("km", 1.0, 1e-6, intervals=(365, 182)), "increasing"),
        (survival, AnalysisRequest("km", 1.0, 1e-6, intervals=(0, 182)), "positive"),
        (survival, AnalysisRequest("count", 1.0, 1e-6, intervals=(182,)), "applies to km only"),
    ]:
        with pytest.raises(Exception, match=message):
            build_query(request, spec)
    query = build_query(AnalysisRequest("km", 1.0, 1e-6, by="sex"), survival)
    assert query.cuts == INTERVALS and query.strata == ("female", "male")
    request = AnalysisRequest("km", 1.0, 1e-6, intervals=(30.0, 90.0))
    assert AnalysisRequest.from_json(request.to_json()) == request


@pytest.fixture(scope="module")
def survival_sites(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("km"), 2, 300, seed=9, task="survival")


def test_a_site_answers_km_with_its_ledgers_one_noisy_release(survival_sites, tmp_path):
    files, spec_path = survival_sites
    spec = load_spec(spec_path)
    site = SiteSettings("urban", next(iter(files.values())), spec, tmp_path / "l.sqlite")
    request = AnalysisRequest("km", epsilon=1.0, delta=1e-6, by="sex")
    app = make_client_app(lambda _context: site)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    config = ConfigRecord({p.ANALYSIS_REQUEST: request.to_json(), p.RUN_KEY: "km-1"})
    message = Message(RecordDict({p.CONFIG: config}), dst_node_id=7, message_type=p.ANALYZE)
    message.metadata.__dict__["_message_id"] = "km-message"
    metrics = app(message, context).content[p.METRICS]
    cells = {k: v for k, v in metrics.items() if k.startswith(p.CELL + ".")}
    assert set(metrics) - set(cells) == {p.EPSILON, p.DELTA, p.NOISE_MULTIPLIER}
    assert len(cells) == len(build_query(request, spec).cells())  # none withheld
    assert all(re.fullmatch(r"cell(\.[^.]+){3}\.(events|censored)", k) for k in cells)
    assert not any(float(v).is_integer() for v in cells.values())  # noisy, never a count
    frame = pd.read_csv(next(iter(files.values())))
    consented = int((frame[spec.study.consent] == 1).sum())
    noise = planned_release(request).noise_multiplier
    assert abs(sum(cells.values()) - consented) < 5 * noise * math.sqrt(len(cells))
    [row] = Ledger(site.ledger).releases()
    assert row["mechanism"] == "analysis-km" and row["noise_multiplier"] == noise
    assert row["run_epsilon_after"] == pytest.approx(metrics[p.EPSILON])


def test_km_mistakes_are_one_line(cohort, survival_sites, tmp_path, capsys):
    files, spec_path = survival_sites
    name, path = next(iter(files.items()))
    binary = cohort[1]
    for study, args, line in [
        (binary, [], 'km needs a survival study (task = "survival", with time and event columns)'),
        (spec_path, ["--intervals=30,x"], "--intervals '30,x': expected numbers separated by"),
        (spec_path, ["--by=race"], "'race' is not the label, a categorical feature or a group"),
        (spec_path, ["--by=race_ethnicity", "--intervals=90,30"], "--intervals must be increas"),
    ]:
        common = [f"--study={study}", "--target-epsilon=1", f"--out={tmp_path / 'out'}"]
        assert invoke("analyze", "km", *args, *common, f"--site={name}={path}") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and line in err and "\n" not in err, err
    assert not (tmp_path / "out" / "analysis.json").exists()


@pytest.mark.slow
def test_analyze_km_across_simulated_sites_releases_only_their_admitted_noisy_counts(
    survival_sites, tmp_path, capsys
):
    files, spec_path = survival_sites
    spec = load_spec(spec_path)
    sites = [f"--site={name}={path}" for name, path in files.items()]
    out, ledgers = tmp_path / "out", tmp_path / "ledgers"
    args = [f"--study={spec_path}", *sites, "--by=sex", "--target-epsilon=2", "--delta=1e-6"]
    assert invoke("analyze", "km", *args, f"--out={out}", f"--ledger-dir={ledgers}") == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "analysis.json").read_text())
    result = json.loads((out / "km.json").read_text())
    assert summary["status"] == "completed" and summary["result"] == result
    # what left each site: one message of the query's cells, after its one admitted release
    request = AnalysisRequest("km", 2.0, 1e-6, by="sex")
    query, noise = build_query(request, spec), planned_release(request).noise_multiplier
    keys = {".".join((p.CELL, *map(p.encode_name, c[:3]), c[3])) for c in query.cells()}
    for name in files:
        ledger = Ledger(ledgers / f"{name}.sqlite")
        [release_row], [message] = ledger.releases(), ledger.messages()
        assert release_row["mechanism"] == "analysis-km"
        assert (
            release_row["noise_multiplier"] == noise == summary["sites"][name]["noise_multiplier"]
        )
        assert message["kind"] == "analyze" and message["recorded_at"] >= release_row["recorded_at"]
        sent = {key for key in message["keys"] if not key.startswith(p.STATUS + "/")}
        assert sent == {f"{p.METRICS}/{k}" for k in keys | {p.EPSILON, p.DELTA, p.NOISE_MULTIPLIER}}
    # the curves: overall and per level, each near the exact estimate from the same records
    assert [c["level"] for c in result["curves"]] == ["overall", "female", "male"]
    frames = pd.concat(pd.read_csv(path) for path in files.values())
    frames = frames[frames[spec.study.consent] == 1]
    exact = _sksurv_at(frames["time"].to_numpy(float), frames["event"].to_numpy(bool), INTERVALS)
    overall = result["curves"][0]
    pairs = zip(overall["points"], exact, strict=True)
    shown = [(point, e) for point, e in pairs if point["survival"] is not None]
    assert len(shown) >= 4, overall["points"]
    for point, e in shown:  # the noise is OpenDP's, unseeded: within twice the CI's half-width
        low, high = point["survival_ci"]
        assert abs(point["survival"] - e) < high - low, (point, e)
    assert set(overall["horizons"]) == {"365", "1095", "1825"}
    assert "Kaplan-Meier, sex: female (N = " in printed and "(1460, 1825]" in printed
    html = (out / "km.html").read_text()
    assert html.count("<table>") == 3 + len(files) and html.count("<figure>") == 2
    for site_curve in result["site_curves"]:  # each site's own curve, near its own records'
        frame = pd.read_csv(files[site_curve["site"]])
        frame = frame[frame[spec.study.consent] == 1]
        time, event = frame["time"].to_numpy(float), frame["event"].to_numpy(bool)
        pairs = zip(site_curve["points"], _sksurv_at(time, event, INTERVALS), strict=True)
        for point, e in pairs:
            if point["survival"] is not None:
                low, high = point["survival_ci"]
                assert abs(point["survival"] - e) < high - low, (point, e)
