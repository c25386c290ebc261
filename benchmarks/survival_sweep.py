"""The survival task's DP utility in process: Fed-TCGA-BRCA and a synthetic multi-site cohort.

Each run is ``inprocess.fedavg`` (the node's own standardization release, encoding, DP plan and
DP-SGD step, averaged as FedAvg does, without Flower), so settings can be swept quickly; the
planner's defaults (``privacy.planner``, the spec leaving its training settings out) are the
baseline every variant is compared with in the same run. Each model is scored exactly on the
pooled test rows (Harrell's C-index, scikit-survival's ``concordance_index_censored``) beside a
centralized, non-private Cox model (scikit-survival, small ridge penalty) fitted on the same
pooled training rows, encoded with their exact pooled scaling. Every run and the reference use
one partition of each site's records (the synthetic cohort's split is drawn once). DP runs are
unseeded (the node's noise comes from the OS), so each setting is the mean and SD over
``--repeats`` runs.

    python benchmarks/survival_sweep.py --json sweep.json [--cohort tcga|synthetic|both]
        [--epsilons none,8,3,1] [--repeats 8] [--learning-rates 1.0,2.5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from heart import shared_data
from inprocess import fedavg, federate, load_tables, with_privacy
from sksurv.linear_model import CoxPHSurvivalAnalysis
from tcga_brca import INTERVALS, region_frames, study_text

from federation.client.data import SiteTable
from federation.synth import study_toml, synthesize_cohort
from federation.wire.spec import StudySpec, parse_spec

# The synthetic cohort: five sites of about 150 records (0.8 to 1.2 times), 30% held out.
SYNTHETIC_SITES, SYNTHETIC_RECORDS, SYNTHETIC_SEED = 5, 150, 11


def harrell(outcome: np.ndarray, risk: np.ndarray) -> float:
    from sksurv.metrics import concordance_index_censored

    return float(concordance_index_censored(outcome[:, 1] > 0.5, outcome[:, 0], risk)[0])


def centralized_cox(
    spec: StudySpec, tables: dict[str, SiteTable], penalizer: float = 0.01
) -> float:
    """Pooled-test C-index of a non-private Cox model on the pooled training rows."""
    federation = federate(with_privacy(spec, None), tables)
    x, y = federation.train_rows()
    x_test, y_test = federation.test_rows()
    keep = x.std(0) > 0  # a constant column (a level no training row has) has no coefficient
    target = np.array(
        list(zip(y[:, 1] > 0.5, y[:, 0].astype(float), strict=True)),
        dtype=[("event", bool), ("time", float)],
    )
    cox = CoxPHSurvivalAnalysis(alpha=penalizer).fit(x[:, keep], target)
    return harrell(y_test, cox.predict(x_test[:, keep]))


def federated_cindex(spec: StudySpec, tables: dict[str, SiteTable]) -> float:
    """Pooled-test C-index of one in-process federated run of ``spec``."""
    federation = federate(spec, tables)
    model = fedavg(federation, spec=spec)
    x, y = federation.test_rows()
    model.eval()
    with torch.no_grad():
        risk = model(torch.from_numpy(x)).squeeze(-1).numpy()
    return harrell(y, risk)


def tcga_cohort(folder: Path) -> tuple[StudySpec, dict[str, Path]]:
    """Fed-TCGA-BRCA's six regions (FLamby's split), as ``benchmarks/tcga_brca.py`` sets them."""
    frames = region_frames(shared_data("tcga-brca"))
    features = [c for c in next(iter(frames.values())).columns if c not in ("T", "E", "split")]
    paths = {}
    for region, frame in frames.items():
        paths[region] = folder / f"{region}.csv"
        frame.to_csv(paths[region], index=False)
    return parse_spec(study_text(features, 3.0, INTERVALS)), paths


def synthetic_cohort(folder: Path) -> tuple[StudySpec, dict[str, Path]]:
    """``allfed synth``'s survival cohort (known proportional hazards, non-IID sites)."""
    sites = synthesize_cohort(SYNTHETIC_SITES, SYNTHETIC_RECORDS, SYNTHETIC_SEED, "survival")
    paths = {}
    for name, frame in sites.items():
        paths[name] = folder / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return parse_spec(study_toml("synthetic-survival", task="survival")), paths


def sweep(spec, tables, epsilons, learning_rates, repeats) -> list[dict]:
    """Per epsilon: the planner's defaults and each learning rate, mean and SD of the runs."""
    rows = []
    for epsilon in epsilons:
        base = with_privacy(spec, epsilon)
        planned = base.planned(min(table.n_train for table in tables.values())).training
        variants = {"default": base} | {
            f"learning rate {rate:g}": with_privacy(spec, epsilon, learning_rate=rate)
            for rate in learning_rates
        }
        for name, variant in variants.items():
            runs = 1 if epsilon is None else repeats  # without DP a run is deterministic
            started = time.process_time()
            values = [federated_cindex(variant, tables) for _ in range(runs)]
            rows.append(
                {
                    "epsilon": epsilon,
                    "setting": name,
                    "planned": {
                        "rounds": planned.rounds,
                        "steps_per_round": planned.steps_per_round,
                        "learning_rate": planned.learning_rate,
                    },
                    "cindex": float(np.mean(values)),
                    "cindex_sd": float(np.std(values, ddof=1)) if runs > 1 else 0.0,
                    "runs": values,
                    "cpu_seconds_per_run": round((time.process_time() - started) / runs, 2),
                }
            )
            print(_row(rows[-1]), flush=True)
    return rows


def _row(row: dict) -> str:
    eps = "no DP" if row["epsilon"] is None else f"eps {row['epsilon']:g}"
    return (
        f"  {eps:>6} {row['setting']:<18} C-index {row['cindex']:.3f} "
        f"(sd {row['cindex_sd']:.3f}, {len(row['runs'])} runs; planned {row['planned']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cohort", choices=("tcga", "synthetic", "both"), default="both")
    parser.add_argument("--epsilons", default="none,8,3,1", help="none (no DP) and epsilons")
    parser.add_argument("--repeats", type=int, default=8, help="runs per DP setting")
    parser.add_argument(
        "--learning-rates", default="", help="rates compared with the default, e.g. 1.0,2.5"
    )
    args = parser.parse_args()
    epsilons = [None if e == "none" else float(e) for e in args.epsilons.split(",")]
    rates = [float(r) for r in args.learning_rates.split(",") if r]
    cohorts = {"tcga": tcga_cohort, "synthetic": synthetic_cohort}
    chosen = list(cohorts) if args.cohort == "both" else [args.cohort]
    report = {}
    with tempfile.TemporaryDirectory(prefix="allfed-survival-") as tmp:
        for name in chosen:
            folder = Path(tmp) / name
            folder.mkdir()
            spec, paths = cohorts[name](folder)
            tables = load_tables(spec, paths)  # one split for every run and the reference
            reference = centralized_cox(spec, tables)
            print(f"{name}: centralized Cox (no DP) pooled-test C-index {reference:.3f}")
            rows = sweep(spec, tables, epsilons, rates, args.repeats)
            for row in rows:
                row["minus_centralized_cox"] = row["cindex"] - reference
            report[name] = {"centralized_cox": reference, "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
