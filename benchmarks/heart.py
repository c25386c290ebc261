"""Fed-Heart-Disease (FLamby) with allfed: non-private and DP at epsilon 1, 3 and 8.

Four hospitals (Cleveland, Hungary, Switzerland, VA Long Beach) are the four sites. The data are
prepared exactly as FLamby does (drop slope/ca/thal, drop rows with a missing value, binarize
`num`, per-center 66/34 split with random_state 43, one-hot `cp` and `restecg` with drop_first:
13 features), written to one CSV per center with a split column, and run through
`federation.simulation.simulate` as a user would. Scaling is allfed's default: one federated
standardization (noisy under DP) instead of FLamby's per-center z-scores. As in FLamby, the
final model is scored on every center's test rows; the run's own released (disclosure-controlled)
pooled metrics are recorded beside. ``--scalings federated,site`` runs every setting with each
scaling, to show what the federated standardization (its noisy sums are part of each site's
epsilon) gives over every center scaling by its own statistics.

``--form missing`` is a harder cohort, what a partner site's records look like: all 920 rows
with their missing values (slope, ca and thal are missing for most of three centers, and
cholesterol at Switzerland), 13 features of which 7 categorical, missing values imputed, and
(with ``--bounds estimated``) no bounds declared.

    python benchmarks/heart.py --json heart.json [--data DIR] [--repeats K] [--models logistic]
        [--scalings federated,site] [--bounds declared,estimated] [--rounds R --batch-size B
        --learning-rate L: default the planner's settings, as allfed's]
        [--form categorical|flamby|missing]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from inprocess import centralized, fedavg, federate, load_tables, risks
from scoring import score
from sklearn.model_selection import train_test_split

from federation.client.data import load_site_table, read_table
from federation.client.features import encode, resolve_scaling
from federation.client.partition import fresh_partition
from federation.simulation import simulate
from federation.wire.spec import parse_spec
from models.registry import build_model

CENTERS = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va-long-beach": "processed.va.data",
}
RAW_COLUMNS = [
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
    "slope", "ca", "thal", "num",
]  # fmt: skip
FEATURES = [
    "age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak",
    "cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2",
]  # fmt: skip
# Data-independent bounds from clinical ranges (chol is 0 where a center did not record it).
BOUNDS = {
    "age": [20, 90], "sex": [0, 1], "trestbps": [80, 220], "chol": [0, 600], "fbs": [0, 1],
    "thalach": [60, 220], "exang": [0, 1], "oldpeak": [-3, 7], "cp_2": [0, 1], "cp_3": [0, 1],
    "cp_4": [0, 1], "restecg_1": [0, 1], "restecg_2": [0, 1], "ca": [0, 3],
}  # fmt: skip
FLAMBY = {
    "source": "FLamby results_benchmark_fed_heart_disease, mean of seeds 42-46 (accuracy)",
    "pooled_training": {"pooled_test_accuracy": 0.795, "mean_client_accuracy": 0.735},
    "fedavg": {"pooled_test_accuracy": 0.748, "mean_client_accuracy": 0.685},
    "fedadam": {"pooled_test_accuracy": 0.779},
    "dp_example_mean_client_accuracy": {"no_dp": 0.713, "epsilon_1": "0.685-0.706"},
}
EPSILONS = (None, 1.0, 3.0, 8.0)


def flamby_split(labels: np.ndarray) -> np.ndarray:
    """FLamby's per-center split of a center's rows: "train" or "test", 66/34 with
    random_state 43, stratified by label where both classes have more than 2 rows."""
    stratify = labels if np.bincount(labels, minlength=2).min() > 2 else None
    train, _ = train_test_split(
        np.arange(len(labels)), train_size=0.66, test_size=0.34, random_state=43,
        shuffle=True, stratify=stratify,
    )  # fmt: skip
    split = np.full(len(labels), "test", dtype=object)
    split[train] = "train"
    return split


def flamby_frames(raw_dir: Path) -> dict[str, pd.DataFrame]:
    """FLamby's preprocessing and split, one frame per center with a `split` column."""
    frames = []
    for center, filename in CENTERS.items():
        frame = pd.read_csv(raw_dir / filename, header=None, names=RAW_COLUMNS, na_values="?")
        frame = frame.drop(columns=["slope", "ca", "thal"]).dropna(axis=0).astype(float)
        frame["disease"] = (frame["num"] > 0).astype(int)
        frame["split"] = flamby_split(frame["disease"].to_numpy())
        frame["center"] = center
        frames.append(frame)
    pooled = pd.concat(frames, ignore_index=True)
    pooled = pd.get_dummies(pooled, columns=["cp", "restecg"], drop_first=True, dtype=float)
    pooled = pooled.rename(columns=lambda c: c.replace(".0", ""))
    return {
        center: part[[*FEATURES, "disease", "split"]]
        for center, part in pooled.groupby("center", sort=False)
    }


NUMERIC = ["age", "trestbps", "chol", "thalach", "oldpeak"]
CATEGORICAL = {
    "sex": ["0", "1"], "fbs": ["0", "1"], "exang": ["0", "1"],
    "cp": ["1", "2", "3", "4"], "restecg": ["0", "1", "2"],
}  # fmt: skip


def categorical_frames(raw_dir: Path) -> dict[str, pd.DataFrame]:
    """FLamby's rows and split with its binary and one-hot columns as the categorical columns
    they are (allfed one-hot encodes them itself, every level): the same information as its 13
    features, and no standardized 0/1 column whose rare level dominates a row's norm."""
    frames = {}
    for center, frame in flamby_frames(raw_dir).items():
        out = frame[[*NUMERIC, "disease", "split"]].copy()
        out["cp"] = np.select(
            [frame.cp_2 == 1, frame.cp_3 == 1, frame.cp_4 == 1], ["2", "3", "4"], "1"
        )
        out["restecg"] = np.select([frame.restecg_1 == 1, frame.restecg_2 == 1], ["1", "2"], "0")
        for column in ("sex", "fbs", "exang"):
            out[column] = frame[column].astype(int).astype(str)
        frames[center] = out
    return frames


MISSING_NUMERIC = ["age", "trestbps", "chol", "thalach", "oldpeak", "ca"]
MISSING_CATEGORICAL = {
    **CATEGORICAL, "slope": ["1", "2", "3"], "thal": ["3", "6", "7"],
}  # fmt: skip


def missing_frames(raw_dir: Path) -> dict[str, pd.DataFrame]:
    """Every row of the four files with their missing values (920 records; FLamby keeps the
    740 without one) and all 13 features, the 7 categorical ones as categorical columns; a
    cholesterol of 0 (not recorded at Switzerland and some of VA) is missing. Split per center
    as FLamby splits (``flamby_split``)."""
    frames = {}
    for center, filename in CENTERS.items():
        frame = pd.read_csv(raw_dir / filename, header=None, names=RAW_COLUMNS, na_values="?")
        frame["chol"] = frame["chol"].replace(0, np.nan)
        out = frame[MISSING_NUMERIC].astype(float)
        for column in MISSING_CATEGORICAL:
            out[column] = frame[column].map(lambda v: None if pd.isna(v) else str(int(v)))
        out["disease"] = (frame["num"] > 0).astype(int)
        out["split"] = flamby_split(out["disease"].to_numpy())
        frames[center] = out
    return frames


def missing_study_text(
    epsilon: float | None,
    training: dict[str, float | int | None],
    scaling: str = "federated",
    bounds: str = "declared",
) -> str:
    """The study of ``missing_frames``: every column but age and sex imputed where missing,
    declared bounds for the numeric columns or none (the sites estimate them privately)."""
    levels = ", ".join(f"{k} = {json.dumps(v)}" for k, v in MISSING_CATEGORICAL.items())
    imputed = [c for c in [*MISSING_NUMERIC, *MISSING_CATEGORICAL] if c not in ("age", "sex")]
    rules = ", ".join(f'{c} = "impute"' for c in imputed)
    categorical = f"categorical = {{ {levels} }}\nmissing = {{ {rules} }}\n"
    return _study(MISSING_NUMERIC, categorical, epsilon, training, scaling, bounds)


def categorical_study_text(
    epsilon: float | None,
    training: dict[str, float | int | None],
    scaling: str = "federated",
    bounds: str = "declared",
) -> str:
    """The study of ``categorical_frames`` (declared bounds for the five numeric columns only,
    or none: the sites estimate them privately)."""
    levels = ", ".join(f"{k} = {json.dumps(v)}" for k, v in CATEGORICAL.items())
    return _study(NUMERIC, f"categorical = {{ {levels} }}\n", epsilon, training, scaling, bounds)


def study_text(
    epsilon: float | None,
    training: dict[str, float | int | None],
    scaling: str = "federated",
    bounds: str = "declared",
) -> str:
    """The study of FLamby's 13 numeric features."""
    return _study(FEATURES, "", epsilon, training, scaling, bounds)


def _study(
    numeric: list[str],
    categorical: str,
    epsilon: float | None,
    training: dict[str, float | int | None],
    scaling: str,
    bounds: str,
) -> str:
    """A study text; the training settings left as None are the planner's (allfed's default)."""
    privacy = f"target-epsilon = {epsilon}" if epsilon else "enabled = false"
    declared = ", ".join(f"{k} = [{lo}, {hi}]" for k, (lo, hi) in BOUNDS.items() if k in numeric)
    settings = "".join(f"{key} = {value}\n" for key, value in training.items() if value is not None)
    return f"""
[study]
name = "fed-heart-disease"
label = "disease"
split = "split"
[features]
numeric = {json.dumps(numeric)}
{categorical}{f"bounds = {{ {declared} }}" if bounds == "declared" else ""}
scaling = "{scaling}"
[training]
{settings}[privacy]
{privacy}
delta = 1e-5
"""


def run(args: argparse.Namespace) -> dict:
    frames_of, text_of = FORMS[args.form]
    frames = frames_of(Path(args.data))
    results = []
    with tempfile.TemporaryDirectory(prefix="allfed-heart-") as tmp:
        sites = {}
        for center, frame in frames.items():
            sites[center] = Path(tmp) / f"{center}.csv"
            frame.to_csv(sites[center], index=False)
        training = {
            "rounds": args.rounds,
            "batch-size": args.batch_size,
            "learning-rate": args.learning_rate,
        }
        plain = parse_spec(text_of(None, training))
        reference = centralized(plain, load_tables(plain, sites))  # the split column's split
        print(f"centralized logistic regression (no DP): {_scores(reference)}", flush=True)
        settings = [
            (model, scaling, bounds, epsilon)
            for model in args.models.split(",")
            for scaling in args.scalings.split(",")
            for bounds in args.bounds.split(",")
            for epsilon in _epsilons(args.epsilons)
        ]
        for model, scaling, bounds, epsilon in settings:
            if bounds == "estimated" and (scaling != "federated" or epsilon is None):
                continue  # only DP with federated scaling estimates bounds
            text = text_of(epsilon, training, scaling, bounds)
            spec = parse_spec(text.replace("[training]", f'[model]\nname = "{model}"\n[training]'))
            if args.inprocess:
                runs = _in_process(spec, sites, args.repeats if epsilon else 1)
            else:
                folder = Path(tmp) / f"run-{model}-{scaling}-{bounds}-{epsilon}"
                runs = [_one_run(spec, sites, folder / str(i)) for i in range(args.repeats)]
            result = {"model": model, "scaling": scaling, "bounds": bounds}
            results.append({**result, **_mean_of(epsilon, runs)})
            print(_row(results[-1]), flush=True)
    return {
        "centralized": reference,
        "results": results,
        "flamby": FLAMBY,
        "settings": {
            "form": args.form,
            "engine": "in process, planner-chosen settings" if args.inprocess else "simulate",
            "training": training,  # None: chosen by the planner (allfed's default)
            "strategy": "fedavg",
            "repeats": args.repeats,
            "delta": 1e-5,
            "scalings": {
                "federated": "one federated standardization (DP sums of bounded values)",
                "site": "each center by its own training rows",
            },
            "split_sizes": {c: int((f["split"] == "train").sum()) for c, f in frames.items()},
        },
    }


FORMS = {
    "categorical": (categorical_frames, categorical_study_text),
    "flamby": (flamby_frames, study_text),
    "missing": (missing_frames, missing_study_text),
}


def _epsilons(text: str) -> list[float | None]:
    return [None if word.strip() == "none" else float(word) for word in text.split(",")]


def _in_process(spec, sites: dict[str, Path], repeats: int) -> list[dict]:
    """The node's functions in one process (``inprocess.py``), with the spec's training settings
    and the planner's where it leaves them out, as the node runs them."""
    tables = load_tables(spec, sites)
    runs = []
    for _ in range(repeats):
        federation = federate(spec, tables)
        final = fedavg(federation)
        pooled = np.concatenate([risks(final, s.x_test) for s in federation.sites])
        labels = np.concatenate([s.y_test for s in federation.sites])
        client = {
            s.name: float(np.mean((risks(final, s.x_test) >= 0.5) == (s.y_test == 1)))
            for s in federation.sites
        }
        runs.append(_scored(labels, pooled, client))
    return runs


def _scored(labels: np.ndarray, pooled: np.ndarray, client_accuracy: dict) -> dict:
    scores = score(labels, pooled)
    return {
        "pooled_test_accuracy": float(np.mean((pooled >= 0.5) == (labels == 1))),
        "pooled_test_auroc": scores["auroc"],
        "mean_client_accuracy": float(np.mean(list(client_accuracy.values()))),
        "client_accuracy": client_accuracy,
        **{k: v for k, v in scores.items() if k != "auroc"},
    }


def _one_run(spec, sites: dict[str, Path], out: Path) -> dict:
    """One federated run; DP noise comes from the OS, so runs differ and are repeated.

    FLamby scores the final model on the union of the centers' test sets, record by record.
    A site releases only disclosure-controlled statistics (a test set under the threshold, as
    Switzerland's 16 records, releases none), so the benchmark, which holds the public data,
    scores the released model itself, encoded exactly as the nodes encode; the run's own
    (coarsened, suppressed) pooled metrics are reported beside."""
    started = time.perf_counter()
    summary = simulate(spec, sites, out)
    seconds = round(time.perf_counter() - started, 1)
    if summary["status"] != "completed":
        raise RuntimeError(f"the run did not complete: {summary['error']}")
    scores = _test_scores(spec, sites, out)
    labels = np.concatenate([y for y, _ in scores.values()])
    pooled = np.concatenate([p for _, p in scores.values()])
    client_accuracy = {
        name: float(np.mean((p >= 0.5) == (y == 1))) for name, (y, p) in scores.items()
    }
    released = summary["metrics"].get("pooled") or {}
    return {
        **_scored(labels, pooled, client_accuracy),
        "scaling_warnings": summary.get("scaling_warnings"),
        "released_pooled_auroc": released.get("auroc"),
        "released_pooled_accuracy": released.get("accuracy"),
        "site_epsilon": {name: site["epsilon"] for name, site in summary["sites"].items()},
        "seconds": seconds,
    }


def _test_scores(spec, sites: dict[str, Path], out: Path) -> dict[str, tuple]:
    """Each center's test labels and the final model's risks, scaled as its node scales."""
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    pooled = [row for row in card["scaling"] if row["source"] == "federation"]
    pooled_center = [row["center"] for row in pooled]
    pooled_scale = [row["scale"] for row in pooled]
    bounds = {row["feature"]: tuple(row["bounds"]) for row in card["scaling"] if row["bounds"]}
    model = build_model(card["model"]["name"], len(card["features"]), card["model"]["hidden"])
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    model.eval()
    scores = {}
    for name, path in sites.items():
        table = load_site_table(path, spec, fresh_partition(spec, _columns(path)))
        center, scale = resolve_scaling(table, spec, pooled_center, pooled_scale, bounds)
        x, y = encode(table, spec, center, scale, test=True, bounds=bounds)
        with torch.no_grad():
            risk = torch.sigmoid(model(torch.from_numpy(x)).squeeze(-1)).numpy()
        scores[name] = (y, risk)
    return scores


def _mean_of(epsilon: float | None, runs: list[dict]) -> dict:
    """The contract's numbers are means over the repeats; their spread and the runs come too."""
    keys = ("pooled_test_accuracy", "pooled_test_auroc", "mean_client_accuracy", "citl",
            "calibration_intercept", "calibration_slope", "mean_predicted")  # fmt: skip
    result: dict = {"epsilon": epsilon}
    for key in keys:
        values = [run[key] for run in runs]
        result[key] = float(np.mean(values))
        result[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    result["runs"] = runs
    return result


def _row(result: dict) -> str:
    eps = "no DP" if result["epsilon"] is None else f"eps {result['epsilon']:g}"
    eps = f"{result['model']}, {result['scaling']} scaling, {result['bounds']} bounds, {eps}"
    cells = [
        f"{label} {result[key]:.3f} (sd {result[key + '_sd']:.3f})"
        for label, key in (
            ("pooled-test accuracy", "pooled_test_accuracy"),
            ("AUROC", "pooled_test_auroc"),
            ("CITL", "citl"),
            ("slope", "calibration_slope"),
            ("mean client accuracy", "mean_client_accuracy"),
        )
    ]
    return f"{eps:>38}: " + ", ".join(cells) + f" over {len(result['runs'])} runs"


def _scores(scores: dict) -> str:
    return (
        f"AUROC {scores['auroc']:.3f}, CITL {scores['citl']:+.3f}, intercept "
        f"{scores['calibration_intercept']:+.3f}, slope {scores['calibration_slope']:.3f}"
    )


def shared_data(relative: str) -> Path:
    """``shared/data/RELATIVE`` in the nearest folder above this file that has it."""
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "shared/data" / relative
        if candidate.is_dir():
            return candidate
    return Path("shared/data") / relative


def default_heart_data() -> Path:
    """The raw UCI heart-disease files (``shared_data``)."""
    return shared_data("uci-heart-disease/raw")


def main() -> None:
    default_data = default_heart_data()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data), help="folder of the raw UCI files")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--rounds", type=int, help="default: the planner's (allfed's default)")
    parser.add_argument("--learning-rate", type=float, help="default: the planner's")
    parser.add_argument("--batch-size", type=int, help="default: the planner's")
    parser.add_argument(
        "--bounds",
        default="declared,estimated",
        help="declared (clinical ranges in the spec), estimated (none declared: the sites "
        "estimate them privately), or both",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (DP is random)")
    parser.add_argument(
        "--scalings", default="federated", help="federated, site, or both (comma-separated)"
    )
    parser.add_argument("--models", default="logistic,mlp", help="logistic, mlp, or both")
    parser.add_argument(
        "--epsilons",
        default=",".join("none" if e is None else f"{e:g}" for e in EPSILONS),
        help="comma-separated target epsilons, none for no DP",
    )
    parser.add_argument(
        "--form",
        default="categorical",
        choices=tuple(FORMS),
        help="FLamby's rows with its binary and one-hot columns as categorical columns, or its "
        "13 numeric ones; or every row with its missing values (13 features, 7 categorical)",
    )
    parser.add_argument(
        "--inprocess",
        action="store_true",
        help="the node's functions in process with the planner's settings, not simulate",
    )
    args = parser.parse_args()
    report = run(args)
    print(
        f"FLamby: pooled training {FLAMBY['pooled_training']['pooled_test_accuracy']}, "
        f"FedAvg {FLAMBY['fedavg']['pooled_test_accuracy']} pooled-test accuracy; "
        f"mean client accuracy {FLAMBY['pooled_training']['mean_client_accuracy']} / "
        f"{FLAMBY['fedavg']['mean_client_accuracy']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _columns(path) -> list[str]:
    """The file's columns (a fresh partition's whole-row identity)."""
    return list(read_table(Path(path)).columns)


if __name__ == "__main__":
    main()
