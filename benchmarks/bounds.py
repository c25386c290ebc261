"""Private bounds (``privacy.bounds``) on real and synthetic cohorts: how often each column gets
bounds, and how much of it they clip.

Each site's training values are binned as its node bins them (``client.features.bounds_counts``),
the pooled counts get the noise of the sites' release at the node's share of the budget
(``BOUNDS_SHARE``), and the server's ``estimate_bounds`` reads them. The noise is drawn here with
the release's exact SD from a seeded generator rather than OpenDP's, so that many draws are cheap
and a run repeats; its distribution is the same. Against the exact values the benchmark holds,
per column: the share of draws with no bounds (the column is then scaled per site, with a
warning), the share whose bounds clip more than 5% of the present values, and the median width
of the bounds over the values' range. Two baselines in the same run: ``fine`` reads only the
fine grid (and the missing bin), as the estimator did before it read coarser ones; ``records``
reads every grid but takes all the records for present values (the missing bin zeroed), as it
did before the histograms had a missing bin. The cohorts: Fed-Heart-Disease's categorical
form, every row of it with its missing values (cholesterol missing in 22% of training rows, ca
in 67%), and the demo's synthetic cohort as it is and with half its cholesterol and HbA1c
values missing.

    python benchmarks/bounds.py --json bounds.json [--draws 300] [--epsilons 1,3,8]
        [--readings fine,records,all] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from heart import (
    categorical_frames,
    categorical_study_text,
    default_heart_data,
    missing_frames,
    missing_study_text,
)
from inprocess import load_tables

import privacy.bounds as private_bounds
from federation.client.features import bounds_counts
from federation.synth import write_cohort
from federation.wire.spec import estimated_columns, parse_spec
from privacy.planner import share_noise

CLIPS_TOO_MUCH = 0.05
MOSTLY_MISSING = {"cholesterol": 0.5, "hba1c": 0.5}  # share of values masked in a cohort


def cohorts(data: Path, tmp: Path) -> dict[str, tuple]:
    """Heart's two forms (4 centres, no bounds declared) and the demo's synthetic cohort
    without its bounds, as it is and with ``MOSTLY_MISSING``."""
    training = {"rounds": None, "batch-size": None, "learning-rate": None}
    found = {}
    for name, frames_of, text_of in (
        ("heart", categorical_frames, categorical_study_text),
        ("heart-missing", missing_frames, missing_study_text),
    ):
        paths = {}
        for centre, frame in frames_of(data).items():
            paths[centre] = tmp / f"{name}-{centre}.csv"
            frame.to_csv(paths[centre], index=False)
        found[name] = (parse_spec(text_of(3.0, training, "federated", "estimated")), paths)
    files, study = write_cohort(tmp / "synthetic", n_sites=3, records_per_site=1000, seed=0)
    text = "\n".join(
        line for line in study.read_text().splitlines() if not line.startswith("bounds =")
    )
    found["synthetic"] = (parse_spec(text), files)
    rng = np.random.default_rng(0)
    masked = {}
    for site, path in files.items():
        frame = pd.read_csv(path)
        for column, share in MOSTLY_MISSING.items():
            frame.loc[rng.random(len(frame)) < share, column] = np.nan
        masked[site] = tmp / f"masked-{site}.csv"
        frame.to_csv(masked[site], index=False)
    found["synthetic-labs-missing"] = (parse_spec(text), masked)
    return found


def measure(spec, tables, epsilon: float, draws: int, reading: str, seed: int) -> dict:
    """Per column, over ``draws`` draws of the noise: no bounds, clipping, width
    (``reading``: ``fine``, ``records`` or ``all``, the module docstring's), on the sites'
    checked ``tables`` (one partition for every reading)."""
    spec = spec.with_overrides(privacy={"enabled": True, "target_epsilon": epsilon})
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
    private_bounds.RESOLUTIONS = (1,) if reading == "fine" else saved
    try:
        for _ in range(draws):
            pooled = sum(c + rng.normal(0.0, release_sd, c.shape) for c in counts)
            if reading == "records":
                pooled[:, private_bounds.MISSING_BIN] = 0.0
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
    parser.add_argument(
        "--readings", default="fine,records,all", help="fine and records (the baselines), all"
    )
    parser.add_argument("--data", type=Path, default=default_heart_data())
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="allfed-bounds-") as tmp:
        for cohort, (spec, paths) in cohorts(args.data, Path(tmp)).items():
            tables = load_tables(spec, paths)
            for epsilon in (float(e) for e in args.epsilons.split(",")):
                for reading in args.readings.split(","):
                    row = measure(spec, tables, epsilon, args.draws, reading, seed=0)
                    row.update(cohort=cohort, epsilon=epsilon, reading=reading)
                    results.append(row)
                    cells = ", ".join(
                        f"{c} {v['no_bounds']:.0%}/{v['clips_over_5pct']:.0%}"
                        for c, v in row["columns"].items()
                    )
                    print(
                        f"{cohort}, epsilon {epsilon:g}, {reading} (n {row['n_records']}, "
                        f"noise SD {row['noise_sd_per_bin']:.0f}): no bounds / clips >5%: {cells}",
                        flush=True,
                    )
    if args.json:
        args.json.write_text(json.dumps({"draws": args.draws, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
