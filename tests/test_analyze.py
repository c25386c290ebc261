"""Differentially private cohort statistics: the noise, what leaves a site, and `allfed analyze`."""

import json
import math
import re

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
from cli_helpers import invoke, run_allfed
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from wire import LocalGrid

from federation.client.app import make_client_app
from federation.client.site import SiteSettings
from federation.server.analysis import AnalysisRun, SiteAnswer, read_answer
from federation.wire import protocol as p
from federation.wire.protocol import encode_name
from federation.wire.queries import AnalysisRequest, build_query, planned_release
from federation.wire.spec import load_spec
from privacy.accounting import compute_epsilon
from privacy.ledger import Ledger
from privacy.noise import gaussian_release
from privacy.policy import parse_policy
from privacy.statistics import (
    COUNT,
    MISSING,
    PRESENT,
    SMALL_COUNT,
    SQUARES,
    SUM,
    TOTAL,
    Query,
    Variable,
    exact_cells,
    release,
)

AGE = Variable("age", bounds=(18.0, 90.0))
SMOKING = Variable("smoking", levels=("never", "current", MISSING))


def test_opendp_release_is_the_gaussian_the_accountants_record():
    noise = planned_release(AnalysisRequest("count", epsilon=1.0, delta=1e-6)).noise_multiplier
    measurement = dp.c.make_zCDP_to_approxDP(
        dp.m.make_gaussian(
            dp.vector_domain(dp.atom_domain(T=float, nan=False)),
            dp.l2_distance(T=float),
            scale=noise,
        )
    )
    opendp_epsilon = measurement.map(1.0).epsilon(1e-6)  # OpenDP's own zCDP conversion
    ours = compute_epsilon([planned_release(AnalysisRequest("count", 1.0, 1e-6))], 1e-6, "prv")
    assert ours <= 1.0 <= opendp_epsilon * 1.001  # PRV is tighter than the zCDP conversion
    rdp = rdp_privacy_accountant.RdpAccountant()
    rdp.compose(dp_event.GaussianDpEvent(noise))
    independent = rdp.get_epsilon(1e-6)
    assert ours <= independent <= opendp_epsilon * 1.01


def test_noise_has_the_planned_spread_on_every_cell():
    query = Query(strata=("a", "b"), variables=(SMOKING, AGE))
    sds = query.noise_sd(2.0)
    # the total has TOTAL_SHARE of rho, each variable an equal part of the rest
    assert sds[(TOTAL, TOTAL, COUNT)] == pytest.approx(2.0 / math.sqrt(0.25))
    assert sds[("age", PRESENT, SUM)] == pytest.approx(2.0 / math.sqrt(0.375) * math.sqrt(3) * 36)
    cells = query.cells()
    draws = gaussian_release(np.zeros(20_000), 1.0, 1.5)
    assert abs(draws.mean()) < 0.03 and draws.std() == pytest.approx(1.5, rel=0.03)
    exact = dict.fromkeys(cells, 1000.0)
    noisy = np.array([[release(query, exact, 2.0, 20)[c] for c in cells] for _ in range(200)])
    expected = np.array([sds[c[1:]] for c in cells])
    assert noisy.std(axis=0) == pytest.approx(expected, rel=0.2)


@pytest.mark.parametrize("overall", [False, True])
def test_one_record_moves_the_weighted_cells_by_at_most_one(overall):
    """The privacy claim itself: with every cell divided by its noise SD (noise multiplier 1),
    removing any one record moves the released vector by at most 1 in L2."""
    rng = np.random.default_rng(0)
    query = Query(("a", "b"), (SMOKING, AGE), overall=overall)
    sds = query.noise_sd(1.0)
    n = 50
    strata = rng.choice(["a", "b"], n)
    columns = {
        "age": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(0, 120, n)),  # past the bounds
        "smoking": rng.choice(np.array(SMOKING.levels, dtype=object), n),
    }
    full = exact_cells(query, strata, columns)
    assert set(full) == set(query.cells())
    assert (("(overall)", TOTAL, "(overall)", COUNT) in full) == overall
    assert sum(query.shares().values()) == pytest.approx(1.0)
    for i in range(n):
        keep = np.arange(n) != i
        fewer = exact_cells(query, strata[keep], {k: v[keep] for k, v in columns.items()})
        moved = math.sqrt(sum(((full[c] - fewer[c]) / sds[c[1:]]) ** 2 for c in full))
        assert moved <= 1.0 + 1e-9


def test_exact_cells_clip_to_the_bounds_and_count_missing():
    strata = ["a", "a", "b", "a"]
    columns = {
        "age": np.array([10.0, 100.0, 50.0, np.nan]),
        "smoking": np.array(["never", MISSING, "current", "never"], dtype=object),
    }
    cells = exact_cells(Query(("a", "b"), (SMOKING, AGE)), strata, columns)
    assert cells[("a", TOTAL, TOTAL, COUNT)] == 3
    assert cells[("a", "smoking", "never", COUNT)] == 2
    assert cells[("a", "smoking", MISSING, COUNT)] == 1
    assert cells[("a", "age", MISSING, COUNT)] == 1
    assert cells[("a", "age", PRESENT, SUM)] == pytest.approx((18 - 54) + (90 - 54))
    assert cells[("a", "age", PRESENT, SQUARES)] == pytest.approx(2 * 36**2)


def test_small_counts_and_their_sums_are_withheld_after_the_noise():
    query = Query(("a",), (AGE,))
    exact = {
        ("a", TOTAL, TOTAL, COUNT): 500.0,
        ("a", "age", MISSING, COUNT): 3.0,
        ("a", "age", PRESENT, COUNT): 5.0,
        ("a", "age", PRESENT, SUM): 10.0,
        ("a", "age", PRESENT, SQUARES): 100.0,
    }
    for _ in range(50):
        released = release(query, exact, 0.05, 20)
        assert released[("a", TOTAL, TOTAL, COUNT)] == pytest.approx(500, abs=2)
        assert all(v > 20 for c, v in released.items() if c[3] == COUNT)
        assert ("a", "age", PRESENT, SUM) not in released


def test_requests_the_spec_cannot_answer_are_named(cohort):
    spec = load_spec(cohort[1])
    for request, message in [
        (AnalysisRequest("mean", 1.0, 1e-6, columns=("sex",)), "not a numeric feature"),
        (AnalysisRequest("histogram", 1.0, 1e-6, columns=("age",), bins=(50, 40)), "edges"),
        (
            AnalysisRequest("crosstab", 1.0, 1e-6, columns=("nope", "sex")),
            "'nope' is not the label",
        ),
        (
            AnalysisRequest("crosstab", 1.0, 1e-6, columns=("smoking",)),
            r"^crosstab needs two columns: ROW COLUMN \(or ROW with --by COLUMN\); one column's "
            "levels alone are in table1$",
        ),
        (AnalysisRequest("count", -1.0, 1e-6), "--target-epsilon"),
        (AnalysisRequest("count", 1.0, 1e-6, by="outcome"), "not by the label"),
        (AnalysisRequest("mean", 1.0, 1e-6, columns=("age", "age")), "named twice"),
        (AnalysisRequest("count", 1.0, 1e-6, columns=("age",)), "takes no columns"),
        (AnalysisRequest("mean", 1.0, 1e-6, columns=("age",), bins=(1, 2)), "histogram only"),
    ]:
        with pytest.raises(Exception, match=message):
            build_query(request, spec)
    with pytest.raises(Exception, match="has no declared levels"):  # not even a valid spec
        spec.with_overrides(study={"group_levels": {}})


def ask(site, request, run_key="analysis-1"):
    app = make_client_app(lambda _context: site)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    config = ConfigRecord({p.ANALYSIS_REQUEST: request.to_json(), p.RUN_KEY: run_key})
    message = Message(RecordDict({p.CONFIG: config}), dst_node_id=7, message_type=p.ANALYZE)
    message.metadata.__dict__["_message_id"] = "test-message"
    return app(message, context).content


def test_what_leaves_a_site_is_whitelisted_noisy_and_in_its_ledger(cohort, tmp_path):
    files, spec_path = cohort
    spec = load_spec(spec_path)
    site = SiteSettings("urban", next(iter(files.values())), spec, tmp_path / "l.sqlite")
    request = AnalysisRequest("table1", epsilon=2.0, delta=1e-6, by="sex")
    content = ask(site, request)
    assert set(content.keys()) == {p.STATUS, p.METRICS}
    metrics = content[p.METRICS]
    cells = [k for k in metrics if k.startswith(p.CELL + ".")]
    assert set(metrics) - set(cells) == {p.EPSILON, p.DELTA, p.NOISE_MULTIPLIER}
    assert all(re.fullmatch(r"cell(\.[^.]+){3}\.(count|sum|sumsq)", k) for k in cells)
    counts = [metrics[k] for k in cells if k.endswith(".count")]
    assert counts and all(c > 20 and float(c).is_integer() for c in counts)
    assert metrics[p.EPSILON] == pytest.approx(2.0, rel=0.01) and metrics[p.EPSILON] <= 2.0
    [release_row] = Ledger(site.ledger).releases()
    assert release_row["mechanism"] == "analysis-table1"
    assert release_row["noise_multiplier"] == metrics[p.NOISE_MULTIPLIER]
    assert release_row["run_epsilon_after"] == pytest.approx(metrics[p.EPSILON])
    [message] = Ledger(site.ledger).messages()
    assert (
        message["kind"] == "analyze" and message["run_epsilon"] == release_row["run_epsilon_after"]
    )
    # the same question twice gives different answers (fresh noise) and spends twice
    again = ask(site, request, run_key="analysis-2")[p.METRICS]
    assert any(again[k] != metrics[k] for k in cells if k in again)
    assert len(Ledger(site.ledger).releases()) == 2


def test_the_site_policy_wins_over_the_request(cohort, tmp_path):
    files, spec_path = cohort
    spec = load_spec(spec_path)
    one = planned_release(AnalysisRequest("count", 1.0, 1e-6))
    two = compute_epsilon([one, one], 1e-5, "prv")  # composed, well under 1 + 1
    assert two < 1.6
    policy = parse_policy({"max-epsilon-per-run": 1.0, "lifetime-epsilon": two + 0.01})
    site = SiteSettings("urban", next(iter(files.values())), spec, tmp_path / "l.sqlite", policy)
    refused = ask(site, AnalysisRequest("count", epsilon=2.0, delta=1e-6))
    assert refused[p.STATUS][p.STATUS_STATE] == p.REFUSED
    assert "max-epsilon-per-run" in refused[p.STATUS][p.STATUS_REASON]
    for key in ("a", "b"):
        assert p.METRICS in ask(site, AnalysisRequest("count", 1.0, 1e-6), run_key=key)
    over = ask(site, AnalysisRequest("count", 1.0, 1e-6), run_key="c")
    assert over[p.STATUS][p.STATUS_STATE] == p.REFUSED
    assert "lifetime" in over[p.STATUS][p.STATUS_REASON]
    assert p.METRICS not in over
    ledger = Ledger(site.ledger)
    assert len(ledger.releases()) == 2
    assert ledger.lifetime_epsilon(1e-5, "prv") == pytest.approx(two)


def test_the_aggregator_rejects_answers_outside_the_query(cohort):
    spec = load_spec(cohort[1])
    request = AnalysisRequest("count", 1.0, 1e-6)
    query, noise = build_query(request, spec), planned_release(request).noise_multiplier
    total, stray = (
        ".".join((p.CELL, *map(encode_name, (stratum, TOTAL, TOTAL)), COUNT))
        for stratum in ("(all)", "x")
    )

    def read(noise_multiplier=noise, **cells):
        answer = SiteAnswer("node-1")
        content = RecordDict(
            {
                p.STATUS: ConfigRecord(
                    {p.STATUS_SITE: "a", p.STATUS_STATE: p.OK, p.STATUS_REASON: ""}
                ),
                p.METRICS: MetricRecord(
                    {p.EPSILON: 1.0, p.DELTA: 1e-6, p.NOISE_MULTIPLIER: noise_multiplier, **cells}
                ),
            }
        )
        read_answer(answer, content, query, noise)
        return answer

    good = read(**{total: 250})
    assert good.status == p.OK and good.cells == {("(all)", TOTAL, TOTAL, COUNT): 250.0}
    for answer, reason in [
        (read(**{total: 250, stray: 30}), "not in the query"),
        (read(**{total: 250.5}), "not a valid count"),
        (read(**{total: -30}), "not a valid count"),
        (read(noise_multiplier=noise / 2, **{total: 250}), "noise other than the request's"),
    ]:  # fmt: skip
        assert answer.status == p.FAILED and reason in answer.reason


@pytest.mark.slow
def test_table1_across_sites_releases_no_small_count_and_a_true_total(cohort, tmp_path):
    files, spec_path = cohort
    spec = load_spec(spec_path)
    small = tmp_path / "clinic.csv"  # a tiny site: its small cells are withheld
    pd.read_csv(next(iter(files.values()))).head(60).to_csv(small, index=False)
    strict = tmp_path / "strict.toml"
    strict.write_text("max-epsilon-per-run = 0.5\n")
    sites = [f"--site={name}={path}" for name, path in files.items()] + [f"--site=clinic={small}"]
    result = run_allfed(
        "analyze",
        "table1",
        f"--study={spec_path}",
        *sites,
        "--by=sex",
        "--target-epsilon=3",
        "--delta=1e-6",
        f"--out={tmp_path / 'out'}",
        f"--ledger-dir={tmp_path / 'ledgers'}",
        f"--policy={next(iter(files))}={strict}",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert json.loads(result.stdout) == summary  # --json: the analysis on stdout, nothing else
    table = json.loads((tmp_path / "out" / "table1.json").read_text())
    refused = next(iter(files))
    assert summary["sites"][refused]["status"] == "refused"
    assert "max-epsilon-per-run" in summary["sites"][refused]["reason"]
    assert f"site {refused} refused" in result.stderr

    def released_counts(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("count", "total") and isinstance(value, int | float):
                    yield value
                yield from released_counts(value)
        elif isinstance(node, list):
            for item in node:
                yield from released_counts(item)

    counts = list(released_counts(table)) + list(table["sites"].values())
    assert counts and not [c for c in counts if 1 <= c <= 20]
    answered = [n for n in summary["sites"] if n != refused]
    true_total = sum(
        (pd.read_csv(files.get(n, small))[spec.study.consent] == 1).sum() for n in answered
    )
    assert abs(table["total"] - true_total) <= 0.05 * true_total
    for name in answered:
        [row] = Ledger(tmp_path / "ledgers" / f"{name}.sqlite").releases()
        assert row["run_epsilon_after"] == pytest.approx(summary["sites"][name]["epsilon"])
    assert (
        not (tmp_path / "ledgers" / f"{refused}.sqlite").exists()
        or not Ledger(tmp_path / "ledgers" / f"{refused}.sqlite").releases()
    )
    # a table that reads true: strata add to the total, a variable's percentages to 100 in
    # every column where all are shown, and nothing is shown without its CI or its reason
    assert sum(table["groups"].values()) == table["total"] == sum(table["sites"].values())
    full = 0
    for scope in ("overall", "sites", "groups"):
        for key in [None] if scope == "overall" else table[scope]:
            by_variable = {}
            for row in table["rows"]:
                entry = row if key is None else row[scope][key]
                by_variable.setdefault(row["variable"], []).append(entry)
                for field in ("count", "percent", "mean", "sd"):
                    if field not in entry:
                        continue
                    if entry[field] is None:  # withheld or n/a, never both
                        filed = [k for k in ("withheld_reason", "na_reason") if field in entry[k]]
                        assert len(filed) == 1 and entry[filed[0]][field], (entry, field)
                    else:
                        assert entry[f"{field}_ci"][0] <= entry[field] <= entry[f"{field}_ci"][1]
            for entries in by_variable.values():
                percents = [e["percent"] for e in entries]
                if None not in percents:
                    full += 1
                    assert sum(percents) == pytest.approx(100.0, abs=1e-6)
    assert full >= len(by_variable) * 3  # at least overall and both strata
    for row in table["rows"]:
        groups = [e["count"] for e in row["groups"].values()]
        if None not in groups and row["count"] is not None:
            assert sum(groups) == row["count"]
    html = (tmp_path / "out" / "table1.html").read_text()
    assert "Overall (N = " in html and "withheld" in html and "sex: female (N = " in html
    for row in table["rows"]:  # each n/a on the page comes with its reason
        reasons = row["withheld_reason"] | row["na_reason"]
        shown = ("mean", "sd") if "mean" in row else ("count",) if "count" in reasons else (
            "count", "percent")  # fmt: skip
        for reason in (reasons[f] for f in shown if f in reasons):
            if reason != SMALL_COUNT:
                assert reason.replace("'", "&#39;") in html


def test_cli_mistakes_are_one_line(cohort, tmp_path, capsys):
    files, spec_path = cohort
    name, path = next(iter(files.items()))
    common = [f"--study={spec_path}", "--target-epsilon=1", f"--out={tmp_path}"]
    for args, line in [
        (
            ["mean", "sex", f"--site={name}={path}"],
            "'sex' is not a numeric feature",
        ),
        (
            ["histogram", "age", "--bins=a,b", f"--site={name}={path}"],
            "--bins 'a,b': expected numbers separated by commas",
        ),
        (
            ["count", f"--site={name}={path}", "--superlink=somewhere"],
            "--superlink asks the deployed sites, whose nodes hold their own data, policy and "
            "ledger: leave out --site, --policy and --ledger-dir",
        ),
        ([], "name the sites: --site NAME=PATH (or --superlink for deployment)"),
    ]:
        assert invoke("analyze", *(args or ["count"]), *common) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and line in err and "\n" not in err, err


class _Faulty(LocalGrid):
    """The sites in-process, but node 2's reply is lost and node 3 crashes (the error reply
    Flower sends for a ClientApp that raised)."""

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for reply, message in zip(super().send_and_receive(messages), messages, strict=True):
            node = message.metadata.dst_node_id
            if node == 3:
                crash = "Exception ... Message: the site's disk is gone\n"
                reply = Message(Error(code=0, reason=crash), reply_to=message)
            if node != 2:
                replies.append(reply)
        return replies


def test_an_analysis_names_each_site_that_refused_crashed_or_never_answered(cohort, tmp_path):
    """The analysis talks to the sites through the training run's exchange: a site out of it is
    named with the reason a training run gives, and the table pools the others."""
    files, spec_path = cohort
    spec = load_spec(spec_path)
    (first, data), (second, other) = list(files.items())[:2]
    strict = parse_policy({"max-epsilon-per-run": 0.5})
    sites = [
        SiteSettings(first, data, spec, tmp_path / "1.sqlite", strict),
        SiteSettings("lost", data, spec, tmp_path / "2.sqlite"),
        SiteSettings("crashed", data, spec, tmp_path / "3.sqlite"),
        SiteSettings(second, other, spec, tmp_path / "4.sqlite"),
    ]
    request = AnalysisRequest("count", 1.0, 1e-6)
    summary = AnalysisRun(_Faulty(sites, 1), spec, request, tmp_path / "out").run()
    assert summary["status"] == "completed"
    statuses = {name: (s["status"], s["reason"]) for name, s in summary["sites"].items()}
    assert statuses[first][0] == p.REFUSED and "max-epsilon-per-run" in statuses[first][1]
    assert statuses["node-2"] == (p.FAILED, "no reply within 600 s")
    assert statuses["node-3"] == (p.FAILED, "node error: the site's disk is gone")
    assert statuses[second] == (p.OK, None) and len(statuses) == 4
    assert summary["sites"][second]["epsilon"] == pytest.approx(1.0, rel=0.01)
    assert list(summary["result"]["sites"]) == [second]
    assert not Ledger(tmp_path / "1.sqlite").releases()  # the refusing site released nothing
