"""Site governance: policy, ledger (admission, hard stop, concurrency, crash), disclosure guard."""

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, MessageType, RecordDict
from test_site_node import global_arrays, scaling, send, server_identity  # noqa: F401

from federation import protocol as p
from federation.client.app import SiteSettings, make_client_app
from federation.scorestats import ScoreStats, group_stats
from federation.spec import load_spec
from privacy.accounting import GaussianRelease, compute_epsilon
from privacy.disclosure import is_disclosive
from privacy.guard import DisclosureError, Whitelist, check_message
from privacy.ledger import Budget, Ledger, RunPlan
from privacy.policy import PolicyError, load_policy, parse_policy

DELTA = 1e-5
RUN = GaussianRelease(1.2, 0.05, 400)  # one run: epsilon about 2.4 at 1e-5 (PRV)


def plan(run_id, releases=(RUN,)):
    return RunPlan(run_id, "study", "prv", DELTA, 3.0, tuple(releases))


def budget(lifetime, per_run=None):
    return Budget(lifetime, DELTA, "prv", per_run)


def test_policy_file_is_parsed_and_checked(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        "lifetime-epsilon = 4.0\nmax-epsilon-per-run = 3\nmax-delta = 1e-5\nmin-cell-count = 11\n"
        'allowed-studies = ["heart"]\nallowed-models = ["logistic"]\n'
    )
    policy = load_policy(path)
    assert policy.min_cell_count == 11 and policy.lifetime_delta == 1e-5 and policy.require_dp
    assert policy.refusal("heart", "logistic", True, 3.0, 1e-5) is None
    assert "max-epsilon-per-run 3" in policy.refusal("heart", "logistic", True, 5.0, 1e-5)
    assert "max-delta" in policy.refusal("heart", "logistic", True, 3.0, 1e-4)
    assert "study 'other'" in policy.refusal("other", "logistic", True, 3.0, 1e-5)
    assert "model 'mlp'" in policy.refusal("heart", "mlp", True, 3.0, 1e-5)
    assert "requires differential privacy" in policy.refusal("heart", "logistic", False, 3, 1e-5)
    with pytest.raises(PolicyError, match="unknown key 'lifetime-epsilom'"):
        parse_policy({"lifetime-epsilom": 4})
    with pytest.raises(PolicyError, match="max-delta must be a positive number"):
        parse_policy({"max-delta": 2})


def test_ledger_admits_until_the_lifetime_budget_and_composes_runs(tmp_path):
    ledger = Ledger(tmp_path / "site.sqlite")
    one = compute_epsilon([RUN], DELTA, "prv")
    two = compute_epsilon([GaussianRelease(1.2, 0.05, 800)], DELTA, "prv")
    assert one < two < 2 * one  # composition is tighter than the sum
    limit = (one + two) / 2  # room for one run, not for two
    assert ledger.admit(plan("a"), budget(limit)) is None
    # Run a is admitted but has spent nothing yet: its plan is reserved, so b cannot fit.
    assert "lifetime budget" in ledger.admit(plan("b"), budget(limit))
    for round_ in (1, 2):
        assert (
            ledger.record_release(
                "a", round_, "dp-sgd", GaussianRelease(1.2, 0.05, 200), budget(limit)
            )
            is None
        )
    # The plan is spent: a third round is the hard stop.
    assert "lifetime budget" in ledger.record_release(
        "a", 3, "dp-sgd", GaussianRelease(1.2, 0.05, 200), budget(limit)
    )
    assert ledger.lifetime_epsilon(DELTA, "prv") == pytest.approx(one)
    assert ledger.lifetime_epsilon(DELTA, "prv") <= limit
    assert [r["status"] for r in ledger.runs()] == ["admitted", "refused"]
    rows = ledger.releases()
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["lifetime_epsilon_after"] == pytest.approx(one)
    assert "max-epsilon-per-run" in ledger.record_release(
        "a", 3, "dp-sgd", GaussianRelease(1.2, 0.05, 1), budget(None, per_run=0.5)
    )


def test_concurrent_admissions_never_overspend(tmp_path):
    path = tmp_path / "site.sqlite"
    Ledger(path)
    limit = compute_epsilon([RUN], DELTA, "prv") * 1.2

    def admit(i):
        return Ledger(path).admit(plan(f"run-{i}"), budget(limit))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(admit, range(4)))
    assert sum(r is None for r in results) == 1  # exactly one run fits the budget


CRASH = """
import os, sys
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
import federation.client.app as node
from federation import protocol as p
from federation.spec import load_spec
from federation.client.app import SiteSettings, make_client_app
from test_site_node import global_arrays, scaling, send, server_identity  # noqa: F401

spec = load_spec(sys.argv[1]).with_overrides(training={"rounds": 3})
site = SiteSettings("crashy", Path(sys.argv[2]), spec, ledger=Path(sys.argv[3]))
app = make_client_app(lambda _c: site)
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
send(app, context, p.SETUP, RecordDict({p.CONFIG: ConfigRecord()}))
config = scaling(spec)
config[p.SERVER_ROUND] = 1
real = node.train_dp
node.train_dp = lambda *a, **k: os._exit(3)  # the process dies after the ledger recorded
send(app, context, MessageType.TRAIN, RecordDict({p.ARRAYS: global_arrays(spec), p.CONFIG: config}))
"""


def test_a_crash_between_recording_and_sending_leaves_the_ledger_conservative(cohort, tmp_path):
    files, spec_path = cohort
    ledger_path = tmp_path / "crashy.sqlite"
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(CRASH))
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(spec_path),
            str(next(iter(files.values()))),
            str(ledger_path),
        ],
        env={**__import__("os").environ, "PYTHONPATH": tests_dir},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    ledger = Ledger(ledger_path)
    rows = ledger.releases()
    # The standardization sums and round 1's DP-SGD steps are recorded, although round 1's
    # update never left the site: the ledger over-counts, never under-counts.
    assert [(r["round"], r["mechanism"]) for r in rows] == [(0, "gaussian-sums"), (1, "dp-sgd")]
    assert [m["kind"] for m in ledger.messages()] == ["setup"]  # round 1 was never sent
    assert rows[-1]["run_epsilon_after"] > rows[0]["run_epsilon_after"] > 0


@pytest.fixture()
def spec_and_file(cohort):
    files, spec_path = cohort
    return load_spec(spec_path).with_overrides(training={"rounds": 2}), next(iter(files.values()))


def node(site):
    context = Context(run_id=5, node_id=7, node_config={}, state=RecordDict(), run_config={})
    return make_client_app(lambda _context: site), context


def test_the_site_policy_wins_and_the_refusal_says_why(spec_and_file, tmp_path):
    spec, data = spec_and_file
    policy = parse_policy({"max-epsilon-per-run": 1.0})
    app, context = node(SiteSettings("strict", data, spec, policy=policy))
    reply = send(app, context, p.SETUP, RecordDict({p.CONFIG: ConfigRecord()})).content
    assert set(reply.keys()) == {p.STATUS}
    assert reply[p.STATUS][p.STATUS_STATE] == p.REFUSED
    assert "exceeds the site policy's max-epsilon-per-run 1" in reply[p.STATUS][p.STATUS_REASON]
    no_ledger = SiteSettings("x", data, spec, policy=parse_policy({"lifetime-epsilon": 9.0}))
    app, context = node(no_ledger)
    reply = send(app, context, p.SETUP, RecordDict({p.CONFIG: ConfigRecord()})).content
    assert "no ledger" in reply[p.STATUS][p.STATUS_REASON]


def test_the_node_records_before_it_sends_and_stops_at_the_plan(spec_and_file, tmp_path):
    spec, data = spec_and_file
    ledger_path = tmp_path / "site.sqlite"
    site = SiteSettings("urban", data, spec, parse_policy({"lifetime-epsilon": 3.5}), ledger_path)
    app, context = node(site)
    setup = send(app, context, p.SETUP, RecordDict({p.CONFIG: ConfigRecord()})).content
    assert setup[p.STATUS][p.STATUS_STATE] == p.OK
    config = scaling(spec)
    epsilons = []
    for server_round in (1, 2, 3):
        config[p.SERVER_ROUND] = server_round
        reply = send(
            app,
            context,
            MessageType.TRAIN,
            RecordDict({p.ARRAYS: global_arrays(spec), p.CONFIG: config}),
        ).content
        if server_round <= 2:
            epsilons.append(reply[p.METRICS][p.EPSILON])
    # A third round was not planned: the hard stop refuses it, with the reason.
    assert reply[p.STATUS][p.STATUS_STATE] == p.REFUSED
    assert "planned rounds are used up" in reply[p.STATUS][p.STATUS_REASON]
    ledger = Ledger(ledger_path)
    rows = ledger.releases()
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["run_epsilon_after"] for r in rows[1:]] == pytest.approx(epsilons, rel=1e-9)
    assert ledger.lifetime_epsilon(1e-5, "prv") == pytest.approx(epsilons[-1], rel=1e-6)
    audit = ledger.messages()
    assert [(m["kind"], m["status"]) for m in audit] == [
        ("setup", "ok"),
        ("train", "ok"),
        ("train", "ok"),
        ("train", "refused"),
    ]
    assert audit[1]["arrays"] == {k: list(v.shape) for k, v in global_arrays(spec).items()}
    assert "metrics/epsilon" in audit[1]["keys"]
    # A second run of the same study does not fit the lifetime budget of 3.5 (two such runs
    # compose to about 3.98 under PRV: less than the sum, more than the budget).
    app, context = node(site)
    again = send(app, context, p.SETUP, RecordDict({p.CONFIG: ConfigRecord()})).content
    assert again[p.STATUS][p.STATUS_STATE] == p.REFUSED
    assert "above its lifetime budget 3.5" in again[p.STATUS][p.STATUS_REASON]
    assert Ledger(ledger_path).lifetime_epsilon(1e-5, "prv") <= 3.5


WHITELIST = Whitelist({"metrics": "metrics", "arrays": "arrays"}, {"metrics": ("n", "x")}, ("n",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"metrics": ("metrics", {"n": 5})}, "count from 1 to 20"),
        ({"metrics": ("metrics", {"n": [0, 25, 20]})}, "count from 1 to 20"),
        ({"metrics": ("metrics", {"secret": 1.0})}, "not on the whitelist"),
        ({"other": ("config", {"n": 50})}, "not allowed"),
        ({"arrays": ("arrays", {"v": (3, 2)})}, "declared layers"),
        ({"arrays": ("arrays", {"w": (2, 3)})}, "has shape"),
    ],
)
def test_the_guard_stops_what_may_not_leave(content, message):
    with pytest.raises(DisclosureError, match=message):
        check_message(content, WHITELIST, 20, {"w": (3, 2)} if "arrays" in content else None)


def test_the_guard_passes_safe_and_noisy_values():
    check_message({"metrics": ("metrics", {"n": [0, 21], "x": 3.0})}, WHITELIST, 20)
    check_message({"metrics": ("metrics", {"n": 5.37})}, WHITELIST, 20)  # noisy, not a count


@pytest.mark.parametrize("n", [120, 700, 4000])
def test_coarsened_statistics_hold_no_small_count_and_keep_the_metrics(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x - 1)))).astype(int)
    p_ = 1 / (1 + np.exp(-(1.4 * x - 0.9)))
    stats = ScoreStats.released(y, p_, 20)
    fine = ScoreStats.from_scores(y, p_)
    assert ScoreStats.from_record(stats.to_record("s"), "s") == stats  # the server accepts it
    counts = [
        *stats.hist_pos,
        *stats.hist_neg,
        stats.tp,
        stats.fp,
        stats.tn,
        stats.fn,
        *stats.cal_count,
        *stats.cal_sum_y,
        *(stats.cal_count - stats.cal_sum_y),
    ]
    assert not any(is_disclosive(int(c), 20) for c in counts)
    assert (stats.n, stats.n_pos, stats.sum_sq_error) == (fine.n, fine.n_pos, fine.sum_sq_error)
    from federation.server.metrics import compute_metrics

    if n >= 700:  # enough records per class for fine coarse bins
        assert compute_metrics(stats)["auroc"] == pytest.approx(
            compute_metrics(fine)["auroc"], abs=0.01
        )
        assert (stats.tp, stats.fp) == (fine.tp, fine.fp)  # the threshold stays a cut


def test_a_site_with_few_events_releases_nothing_about_them():
    y = np.array([1] * 7 + [0] * 200)
    assert ScoreStats.released(y, np.linspace(0, 1, len(y)), 20) is None
    groups = {"g": np.array(["a"] * 107 + ["b"] * 100, dtype=object)}
    assert group_stats(y, np.linspace(0, 1, len(y)), groups, 20)["g"] == {"a": None, "b": None}
