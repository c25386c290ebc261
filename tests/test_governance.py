"""Site governance: policy, ledger (partitions, admission, the plan it enforces, hard stop,
concurrency, crash, migration), disclosure guard."""

import os
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from wire import node_context, reason_of, setup, state_of, train

from federation.wire import protocol as p
from federation.wire.spec import load_spec
from privacy.accounting import GaussianRelease, compute_epsilon
from privacy.guard import DisclosureError, Whitelist, check_message
from privacy.ledger import ALL, TEST, TRAIN, Budget, Ledger, LedgerError, PlannedRelease, RunPlan
from privacy.policy import PolicyError, load_policy, parse_policy

DELTA = 1e-5
RUN = GaussianRelease(1.2, 0.05, 400)  # one run: epsilon about 2.4 at 1e-5 (PRV)
EVAL = GaussianRelease(2.0, 1.0, 1)


ONE_RUN = (PlannedRelease("dp-sgd", TRAIN, RUN),)
ROUND = GaussianRelease(1.2, 0.05, 200)


def plan(run_id, releases=ONE_RUN):
    return RunPlan(run_id, "study", "prv", DELTA, 3.0, tuple(releases))


def budget(lifetime, per_run=None, evaluation=None):
    return Budget(lifetime, DELTA, "prv", per_run, evaluation)


def step(release=ROUND, partition=TRAIN, mechanism="dp-sgd"):
    return PlannedRelease(mechanism, partition, release)


def test_policy_file_is_parsed_and_checked(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        "lifetime-epsilon = 4.0\nmax-epsilon-per-run = 3\nmax-delta = 1e-5\nmin-cell-count = 11\n"
        'allowed-studies = ["heart"]\nallowed-models = ["logistic"]\ntest-fraction = 0.25\n'
        'record-id-column = "pid"\nmax-evaluation-epsilon-per-run = 2.0\n'
    )
    policy = load_policy(path)
    assert policy.min_cell_count == 11 and policy.lifetime_delta == 1e-5 and policy.require_dp
    assert (policy.test_fraction, policy.record_id_column, policy.evaluation_cap) == (
        0.25,
        "pid",
        2.0,
    )
    assert policy.refusal("heart", "logistic", True, 3.0, 1e-5, 2.0) is None
    checks = {
        ("heart", "logistic", True, 5.0, 1e-5, 2.0): (
            "epsilon-above-policy",
            "max-epsilon-per-run",
        ),
        ("heart", "logistic", True, 3.0, 1e-5, 2.5): (
            "epsilon-above-policy",
            "max-evaluation-epsilon-per-run",
        ),
        ("heart", "logistic", True, 3.0, 1e-4, 2.0): ("delta-above-policy", "max-delta"),
        ("other", "logistic", True, 3.0, 1e-5, 2.0): ("study-not-allowed", "allowed-studies"),
        ("heart", "mlp", True, 3.0, 1e-5, 2.0): ("model-not-allowed", "allowed-models"),
        ("heart", "logistic", False, 3.0, 1e-5, 2.0): ("dp-required", "require-dp"),
    }
    for args, (check, key) in checks.items():
        refusal = policy.refusal(*args)
        assert (refusal.check, refusal.key) == (check, key), args
        assert "heart" not in refusal.public() or check == "study-not-allowed"
    with pytest.raises(PolicyError, match="unknown key 'lifetime-epsilom'"):
        parse_policy({"lifetime-epsilom": 4})
    with pytest.raises(PolicyError, match="max-delta must be a positive number"):
        parse_policy({"max-delta": 2})
    with pytest.raises(PolicyError, match="test-fraction must be a positive number and below 1"):
        parse_policy({"test-fraction": 1.5})


def test_ledger_admits_until_the_lifetime_budget_and_composes_runs(tmp_path):
    ledger = Ledger(tmp_path / "site.sqlite")
    one = compute_epsilon([RUN], DELTA, "prv")
    two = compute_epsilon([GaussianRelease(1.2, 0.05, 800)], DELTA, "prv")
    assert one < two < 2 * one  # composition is tighter than the sum
    limit = (one + two) / 2  # room for one run, not for two
    assert ledger.admit(plan("a"), budget(limit)) is None
    # Run a is admitted but has spent nothing yet: its plan is reserved, so b cannot fit.
    assert ledger.admit(plan("b"), budget(limit)).check == "lifetime-budget"
    for round_ in (1, 2):
        assert ledger.record_release("a", round_, step(), budget(limit)) is None
    # The plan is spent: a third round is refused by the plan itself.
    assert ledger.record_release("a", 3, step(), budget(None)).check == "plan-exhausted"
    assert ledger.lifetime_epsilon(DELTA, "prv") == pytest.approx(one)
    assert [r["status"] for r in ledger.runs()] == ["admitted", "refused"]
    rows = ledger.releases()
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["lifetime_epsilon_after"] == pytest.approx(one)


def test_a_release_the_plan_does_not_hold_is_refused(tmp_path):
    ledger = Ledger(tmp_path / "site.sqlite")
    assert ledger.admit(plan("a"), budget(None)) is None
    other_noise = step(GaussianRelease(0.5, 0.05, 1))
    assert ledger.record_release("a", 1, other_noise, budget(None)).check == "plan-exhausted"
    other_partition = step(GaussianRelease(1.2, 0.05, 1), partition=TEST)
    assert ledger.record_release("a", 1, other_partition, budget(None)).check == "plan-exhausted"
    assert ledger.record_release("zz", 1, step(), budget(None)).check == "no-admitted-run"
    assert not ledger.releases()


def test_a_participants_epsilon_is_the_larger_partitions(tmp_path):
    """Train and test partitions are disjoint: their budgets do not add up, but a release on
    all records (an analysis) counts against both."""
    ledger = Ledger(tmp_path / "site.sqlite")
    releases = (step(RUN), step(EVAL, TEST, "evaluation-histograms"))
    assert ledger.admit(plan("a", releases), budget(None), first=releases) is None
    train_eps = compute_epsilon([RUN], DELTA, "prv")
    test_eps = compute_epsilon([EVAL], DELTA, "prv")
    spent = ledger.lifetime_epsilons(DELTA, "prv")
    assert spent == {TRAIN: pytest.approx(train_eps), TEST: pytest.approx(test_eps)}
    assert ledger.lifetime_epsilon(DELTA, "prv") == pytest.approx(max(train_eps, test_eps))
    analysis = (PlannedRelease("analysis-count", ALL, GaussianRelease(3.0, 1.0, 1)),)
    assert ledger.admit(plan("b", analysis), budget(None), first=analysis) is None
    both = ledger.lifetime_epsilons(DELTA, "prv")
    assert both[TRAIN] == pytest.approx(
        compute_epsilon([RUN, GaussianRelease(3.0, 1.0, 1)], DELTA, "prv")
    )
    assert both[TEST] > spent[TEST]
    # A per-run cap applies to each partition: the test one by its own cap.
    capped = budget(None, per_run=10.0, evaluation=test_eps / 2)
    assert ledger.admit(plan("c", releases), capped).check == "run-budget"


def test_concurrent_admissions_never_overspend(tmp_path):
    path = tmp_path / "site.sqlite"
    Ledger(path)
    limit = compute_epsilon([RUN], DELTA, "prv") * 1.2

    def admit(i):
        return Ledger(path).admit(plan(f"run-{i}"), budget(limit))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(admit, range(4)))
    assert sum(r is None for r in results) == 1  # exactly one run fits the budget


def test_the_partition_is_pinned_once_with_a_secret_that_is_never_read_out(tmp_path):
    ledger = Ledger(tmp_path / "site.sqlite")
    first = ledger.pin_partition({"method": "hash", "test_fraction": 0.3, "identity": ["id"]})
    later = ledger.pin_partition({"method": "column", "column": "split"})
    assert later == first and ledger.partition_definition() == first
    secret = ledger.partition_secret()
    assert len(secret) == 32
    assert secret.hex() not in str(ledger.budget()) and secret.hex() not in str(ledger.runs())


def test_a_version_one_ledger_is_read_and_its_releases_count_against_both_partitions(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, study TEXT NOT NULL, recorded_at REAL NOT NULL,
            accountant TEXT NOT NULL, delta REAL NOT NULL, target_epsilon REAL NOT NULL,
            planned TEXT NOT NULL, status TEXT NOT NULL, reason TEXT);
        CREATE TABLE releases (id INTEGER PRIMARY KEY AUTOINCREMENT, recorded_at REAL NOT NULL,
            run_id TEXT NOT NULL, study TEXT NOT NULL, round INTEGER NOT NULL,
            mechanism TEXT NOT NULL, noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL,
            steps INTEGER NOT NULL, delta REAL NOT NULL, run_epsilon_after REAL NOT NULL,
            lifetime_epsilon_after REAL NOT NULL);
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, recorded_at REAL NOT NULL,
            run_id TEXT NOT NULL, round INTEGER NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
            keys TEXT NOT NULL, arrays TEXT NOT NULL, run_epsilon REAL NOT NULL,
            lifetime_epsilon REAL NOT NULL);
        INSERT INTO runs VALUES
            ('old', 's', 0, 'prv', 1e-5, 3, '[[1.2, 0.05, 400]]', 'admitted', NULL);
        INSERT INTO releases VALUES (1, 0, 'old', 's', 1, 'dp-sgd', 1.2, 0.05, 400, 1e-5, 2, 2);
        """
    )
    db.close()
    spent = Ledger(path).lifetime_epsilons(DELTA, "prv")
    assert spent[TRAIN] == spent[TEST] == pytest.approx(compute_epsilon([RUN], DELTA, "prv"))


def test_a_file_that_is_not_a_ledger_is_a_clear_error(tmp_path):
    path = tmp_path / "not-a-ledger.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a usable ledger"):
        Ledger(path)


CRASH = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
import federation.client.handlers as handlers
from federation.wire.spec import load_spec
from wire import node_context, setup, train

spec = load_spec(sys.argv[1]).with_overrides(training={"rounds": 3})
context = node_context(Path(sys.argv[2]), spec, ledger=Path(sys.argv[3]))
setup(context)
handlers.train_dp = lambda *a, **k: os._exit(3)  # the process dies after the ledger recorded
train(context, spec)
"""


def test_a_crash_between_recording_and_sending_leaves_the_ledger_conservative(cohort, tmp_path):
    files, spec_path = cohort
    ledger_path = tmp_path / "crashy.sqlite"
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(CRASH))
    tests_dir = str(Path(__file__).parent)
    command = [sys.executable, str(script), str(spec_path), str(next(iter(files.values())))]
    result = subprocess.run(
        [*command, str(ledger_path), tests_dir],
        env=os.environ,
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


def test_the_node_records_before_it_sends_and_the_lifetime_budget_stops_a_second_run(
    cohort, tmp_path
):
    files, spec_path = cohort
    spec = load_spec(spec_path).with_overrides(training={"rounds": 2})
    data = next(iter(files.values()))
    ledger_path = tmp_path / "site.sqlite"
    policy = tmp_path / "policy.toml"
    policy.write_text("lifetime-epsilon = 3.5\n")
    context = node_context(data, spec, policy=policy, ledger=ledger_path)
    assert state_of(setup(context)) == p.OK
    epsilons = [train(context, spec, r)[p.METRICS][p.EPSILON] for r in (1, 2)]
    refused = train(context, spec, 3)
    assert state_of(refused) == p.REFUSED and reason_of(refused).startswith("plan-exhausted")
    ledger = Ledger(ledger_path)
    rows = [r for r in ledger.releases() if r["partition"] == TRAIN]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["run_epsilon_after"] for r in rows[1:]] == pytest.approx(epsilons, rel=1e-9)
    audit = ledger.messages()
    assert [(m["kind"], m["status"]) for m in audit] == [
        ("setup", "ok"),
        ("train", "ok"),
        ("train", "ok"),
        ("train", "refused"),
    ]
    assert "metrics/epsilon" in audit[1]["keys"]
    # A second run of the same study does not fit the lifetime budget of 3.5 (two such runs
    # compose to about 3.98 under PRV: less than the sum, more than the budget).
    again = setup(node_context(data, spec, policy=policy, ledger=ledger_path, run_id=2), "run-2")
    assert state_of(again) == p.REFUSED and reason_of(again).startswith("lifetime-budget")
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
