"""Released evaluation metrics against the exact ones: is what the sites' DP evaluation says true?

For each cohort (the synthetic demo cohort, a larger synthetic cohort, FLamby's
Fed-Heart-Disease when its data is there) a model is fitted (logistic regression on the pooled
training rows: the evaluation does not care how a model was trained) and then evaluated over and
over exactly as a run does: each site's real releases (``client.evaluation``, OpenDP noise) on
its own test partition, pooled by the aggregator's real code (``server.evaluation``). The
benchmark holds the data, so it also scores the same model record by record on the same test
rows and reports, per evaluation budget and design, the mean error and RMSE of the released
pooled AUROC, per-site AUROC, calibration-in-the-large and calibration slope, and how often the
released 95% interval covers the exact value. Designs:

- ``final (two releases)``: the default, the final model evaluated once with histograms and
  rank sums;
- ``final (histograms only)``: one release at the whole budget, AUROC from the histograms;
- ``every round (10)``: ten evaluations (one per round of a 10-round run) sharing the budget.

    python benchmarks/evaluation.py --json evaluation.json [--repeats 20] [--budgets 1,3,8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from heart import flamby_frames, study_text
from scipy.special import logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from federation.client.data import load_site_table, read_table
from federation.client.evaluation import histogram_release, members_of, rank_release
from federation.client.features import encode
from federation.client.partition import fresh_partition
from federation.server import evaluation as ev
from federation.synth import write_cohort
from federation.wire.evaluation import POOLED_CELL, evaluation_noise, layout
from federation.wire.spec import load_spec
from privacy.accounting import calibrate_noise

CITL = "calibration_in_the_large_observed_minus_predicted"
DESIGNS = ("final (two releases)", "final (histograms only)", "every round (10)")


def cohort_tables(spec, files: dict[str, Path]):
    """Each site's table (a fresh site secret: the partition a site would pin) and the pooled
    training rows' scaling."""
    tables = {}
    for name, path in files.items():
        partition = fresh_partition(spec, list(read_table(Path(path)).columns))
        tables[name] = load_site_table(path, spec, partition)
    numeric = np.vstack([t.numeric[~t.is_test] for t in tables.values()])
    center = np.nan_to_num(np.nanmean(numeric, axis=0))
    scale = np.nanstd(numeric, axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    return tables, center, scale


def fitted_scores(spec, tables, center, scale):
    """Test labels, scores and evaluation members per site, of a logistic model fitted on the
    pooled training rows."""
    train = [encode(t, spec, center, scale, test=False) for t in tables.values()]
    x = np.vstack([a for a, _ in train])
    y = np.concatenate([b for _, b in train])
    model = LogisticRegression(max_iter=2000).fit(x, y)
    sites = {}
    for name, table in tables.items():
        x_test, y_test = encode(table, spec, center, scale, test=True)
        p = model.predict_proba(x_test)[:, 1]
        sites[name] = (y_test.astype(int), p, members_of(table, spec))
    return sites


def exact(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    slope = LogisticRegression(C=np.inf, max_iter=1000).fit(
        logit(np.clip(p, 1e-9, 1 - 1e-9))[:, None], y
    )
    return {"auroc": roc_auc_score(y, p), CITL: float(np.mean(y - p)), "slope": slope.coef_[0, 0]}


def released(spec, sites, budget: float, design: str) -> tuple[dict, dict]:
    """One evaluation as the run does it: the pooled metrics and each site's."""
    cells = layout(spec)
    delta, accountant = spec.privacy.delta, spec.privacy.accountant
    if design == "final (histograms only)":
        noise1 = calibrate_noise(budget, delta, 1.0, 1, accountant)
    else:
        evaluations = 10 if design == "every round (10)" else 1
        noise1, noise2 = evaluation_noise(budget, delta, accountant, evaluations)
    per_site = {
        name: ev.read_histograms(histogram_release(y, p, m, cells, noise1), cells, noise1)
        for name, (y, p, m) in sites.items()
    }
    pooled = ev.pool(per_site.values())
    if design != "final (histograms only)":
        requests = {
            c: r for c in cells.rank_cells() if (r := ev.rank_request(pooled[c])) is not None
        }
        ranks = {
            name: ev.read_ranks(
                rank_release(y, p, m, cells, requests, noise2), requests, cells, noise2
            )
            for name, (y, p, m) in sites.items()
        }
        pooled = ev.with_ranks(pooled, ranks.values())
        per_site = {name: ev.with_ranks(per_site[name], [ranks[name]]) for name in per_site}
    pooled = ev.reconcile(pooled, cells)
    return ev.cell_metrics(pooled[POOLED_CELL]), {
        name: ev.cell_metrics(cells_[POOLED_CELL]) for name, cells_ in per_site.items()
    }


def summarize(pairs: list[tuple[float | None, list[float] | None, float]]) -> dict:
    """Mean error, RMSE and coverage of (released, interval, exact) triples; n/a ones (``None``) are
    counted apart."""
    shown = [(r, ci, e) for r, ci, e in pairs if r is not None]
    if not shown:
        return {"na": len(pairs)}
    errors = np.array([r - e for r, _, e in shown])
    covered = [ci is not None and ci[0] <= e <= ci[1] for _, ci, e in shown]
    return {
        "mean_error": round(float(errors.mean()), 4),
        "rmse": round(float(np.sqrt((errors**2).mean())), 4),
        "coverage": round(float(np.mean(covered)), 3),
        "na": len(pairs) - len(shown),
    }


def benchmark(spec, files, budgets, repeats) -> dict:
    tables, center, scale = cohort_tables(spec, files)
    sites = fitted_scores(spec, tables, center, scale)
    y = np.concatenate([s[0] for s in sites.values()])
    p = np.concatenate([s[1] for s in sites.values()])
    truth = exact(y, p)
    site_truth = {name: exact(s[0], s[1])["auroc"] for name, s in sites.items()}
    result = {
        "test_records": len(y),
        "test_events": int(y.sum()),
        "exact": {k: round(float(v), 4) for k, v in truth.items()},
        "results": [],
    }
    for budget in budgets:
        for design in DESIGNS:
            rows = {"auroc": [], CITL: [], "slope": [], "site_auroc": []}
            for _ in range(repeats):
                pooled, per_site = released(spec, sites, budget, design)
                rows["auroc"].append((pooled["auroc"], pooled["auroc_ci"], truth["auroc"]))
                rows[CITL].append((pooled[CITL], pooled[f"{CITL}_ci"], truth[CITL]))
                rows["slope"].append(
                    (pooled["calibration_slope"], pooled["calibration_slope_ci"], truth["slope"])
                )
                for name, metrics in per_site.items():
                    rows["site_auroc"].append(
                        (metrics.get("auroc"), metrics.get("auroc_ci"), site_truth[name])
                    )
            entry = {"budget": budget, "design": design}
            entry.update({name: summarize(pairs) for name, pairs in rows.items()})
            result["results"].append(entry)
            print(_line(entry), flush=True)
    return result


def _line(entry: dict) -> str:
    parts = [f"eps {entry['budget']:g} {entry['design']:<24}"]
    for name in ("auroc", "site_auroc", CITL, "slope"):
        stats = entry[name]
        label = {CITL: "citl"}.get(name, name)
        if "rmse" in stats:
            parts.append(
                f"{label} err {stats['mean_error']:+.4f} rmse {stats['rmse']:.4f} "
                f"cover {stats['coverage']:.2f} n/a {stats['na']}"
            )
        else:
            parts.append(f"{label} n/a {stats['na']}")
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budgets", default="1,3,8")
    here = Path(__file__).resolve().parents[1]
    parser.add_argument(
        "--heart", type=Path, default=here.parent / "shared" / "data" / "uci-heart-disease" / "raw"
    )
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sites, records in (("synthetic demo", 3, 1000), ("synthetic large", 4, 4000)):
            files, spec_path = write_cohort(Path(tmp) / name, sites, records, seed=7)
            print(f"== {name}: {sites} sites x {records} records", flush=True)
            report[name] = benchmark(load_spec(spec_path), files, budgets, args.repeats)
        if args.heart.exists():
            heart = Path(tmp) / "heart"
            heart.mkdir()
            files = {}
            for center, frame in flamby_frames(args.heart).items():
                files[center] = heart / f"{center}.csv"
                frame.to_csv(files[center], index=False)
            training = {"rounds": 20, "batch-size": 32, "learning-rate": 0.5}
            (heart / "heart.toml").write_text(study_text(None, training))
            print("== Fed-Heart-Disease (FLamby's split)", flush=True)
            report["fed-heart-disease"] = benchmark(
                load_spec(heart / "heart.toml"), files, budgets, args.repeats
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
