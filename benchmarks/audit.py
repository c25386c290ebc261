"""Empirical privacy audit on a synthetic cohort: no DP, and DP at epsilon 1, 3 and 8.

Each setting is one full federated run (`federation.audit.run_audit`, what `allfed privacy mia`
runs): canaries in the first site's training file, each a member with probability 1/2, the
study run with `simulate` as users run it, attacks on the final model and on the site's round
updates as the server received them, and the one-run epsilon lower bound (Steinke, Nasr and
Jagielski 2023) beside the epsilon the site's accountant claims. The model is an MLP trained
for several local epochs, which gives the attacks the most to find.

    python benchmarks/audit.py --json audit.json [--canaries M] [--rounds R] [--records N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from federation.audit import run_audit
from federation.synth import write_cohort
from federation.wire.spec import load_spec

EPSILONS = (None, 1.0, 3.0, 8.0)


def run(args: argparse.Namespace) -> dict:
    results = []
    with tempfile.TemporaryDirectory(prefix="allfed-audit-") as tmp:
        files, spec_path = write_cohort(Path(tmp) / "cohort", args.sites, args.records, seed=3)
        audited = next(iter(files))
        for epsilon in EPSILONS:
            spec = load_spec(spec_path).with_overrides(
                model={"name": "mlp", "hidden": (args.hidden,)},
                training={"rounds": args.rounds, "local_epochs": args.local_epochs},
                privacy={"enabled": epsilon is not None, "target_epsilon": epsilon or 3.0},
            )
            started = time.perf_counter()
            out = Path(tmp) / f"audit-{epsilon}"
            report = run_audit(spec, files, audited, out, args.canaries, seed=args.seed)
            results.append(_result(epsilon, report, time.perf_counter() - started))
            print(_row(results[-1]), flush=True)
    return {
        "results": results,
        "settings": {
            "sites": args.sites,
            "records_per_site": args.records,
            "audited_site": audited,
            "canaries": args.canaries,
            "model": f"mlp, hidden [{args.hidden}]",
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
            "delta": 1e-5,
            "confidence": 0.95,
            "seed": args.seed,
        },
    }


def _result(epsilon: float | None, report: dict, seconds: float) -> dict:
    bound = report["empirical_epsilon"]
    return {
        "epsilon": epsilon,
        "attack_auc": report["attack_auc"],
        "tpr_at_1pct_fpr": report["tpr_at_1pct_fpr"],
        "tpr_at_0_1pct_fpr": report["tpr_at_0_1pct_fpr"],
        "empirical_epsilon_lower": report["empirical_epsilon_lower"],
        "empirical_epsilon_ci": report["empirical_epsilon_ci"],
        "claimed_epsilon": report["claimed_epsilon"],
        "verdict": report["verdict"],
        "attack": report["attack"],
        "attacks": report["attacks"],
        "bound": {k: bound[k] for k in ("guesses", "correct", "attack", "tries", "confidence")},
        "canaries": report["canaries"],
        "members": report["members"],
        "noise_multiplier": report["noise_multiplier"],
        "seconds": round(seconds, 1),
    }


def _row(result: dict) -> str:
    eps = "no DP" if result["epsilon"] is None else f"eps {result['epsilon']:g}"
    claimed = result["claimed_epsilon"]
    low, high = result["empirical_epsilon_ci"]
    return (
        f"{eps:>7}: AUC {result['attack_auc']:.3f} ({result['attack']}), "
        f"TPR@1% {result['tpr_at_1pct_fpr']:.3f}, TPR@0.1% {result['tpr_at_0_1pct_fpr']:.3f}, "
        f"empirical eps >= {low:.2f} (upper {'inf' if high is None else f'{high:.2f}'}), "
        f"claimed {'none' if claimed is None else f'{claimed:.3f}'}: {result['verdict']} "
        f"[{result['seconds']:.0f} s]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--records", type=int, default=800, help="records per site (about)")
    parser.add_argument("--canaries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256, help="width of the MLP's layer")
    parser.add_argument("--seed", type=int, default=1, help="seed of the canaries")
    args = parser.parse_args()
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
