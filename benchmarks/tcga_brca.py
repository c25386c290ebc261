"""Fed-TCGA-BRCA (FLamby) with allfed's survival task: non-private and DP at epsilon 8, 3, 1.

Six regions (from the TSS code of each patient barcode, via FLamby's centers.csv) are the six
sites, with FLamby's static train/test split (``train_test_split.csv``) as each file's split
column and FLamby's 39 features (age, and 38 one-hot columns declared as categorical features
of levels 0 and 1) as the study's features. Each setting runs through
``federation.simulation.simulate`` as a user would, with allfed's defaults (the planner's
training settings, one federated standardization, the discrete-time hazard model on the spec's
intervals). The benchmark, which holds the public data, scores the final model itself on
every region's test rows, encoded exactly as the nodes encode them: Harrell's C-index of the
risk score, pooled and per region (scikit-survival's ``concordance_index_censored``, the same
statistic as lifelines' ``concordance_index(T, -risk, E)`` that FLamby reports), and prints
beside it the C-index the run released from the sites' DP evaluation release
(``federation.server.survival_evaluation``) with its 95% interval, and their gap. Beside it: a
centralized, non-private Cox model (scikit-survival, a small ridge penalty) fitted on the
pooled training rows of FLamby's 39 columns, and FLamby's published pooled-test C-index.

    python benchmarks/tcga_brca.py --json tcga.json [--data DIR] [--repeats K]
        [--epsilons none,8,3,1] [--intervals 182,365,...] [--rounds R --steps-per-round S
        --learning-rate L: default the planner's settings, as allfed's]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from heart import shared_data
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored

from federation.client.data import SiteTable, load_site_table
from federation.client.features import encode, resolve_scaling
from federation.client.partition import fresh_partition
from federation.simulation import simulate
from federation.wire.spec import parse_spec
from models.registry import build_model

REGIONS = ("Northeast", "South", "West", "Midwest", "Europe", "Canada")  # FLamby's centers 0-5
HORIZONS = (365, 1095, 1825)
# The hazard model's intervals (days), fixed before looking at the data: half-years to 2
# years, yearly to 5, then 7, 10 and 15 years; later follow-up counts as censored at 15 years.
INTERVALS = (182, 365, 547, 730, 1095, 1460, 1825, 2555, 3650, 5475)
AGE, AGE_BOUNDS = "age_at_index", (20, 90)  # a clinical range, not the data's (26-90)
FLAMBY = {
    "source": "FLamby results_benchmark_fed_tcga_brca, mean of seeds 42-46, pooled-test C-index",
    "pooled_training": 0.704,
    "pooled_training_sd": 0.114,
    "fedavg": 0.735,
    "fedprox": 0.717,
    "scaffold": 0.700,
    "fedadam": 0.842,
    "fedyogi": 0.842,
}


def region_frames(data: Path) -> dict[str, pd.DataFrame]:
    """Per region, the patients of FLamby's split: the 39 features (names made plain), T, E and
    the split column (``train``/``test``)."""
    brca = pd.read_csv(data / "brca.csv")
    split = pd.read_csv(data / "train_test_split.csv")
    features = list(brca.columns[1:40])
    plain = {name: _plain(name) for name in features}
    frame = brca.merge(split, on="pid", how="inner").rename(columns=plain)
    frame["center"] = frame["fold2"].str.split("_").str[1].astype(int)
    frame["split"] = frame["fold"]
    columns = [*plain.values(), "T", "E", "split"]
    return {region: frame.loc[frame["center"] == k, columns] for k, region in enumerate(REGIONS)}


def _plain(name: str) -> str:
    """A column name without spaces or punctuation (``ajcc_pathologic_n_N0 (i-)`` ->
    ``ajcc_pathologic_n_N0_i``)."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9]+", "_", name)).strip("_")


def study_text(
    features: list[str],
    epsilon: float | None,
    intervals: tuple[int, ...],
    training: dict[str, float | int | None] | None = None,
) -> str:
    """The study: age numeric (clinical bounds), each one-hot column a categorical feature of
    levels 0 and 1, so the federated standardization (a DP release) has one column to pool,
    not 39 whose noise would swamp their spreads at these sites' sizes."""
    categorical = ", ".join(f'"{c}" = ["0", "1"]' for c in features if c != AGE)
    privacy = f"target-epsilon = {epsilon}" if epsilon else "enabled = false"
    settings = "".join(f"{k} = {v}\n" for k, v in (training or {}).items() if v is not None)
    return f"""
[study]
name = "fed-tcga-brca"
task = "survival"
time = "T"
event = "E"
horizons = {list(HORIZONS)}
intervals = {list(intervals)}
split = "split"
[features]
numeric = ["{AGE}"]
categorical = {{ {categorical} }}
bounds = {{ {AGE} = [{AGE_BOUNDS[0]}, {AGE_BOUNDS[1]}] }}
[training]
{settings}[privacy]
{privacy}
delta = 1e-5
"""


def harrell(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index: lifelines' ``concordance_index(time, -risk, event)``."""
    return float(concordance_index_censored(event.astype(bool), time, risk)[0])


def centralized_cox(frames: dict[str, pd.DataFrame], penalizer: float) -> dict:
    """Cox proportional hazards on the pooled training rows of FLamby's 39 columns
    (standardized with the training rows' mean and SD, so the ridge penalty treats every
    feature alike), scored on every region's test rows."""
    features = [c for c in next(iter(frames.values())).columns if c not in ("T", "E", "split")]
    train = pd.concat([f[f["split"] == "train"] for f in frames.values()])
    center, scale = train[features].mean(), train[features].std(ddof=0).replace(0, 1.0)
    target = np.array(
        list(zip(train["E"].astype(bool), train["T"].astype(float), strict=True)),
        dtype=[("event", bool), ("time", float)],
    )
    cox = CoxPHSurvivalAnalysis(alpha=penalizer).fit((train[features] - center) / scale, target)
    scores = {}
    for name, frame in frames.items():
        test = frame[frame["split"] == "test"]
        outcome = test[["T", "E"]].to_numpy(dtype=float)
        scores[name] = (outcome, cox.predict((test[features] - center) / scale))
    return {"penalizer": penalizer, **_cindices(scores)}


def _table(spec, path: Path):
    return load_site_table(path, spec, fresh_partition(spec, list(pd.read_csv(path).columns)))


def _cindices(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Pooled-test and per-region C-index of ``scores`` (region -> (time and event, risk))."""
    y = np.concatenate([s[0] for s in scores.values()])
    risk = np.concatenate([s[1] for s in scores.values()])
    return {
        "pooled_test_cindex": harrell(y[:, 0], y[:, 1], risk),
        "per_region": {
            name: {
                "cindex": harrell(t[:, 0], t[:, 1], r) if t[:, 1].any() else None,
                "test_records": len(t),
                "test_events": int(t[:, 1].sum()),
            }
            for name, (t, r) in scores.items()
        },
    }


def one_run(spec, sites: dict[str, Path], out: Path) -> dict:
    """One federated run, scored exactly from its final model on every region's test rows."""
    started = time.perf_counter()
    summary = simulate(spec, sites, out)
    seconds = round(time.perf_counter() - started, 1)
    if summary["status"] != "completed":
        raise RuntimeError(f"the run did not complete: {summary['error']}")
    tables = {name: _table(spec, path) for name, path in sites.items()}
    exact = _cindices(final_scores(spec, tables, out))
    pooled = summary["metrics"].get("pooled") or {}
    return {
        **exact,
        "released_cindex": pooled.get("cindex"),
        "released_cindex_ci": pooled.get("cindex_ci"),
        "released_minus_exact": (
            None if pooled.get("cindex") is None else pooled["cindex"] - exact["pooled_test_cindex"]
        ),
        "released_per_region": {
            name: (site.get("cindex"), site.get("cindex_ci"))
            for name, site in summary["metrics"].get("per_site", {}).items()
        },
        "released_metrics": summary["metrics"],
        "site_epsilon": {name: site["epsilon"] for name, site in summary["sites"].items()},
        "planned_rounds": summary["planned_rounds"],
        "diagnostics": summary["diagnostics"],
        "seconds": seconds,
    }


def final_scores(spec, tables: dict[str, SiteTable], out: Path) -> dict[str, tuple]:
    """Each site's test (time, event) and the final model's risk scores, scaled as its node
    scales them (the card's pooled center, scale and bounds)."""
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    pooled = [row for row in card["scaling"] if row["source"] == "federation"]
    bounds = {row["feature"]: tuple(row["bounds"]) for row in card["scaling"] if row["bounds"]}
    shape = card["model"]
    model = build_model(shape["name"], len(card["features"]), shape["hidden"], shape["intervals"])
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    model.eval()
    scores = {}
    for name, table in tables.items():
        center, scale = resolve_scaling(
            table, spec, [r["center"] for r in pooled], [r["scale"] for r in pooled], bounds
        )
        x, y = encode(table, spec, center, scale, test=True, bounds=bounds)
        with torch.no_grad():
            scores[name] = (y, model(torch.from_numpy(x)).squeeze(-1).numpy())
    return scores


def summarize(epsilon: float | None, runs: list[dict]) -> dict:
    """Mean and SD over the runs of the pooled and per-region C-index."""
    pooled = [r["pooled_test_cindex"] for r in runs]
    regions = {}
    for name in runs[0]["per_region"]:
        values = [r["per_region"][name]["cindex"] for r in runs]
        values = [v for v in values if v is not None]
        regions[name] = {
            "cindex": float(np.mean(values)) if values else None,
            "cindex_sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "test_records": runs[0]["per_region"][name]["test_records"],
            "test_events": runs[0]["per_region"][name]["test_events"],
        }
    gaps = [r["released_minus_exact"] for r in runs if r["released_minus_exact"] is not None]
    return {
        "epsilon": epsilon,
        "released_minus_exact_mean": float(np.mean(gaps)) if gaps else None,
        "released_minus_exact_max_abs": float(np.max(np.abs(gaps))) if gaps else None,
        "released_withheld": len(runs) - len(gaps),
        "pooled_test_cindex": float(np.mean(pooled)),
        "pooled_test_cindex_sd": float(np.std(pooled, ddof=1)) if len(pooled) > 1 else 0.0,
        "per_region": regions,
        "runs": runs,
    }


def run(args: argparse.Namespace) -> dict:
    frames = region_frames(Path(args.data))
    features = [c for c in next(iter(frames.values())).columns if c not in ("T", "E", "split")]
    intervals = tuple(int(v) for v in args.intervals.split(","))
    epsilons = [None if e == "none" else float(e) for e in args.epsilons.split(",")]
    training = {
        "rounds": args.rounds,
        "steps-per-round": args.steps_per_round,
        "learning-rate": args.learning_rate,
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="allfed-tcga-") as tmp:
        sites = {}
        for region, frame in frames.items():
            sites[region] = Path(tmp) / f"{region}.csv"
            frame.to_csv(sites[region], index=False)
        reference = centralized_cox(frames, args.penalizer)
        print(f"centralized Cox (no DP): {_line(reference)}", flush=True)
        for epsilon in epsilons:
            spec = parse_spec(study_text(features, epsilon, intervals, training))
            repeats = args.repeats if epsilon else 1  # without DP a run is deterministic
            runs = [one_run(spec, sites, Path(tmp) / f"run-{epsilon}-{i}") for i in range(repeats)]
            results.append(summarize(epsilon, runs))
            print(_row(results[-1]), flush=True)
    return {
        "centralized_cox": reference,
        "results": results,
        "flamby": FLAMBY,
        "settings": {
            "engine": "federation.simulation.simulate",
            "training": training,  # None: chosen by the planner (allfed's default)
            "model": "discrete-time hazard, logistic risk score",
            "horizons": list(HORIZONS),
            "intervals": list(intervals),
            "strategy": "fedavg",
            "delta": 1e-5,
            "repeats": args.repeats,
            "split_sizes": {
                name: {
                    "train": int((f["split"] == "train").sum()),
                    "test": int((f["split"] == "test").sum()),
                }
                for name, f in frames.items()
            },
        },
    }


def _line(result: dict) -> str:
    regions = ", ".join(
        f"{name} {'n/a' if r['cindex'] is None else format(r['cindex'], '.3f')}"
        for name, r in result["per_region"].items()
    )
    return f"pooled-test C-index {result['pooled_test_cindex']:.3f} ({regions})"


def _row(result: dict) -> str:
    eps = "no DP" if result["epsilon"] is None else f"eps {result['epsilon']:g}"
    regions = ", ".join(
        f"{name} {'n/a' if r['cindex'] is None else format(r['cindex'], '.3f')}"
        for name, r in result["per_region"].items()
    )
    released = "; ".join(_released(run) for run in result["runs"])
    return (
        f"{eps:>7}: pooled-test C-index {result['pooled_test_cindex']:.3f} "
        f"(sd {result['pooled_test_cindex_sd']:.3f}, {len(result['runs'])} runs); {regions}\n"
        f"         released (DP) vs exact, per run: {released}"
    )


def _released(run: dict) -> str:
    """One run's released C-index with its interval beside the exact one, and the gap."""
    exact = run["pooled_test_cindex"]
    if run["released_cindex"] is None:
        return f"withheld (exact {exact:.3f})"
    low, high = run["released_cindex_ci"]
    return (
        f"{run['released_cindex']:.3f} ({low:.3f} to {high:.3f}) vs {exact:.3f} "
        f"(gap {run['released_minus_exact']:+.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(shared_data("tcga-brca")), help="folder of FLamby's files"
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=3, help="runs per DP setting")
    parser.add_argument("--epsilons", default="none,8,3,1", help="none (no DP) and epsilons")
    parser.add_argument("--intervals", default=",".join(map(str, INTERVALS)), help="days")
    parser.add_argument("--penalizer", type=float, default=0.01, help="the Cox ridge penalty")
    parser.add_argument("--rounds", type=int, help="default: the planner's (allfed's default)")
    parser.add_argument("--steps-per-round", type=int, help="default: the planner's")
    parser.add_argument("--learning-rate", type=float, help="default: the planner's")
    args = parser.parse_args()
    report = run(args)
    print(
        f"FLamby (pooled test): pooled training {FLAMBY['pooled_training']}, FedAvg "
        f"{FLAMBY['fedavg']}, FedAdam {FLAMBY['fedadam']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
