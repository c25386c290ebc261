"""Private bounds (``privacy.bounds``) on real and synthetic cohorts: how often each column gets
bounds, and how much of it they clip.

Each site's training values are binned as its node bins them (``client.features.bounds_counts``),
the pooled counts get the noise of the sites' release at the node's share of the budget
(``BOUNDS_SHARE``), and the server's ``estimate_bounds`` reads them. The noise is drawn here with
the release's exact SD from a seeded generator rather than OpenDP's, so that many draws are cheap
and a run repeats; its distribution is the same. Against the exact values the benchmark holds,
per column: the share of draws with no bounds (the column is then scaled per site, with a
warning), the share whose bounds clip more than 5% of the present values, and the median width
of the bounds over the values' range. ``--grids fine`` reads only the fine grid, as the
estimator did before it read coarser ones, as the baseline of the same run.

    python benchmarks/bounds.py --json bounds.json [--draws 300] [--epsilons 1,3,8]
        [--grids fine,all] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from heart import categorical_frames, categorical_study_text, default_heart_data
from inprocess import load_tables

import privacy.bounds as private_bounds
from federation.client.features import bounds_counts
from federation.synth import write_cohort
from federation.wire.spec import estimated_columns, parse_spec
from privacy.planner import share_noise

CLIPS_TOO_MUCH = 0.05


def cohorts(data: Path, tmp: Path) -> dict[str, tuple]:
    """Heart (4 centres, no bounds declared) and the demo's synthetic cohort without its bounds."""
    paths = {}
    for centre, frame in categorical_frames(data).items():
        paths[centre] = tmp / f"{centre}.csv"
        frame.to_csv(paths[centre], index=False)
    training = {"rounds": None, "batch-size": None, "learning-rate": None}
    heart = parse_spec(categorical_study_text(3.0, training, "federated", "estimated"))
    files, study = write_cohort(tmp / "synthetic", n_sites=3, records_per_site=1000, seed=0)
    text = "\n".join(
        line for line in study.read_text().splitlines() if not line.startswith("bounds =")
    )
    return {"heart": (heart, paths), "synthetic": (parse_spec(text), files)}


def measure(spec, paths, epsilon: float, draws: int, fine_only: bool, seed: int) -> dict:
    """Per column, over ``draws`` draws of the noise: no bounds, clipping, width."""
    spec = spec.with_overrides(privacy={"enabled": True, "target_epsilon": epsilon})
    tables = load_tables(spec, paths)
    names = estimated_columns(spec)
    counts = [bounds_counts(t, spec) for t in tables.values()]
    n_records = sum(t.n_train for t in tables.values())
    noise = share_noise(private_bounds.BOUNDS_SHARE, epsilon, spec.privacy.delta)
    release_sd = noise * private_bounds.histogram_sensitivity(len(names))
    pooled_sd = private_bounds.histogram_noise_sd(len(names), noise, len(tables))
    values = np.concatenate([t.numeric[~t.is_test] for t in tables.values()])
    rng = np.random.default_rng(seed)
    found = {c: [] for c in names}
    saved = private_bounds.RESOLUTIONS
    private_bounds.RESOLUTIONS = (1,) if fine_only else saved
    try:
        for _ in range(draws):
            pooled = sum(c + rng.normal(0.0, release_sd, c.shape) for c in counts)
            estimated = private_bounds.estimate_bounds(pooled, pooled_sd, n_records)
            for column, bounds in zip(names, estimated, strict=True):
                found[column].append(bounds)
    finally:
        private_bounds.RESOLUTIONS = saved
    result = {}
    for column in names:
        present = values[:, spec.features.numeric.index(column)]
        present = present[~np.isnan(present)]
        given = [b for b in found[column] if b is not None]
        clipped = [np.mean((present < lo) | (present > hi)) for lo, hi in given]
        widths = [(hi - lo) / (present.max() - present.min()) for lo, hi in given]
        result[column] = {
            "no_bounds": 1 - len(given) / draws,
            "clips_over_5pct": sum(c > CLIPS_TOO_MUCH for c in clipped) / draws,
            "median_width_over_range": float(np.median(widths)) if widths else None,
        }
    return {"n_records": n_records, "noise_sd_per_bin": pooled_sd, "columns": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--grids", default="fine,all", help="fine (the baseline), all, or both")
    parser.add_argument("--data", type=Path, default=default_heart_data())
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="allfed-bounds-") as tmp:
        for cohort, (spec, paths) in cohorts(args.data, Path(tmp)).items():
            for epsilon in (float(e) for e in args.epsilons.split(",")):
                for grids in args.grids.split(","):
                    row = measure(spec, paths, epsilon, args.draws, grids == "fine", seed=0)
                    row.update(cohort=cohort, epsilon=epsilon, grids=grids)
                    results.append(row)
                    cells = ", ".join(
                        f"{c} {v['no_bounds']:.0%}/{v['clips_over_5pct']:.0%}"
                        for c, v in row["columns"].items()
                    )
                    print(
                        f"{cohort}, epsilon {epsilon:g}, {grids} grids (n {row['n_records']}, "
                        f"noise SD {row['noise_sd_per_bin']:.0f}): no bounds / clips >5%: {cells}",
                        flush=True,
                    )
    if args.json:
        args.json.write_text(json.dumps({"draws": args.draws, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
