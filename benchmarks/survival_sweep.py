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

Variants, each beside the default in the same run: ``--vary KEY=V1,V2`` (a ``[training]``
setting, or ``max-grad-norm``), ``--zero-start`` (the baseline hazards started at logit 0, a
hazard of one half per interval, instead of the model's public prior,
``models.survival.prior_logits``: the model as it was before the prior).

    python benchmarks/survival_sweep.py --json sweep.json [--cohort tcga|synthetic|both]
        [--epsilons none,8,3,1] [--repeats 8] [--vary learning-rate=1.5,2.5 --vary rounds=40]
        [--zero-start]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from heart import shared_data
from inprocess import fedavg, federate, load_tables, with_privacy
from sksurv.linear_model import CoxPHSurvivalAnalysis
from tcga_brca import INTERVALS, region_frames, study_text

import models.survival
from federation.client.data import SiteTable
from federation.synth import study_toml, synthesize_cohort
from federation.wire.spec import StudySpec, parse_spec

# The synthetic cohort: five sites of about 150 records (0.8 to 1.2 times), 30% held out;
# ``--synthetic-records`` changes the sites' size.
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


@contextlib.contextmanager
def zero_start() -> Iterator[None]:
    """Models built inside start their baseline hazards at logit 0, not at the prior."""
    prior = models.survival.prior_logits
    models.survival.prior_logits = torch.zeros_like
    try:
        yield
    finally:
        models.survival.prior_logits = prior


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


def synthetic_cohort(
    folder: Path, records: int = SYNTHETIC_RECORDS
) -> tuple[StudySpec, dict[str, Path]]:
    """``allfed synth``'s survival cohort (known proportional hazards, non-IID sites)."""
    sites = synthesize_cohort(SYNTHETIC_SITES, records, SYNTHETIC_SEED, "survival")
    paths = {}
    for name, frame in sites.items():
        paths[name] = folder / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return parse_spec(study_toml("synthetic-survival", task="survival")), paths


def variants(spec, epsilon, vary: dict[str, list[float]], zero: bool):
    """Name -> (spec, start context) of the default and each variant."""
    base = with_privacy(spec, epsilon)
    chosen = {"default": (base, contextlib.nullcontext)}
    for key, values in vary.items():
        for value in values:
            if key == "max-grad-norm":
                changed = base.with_overrides(privacy={"max_grad_norm": value})
            else:
                number = int(value) if value.is_integer() else value
                changed = with_privacy(spec, epsilon, **{key.replace("-", "_"): number})
            chosen[f"{key} {value:g}"] = (changed, contextlib.nullcontext)
    if zero:
        chosen["zero start"] = (base, zero_start)
    return chosen


def sweep(spec, tables, epsilons, repeats, vary, zero) -> list[dict]:
    """Per epsilon: the planner's defaults and each variant, mean and SD of the runs."""
    rows = []
    smallest = min(table.n_train for table in tables.values())
    for epsilon in epsilons:
        for name, (variant, start) in variants(spec, epsilon, vary, zero).items():
            planned = variant.planned(smallest).training
            runs = 1 if epsilon is None else repeats  # without DP a run is deterministic
            started = time.process_time()
            with start():
                values = [federated_cindex(variant, tables) for _ in range(runs)]
            rows.append(
                {
                    "epsilon": epsilon,
                    "setting": name,
                    "planned": {
                        "rounds": planned.rounds,
                        "steps_per_round": planned.steps_per_round,
                        "learning_rate": planned.learning_rate,
                        "max_grad_norm": variant.privacy.max_grad_norm,
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
        f"  {eps:>6} {row['setting']:<20} C-index {row['cindex']:.3f} "
        f"(sd {row['cindex_sd']:.3f}, {len(row['runs'])} runs; {row['planned']})"
    )


def _vary(texts: list[str]) -> dict[str, list[float]]:
    keys = ("rounds", "steps-per-round", "learning-rate", "max-grad-norm")
    vary = {}
    for text in texts:
        key, _, values = text.partition("=")
        if key not in keys or not values:
            raise SystemExit(f"--vary {text!r}: expected KEY=V1,V2 with KEY one of {keys}")
        vary[key] = [float(v) for v in values.split(",")]
    return vary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cohort", choices=("tcga", "synthetic", "both"), default="both")
    parser.add_argument("--epsilons", default="none,8,3,1", help="none (no DP) and epsilons")
    parser.add_argument("--repeats", type=int, default=8, help="runs per DP setting")
    parser.add_argument("--vary", action="append", default=[], help="KEY=V1,V2 variants")
    parser.add_argument(
        "--zero-start", action="store_true", help="compare with baselines started at logit 0"
    )
    parser.add_argument(
        "--synthetic-records",
        type=int,
        default=SYNTHETIC_RECORDS,
        help="the synthetic sites' records (each 0.8 to 1.2 times this)",
    )
    args = parser.parse_args()
    epsilons = [None if e == "none" else float(e) for e in args.epsilons.split(",")]
    vary = _vary(args.vary)
    cohorts = {
        "tcga": tcga_cohort,
        "synthetic": lambda folder: synthetic_cohort(folder, args.synthetic_records),
    }
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
            rows = sweep(spec, tables, epsilons, args.repeats, vary, args.zero_start)
            for row in rows:
                row["minus_centralized_cox"] = row["cindex"] - reference
            report[name] = {"centralized_cox": reference, "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
