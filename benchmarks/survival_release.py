"""A survival run end to end on a synthetic multi-site cohort: does the C-index it releases say
what its final model does, and does the model rank like a centralized Cox fit?

Each repeat writes a fresh ``allfed synth --task survival`` cohort (its own seed), runs it
through ``federation.simulation.simulate`` at allfed's defaults (the planner's training
settings, the spec's budget) and then, holding the data, scores the final model record by
record on every site's test rows (the partition each node pinned in its ledger, encoded with
the model card's scaling, as the nodes encode them): Harrell's C-index (scikit-survival). Beside
it: the C-index the run released from the sites' DP evaluation releases, with its 95% interval
and how it was read (``cindex_method``), and a centralized, non-private Cox model
(scikit-survival, ridge 0.01) fitted on the pooled training rows and scored on the same test
rows. It prints and writes, over the repeats, the released value's gap to the exact one (mean,
SD, share within 0.01, interval coverage) and the exact C-index's gap to Cox's.

    python benchmarks/survival_release.py --json out.json [--sites 5] [--records 2000]
        [--epsilon 3] [--repeats 10] [--seed 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from tcga_brca import final_scores

from federation.client.data import SiteTable, load_site_table
from federation.client.features import clip_to_bounds, encode
from federation.client.partition import Partition
from federation.simulation import simulate
from federation.synth import write_cohort
from federation.wire.spec import StudySpec, load_spec
from privacy.ledger import Ledger


def run_tables(spec: StudySpec, sites: dict[str, Path], run: Path) -> dict[str, SiteTable]:
    """Every site's table with the partition its node pinned in its ledger in the run (the
    synthetic cohorts split by a site's secret, not by a column)."""
    tables = {}
    for name, path in sites.items():
        book = Ledger(run / "ledgers" / f"{name}.sqlite")
        partition = Partition(book.partition_definition(), book.partition_secret())
        tables[name] = load_site_table(path, spec, partition)
    return tables


def cox_cindex(spec: StudySpec, tables: list[SiteTable]) -> float:
    """A centralized Cox fit's test C-index: every site's training rows pooled, standardized
    with their mean and SD (exact, no DP), scored on the pooled test rows."""
    train = np.concatenate([clip_to_bounds(t.numeric[~t.is_test], spec) for t in tables])
    center, scale = np.nanmean(train, 0), np.nanstd(train, 0)
    bounds = spec.features.bounds
    rows = {
        test: [encode(t, spec, center, scale, test=test, bounds=bounds) for t in tables]
        for test in (False, True)
    }
    (x, y), (tx, ty) = (
        (np.concatenate([r[0] for r in rows[test]]), np.concatenate([r[1] for r in rows[test]]))
        for test in (False, True)
    )
    target = np.array([(bool(e), t) for t, e in y], dtype=[("event", bool), ("time", float)])
    cox = CoxPHSurvivalAnalysis(alpha=0.01).fit(x, target)
    return harrell(ty, cox.predict(tx))


def harrell(outcome: np.ndarray, risk: np.ndarray) -> float:
    return float(concordance_index_censored(outcome[:, 1] > 0.5, outcome[:, 0], risk)[0])


def one_run(args: argparse.Namespace, seed: int, root: Path) -> dict:
    files, spec_path = write_cohort(
        root / "data", args.sites, args.records, seed=seed, task="survival"
    )
    spec = load_spec(spec_path).with_overrides(privacy={"target-epsilon": args.epsilon})
    started = time.perf_counter()
    summary = simulate(spec, files, root / "run")
    if summary["status"] != "completed":
        raise RuntimeError(f"the run did not complete: {summary['error']}")
    tables = run_tables(spec, files, root / "run")
    scores = final_scores(spec, tables, root / "run").values()
    outcome = np.concatenate([y for y, _ in scores])
    risk = np.concatenate([r for _, r in scores])
    pooled = summary["metrics"]["pooled"]
    exact = harrell(outcome, risk)
    return {
        "seed": seed,
        "test_records": len(outcome),
        "test_events": int(outcome[:, 1].sum()),
        "exact_cindex": exact,
        "cox_cindex": cox_cindex(spec, list(tables.values())),
        "released_cindex": pooled["cindex"],
        "released_cindex_ci": pooled["cindex_ci"],
        "cindex_method": pooled["cindex_method"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarize(runs: list[dict]) -> dict:
    shown = [r for r in runs if r["released_cindex"] is not None]
    gaps = np.array([r["released_cindex"] - r["exact_cindex"] for r in shown])
    covered = [r["released_cindex_ci"][0] <= r["exact_cindex"] <= r["released_cindex_ci"][1]
               for r in shown]  # fmt: skip
    to_cox = np.array([r["exact_cindex"] - r["cox_cindex"] for r in runs])
    return {
        "runs": len(runs),
        "released_withheld": len(runs) - len(shown),
        "released_minus_exact_mean": float(gaps.mean()) if len(gaps) else None,
        "released_minus_exact_sd": float(gaps.std()) if len(gaps) else None,
        "released_minus_exact_rmse": float(np.sqrt((gaps**2).mean())) if len(gaps) else None,
        "released_within_0.01": float(np.mean(np.abs(gaps) <= 0.01)) if len(gaps) else None,
        "released_interval_coverage": float(np.mean(covered)) if covered else None,
        "exact_minus_cox_mean": float(to_cox.mean()),
        "exact_minus_cox_sd": float(to_cox.std()),
        "exact_within_0.02_of_cox": float(np.mean(np.abs(to_cox) <= 0.02)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=Path("survival_release.json"))
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--records", type=int, default=2000, help="per site")
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=200, help="the first cohort's seed")
    args = parser.parse_args()
    runs = []
    for seed in range(args.seed, args.seed + args.repeats):
        with tempfile.TemporaryDirectory(prefix="allfed-survival-") as tmp:
            runs.append(one_run(args, seed, Path(tmp)))
        r = runs[-1]
        released = "withheld" if r["released_cindex"] is None else f"{r['released_cindex']:.4f}"
        print(
            f"seed {seed}: {r['test_records']} test records, {r['test_events']} events; exact "
            f"C-index {r['exact_cindex']:.4f}, released {released} ({r['cindex_method']}), "
            f"Cox {r['cox_cindex']:.4f}",
            flush=True,
        )
    summary = summarize(runs)
    print(json.dumps(summary, indent=2))
    args.json.write_text(
        json.dumps({"settings": vars(args) | {"json": str(args.json)}, "summary": summary,
                    "runs": runs}, indent=2),
        encoding="utf-8",
    )  # fmt: skip
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
