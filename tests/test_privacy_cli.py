"""`allfed privacy spend|plan|ledger|audit` against Google's dp-accounting (RDP and PLD)."""

import json

import dp_accounting
import pytest
from dp_accounting import pld, rdp
from typer.testing import CliRunner

from federation.cli import app
from privacy.accounting import GaussianRelease
from privacy.ledger import Budget, Ledger, PlannedRelease, RunPlan

DELTA = 1e-5
GRID = [(1.1, 64 / 700, 110), (0.8, 0.01, 3000), (2.0, 0.5, 40), (5.0, 1.0, 10)]
TOLERANCE = {"rdp": 0.02, "prv": 0.03}  # RDP vs RDP; PRV vs PLD


def oracle(noise, rate, steps, accountant):
    mechanism = dp_accounting.GaussianDpEvent(noise)
    if rate < 1:
        mechanism = dp_accounting.PoissonSampledDpEvent(rate, mechanism)
    event = dp_accounting.SelfComposedDpEvent(mechanism, steps)
    if accountant == "prv":
        book = pld.PLDAccountant(value_discretization_interval=1e-4)
    else:
        book = rdp.RdpAccountant()
    return book.compose(event).get_epsilon(DELTA)


def run(*args):
    result = CliRunner().invoke(app, ["privacy", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(("noise", "rate", "steps"), GRID)
def test_spend_matches_dp_accounting(noise, rate, steps, accountant):
    ours = run(
        "spend",
        *("--noise-multiplier", noise, "--sample-rate", rate, "--steps", steps),
        *("--delta", DELTA, "--accountant", accountant),
    )["epsilon"]
    theirs = oracle(noise, rate, steps, accountant)
    assert ours == pytest.approx(theirs, rel=TOLERANCE[accountant])
    assert ours >= theirs * 0.995  # a guarantee must not under-report


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(("target", "rate", "steps"), [(3.0, 64 / 700, 110), (1.0, 0.02, 500)])
def test_plan_meets_the_target_by_dp_accounting(target, rate, steps, accountant):
    planned = run(
        "plan",
        *("--target-epsilon", target, "--delta", DELTA, "--sample-rate", rate, "--steps", steps),
        *("--accountant", accountant),
    )
    theirs = oracle(planned["noise_multiplier"], rate, steps, accountant)
    assert theirs == pytest.approx(target, rel=TOLERANCE[accountant])
    assert planned["epsilon"] <= target


def test_plan_from_records_gives_a_table_of_rounds():
    planned = run(
        "plan",
        *("--target-epsilon", 3, "--delta", DELTA, "--records", 700, "--batch-size", 64),
        *("--local-epochs", 1, "--rounds", 10),
    )
    assert planned["sample_rate"] == pytest.approx(1 / 11) and planned["steps"] == 110
    table = planned["epsilon_by_rounds"]
    assert [row["rounds"] for row in table] == [1, 5, 10, 20]
    epsilons = [row["epsilon"] for row in table]
    assert epsilons == sorted(epsilons) and epsilons[2] == pytest.approx(planned["epsilon"])


SPEND = ["spend", "--sample-rate", "0.1", "--steps", "5", "--delta", "1e-5"]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["plan", "--target-epsilon", "3", "--delta", "1e-5", "--records", "700"],
            "--records, --batch-size, --local-epochs and --rounds go together",
        ),
        (
            ["plan", "--target-epsilon", "3", "--delta", "1e-5"],
            "give either --sample-rate and --steps, or --records, --batch-size, --local-epochs and "
            "--rounds",
        ),
        (
            ["plan", "--target-epsilon", "1e9", "--delta", "1e-5", "--sample-rate", "0.1",
             "--steps", "5"],
            "--target-epsilon 1e+09 is above 100, where a DP guarantee means nothing; to train "
            "without DP, say so (enabled = false, --no-dp)",
        ),
        (
            ["plan", "--target-epsilon", "1", "--delta", "2", "--sample-rate", "0.1", "--steps",
             "5"],
            "--delta must be in (0, 1), not 2",
        ),
        (
            ["plan", "--target-epsilon", "1", "--delta", "1e-5", "--sample-rate", "1.5",
             "--steps", "5"],
            "--sample-rate must be in (0, 1] and --steps at least 1",
        ),
        (
            ["plan", "--target-epsilon", "3", "--delta", "1e-5", "--records", "20",
             "--batch-size", "8", "--local-epochs", "1", "--rounds", "5"],
            "--records 20: a site's node refuses fewer than 30 training records (the noise "
            "would swamp what it contributes)",
        ),
        (
            ["plan", "--target-epsilon", "3", "--delta", "1e-5", "--records", "200000",
             "--batch-size", "64", "--local-epochs", "1", "--rounds", "5"],
            "--records 200000: delta 1e-05 is too weak for that many records (the node refuses "
            "the run): lower delta below 1/records",
        ),
        (
            [*SPEND, "--noise-multiplier", "-1"],
            "noise multiplier must be positive, got -1.0",
        ),
        (
            [*SPEND, "--noise-multiplier", "1", "--accountant", "gdp"],
            "--accountant must be one of prv, rdp, not 'gdp'",
        ),
        (
            ["ledger", "--ledger", "/nonexistent/site.sqlite"],
            "/nonexistent/site.sqlite: ledger not found",
        ),
    ],
)  # fmt: skip
def test_mistakes_are_one_line_and_exit_2(args, line, capsys):
    from federation.cli import main

    with pytest.raises(SystemExit) as exit_info:
        import sys

        sys.argv = ["allfed", "privacy", *args]
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {line}"


def test_spend_past_any_meaningful_epsilon_answers_at_once_with_rdp_and_says_so():
    """Noise 0.01 without sampling: PRV's domain would take minutes and gigabytes; RDP's bound
    is the answer, marked as no guarantee."""
    result = CliRunner().invoke(
        app, ["privacy", *SPEND[:1], "--noise-multiplier", "0.01", "--sample-rate", "1",
              "--steps", "10", "--delta", "1e-5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())
    assert float(words.split()[1]) == pytest.approx(oracle(0.01, 1.0, 10, "rdp"), rel=0.02)
    assert words.endswith(
        "at delta 1e-05 (rdp) note: above 100: no meaningful guarantee (RDP's bound; PRV is not "
        "computed this far)"
    )
    assert run(*SPEND[:1], "--noise-multiplier", "0.01", "--sample-rate", "1", "--steps", "10",
               "--delta", "1e-5")["meaningful"] is False  # fmt: skip


def test_ledger_and_audit_read_the_site_file(tmp_path):
    path = tmp_path / "site.sqlite"
    book = Ledger(path)
    budget = Budget(4.0, DELTA, "prv")
    release = PlannedRelease("dp-sgd", "train", GaussianRelease(1.5, 0.1, 50))
    plan = RunPlan("r1", "heart", "prv", DELTA, 3.0, (release,))
    assert book.admit(plan, budget) is None
    assert book.record_release("r1", 1, release, budget) is None
    book.record_message("r1", 1, "train", "ok", ["metrics/epsilon"], {"0.weight": [1, 4]})
    ledger = run("ledger", "--ledger", str(path))
    assert ledger["lifetime_epsilon"] == pytest.approx(oracle(1.5, 0.1, 50, "prv"), rel=0.03)
    assert ledger["lifetime_budget"] == 4.0 and len(ledger["entries"]) == 1
    assert ledger["partitions"] == {"train": ledger["lifetime_epsilon"], "test": 0.0}
    audit = run("audit", "--ledger", str(path))
    (entry,) = audit["runs"]
    assert entry["study"] == "heart" and entry["messages"][0]["arrays"] == {"0.weight": [1, 4]}
    assert entry["epsilon"] == pytest.approx(ledger["lifetime_epsilon"])
    readable = CliRunner().invoke(app, ["privacy", "audit", "--ledger", str(path)])
    assert readable.exit_code == 0 and "heart" in readable.output
