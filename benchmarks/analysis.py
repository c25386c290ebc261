"""How close a differentially private Table 1 comes to the exact one, across epsilons.

A synthetic cohort (four sites of about 1,500 records) and the UCI heart disease data (four
hospitals) run through ``federation.simulation.analyze`` exactly as ``allfed analyze table1``
does, at epsilon 0.5, 1, 3 and 8, repeated; the exact table is computed from the same files in the
same run (the baseline). Reported per setting: the total's relative error, the mean absolute
error of level percentages (percentage points), the error of means as a fraction of their
declared range, the share of overall cells withheld, and seconds per analysis.

    python benchmarks/analysis.py --json analysis.json [--repeats K] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from heart import BOUNDS, FEATURES, flamby_frames  # this folder's heart.py: the same data prep

from federation.client.data import load_site_table, read_table
from federation.client.partition import fresh_partition
from federation.client.queries import exact_answer
from federation.queries import AnalysisRequest, build_query
from federation.simulation import analyze
from federation.spec import load_spec, parse_spec
from federation.synth import write_cohort
from privacy.statistics import COUNT, PRESENT, TOTAL

EPSILONS = (0.5, 1.0, 3.0, 8.0)


def heart_study(tmp: Path, data: Path) -> tuple[dict[str, Path], Path]:
    sites = {}
    for center, frame in flamby_frames(data).items():
        sites[center] = tmp / f"{center}.csv"
        frame.to_csv(sites[center], index=False)
    bounds = ", ".join(f"{k} = [{lo}, {hi}]" for k, (lo, hi) in BOUNDS.items())
    spec = tmp / "heart.toml"
    spec.write_text(
        f'[study]\nname = "heart"\nlabel = "disease"\nsplit = "split"\n'
        f"[features]\nnumeric = {json.dumps(FEATURES)}\nbounds = {{ {bounds} }}\n"
    )
    parse_spec(spec.read_text())
    return sites, spec


def exact_table(spec, sites: dict[str, Path], request: AnalysisRequest) -> dict:
    """The non-private table: each site's exact cells, summed (the benchmark holds the data)."""
    query = build_query(request, spec)
    pooled: dict = {}
    for path in sites.values():
        cells = exact_answer(
            request,
            query,
            load_site_table(path, spec, fresh_partition(spec, _columns(path)), trainable=False),
            spec,
        )
        for (_, variable, level, statistic), value in cells.items():
            key = (variable, level, statistic)
            pooled[key] = pooled.get(key, 0.0) + value
    return pooled


def errors(result: dict, exact: dict, spec) -> dict:
    total = exact[(TOTAL, TOTAL, COUNT)]
    percent_errors, mean_errors, withheld, cells = [], [], 0, 0
    for row in result["rows"]:
        variable = row["variable"]
        cells += 1
        if "mean" in row:
            if row["mean"] is None:
                withheld += 1
                continue
            n = exact[(variable, PRESENT, COUNT)]
            centre = sum(spec.features.bounds[variable]) / 2
            truth = centre + exact[(variable, PRESENT, "sum")] / n
            low, high = spec.features.bounds[variable]
            mean_errors.append(abs(row["mean"] - truth) / (high - low))
            continue
        if row["count"] is None:
            withheld += 1
            continue
        percent_errors.append(
            abs(row["percent"] - 100 * exact[(variable, row["level"], COUNT)] / total)
        )
    return {
        "total_relative_error": abs(result["total"] - total) / total,
        "percent_mae_points": float(np.mean(percent_errors)) if percent_errors else None,
        "mean_error_of_range": float(np.mean(mean_errors)) if mean_errors else None,
        "withheld_share": withheld / cells if cells else 0.0,
    }


def run_cohort(name: str, spec_path: Path, sites: dict[str, Path], repeats: int, tmp: Path):
    spec = load_spec(spec_path)
    rows = []
    for epsilon in EPSILONS:
        request = AnalysisRequest("table1", epsilon, 1e-6, spec.privacy.accountant)
        exact = exact_table(spec, sites, request)
        runs = []
        for k in range(repeats):
            started = time.perf_counter()
            summary = analyze(spec, sites, request, tmp / f"{name}-{epsilon}-{k}")
            seconds = time.perf_counter() - started
            runs.append({**errors(summary["result"], exact, spec), "seconds": seconds})
        row = {"cohort": name, "epsilon": epsilon, "records": exact[(TOTAL, TOTAL, COUNT)]}
        for key in runs[0]:
            values = [r[key] for r in runs if r[key] is not None]
            row[key] = float(np.mean(values)) if values else None
        rows.append(row)
        print(
            f"{name:>9} eps {epsilon:>3g}: total error {row['total_relative_error']:.2%}, "
            f"level % error {row['percent_mae_points']:.2f} points, mean error "
            f"{row['mean_error_of_range']:.2%} of range, withheld {row['withheld_share']:.0%}, "
            f"{row['seconds']:.1f} s",
            flush=True,
        )
    return rows


def main() -> None:
    default_data = Path(__file__).resolve().parents[2] / "shared/data/uci-heart-disease/raw"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=str(default_data), help="folder of the raw UCI files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="allfed-analysis-") as tmp:
        tmp = Path(tmp)
        files, spec = write_cohort(tmp / "synthetic", n_sites=4, records_per_site=1500, seed=3)
        results = run_cohort("synthetic", spec, files, args.repeats, tmp)
        heart_sites, heart_spec = heart_study(tmp, Path(args.data))
        results += run_cohort("heart", heart_spec, heart_sites, args.repeats, tmp)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=2) + "\n")


def _columns(path) -> list[str]:
    """The file's columns (a fresh partition's whole-row identity)."""
    return list(read_table(Path(path)).columns)


if __name__ == "__main__":
    main()
