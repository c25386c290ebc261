"""The aggregator's post-processing of DP cohort statistics, on its own: no Flower, no files.

The sites' releases are built here from records the tests hold, with seeded Gaussian noise of
exactly the spread the query plans (``Query.noise_sd``), rounded and withheld as a site does
(``privacy.statistics.release`` draws OpenDP's unseeded noise; one test runs through it too).
"""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from federation.server.pooling import LEFT_OUT, pooled_tables
from federation.server.tables import render_table
from federation.wire.queries import AnalysisRequest, build_query, planned_release
from federation.wire.spec import parse_spec
from privacy.consistency import consistent_counts, constraints
from privacy.statistics import (
    COUNT,
    MAX_CI_SHARE,
    MISSING,
    OVERALL_CELL,
    PRESENT,
    SMALL_COUNT,
    SQUARES,
    SUM,
    TOTAL,
    WITHHELD_REASONS,
    Cell,
    PooledCount,
    Query,
    Variable,
    exact_cells,
    pool_count,
    pool_mean,
    pool_percentages,
    release,
)

SPEC = parse_spec(
    """
[study]
name = "tables <test>"
label = "outcome"
[features]
numeric = ["sbp", "age"]
categorical = { sex = ["female", "male"], smoking = ["never", "former", "current"] }
missing = { age = "impute", smoking = "impute" }
bounds = { sbp = [80, 220], age = [18, 90] }
"""
)
SITES = {"north": 700, "south": 450, "east": 300}


def records(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One site's records: each one's stratum (sex) and its columns."""
    sex = rng.choice(np.array(["female", "male"], dtype=object), n, p=[0.55, 0.45])
    smoking = rng.choice(
        np.array(["never", "former", "current", MISSING], dtype=object), n, p=[0.6, 0.2, 0.17, 0.03]
    )
    age = rng.normal(55, 14, n)
    age[rng.random(n) < 0.04] = np.nan
    columns = {
        "sex": sex,
        "outcome": rng.choice(np.array(["0", "1"], dtype=object), n, p=[0.8, 0.2]),
        "smoking": smoking,
        "sbp": rng.normal(130, 16, n),
        "age": age,
    }
    return sex, columns


def noisy(
    query: Query,
    exact: dict[Cell, float],
    noise_multiplier: float,
    rng: np.random.Generator,
    min_cell: int = 20,
) -> dict[Cell, float]:
    """What a site releases, with seeded noise: counts rounded, small counts withheld, sums
    withheld with their count."""
    sds = query.noise_sd(noise_multiplier)
    released = {}
    for cell in query.cells():
        value = exact[cell] + rng.normal(0, sds[cell[1:]])
        if cell[3] == COUNT:
            value = float(round(value))
            if value <= min_cell:
                continue
        released[cell] = value
    for cell in query.cells():
        if cell[3] != COUNT and (*cell[:3], COUNT) not in released:
            released.pop(cell, None)
    return released


def table(epsilon: float, seed: int, by: str | None = "sex", sites=SITES):
    request = AnalysisRequest("table1", epsilon, 1e-6, by=by)
    query = build_query(request, SPEC)
    noise = planned_release(request).noise_multiplier
    rng = np.random.default_rng(seed)
    exact, answers = {}, {}
    for name, n in sites.items():
        strata, columns = records(n, rng)
        if by is None:
            strata = np.full(n, "(all)", dtype=object)
        exact[name] = exact_cells(query, strata, columns)
        answers[name] = noisy(query, exact[name], noise, rng)
    return pooled_tables(SPEC, request, query, answers, noise), query, exact


def columns_of(result):
    """(scope, key, entry of a row) for every column."""
    yield "overall", None, lambda row: row
    for scope in ("sites", "groups"):
        for key in result[scope]:
            yield scope, key, lambda row, s=scope, k=key: row[s][k]


# -- the projection ----------------------------------------------------------------------------


def test_the_projection_keeps_every_constraint_and_is_the_nonnegative_optimum():
    """Small strata and levels at a large noise: the plain projection goes negative, and the
    rule must then find the exact non-negative least-squares counts (checked against SLSQP)."""
    rng = np.random.default_rng(1)
    smoking = Variable("smoking", levels=("never", "former", "current", MISSING))
    race = Variable("race", levels=("a", "b", "c", "d", "e"))
    query = Query(("x", "y", "z"), (smoking, race, Variable("age", bounds=(18.0, 90.0))), True)
    cells, matrix = constraints(query)
    went_negative = 0
    for _ in range(40):
        n = int(rng.integers(30, 200))
        strata = rng.choice(np.array(["x", "y", "z"], dtype=object), n, p=[0.7, 0.2, 0.1])
        shares = {"smoking": [0.7, 0.15, 0.1, 0.05], "race": [0.6, 0.2, 0.1, 0.07, 0.03]}
        columns = {
            v.name: rng.choice(np.array(v.levels, dtype=object), n, p=shares[v.name])
            for v in (smoking, race)
        }
        columns["age"] = rng.uniform(18, 90, n)
        noise = float(rng.choice([0.7, 2.0, 5.0]))
        sds = query.noise_sd(noise)
        released = noisy(query, exact_cells(query, strata, columns), noise, rng)
        counts = consistent_counts(query, released, noise)
        assert list(counts.cells) == cells
        assert np.abs(matrix @ counts.estimate).max() < 1e-6
        assert counts.estimate.min() >= 0
        seen = np.array([c in released for c in cells])
        y = np.array([released.get(c, 0.0) for c in cells])
        w = seen / np.array([sds[c[1:]] ** 2 + 1 / 12 for c in cells])

        def objective(x, w=w, y=y):
            return 0.5 * np.sum(w * (x - y) ** 2)

        went_negative += bool((counts.estimate == 0).any())  # a count held at 0
        best = minimize(
            objective,
            counts.estimate,
            jac=lambda x, w=w, y=y: w * (x - y),
            constraints=[{"type": "eq", "fun": lambda x: matrix @ x, "jac": lambda x: matrix}],
            bounds=[(0, None)] * len(cells),
            method="SLSQP",
            options={"ftol": 1e-12, "maxiter": 500},
        )
        assert objective(counts.estimate) <= best.fun * (1 + 1e-6) + 1e-9
    assert went_negative >= 10  # the case the non-negativity step exists for arose


def test_the_projection_is_unbiased_with_the_covariance_it_reports():
    """Large cells (nothing withheld): over seeded releases the estimates centre on the truth
    and spread as their reported covariance says, less than the raw noise."""
    rng = np.random.default_rng(11)
    request = AnalysisRequest("table1", 1.0, 1e-6, by="sex")
    query = build_query(request, SPEC)
    noise = planned_release(request).noise_multiplier
    strata, columns = records(4000, rng)
    exact = exact_cells(query, strata, columns)
    draws = 300
    estimates = []
    for _ in range(draws):
        counts = consistent_counts(query, noisy(query, exact, noise, rng), noise)
        estimates.append(counts.estimate)
    estimates = np.array(estimates)
    truth = np.array([exact[c] for c in counts.cells])
    reported = np.sqrt(np.diag(counts.covariance))
    raw = np.array([query.noise_sd(noise)[c[1:]] for c in counts.cells])
    assert np.all(np.abs(estimates.mean(axis=0) - truth) < 4 * reported / math.sqrt(draws))
    # the sample SD of 300 draws is within 15% of the true SD with probability > 0.99
    assert estimates.std(axis=0, ddof=1) == pytest.approx(reported, rel=0.15)
    total = counts.cells.index(OVERALL_CELL)
    assert reported[total] < 0.8 * raw[total]  # the strata and the levels inform the total


def test_a_withheld_cell_is_estimated_from_its_totals_and_an_unknown_split_is_bounded():
    query = Query(("a",), (Variable("smoking", levels=("never", "former", "current", MISSING)),))
    truth = {"never": 400, "former": 15, "current": 9, MISSING: 180}
    released = {("a", TOTAL, TOTAL, COUNT): 604.0, ("a", "smoking", "never", COUNT): 400.0}
    released[("a", "smoking", MISSING, COUNT)] = 180.0
    counts = consistent_counts(query, released, 1.0)
    former, current = (("a", "smoking", lvl, COUNT) for lvl in ("former", "current"))
    # neither is 0: together they are what the total leaves over, split evenly
    assert counts.value([former, current]) == pytest.approx(truth["former"] + truth["current"])
    assert counts.value([former]) == pytest.approx(12.0)
    assert counts.identifies([former, current]) and not counts.identifies([former])
    assert counts.unidentified_variance([former]) == pytest.approx(24.0**2 / 12)
    assert counts.unidentified_variance([former, current]) == 0.0
    # one withheld level is worked out exactly from the total and the other levels
    released[former] = 15.0
    counts = consistent_counts(query, released, 1.0)
    assert counts.identifies([current]) and counts.value([current]) == pytest.approx(9.0)


def test_a_site_that_withheld_everything_is_left_out_and_named():
    request = AnalysisRequest("table1", 1.0, 1e-6)
    query = build_query(request, SPEC)
    noise = planned_release(request).noise_multiplier
    rng = np.random.default_rng(2)
    _, columns = records(900, rng)
    exact = exact_cells(query, np.full(900, "(all)", dtype=object), columns)
    answers = {"big": noisy(query, exact, noise, rng), "tiny": {}}
    result = pooled_tables(SPEC, request, query, answers, noise)
    assert result["left_out"] == {"tiny": LEFT_OUT}
    assert result["sites"]["tiny"] is None and result["total"] == result["sites"]["big"]
    assert "tiny" not in result["rows"][0]["sites"]
    assert "Site tiny is left out" in render_table(result)


# -- the pooled table --------------------------------------------------------------------------


@pytest.mark.parametrize(("epsilon", "seed"), [(0.3, 1), (1.0, 2), (3.0, 3)])
def test_percentages_add_to_100_and_strata_to_the_total(epsilon, seed):
    result, query, _ = table(epsilon, seed)
    assert sum(result["groups"].values()) == result["total"]
    assert sum(result["sites"].values()) == result["total"]
    full = 0
    for scope, key, entry_of in columns_of(result):
        total = result["total"] if scope == "overall" else result[scope][key]
        for variable in query.variables:
            entries = [entry_of(row) for row in result["rows"] if row["variable"] == variable.name]
            percents = [e["percent"] for e in entries]
            counts = [e["count"] for e in entries]
            if None not in percents:
                full += 1
                assert sum(percents) == pytest.approx(100.0, abs=1e-9)
            else:
                assert sum(p for p in percents if p is not None) <= 100.0 + 1e-9
                na = [e for e in entries if e["percent"] is None]
                assert all(
                    e["withheld_reason"].get("percent") or e["na_reason"].get("percent") for e in na
                )
            if None not in counts:
                assert sum(counts) == total  # levels add to their column's total
    assert full >= len(query.variables) * (1 + len(result["groups"]))
    for row in result["rows"]:  # every stratum shown: the strata add to the overall count
        groups = [e["count"] for e in row["groups"].values()]
        if None not in groups and row["count"] is not None:
            assert sum(groups) == row["count"]


@pytest.mark.parametrize(("epsilon", "seed"), [(0.3, 4), (1.0, 5), (8.0, 6)])
def test_every_value_carries_its_uncertainty_or_why_it_is_not_shown(epsilon, seed):
    result, query, _ = table(epsilon, seed)
    numeric = {v.name: v for v in query.variables if v.numeric}
    counts = [result["total"], *result["sites"].values(), *result["groups"].values()]
    for _, _, entry_of in columns_of(result):
        for row in result["rows"]:
            entry = entry_of(row)
            assert not set(entry["withheld_reason"]) & set(entry["na_reason"])  # one meaning
            reasons = entry["withheld_reason"] | entry["na_reason"]
            counts.append(entry["count"])
            fields = ["count", "percent"]
            if row["level"] == "mean (SD)":
                fields += ["mean", "sd"]
            for field in fields:
                if entry[field] is None:
                    assert reasons.get(field), (row, field)
                    assert entry.get(f"{field}_ci") is None  # the number stays out
                    continue
                low, high = entry[f"{field}_ci"]
                assert low <= entry[field] <= high
                if field == "percent":
                    assert high - low <= 100 * MAX_CI_SHARE + 0.2
                if field in ("mean", "sd"):
                    bottom, top = numeric[row["variable"]].bounds
                    span = (top - bottom) if field == "mean" else (top - bottom) / 2
                    assert high - low <= MAX_CI_SHARE * span + 1e-3
            if "sd" in fields and entry["sd"] is None:
                assert entry["variance"] is None
    assert not [c for c in counts if c is not None and 1 <= c <= 20]  # dissemination rule


def test_strata_of_a_count_add_to_the_total():
    request = AnalysisRequest("count", 0.5, 1e-6, by="smoking")
    query = build_query(request, SPEC)
    noise = planned_release(request).noise_multiplier
    rng = np.random.default_rng(8)
    answers = {}
    for name, n in SITES.items():
        _, columns = records(n, rng)
        exact = exact_cells(query, columns["smoking"], columns)
        answers[name] = noisy(query, exact, noise, rng)
    result = pooled_tables(SPEC, request, query, answers, noise)
    counts = [row["count"] for row in result["rows"]]
    assert [row["level"] for row in result["rows"]] == list(query.strata)
    if None not in counts:
        assert sum(counts) == result["total"]
        assert sum(row["percent"] for row in result["rows"]) == pytest.approx(100.0)


def test_count_cis_cover_the_truth_at_their_level():
    """Coverage of every column's count CIs against the exact counts, seeded."""
    covered, shown = 0, 0
    for seed in range(10):
        result, query, exact = table(1.0, 100 + seed, sites={"a": 500, "b": 300})
        for scope, key, entry_of in columns_of(result):
            parts = [
                (n, s)
                for n in exact
                for s in query.strata
                if scope == "overall" or key == {"sites": n, "groups": s}[scope]
            ]
            for row in result["rows"]:
                level = PRESENT if row["level"] == "mean (SD)" else row["level"]
                truth = sum(exact[n][(s, row["variable"], level, COUNT)] for n, s in parts)
                entry = entry_of(row)
                if entry["count"] is not None:
                    shown += 1
                    low, high = entry["count_ci"]
                    covered += low - 0.5 <= truth <= high + 0.5
    assert shown > 300
    assert 0.92 <= covered / shown <= 0.98


# -- the n/a rule ------------------------------------------------------------------------------


def test_the_sd_the_noise_swamps_is_never_printed():
    """What users saw: SBP's noisy sum of squares left a variance of 0.0225 (SD 0.15, truth
    about 16) at epsilon 1. The SD is n/a with its reason, in the JSON and on the page."""
    request = AnalysisRequest("table1", 1.0, 1e-6, by="sex")
    query = build_query(request, SPEC)
    noise = planned_release(request).noise_multiplier
    rng = np.random.default_rng(9)
    answers = {}
    for name, n in SITES.items():
        strata, columns = records(n, rng)
        answers[name] = noisy(query, exact_cells(query, strata, columns), noise, rng)
    cells = answers["north"]
    key = ("female", "sbp", PRESENT)
    n, total = cells[(*key, COUNT)], cells[(*key, SUM)]
    cells[(*key, SQUARES)] = total**2 / n + 0.15**2 * (n - 1)  # variance 0.0225
    result = pooled_tables(SPEC, request, query, answers, noise)
    [row] = [r for r in result["rows"] if r["variable"] == "sbp"]
    entry = row["sites"]["north"]
    assert entry["sd"] is None and entry["sd_ci"] is None and entry["variance"] is None
    assert "noise swamps the spread" in entry["na_reason"]["sd"]
    assert entry["mean"] is not None  # the mean is still known
    html = render_table(result)
    sbp = html[html.index("<td>sbp</td>") :]
    sbp = sbp[: sbp.index("</tr>")].split("<td")[3:]  # the cells: overall, then the sites
    north = sbp[1 + list(result["sites"]).index("north")]
    assert f"{entry['mean']:.1f} (n/a)<sup>" in north
    assert "SD: the 95% CI of the variance reaches 0: the noise swamps the spread" in html


def test_a_wide_bounded_column_at_small_epsilon_and_few_records_is_na():
    wide = parse_spec(SPEC_TEXT_WIDE)
    request = AnalysisRequest("mean", 0.2, 1e-6, columns=("sbp",))
    query = build_query(request, wide)
    noise = planned_release(request).noise_multiplier
    rng = np.random.default_rng(10)
    answers = {}
    for name in ("a", "b"):
        _, columns = records(80, rng)
        exact = exact_cells(query, np.full(80, "(all)", dtype=object), columns)
        answers[name] = noisy(query, exact, noise, rng, min_cell=0)
    result = pooled_tables(wide, request, query, answers, noise)
    [row] = result["rows"]
    for entry in (row, *row["sites"].values()):
        assert entry["mean"] is None and entry["mean_ci"] is None and entry["sum"] is None
        assert "of the declared range [0, 10000]" in entry["na_reason"]["mean"]
        assert entry["sd"] is None and entry["na_reason"]["sd"] and not entry["withheld_reason"]
    html = render_table(result)
    assert html.count(">n/a") == 3 and "mean: its 95% CI spans more than 50%" in html


SPEC_TEXT_WIDE = """
[study]
name = "wide"
label = "outcome"
[features]
numeric = ["sbp"]
bounds = { sbp = [0, 10000] }
"""


def test_pooled_statistics_recover_the_truth_with_little_noise():
    values = np.random.default_rng(0).normal(50, 10, 5000).clip(18, 90)
    age = Variable("age", bounds=(18.0, 90.0))
    centred = values - age.center
    pooled = pool_mean(age, (len(values), 1e-4), (centred.sum(), 1e-4), ((centred**2).sum(), 1e-4))
    assert pooled.mean == pytest.approx(values.mean(), abs=1e-6)
    assert pooled.sd == pytest.approx(values.std(ddof=1), rel=1e-6)
    assert pooled.mean_ci[0] < values.mean() < pooled.mean_ci[1]
    assert pooled.sd_ci[0] < values.std(ddof=1) < pooled.sd_ci[1]
    released = pooled.as_dict()
    assert released["sum"] == pytest.approx(values.sum(), rel=1e-6)
    assert released["variance"] == pytest.approx(values.var(ddof=1), rel=1e-3)
    assert pooled.reasons == {}


def test_percentages_are_rounded_to_add_to_exactly_100():
    thirds = [pool_count(100, 4.0, 0, 300.0) for _ in range(3)]
    total = pool_count(300, 9.0, 0)
    assert pool_percentages(thirds, total, [1e-6] * 3).percents == [33.4, 33.3, 33.3]
    small = pool_count(12, 4.0, 0, 300.0)
    assert small.count is None and small.reason == SMALL_COUNT
    shares = pool_percentages([*thirds[:2], small], total, [1e-6] * 3)
    assert shares.percents == [33.3, 33.3, None] and shares.reason is None
    unclear = pool_percentages(thirds, PooledCount(300, 9.0, (280, 320), 0), [0.05] * 3)
    assert unclear.percents == [None] * 3 and "percentage points" in unclear.reason


def test_the_real_release_pools_within_its_noise():
    """The site's own OpenDP release (unseeded): the pooled total within 5 noise SEs."""
    request = AnalysisRequest("table1", 1.0, 1e-6, by="sex")
    query = build_query(request, SPEC)
    noise = planned_release(request).noise_multiplier
    rng = np.random.default_rng(12)
    answers, truth = {}, 0
    for name, n in SITES.items():
        strata, columns = records(n, rng)
        answers[name] = release(query, exact_cells(query, strata, columns), noise, 20)
        truth += n
    result = pooled_tables(SPEC, request, query, answers, noise)
    assert abs(result["total"] - truth) <= 5 * result["total_se"]
    assert sum(result["groups"].values()) == result["total"]


def test_the_page_escapes_what_it_shows():
    """Every value the page shows is escaped by the template engine: names and levels come from
    the spec and site names from the command line, and a page's JSON can be edited."""
    result, _, _ = table(1.0, 13)
    script = "<script>alert(1)</script>"
    result["sites"] = {f"{name}{script}": n for name, n in result["sites"].items()}
    for row in result["rows"]:
        row["sites"] = {f"{name}{script}": entry for name, entry in row["sites"].items()}
    result["totals"]["sites"] = {f"{k}{script}": v for k, v in result["totals"]["sites"].items()}
    result["rows"][0]["variable"] += script
    result["rows"][0]["level"] += script
    result["rows"][0]["na_reason"]["count"] = f"too uncertain{script}"
    result["by"] += script
    result["left_out"] = {f"clinic{script}": f"every count withheld{script}"}
    html = render_table(result)
    assert "tables &lt;test&gt;" in html and "tables <test>" not in html
    assert "<script" not in html
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    # the sites' headers, the strata's, the row's variable and level, its note, the left-out line
    assert html.count(escaped) == len(result["sites"]) + len(result["groups"]) + 2 + 1 + 2
    assert 'font-family: -apple-system, "Segoe UI"' in html  # the stylesheet as written


def _page_cells(html: str, variable: str, level: str) -> list[str]:
    """The value cells (overall, the sites, the strata) of one row of the page."""
    row = html[html.index(f"<tr><td>{variable}</td><td>{level}</td>") :]
    return [cell.strip() for cell in row[: row.index("</tr>")].split("<td")[3:]]


def test_withheld_and_na_are_two_keys_read_apart_by_the_page_and_the_command_line():
    """Withheld (the dissemination rule: a count from 1 to 20, or what rests on one) and n/a
    (released, but too uncertain) each have their own key, as in the run summary."""
    from federation.cli_analyze import _value

    result, _, _ = table(1.0, 5)
    north = {(row["variable"], row["level"]): row["sites"]["north"] for row in result["rows"]}
    small = north[("smoking", MISSING)]
    assert small["count"] is None and small["na_reason"] == {}
    assert small["withheld_reason"] == {"count": SMALL_COUNT, "percent": SMALL_COUNT}
    swamped = north[("sbp", "mean (SD)")]
    assert swamped["sd"] is None and swamped["mean"] is not None
    assert swamped["withheld_reason"] == {}
    assert swamped["na_reason"] == {
        "sd": "the 95% CI of the variance reaches 0: the noise swamps the spread"
    }
    for _, _, entry_of in columns_of(result):
        for row in result["rows"]:
            entry = entry_of(row)
            assert set(entry["withheld_reason"].values()) <= WITHHELD_REASONS
            assert not set(entry["na_reason"].values()) & WITHHELD_REASONS

    html = render_table(result)
    column = 1 + list(result["sites"]).index("north")
    assert _page_cells(html, "smoking", MISSING)[column] == 'class="num withheld">withheld</td>'
    assert f"{swamped['mean']:.1f} (n/a)<sup>" in _page_cells(html, "sbp", "mean (SD)")[column]
    assert _value(small) == "withheld"
    assert _value(swamped) == f"{swamped['mean']:.2f} (n/a)"

    uncertain, _, _ = table(0.3, 4)
    [east] = [
        row["sites"]["east"]
        for row in uncertain["rows"]
        if row["variable"] == "outcome" and row["level"] == "1"
    ]
    assert east["count"] is None and east["withheld_reason"] == {}
    assert east["na_reason"]["count"] == "its 95% CI spans more than 50% of its column's total"
    assert _value(east) == "n/a"
    cell = _page_cells(render_table(uncertain), "outcome", "1")[
        1 + list(uncertain["sites"]).index("east")
    ]
    assert cell.startswith('class="num">n/a<sup>')
