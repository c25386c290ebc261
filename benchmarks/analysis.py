"""How close a differentially private Table 1 comes to the exact one, across epsilons.

A synthetic cohort (four sites of about 1,500 records; unstratified and ``--by sex``) and the UCI
heart disease data (four hospitals) run through ``federation.simulation.analyze`` exactly as
``allfed analyze table1`` does, at epsilon 0.5, 1, 3 and 8, repeated; the exact table is computed
from the same files in the same run (the baseline). Reported per setting (mean over repeats):
the total's relative error, the mean absolute error of the overall level percentages
(percentage points), the error of overall means as a fraction of their declared range; how often
a variable's percentages in a column add to 100 (and how often they are n/a together); the
largest gap between the strata's (and sites') counts and the overall count; how many counts,
percentages, means and SDs were n/a and how many small counts withheld; the coverage of the
released 95% CIs of every shown count, percentage, mean and SD (every column) against the exact
values; and seconds per analysis.

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
from federation.simulation import analyze
from federation.synth import write_cohort
from federation.wire.queries import AnalysisRequest, build_query
from federation.wire.spec import load_spec, parse_spec
from privacy.statistics import COUNT, PRESENT, SMALL_COUNT, TOTAL

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


def exact_cells_by_site(spec, sites: dict[str, Path], request: AnalysisRequest) -> dict:
    """The non-private cells of every site (the benchmark holds the data)."""
    query = build_query(request, spec)
    return {
        name: exact_answer(request, query, _all_records(path, spec), spec)
        for name, path in sites.items()
    }


def _columns(result: dict):
    """(scope, key, entry-of-row) for every column of the table."""
    yield "overall", None, lambda row: row
    for scope in ("sites", "groups"):
        for key in result[scope]:
            yield scope, key, lambda row, s=scope, k=key: row.get(s, {}).get(k)


def _parts(exact: dict, strata: list[str], scope: str, key: str | None) -> list:
    if scope == "overall":
        return [(site, s) for site in exact for s in strata]
    if scope == "sites":
        return [(key, s) for s in strata]
    return [(site, key) for site in exact]


def _summed(exact: dict, parts: list, variable: str, level: str, statistic: str) -> float:
    return sum(exact[site][(s, variable, level, statistic)] for site, s in parts)


def _covers(ci, truth: float, slack: float = 1e-9) -> bool:
    return ci[0] - slack <= truth <= ci[1] + slack


def evaluate(result: dict, exact: dict, query) -> dict:
    """Errors against the exact table, and the checks of a table that reads true: percentages
    that add to 100, strata and sites that add to the total, values marked n/a, and how often the
    released 95% CIs cover the exact values."""
    strata = list(query.strata)
    kinds = ("count", "percent", "mean", "sd")
    covered, shown, na = dict.fromkeys(kinds, 0), dict.fromkeys(kinds, 0), dict.fromkeys(kinds, 0)
    small, percent_groups, percent_shown, percent_100, percent_na = 0, 0, 0, 0, 0
    percent_errors, mean_errors = [], []
    numeric = {v.name: v for v in query.variables if v.numeric}
    # a numeric variable that is never missing has one level: its percent is 100 by definition
    whole = {v.name for v in query.variables if len(v.cells()) == 3}
    for scope, key, entry_of in _columns(result):
        parts = _parts(exact, strata, scope, key)
        column_total = _summed(exact, parts, TOTAL, TOTAL, COUNT)
        by_variable: dict[str, list] = {}
        for row in result["rows"]:
            entry = entry_of(row)
            if entry is None:
                continue
            variable = row["variable"]
            level = PRESENT if row["level"] == "mean (SD)" else row["level"]
            if query.variables:
                truth = _summed(exact, parts, variable, level, COUNT)
            else:  # a count's rows are strata
                truth = sum(
                    exact[site][(s, TOTAL, TOTAL, COUNT)] for site, s in parts if s == level
                )
            withheld, na_reasons = entry.get("withheld_reason", {}), entry.get("na_reason", {})
            checks = [("count", entry["count"], entry.get("count_ci"), truth)]
            if variable not in whole:
                by_variable.setdefault(variable, []).append(entry)
                true_percent = 100 * truth / column_total if column_total else None
                checks.append(("percent", entry["percent"], entry.get("percent_ci"), true_percent))
                if scope == "overall" and entry["percent"] is not None and true_percent is not None:
                    percent_errors.append(abs(entry["percent"] - true_percent))
            for kind, value, ci, true in checks:
                if value is not None and true is not None:
                    shown[kind] += 1
                    covered[kind] += _covers(ci, true)
                elif kind in na_reasons:
                    na[kind] += 1
            small += withheld.get("count") == SMALL_COUNT
            if variable in numeric and level == PRESENT:
                v = numeric[variable]
                n = _summed(exact, parts, variable, PRESENT, COUNT)
                s = _summed(exact, parts, variable, PRESENT, "sum")
                q = _summed(exact, parts, variable, PRESENT, "sumsq")
                true_mean = v.center + s / n
                true_sd = ((q - s * s / n) / (n - 1)) ** 0.5
                for kind, true in (("mean", true_mean), ("sd", true_sd)):
                    if entry[kind] is not None:
                        shown[kind] += 1
                        covered[kind] += _covers(entry[f"{kind}_ci"], true)
                    elif kind in na_reasons:
                        na[kind] += 1
                if scope == "overall" and entry["mean"] is not None:
                    low, high = v.bounds
                    mean_errors.append(abs(entry["mean"] - true_mean) / (high - low))
        for entries in by_variable.values():
            percents = [e["percent"] for e in entries]
            percent_groups += 1
            if all(p is not None for p in percents):
                percent_shown += 1
                percent_100 += abs(sum(percents) - 100) < 0.05
            elif all(p is None for p in percents):
                percent_na += 1
    total = result["total"]
    exact_total = sum(exact[site][(s, TOTAL, TOTAL, COUNT)] for site in exact for s in strata)
    return {
        "total_relative_error": abs(total - exact_total) / exact_total,
        "percent_mae_points": float(np.mean(percent_errors)) if percent_errors else None,
        "mean_error_of_range": float(np.mean(mean_errors)) if mean_errors else None,
        "percent_groups": percent_groups,
        "percent_add_to_100": percent_100 / percent_shown if percent_shown else None,
        "percent_groups_all_shown": percent_shown / percent_groups,
        "percent_groups_na": percent_na / percent_groups,
        "strata_minus_total": _gap(result, "groups", levels=True),
        "sites_minus_total": _gap(result, "sites", levels=False),
        "small_counts_withheld": small,
        **{f"na_{kind}": na[kind] for kind in kinds},
        **{f"shown_{kind}": shown[kind] for kind in kinds},
        **{
            f"coverage_{kind}": covered[kind] / shown[kind] if shown[kind] else None
            for kind in kinds
        },
    }


def _gap(result: dict, scope: str, levels: bool) -> float:
    """The largest |sum over the strata (or sites) - the overall count|, of the totals and (with
    ``levels``) of every level count shown in each stratum; 0 where the release allows it."""
    gaps = []
    parts = list(result[scope].values())
    if parts and None not in parts and result["total"] is not None:
        gaps.append(abs(sum(parts) - result["total"]))
    for row in result["rows"] if levels and result[scope] else ():
        values = [e["count"] for e in row.get(scope, {}).values()]
        if values and None not in values and row["count"] is not None:
            gaps.append(abs(sum(values) - row["count"]))
    return float(max(gaps)) if gaps else 0.0


SETTINGS = (("synthetic", None), ("synthetic", "sex"), ("heart", None))


def run_cohort(
    name: str, spec_path: Path, sites: dict[str, Path], by: str | None, repeats: int, tmp: Path
):
    spec = load_spec(spec_path)
    rows = []
    for epsilon in EPSILONS:
        request = AnalysisRequest("table1", epsilon, 1e-6, spec.privacy.accountant, by=by)
        query = build_query(request, spec)
        exact = exact_cells_by_site(spec, sites, request)
        runs = []
        for k in range(repeats):
            started = time.perf_counter()
            summary = analyze(spec, sites, request, tmp / f"{name}-{by}-{epsilon}-{k}")
            seconds = time.perf_counter() - started
            runs.append({**evaluate(summary["result"], exact, query), "seconds": seconds})
        records = sum(
            cells[(s, TOTAL, TOTAL, COUNT)] for cells in exact.values() for s in query.strata
        )
        row = {"cohort": name, "by": by, "epsilon": epsilon, "records": records}
        for key in runs[0]:
            values = [r[key] for r in runs if r[key] is not None]
            row[key] = float(np.mean(values)) if values else None
        for key in ("strata_minus_total", "sites_minus_total"):
            row[key] = max(r[key] for r in runs)
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    def share(x):
        return "-" if x is None else f"{x:.0%}"

    nas = "/".join(f"{row[f'na_{k}']:.1f}" for k in ("count", "percent", "mean", "sd"))
    coverage = "/".join(share(row[f"coverage_{k}"]) for k in ("count", "percent", "mean", "sd"))
    by = f" by {row['by']}" if row["by"] else ""
    return (
        f"{row['cohort']:>9}{by:<7} eps {row['epsilon']:>3g}: total error "
        f"{row['total_relative_error']:.2%}, level % error {row['percent_mae_points']:.2f} "
        f"points, mean error {row['mean_error_of_range']:.2%} of range; percentages shown in "
        f"full in {row['percent_groups_all_shown']:.0%} of variable-columns (n/a "
        f"{row['percent_groups_na']:.0%}), adding to 100 in {share(row['percent_add_to_100'])}"
        f"; strata - total {row['strata_minus_total']:g}, sites - total "
        f"{row['sites_minus_total']:g}; n/a count/%/mean/SD {nas}, small counts withheld "
        f"{row['small_counts_withheld']:.1f}; CI coverage count/%/mean/SD {coverage}; "
        f"{row['seconds']:.1f} s"
    )


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
        heart_sites, heart_spec = heart_study(tmp, Path(args.data))
        cohorts = {"synthetic": (spec, files), "heart": (heart_spec, heart_sites)}
        results = []
        for name, by in SETTINGS:
            results += run_cohort(name, *cohorts[name], by, args.repeats, tmp)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=2) + "\n")


def _all_records(path: Path, spec):
    """A site's whole table (an analysis covers both partitions, so any partition will do)."""
    columns = list(read_table(Path(path)).columns)
    return load_site_table(path, spec, fresh_partition(spec, columns), trainable=False)


if __name__ == "__main__":
    main()
