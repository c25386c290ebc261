"""``allfed privacy``: the privacy officer's commands (spend, plan, ledger, audit).

Each prints a readable table, or with ``--json`` one JSON object on stdout. They read only the
site's own ledger file and need nothing from the central team. A mistake in the input is one
line on stderr and exit code 2 (``AllfedError``, caught in ``cli.main``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from federation.cli_options import AsJson, Sites, parse_site_files
from federation.errors import AllfedError

privacy_app = typer.Typer(
    help="Privacy budgets: plan them, and read a site's ledger.", no_args_is_help=True
)
_out = Console()

Accountant = Annotated[str, typer.Option(help="prv (default) or rdp.")]
LedgerPath = Annotated[Path, typer.Option("--ledger", help="The site's ledger (SQLite).")]


@privacy_app.command()
def spend(
    noise_multiplier: Annotated[float, typer.Option(help="Noise std / L2 sensitivity.")],
    sample_rate: Annotated[float, typer.Option(help="Poisson sampling rate q (1: no sampling).")],
    steps: Annotated[int, typer.Option(help="Number of noisy steps.")],
    delta: Annotated[float, typer.Option(help="Target delta.")],
    accountant: Accountant = "prv",
    as_json: AsJson = False,
) -> None:
    """Epsilon of STEPS subsampled Gaussian steps (what a site spends on such a plan)."""
    from privacy.accounting import GaussianRelease, compute_epsilon
    from privacy.limits import EPSILON_RANGE

    _check_accountant(accountant)
    _check_delta(delta)
    release = _release(GaussianRelease, noise_multiplier, sample_rate, steps)
    # RDP first (milliseconds): past the meaningful range its bound is the answer, where PRV's
    # domain would take minutes and gigabytes to say the same.
    epsilon, used = compute_epsilon([release], delta, "rdp"), "rdp"
    if accountant == "prv" and epsilon <= EPSILON_RANGE[1]:
        epsilon, used = compute_epsilon([release], delta, "prv"), "prv"
    meaningless = epsilon > EPSILON_RANGE[1]
    result = {
        "epsilon": epsilon,
        "delta": delta,
        "accountant": used,
        "meaningful": not meaningless,
        "noise_multiplier": noise_multiplier,
        "sample_rate": sample_rate,
        "steps": steps,
    }
    if as_json:
        print(json.dumps(result))
    else:
        _out.print(f"epsilon {epsilon:.4f} at delta {delta:g} ({used})", highlight=False)
    if meaningless and not as_json:
        _out.print(
            f"[yellow]note:[/] above {EPSILON_RANGE[1]:g}: no meaningful guarantee"
            + (" (RDP's bound; PRV is not computed this far)" if accountant == "prv" else ""),
            highlight=False,
        )


@privacy_app.command()
def plan(
    study: Annotated[
        Path | None, typer.Option(help="A study spec: plan its training for the sites' sizes.")
    ] = None,
    target_epsilon: Annotated[
        float | None, typer.Option(help="Epsilon for the whole run (default: the study's).")
    ] = None,
    delta: Annotated[
        float | None, typer.Option(help="Target delta (default: the study's).")
    ] = None,
    sample_rate: Annotated[float | None, typer.Option(help="Poisson sampling rate q.")] = None,
    steps: Annotated[int | None, typer.Option(help="Noisy steps of the whole run.")] = None,
    records: Annotated[
        list[int] | None,
        typer.Option(help="Training records of a site (with --study: once per site)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Expected batch size.")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round.")] = None,
    epochs: Annotated[int | None, typer.Option(hidden=True)] = None,  # the old --local-epochs
    rounds: Annotated[int | None, typer.Option(help="Federated rounds.")] = None,
    accountant: Annotated[
        str | None, typer.Option(help="prv (default) or rdp (default with --study: the study's).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """The noise multiplier that makes a whole run meet TARGET_EPSILON, and what more or fewer
    rounds would cost at that noise; with --study and --records per site, the study's whole
    plan (rounds, epochs, batch, learning rate, clip norm) as the planner chooses it."""
    if study is not None:
        _plan_study(study, records or [], target_epsilon, delta, accountant, as_json)
        return
    from privacy.accounting import GaussianRelease, calibrate_noise, compute_epsilon

    if target_epsilon is None or delta is None:
        raise AllfedError("give --target-epsilon and --delta (or --study)")
    accountant = accountant or "prv"
    _check_accountant(accountant)
    _check_delta(delta)
    _check_epsilon(target_epsilon)
    if records is not None and len(records) > 1:
        raise AllfedError("--records once, or once per site with --study")
    n = records[0] if records else None
    if n is not None:
        _check_records([n], delta)
    epochs = local_epochs if local_epochs is not None else epochs
    q, total, per_round = _plan_shape(sample_rate, steps, n, batch_size, epochs, rounds)
    used = _practical(accountant, total * 2)
    try:
        noise = calibrate_noise(target_epsilon, delta, q, total, used)
    except ValueError as error:
        raise AllfedError(str(error)) from None
    epsilon = compute_epsilon([GaussianRelease(noise, q, total)], delta, used)
    planned_rounds = total // per_round
    table = []
    for r in sorted({1, max(1, planned_rounds // 2), planned_rounds, 2 * planned_rounds}):
        spent = compute_epsilon([GaussianRelease(noise, q, r * per_round)], delta, used)
        table.append({"rounds": r, "steps": r * per_round, "epsilon": spent})
    result = {
        "noise_multiplier": noise,
        "sample_rate": q,
        "steps": total,
        "epsilon": epsilon,
        "delta": delta,
        "accountant": used,
        "epsilon_by_rounds": table,
    }
    if as_json:
        print(json.dumps(result))
        return
    _note_accountant(accountant, used)
    _out.print(
        f"noise multiplier {noise:.4f}: epsilon {epsilon:.4f} at delta {delta:g} ({used}) "
        f"for {total} steps at sampling rate {q:.5g}"
    )
    view = Table(title="epsilon against rounds at this noise")
    for column in ("rounds", "steps", "epsilon"):
        view.add_column(column, justify="right")
    for row in table:
        view.add_row(str(row["rounds"]), str(row["steps"]), f"{row['epsilon']:.4f}")
    _out.print(view)


# PRV's cost grows with the steps it composes (1e5 steps: seconds a call, 1e8: 80 s); past
# this many, plans are worked out with RDP, a valid (looser) bound that costs milliseconds.
PRV_MAX_STEPS = 100_000


def _check_records(records: list[int], delta: float) -> None:
    """A plan for a site its node would refuse is no plan: the node's two size rules."""
    from federation.client.data import MIN_TRAIN_RECORDS
    from privacy.limits import delta_too_weak

    for n in records:
        if n < MIN_TRAIN_RECORDS:
            raise AllfedError(
                f"--records {n}: a site's node refuses fewer than {MIN_TRAIN_RECORDS} training "
                "records (the noise would swamp what it contributes)"
            )
        if delta_too_weak(delta, n):
            raise AllfedError(
                f"--records {n}: delta {delta:g} is too weak for that many records (the node "
                "refuses the run): lower delta below 1/records"
            )


def _check_epsilon(epsilon: float) -> None:
    from privacy.limits import epsilon_range_error

    if epsilon <= 0:
        raise AllfedError("--target-epsilon must be positive")
    if (why := epsilon_range_error(epsilon)) is not None:
        raise AllfedError(f"--target-epsilon {why}")


def _practical(accountant: str, steps: int) -> str:
    return "rdp" if accountant == "prv" and steps > PRV_MAX_STEPS else accountant


def _note_accountant(asked: str, used: str) -> None:
    if used != asked:
        _out.print(
            f"[yellow]note:[/] more than {PRV_MAX_STEPS:,} steps: planned with RDP (a valid, "
            "slightly looser bound); PRV would take minutes",
            highlight=False,
        )


def _plan_study(
    path: Path,
    records: list[int],
    target_epsilon: float | None,
    delta: float | None,
    accountant: str | None,
    as_json: bool,
) -> None:
    """``plan --study``: the planner's plan for sites of ``records`` training records."""
    from federation.wire.spec import estimated_columns, federated_columns, load_spec
    from privacy.accounting import GaussianRelease
    from privacy.bounds import BOUNDS_SHARE
    from privacy.planner import plan_study, share_noise

    spec = load_spec(path)
    if not records:
        raise AllfedError("--study needs --records N once per site (its training records)")
    privacy = spec.privacy
    epsilon = target_epsilon if target_epsilon is not None else privacy.target_epsilon
    delta = delta if delta is not None else privacy.delta
    accountant = accountant or privacy.accountant
    _check_accountant(accountant)
    _check_delta(delta)
    _check_records(records, delta)
    _check_epsilon(epsilon)
    if not privacy.enabled:
        raise AllfedError(f"{path}: [privacy] enabled = false: there is no DP plan to make")
    # The spec's settings are kept; the planner chooses the rest, as every node will.
    training = spec.planned(min(records), epsilon).training
    explicit = {
        name: getattr(training, name)
        for name in ("rounds", "local_epochs", "batch_size", "steps_per_round", "learning_rate")
    }
    noise = bounds_noise = None  # the releases every site makes before training, as it plans
    if spec.features.scaling == "federated" and federated_columns(spec):
        noise = share_noise(privacy.standardization_share, epsilon, delta)
        if estimated_columns(spec):
            bounds_noise = share_noise(BOUNDS_SHARE, epsilon, delta)
    prior = [GaussianRelease(z, 1.0, 1) for z in (bounds_noise, noise) if z]
    longest = (
        training.rounds
        * training.local_epochs
        * max(math.ceil(n / training.batch_size_for(n)) for n in records)
    )
    used = _practical(accountant, longest)
    try:
        result = plan_study(
            epsilon,
            delta,
            used,
            records,
            prior,
            max_grad_norm=privacy.max_grad_norm,
            standardization_noise=noise,
            **explicit,
        )
    except ValueError as error:
        raise AllfedError(f"cannot plan the study: {error}") from None
    # The batches are one choice: each site's batch size, from the planner's steps per round.
    chosen = [k for k in explicit if k != "steps_per_round" and getattr(spec.training, k) is None]
    if spec.training.steps_per_round is not None:
        chosen.remove("batch_size")
    report = {**result.as_dict(), "bounds_noise": bounds_noise, "chosen_by_planner": sorted(chosen)}
    if as_json:
        print(json.dumps(report))
        return
    _note_accountant(accountant, used)
    _out.print(
        f"{spec.study.name}: epsilon {epsilon:g} at delta {delta:g} ({used}) per site; "
        f"{result.rounds} rounds x {result.local_epochs} local epoch(s) of "
        f"{result.steps_per_round or 'the given batches of'} step(s), learning rate "
        f"{result.learning_rate:g}, clip norm "
        f"{result.max_grad_norm:g} (planner-chosen: "
        f"{', '.join(report['chosen_by_planner']) or 'none'})",
        highlight=False,
    )
    if bounds_noise:
        _out.print(
            f"bounds histograms first (columns without declared bounds): noise multiplier "
            f"{bounds_noise:.3f}",
            highlight=False,
        )
    if noise:
        _out.print(f"standardization sums first: noise multiplier {noise:.3f}", highlight=False)
    view = Table(title="per site")
    columns = ("records", "batch", "sample rate", "steps/round", "steps", "noise multiplier",
               "eps round 1", "eps per round", "eps final")  # fmt: skip
    for column in columns:
        view.add_column(column, justify="right")
    for site in result.sites:
        trajectory = site.epsilon_by_round
        per_round = (trajectory[-1] - trajectory[0]) / max(1, len(trajectory) - 1)
        view.add_row(
            str(site.n_train), str(site.batch_size), f"{site.sample_rate:.4g}",
            str(site.steps_per_round), str(site.steps), f"{site.noise_multiplier:.4f}",
            f"{trajectory[0]:.4f}", f"{per_round:.4f}", f"{trajectory[-1]:.4f}",
        )  # fmt: skip
    _out.print(view)


@privacy_app.command()
def ledger(ledger: LedgerPath, as_json: AsJson = False) -> None:
    """A site's lifetime epsilon and every noisy release it recorded."""
    result = ledger_report(ledger)
    if as_json:
        print(json.dumps(result))
        return
    lifetime, cap = result["lifetime_epsilon"], result["lifetime_budget"]
    parts = result["partitions"]
    _out.print(
        f"{ledger}: a participant's lifetime epsilon {lifetime:.4f} at delta "
        f"{result['delta']:g} ({result['accountant']}), budget "
        f"{'none' if cap is None else f'{cap:g}'}; training records {parts['train']:.4f}, "
        f"test records {parts['test']:.4f} (disjoint: a participant is in one partition, and "
        "releases on all records count in both)",
        highlight=False,
    )
    view = Table()
    columns = (
        "run",
        "study",
        "round",
        "mechanism",
        "partition",
        "noise",
        "rate",
        "steps",
        "run eps",
        "life eps",
    )
    for column in columns:
        view.add_column(column)
    for e in result["entries"]:
        view.add_row(
            e["run_id"],
            e["study"],
            str(e["round"]),
            e["mechanism"],
            e["partition"],
            f"{e['noise_multiplier']:.4g}",
            f"{e['sample_rate']:.4g}",
            str(e["steps"]),
            f"{e['run_epsilon_after']:.4f}",
            f"{e['lifetime_epsilon_after']:.4f}",
        )
    _out.print(view)


@privacy_app.command()
def audit(ledger: LedgerPath, as_json: AsJson = False) -> None:
    """What left the site, run by run: every message (kind, keys, array shapes) and the
    privacy spent when it left."""
    report = audit_report(ledger)
    if as_json:
        print(json.dumps(report))
        return
    for run in report["runs"]:
        reason = f" ({run['reason']})" if run.get("reason") else ""
        _out.print(
            f"[bold]run {run['run_id']}[/] {run.get('study', '')}: {run['status']}{reason}, "
            f"epsilon {run['epsilon']:.4f}"
        )
        view = Table()
        for column in ("round", "kind", "status", "keys", "arrays", "run eps", "life eps"):
            view.add_column(column)
        for m in run["messages"]:
            view.add_row(
                str(m["round"]),
                m["kind"],
                m["status"],
                str(len(m["keys"])),
                ", ".join(f"{k} {tuple(v)}" for k, v in m["arrays"].items()) or "-",
                f"{m['run_epsilon']:.4f}",
                f"{m['lifetime_epsilon']:.4f}",
            )
        _out.print(view)


def ledger_report(path: Path) -> dict[str, Any]:
    """What ``allfed privacy ledger --json`` prints (and ``allfed console`` shows): the lifetime
    epsilon against the recorded budget, per partition and for a participant (the larger of
    the two: train and test records are different people), and every release."""
    book, budget = _open(path)
    partitions = book.lifetime_epsilons(budget["lifetime_delta"], budget["accountant"])
    return {
        "lifetime_epsilon": max(partitions.values()),
        "partitions": partitions,
        "lifetime_budget": budget.get("lifetime_epsilon"),
        "delta": budget["lifetime_delta"],
        "accountant": budget["accountant"],
        "partition": book.partition_definition(),
        "entries": book.releases(),
    }


def audit_report(path: Path) -> dict[str, Any]:
    """What ``allfed privacy audit --json`` prints (and ``allfed console`` shows): every run
    with its messages and the epsilon it spent, runs refused before admission included."""
    book, _ = _open(path)
    messages = book.messages()
    runs: list[dict[str, Any]] = []
    known = {run["run_id"] for run in book.runs()}
    for run in book.runs():
        runs.append({**run, "messages": [m for m in messages if m["run_id"] == run["run_id"]]})
    orphans = [m for m in messages if m["run_id"] not in known]  # refused before admission
    for run_id in sorted({m["run_id"] for m in orphans}):
        runs.append({"run_id": run_id, "status": "not admitted", "messages": _of(orphans, run_id)})
    for run in runs:
        spent = book.run_epsilons(run["run_id"])
        run["epsilons"] = spent
        run["epsilon"] = max(spent.values())
    return {"runs": runs}


def _of(messages: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["run_id"] == run_id]


def _open(path: Path):
    from privacy.ledger import Ledger, LedgerError
    from privacy.policy import DEFAULT_LIFETIME_DELTA

    if not path.is_file():
        raise AllfedError(f"{path}: ledger not found")
    if path.stat().st_size == 0:
        raise AllfedError(f"{path}: an empty file, not a ledger")
    try:
        book = Ledger(path)
    except LedgerError as error:
        raise AllfedError(str(error)) from None
    budget = {"lifetime_delta": DEFAULT_LIFETIME_DELTA, "accountant": "prv", **book.budget()}
    return book, budget


def _plan_shape(
    sample_rate: float | None,
    steps: int | None,
    records: int | None,
    batch_size: int | None,
    epochs: int | None,
    rounds: int | None,
) -> tuple[float, int, int]:
    """(sampling rate, steps of the run, steps per round) from either form of ``plan``."""
    by_rate = sample_rate is not None or steps is not None
    by_records = any(v is not None for v in (records, batch_size, epochs, rounds))
    if by_rate == by_records:
        raise AllfedError(
            "give either --sample-rate and --steps, or --records, --batch-size, --local-epochs "
            "and --rounds"
        )
    if by_rate:
        if sample_rate is None or steps is None:
            raise AllfedError("--sample-rate and --steps go together")
        if not 0 < sample_rate <= 1 or steps < 1:
            raise AllfedError("--sample-rate must be in (0, 1] and --steps at least 1")
        return sample_rate, steps, steps
    if None in (records, batch_size, epochs, rounds):
        raise AllfedError("--records, --batch-size, --local-epochs and --rounds go together")
    if min(records, batch_size, epochs, rounds) < 1:  # type: ignore[type-var]
        raise AllfedError("--records, --batch-size, --local-epochs and --rounds must be at least 1")
    # The node's own rule (federation.client.training.plan_dp): q = 1 / batches per epoch.
    batches = math.ceil(records / batch_size)  # type: ignore[operator]
    per_round = epochs * batches  # type: ignore[operator]
    return 1.0 / batches, rounds * per_round, per_round  # type: ignore[operator]


def _release(kind, noise: float, rate: float, steps: int):
    try:
        return kind(noise, rate, steps)
    except ValueError as error:
        raise AllfedError(str(error)) from None


def _check_accountant(name: str) -> None:
    from privacy.accounting import ACCOUNTANTS

    if name not in ACCOUNTANTS:
        raise AllfedError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}, not {name!r}")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise AllfedError(f"--delta must be in (0, 1), not {delta:g}")


@privacy_app.command()
def mia(
    study: Annotated[Path, typer.Option(help="The study spec (TOML).")],
    site: Sites,
    audit_site: Annotated[str, typer.Option(help="The site whose records are audited.")],
    out: Annotated[Path, typer.Option(help="A new folder for the audit (data copies, run).")],
    canaries: Annotated[
        int, typer.Option(help="Canary records, each a member with prob. 1/2.")
    ] = 500,
    target_epsilon: Annotated[
        float | None, typer.Option(help="Override [privacy] target-epsilon.")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option(hidden=True, help="Old name of --target-epsilon.")
    ] = None,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Audit a run without DP.")] = False,
    rounds: Annotated[int | None, typer.Option(min=1, help="Override [training] rounds.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the canaries and their membership.")] = 0,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
    as_json: AsJson = False,
) -> None:
    """Membership-inference audit of a full federated run: canaries in one site's file, the
    study run as users run it, attacks on what the server saw, and the epsilon they prove
    beside the epsilon the site's accountant claims. Exit 1 when the proof exceeds the claim."""
    from federation.audit import run_audit
    from federation.wire.spec import load_spec

    if target_epsilon is not None and epsilon is not None and target_epsilon != epsilon:
        raise AllfedError("--epsilon is the old name of --target-epsilon: give one")
    target_epsilon = target_epsilon if target_epsilon is not None else epsilon
    if target_epsilon is not None and no_dp:
        raise AllfedError("--target-epsilon and --no-dp exclude each other")
    privacy: dict[str, Any] = {"enabled": False} if no_dp else {}
    if target_epsilon is not None:
        privacy["target_epsilon"] = target_epsilon
    training = {"rounds": rounds} if rounds is not None else {}
    spec = load_spec(study).with_overrides(training=training, privacy=privacy)
    report = run_audit(
        spec, parse_site_files(site), audit_site, out, canaries, seed, verbose=verbose
    )
    if as_json:
        print(json.dumps(report))
    else:
        _print_audit(report, out)
    if report["verdict"].startswith("VIOLATION"):
        raise typer.Exit(1)


def _print_audit(report: dict[str, Any], out: Path) -> None:
    bound = report["empirical_epsilon"]
    claimed = report["claimed_epsilon"]
    view = Table(
        title=f"{report['study']}: membership audit of site {report['audit_site']}, "
        f"{report['canaries']} canaries ({report['members']} members), {report['rounds']} rounds"
    )
    for column in ("attack", "AUC", "TPR at 1% FPR", "TPR at 0.1% FPR"):
        view.add_column(column, justify="left" if column == "attack" else "right")
    for name, roc in report["attacks"].items():
        view.add_row(
            name,
            f"{roc['auc']:.3f}",
            f"{roc['tpr_at_1pct_fpr']:.3f}",
            f"{roc['tpr_at_0_1pct_fpr']:.3f}",
        )
    _out.print(view)
    upper = "inf" if bound["upper"] is None else f"{bound['upper']:.2f}"
    _out.print(
        f"claimed epsilon {'none (no DP)' if claimed is None else f'{claimed:.3f}'} at delta "
        f"{report['delta']:g}; empirical lower bound {bound['lower']:.3f} "
        f"({bound['confidence']:.0%} one-sided; interval {bound['lower']:.2f}-{upper}) "
        f"from {bound['correct']} of "
        f"{bound['guesses']} guesses right ({bound['attack']} attack, best of {bound['tries']} "
        f"tries, Bonferroni)",
        highlight=False,
    )
    _out.print(f"[bold]{report['verdict']}[/]. Results: {out / 'audit.json'}", highlight=False)
