"""How close differentially private Kaplan-Meier curves come to the exact ones, and whether their
95% CIs cover.

Two cohorts: Fed-TCGA-BRCA (FLamby's 6 regions as the sites, every patient of its split: an
analysis covers both partitions) on the survival benchmark's intervals, and synthetic survival
cohorts (4 sites of about 1,500 records, ``allfed synth --task survival``, a fresh cohort each
repeat) on theirs. Each repeat runs what ``allfed analyze km`` runs, without Flower in between:
every site's exact counts and its OpenDP release (``federation.client.queries.exact_answer``,
``privacy.kaplan_meier.release``), then the aggregator's pooling (``federation.server.km``).

Reported per epsilon (and without noise: the estimator alone) and horizon, for the pooled curve
and, on Fed-TCGA-BRCA, for each region's own curve (``site_curves``) against its own records:
the exact Kaplan-Meier estimate from the same records (scikit-survival, raw times), the released
survival's mean, bias and RMSE against it, the mean 95% CI width, how often the CI covers the
exact estimate, and how often the horizon was shown at all (not held back). For the synthetic
cohorts also the coverage of the population's survival (the generator's: per-site Kaplan-Meier
estimates of 200,000 records each, weighted by the repeat's records per site, whose sizes the
generator draws), which is what a CI of noise and sampling is for; the exact estimate of the
same records moves with them, so its coverage is conservative.

    python benchmarks/km.py --json km.json [--repeats K] [--synthetic-repeats K] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from analysis import _all_records  # this folder's analysis.py: a site's whole table
from heart import shared_data
from sksurv.nonparametric import kaplan_meier_estimator
from tcga_brca import INTERVALS, region_frames, study_text

from federation.client.queries import exact_answer
from federation.server.km import pooled_km
from federation.synth import HORIZONS, synthesize_cohort, write_cohort
from federation.wire.queries import AnalysisRequest, build_query, planned_release
from federation.wire.spec import load_spec, parse_spec
from privacy.kaplan_meier import release

EPSILONS = (0.5, 1.0, 3.0, 8.0)
DELTA = 1e-5


def kaplan_meier_at(time: np.ndarray, event: np.ndarray, days) -> list[float]:
    """scikit-survival's estimate at each of ``days`` (events at a day included)."""
    x, s = kaplan_meier_estimator(np.asarray(event, bool), np.asarray(time, float))
    return [float(s[x <= d][-1]) if (x <= d).any() else 1.0 for d in days]


def released_curves(spec, exact: dict, epsilon: float | None) -> dict:
    """The result one analysis releases (``epsilon`` None: the exact counts, no noise): its
    overall curve first in ``curves``, one curve per site in ``site_curves``."""
    request = AnalysisRequest("km", epsilon or 1.0, DELTA)
    query = build_query(request, spec)
    if epsilon is None:
        return pooled_km(spec, request, query, exact, 0.0)
    noise = planned_release(request).noise_multiplier
    released = {site: release(query, cells, noise) for site, cells in exact.items()}
    return pooled_km(spec, request, query, released, noise)


def horizon_rows(curves: list[dict], exact: list[float], horizons) -> list[dict]:
    """Per horizon, the released survival against the exact estimate."""
    rows = []
    for h, reference in zip(horizons, exact, strict=True):
        points = [c["horizons"][f"{h:g}"] for c in curves]
        shown = [p for p in points if p["survival"] is not None]
        values = np.array([p["survival"] for p in shown])
        cis = np.array([p["survival_ci"] for p in shown]).reshape(-1, 2)
        row = {
            "horizon": h,
            "exact": round(reference, 4),
            "shown": len(shown) / len(points),
            "mean": _round(values.mean()) if len(shown) else None,
            "bias": _round(values.mean() - reference) if len(shown) else None,
            "rmse": _round(np.sqrt(np.mean((values - reference) ** 2))) if len(shown) else None,
            "ci_width": _round(np.mean(cis[:, 1] - cis[:, 0])) if len(shown) else None,
            "covers_exact": _covers(cis, reference),
        }
        rows.append(row)
    return rows


def _covers(cis: np.ndarray, value) -> float | None:
    if not len(cis):
        return None
    value = np.asarray(value).reshape(-1)
    return _round(np.mean((cis[:, 0] <= value) & (value <= cis[:, 1])))


def _round(x) -> float:
    return round(float(x), 4)


def tcga(data: Path, repeats: int, tmp: Path) -> dict:
    frames = region_frames(data)
    features = [c for c in next(iter(frames.values())).columns if c not in ("T", "E", "split")]
    spec = parse_spec(study_text(features, None, INTERVALS))
    sites = {}
    for region, frame in frames.items():
        sites[region] = tmp / f"{region}.csv"
        frame.to_csv(sites[region], index=False)
    tables = {name: _all_records(path, spec) for name, path in sites.items()}
    request = AnalysisRequest("km", 1.0, DELTA)
    query = build_query(request, spec)
    exact_cells = {n: exact_answer(request, query, t, spec) for n, t in tables.items()}
    time_ = np.concatenate([t.time for t in tables.values()])
    event = np.concatenate([t.label for t in tables.values()])
    horizons = list(spec.study.horizons)
    exact = kaplan_meier_at(time_, event, horizons)
    exact_by_site = {n: kaplan_meier_at(t.time, t.label, horizons) for n, t in tables.items()}
    results = []
    for epsilon in (None, *EPSILONS):
        started = time.perf_counter()
        k = 1 if epsilon is None else repeats
        released = [released_curves(spec, exact_cells, epsilon) for _ in range(k)]
        seconds = round((time.perf_counter() - started) / k, 4)
        results.append(
            {
                "epsilon": epsilon,
                "repeats": k,
                "seconds_per_analysis": seconds,
                "horizons": horizon_rows([r["curves"][0] for r in released], exact, horizons),
                "per_site": {  # each region's own curve against its own records' estimate
                    name: horizon_rows(
                        [r["site_curves"][i] for r in released], exact_by_site[name], horizons
                    )
                    for i, name in enumerate(tables)
                },
            }
        )
        _print("tcga-brca", results[-1])
        for name, rows in results[-1]["per_site"].items():
            _print(f"  region {name}", {"epsilon": epsilon, "horizons": rows})
    return {
        "records": len(time_),
        "events": int(event.sum()),
        "sites": {n: len(t.time) for n, t in tables.items()},
        "intervals": list(INTERVALS),
        "results": results,
    }


def synthetic(repeats: int, tmp: Path, n_sites: int = 4, records: int = 1500) -> dict:
    horizons = list(HORIZONS)
    big = synthesize_cohort(n_sites, 200_000, seed=10_000, task="survival")
    site_truth = {
        name: kaplan_meier_at(f["time"][f["consent"] == 1], f["event"][f["consent"] == 1], horizons)
        for name, f in big.items()
    }
    by_epsilon: dict = {e: [] for e in (None, *EPSILONS)}
    exacts, truths = [], []
    for repeat in range(repeats):
        files, spec_path = write_cohort(tmp / f"synthetic-{repeat}", n_sites, records, seed=repeat,
                                        task="survival")  # fmt: skip
        spec = load_spec(spec_path)
        tables = {name: _all_records(path, spec) for name, path in files.items()}
        request = AnalysisRequest("km", 1.0, DELTA)
        query = build_query(request, spec)
        cells = {n: exact_answer(request, query, t, spec) for n, t in tables.items()}
        time_ = np.concatenate([t.time for t in tables.values()])
        event = np.concatenate([t.label for t in tables.values()])
        exacts.append(kaplan_meier_at(time_, event, horizons))
        weights = np.array([len(tables[name].time) for name in site_truth], dtype=float)
        truths.append(weights @ np.array(list(site_truth.values())) / weights.sum())
        for epsilon in by_epsilon:
            by_epsilon[epsilon].append(released_curves(spec, cells, epsilon)["curves"][0])
    results = []
    for epsilon, curves in by_epsilon.items():
        rows = []
        for i, h in enumerate(horizons):  # each repeat against its own exact estimate
            points = [c["horizons"][f"{h:g}"] for c in curves]
            shown = [j for j, p in enumerate(points) if p["survival"] is not None]
            values = np.array([points[j]["survival"] for j in shown])
            references = np.array([exacts[j][i] for j in shown])
            truth = np.array([truths[j][i] for j in shown])
            cis = np.array([points[j]["survival_ci"] for j in shown]).reshape(-1, 2)
            rows.append(
                {
                    "horizon": h,
                    "truth_mean": _round(np.mean([u[i] for u in truths])),
                    "exact_mean": _round(np.mean([e[i] for e in exacts])),
                    "shown": len(shown) / len(points),
                    "bias": _round(np.mean(values - references)),
                    "rmse": _round(np.sqrt(np.mean((values - references) ** 2))),
                    "ci_width": _round(np.mean(cis[:, 1] - cis[:, 0])),
                    "covers_exact": _covers(cis, references),
                    "covers_truth": _covers(cis, truth),
                }
            )
        results.append({"epsilon": epsilon, "repeats": len(curves), "horizons": rows})
        _print("synthetic", results[-1])
    return {"sites": n_sites, "records_per_site": records, "results": results}


def _print(name: str, result: dict) -> None:
    eps = "no noise" if result["epsilon"] is None else f"eps {result['epsilon']:g}"
    parts = []
    for row in result["horizons"]:
        exact = row.get("exact", row.get("exact_mean"))
        if row["bias"] is None:
            parts.append(f"{row['horizon']}d exact {exact:.3f} held back in every draw")
            continue
        text = (
            f"{row['horizon']}d exact {exact:.3f} bias {row['bias']:+.4f} rmse {row['rmse']:.4f} "
            f"ci {row['ci_width']:.3f} covers {row['covers_exact']:.2f}"
        )
        if "covers_truth" in row:
            text += f"/{row['covers_truth']:.2f} truth"
        parts.append(text + ("" if row["shown"] == 1 else f" shown {row['shown']:.2f}"))
    print(f"{name} {eps:>8}: " + "; ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(shared_data("tcga-brca")), help="FLamby's files")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=500, help="noise draws on TCGA-BRCA")
    parser.add_argument("--synthetic-repeats", type=int, default=200, help="synthetic cohorts")
    parser.add_argument("--cohorts", default="tcga_brca,synthetic", help="which to run")
    args = parser.parse_args()
    cohorts = args.cohorts.split(",")
    out: dict = {"settings": {"delta": DELTA, "epsilons": list(EPSILONS), "confidence": 0.95}}
    with tempfile.TemporaryDirectory(prefix="allfed-km-") as tmp:
        if "tcga_brca" in cohorts:
            out["tcga_brca"] = tcga(Path(args.data), args.repeats, Path(tmp))
        if "synthetic" in cohorts:
            out["synthetic"] = synthetic(args.synthetic_repeats, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
