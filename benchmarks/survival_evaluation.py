"""Released survival metrics against the exact ones: is what the sites' DP evaluation says true?

For each cohort (a synthetic multi-site survival cohort, a larger one, Fed-TCGA-BRCA when its
data is there) a model is fitted (a Cox model on the pooled training rows, scikit-survival,
as the discrete-time hazard model's linear risk score: the evaluation does not care how a model
was trained), once at its fitted spread and once shrunk to 0.3 of it (the narrow scores of a
DP-trained model, whose weights DP-SGD's clipping and noise keep small). It is then evaluated
over and over as a run does: each site's statistics of both releases
(``client.survival_evaluation``, noise at each release's SD) on its own test partition, pooled
and read by the aggregator's real code (``server.survival_evaluation``); ``cindex`` is read from
release 2, ``cindex_histograms`` from release 1 alone (the baseline: what a cell without
release 2 shows). The benchmark holds the data, so it also scores the same
model record by record on the same test rows (scikit-survival: Harrell's C-index, the
cumulative/dynamic AUC at each horizon, the integrated Brier score) and reports, per epsilon
and design, the released value's mean error (bias), SD and RMSE, how often its 95% interval
covers the exact value, how often it is n/a, and the error with no noise at all (the binning
alone). Designs (the same bin count):

- ``probe edges``: the score bins the release uses, quantiles of the model's scores on the
  spec's public probe (``wire.survival_evaluation.score_edges``);
- ``fixed edges``: edges fixed in advance, evenly from -4 to 4 on the linear predictor: the
  baseline.

    python benchmarks/survival_evaluation.py --json survival_evaluation.json [--repeats 50]
        [--epsilons 1,3,8] [--cohorts synthetic,synthetic-large,tcga-brca]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from evaluation import cohort_tables
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import (
    concordance_index_censored,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from tcga_brca import INTERVALS as TCGA_INTERVALS
from tcga_brca import region_frames, shared_data
from tcga_brca import study_text as tcga_study_text

from federation.client.evaluation import members_of
from federation.client.features import encode
from federation.client.survival_evaluation import concordance_statistics, survival_statistics
from federation.server import evaluation as ev
from federation.server import survival_evaluation as sev
from federation.server import survival_metrics as sm
from federation.synth import write_cohort
from federation.wire.evaluation import POOLED_CELL, layout
from federation.wire.spec import feature_names, load_spec, model_cuts
from federation.wire.survival_evaluation import (
    N_SCORE_BINS,
    linear_predictors,
    score_edges,
    survival_evaluation_noise,
)
from models.registry import build_model

DESIGNS = ("probe edges", "fixed edges")
FIXED_EDGES = np.linspace(-4.0, 4.0, N_SCORE_BINS - 1)
SHRINKS = (1.0, 0.3)
METRICS = ("cindex", "cindex_histograms", "integrated_brier")


def cohorts(names: list[str], root: Path) -> dict[str, tuple[Path, dict[str, Path]]]:
    """Each cohort's spec and site files, written under ``root``."""
    out = {}
    for name in names:
        if name in ("synthetic", "synthetic-large"):
            n_sites, per_site = (3, 1000) if name == "synthetic" else (5, 2000)
            files, spec_path = write_cohort(root / name, n_sites, per_site, task="survival")
            out[name] = (spec_path, files)
        elif name == "tcga-brca":
            data = shared_data("tcga-brca")
            if not data.is_dir():
                print("tcga-brca: no data, skipped")
                continue
            frames = region_frames(data)
            folder = root / name
            folder.mkdir(parents=True)
            files = {}
            for region, frame in frames.items():
                files[region] = folder / f"{region}.csv"
                frame.to_csv(files[region], index=False)
            columns = next(iter(frames.values())).columns
            features = [c for c in columns if c not in ("T", "E", "split")]
            spec_path = folder / "study.toml"
            spec_path.write_text(tcga_study_text(features, 3.0, TCGA_INTERVALS), encoding="utf-8")
            out[name] = (spec_path, files)
    return out


def fitted_model(spec, tables, center, scale, shrink: float) -> torch.nn.Module:
    """The hazard model whose risk score is a Cox fit on the pooled training rows (times
    ``shrink``), its baseline logits the pooled training rows' interval hazards."""
    train = [encode(t, spec, center, scale, test=False) for t in tables.values()]
    x = np.vstack([a for a, _ in train])
    y = np.vstack([b for _, b in train])
    target = np.array([(bool(e), t) for t, e in y], dtype=[("e", bool), ("t", float)])
    cox = CoxPHSurvivalAnalysis(alpha=0.1).fit(x, target)
    cuts = model_cuts(spec)
    model = build_model("logistic", len(feature_names(spec)), (), cuts)
    weights = torch.tensor(shrink * cox.coef_, dtype=torch.float32)[None]
    bins = np.searchsorted(np.asarray(cuts), y[:, 0], side="left")
    at_risk = np.array([(bins >= k).sum() for k in range(len(cuts))], dtype=float)
    events = np.array([((bins == k) & (y[:, 1] > 0.5)).sum() for k in range(len(cuts))], float)
    hazard = np.clip(events / np.maximum(at_risk, 1.0), 1e-4, 1 - 1e-4)
    offset = float(np.mean(x @ (shrink * cox.coef_)))
    state = {
        "score.0.weight": weights,
        "baseline": torch.tensor(np.log(hazard / (1 - hazard)) - offset, dtype=torch.float32),
    }
    model.load_state_dict(state)
    return model


def test_sites(spec, tables, center, scale, model):
    """Per site: test outcome (time, event), the model's scores, evaluation members."""
    sites = {}
    for name, table in tables.items():
        x, y = encode(table, spec, center, scale, test=True)
        sites[name] = (y, linear_predictors(model, x), members_of(table, spec))
    return sites


def exact_metrics(spec, sites, model) -> dict[str, float]:
    """The model's metrics record by record on the pooled test rows (scikit-survival)."""
    y = np.vstack([s[0] for s in sites.values()])
    score = np.concatenate([s[1] for s in sites.values()])
    target = np.array([(bool(e), t) for t, e in y], dtype=[("e", bool), ("t", float)])
    study = spec.study
    last = study.intervals.index(study.horizons[-1])
    baseline = model.baseline.detach().double().numpy()
    survival = sm.predicted_survival(score, baseline)[:, : last + 1]
    auc, _ = cumulative_dynamic_auc(target, target, score, list(study.horizons))
    exact = {
        "cindex": float(concordance_index_censored(target["e"], target["t"], score)[0]),
        "cindex_histograms": float(concordance_index_censored(target["e"], target["t"], score)[0]),
        "integrated_brier": float(
            integrated_brier_score(target, target, survival, np.array(study.intervals[: last + 1]))
        ),
    }
    exact.update({f"auc_{h:g}": float(a) for h, a in zip(study.horizons, auc, strict=True)})
    return exact


def released(spec, sites, edges, horizons, noise: tuple[float, float] | None, rng) -> dict:
    """One evaluation as the run does it (``noise`` None: exact counts), both releases: the
    pooled metrics, and as ``cindex_histograms`` the C-index read from release 1 alone (the
    baseline; what a cell without release 2 shows). Each site's statistics are the releases'
    (``survival_statistics``, ``concordance_statistics``: the same weights); their noise is
    drawn here at the releases' SD, seeded (OpenDP's exact sampler, which the sites use, takes
    about 1.5 s per site release, too slow for hundreds of draws)."""
    cells = layout(spec)
    cuts = model_cuts(spec)
    histogram_noise, rank_noise = noise or (1e-9, 1e-9)
    per_site = []
    for y, score, members in sites.values():
        statistics = survival_statistics(y, score, members, cells, cuts, edges)
        record = _noised(statistics, histogram_noise if noise else None, rng)
        per_site.append(sev.read_release(record, spec, cells, histogram_noise))
    pooled = ev.pool(per_site)
    queries = {c: q for c in cells.rank_cells() if (q := sev.concordance_query(pooled[c]))}
    requests = {cell: query.request for cell, query in queries.items()}
    ranks = []
    for y, score, members in sites.values():
        statistics = concordance_statistics(y, score, members, cells, cuts, edges, requests)
        record = _noised(statistics, rank_noise if noise else None, rng)
        ranks.append(sev.read_concordance(record, queries, cells, rank_noise))
    histograms = sev.cell_metrics(ev.reconcile(pooled, cells)[POOLED_CELL], horizons)
    cell = ev.reconcile(ev.with_ranks(pooled, ranks), cells)[POOLED_CELL]
    metrics = sev.cell_metrics(cell, horizons)
    metrics["cindex_histograms"] = histograms["cindex"]
    metrics["cindex_histograms_ci"] = histograms["cindex_ci"]
    return metrics


def _noised(statistics, noise: float | None, rng) -> dict:
    """A release's record from its exact statistics, with noise of ``noise`` (None: none)."""
    names, values, weights = statistics
    if noise is not None:
        values = values + rng.normal(0.0, noise, len(values)) / weights
    record, start = {}, 0
    for name, length in names:
        record[name] = [float(v) for v in values[start : start + length]]
        record[name] = record[name] if length > 1 else record[name][0]
        start += length
    return record


def summarize(triples: list[tuple[float | None, list[float] | None, float]]) -> dict:
    """Bias, SD, RMSE and coverage of (released, interval, exact) triples; n/a ones apart."""
    shown = [(r, ci, e) for r, ci, e in triples if r is not None]
    if not shown:
        return {"na": len(triples)}
    errors = np.array([r - e for r, _, e in shown])
    covered = [ci is not None and ci[0] <= e <= ci[1] for _, ci, e in shown]
    return {
        "bias": round(float(errors.mean()), 4),
        "sd": round(float(errors.std()), 4),
        "rmse": round(float(np.sqrt((errors**2).mean())), 4),
        "within_0.01": round(float(np.mean(np.abs(errors) <= 0.01)), 3),
        "coverage": round(float(np.mean(covered)), 3),
        "na": len(triples) - len(shown),
    }


def benchmark(spec, files, epsilons, repeats, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tables, center, scale = cohort_tables(spec, files)
    result: dict = {"sites": len(files)}
    for shrink in SHRINKS:
        model = fitted_model(spec, tables, center, scale, shrink)
        sites = test_sites(spec, tables, center, scale, model)
        exact = exact_metrics(spec, sites, model)
        names = [*METRICS, *(f"auc_{h:g}" for h in spec.study.horizons)]
        part: dict = {
            "test_records": sum(len(s[0]) for s in sites.values()),
            "test_events": int(sum(s[0][:, 1].sum() for s in sites.values())),
            "score_sd": round(float(np.concatenate([s[1] for s in sites.values()]).std()), 3),
            "exact": {k: round(v, 4) for k, v in exact.items()},
            "designs": {},
        }
        baseline = model.baseline.detach().double().numpy()
        for design in DESIGNS:
            edges = score_edges(spec, model) if design == "probe edges" else FIXED_EDGES
            horizons = sev.Horizons.of(spec, baseline, edges)
            no_noise = released(spec, sites, edges, horizons, None, rng)
            rows = {"binning_error": {n: _error(no_noise.get(n), exact[n]) for n in names}}
            for epsilon in epsilons:
                noise = survival_evaluation_noise(
                    epsilon, spec.privacy.delta, spec.privacy.accountant, 1
                )
                started = time.process_time()
                runs = [released(spec, sites, edges, horizons, noise, rng) for _ in range(repeats)]
                rows[f"epsilon {epsilon:g}"] = {
                    n: summarize([(r.get(n), r.get(f"{n}_ci"), exact[n]) for r in runs])
                    for n in names
                }
                seconds = round(time.process_time() - started, 1)
                rows[f"epsilon {epsilon:g}"]["cpu_seconds"] = seconds
            part["designs"][design] = rows
        part["cindex_rmse_ratio_fixed_over_probe"] = {
            f"epsilon {e:g}": _ratio(part["designs"], f"epsilon {e:g}") for e in epsilons
        }
        result[f"shrink {shrink:g}"] = part
    return result


def _ratio(designs: dict, setting: str) -> float | None:
    fixed = designs["fixed edges"][setting]["cindex"].get("rmse")
    probe = designs["probe edges"][setting]["cindex"].get("rmse")
    return None if not fixed or not probe else round(fixed / probe, 2)


def _error(value: float | None, exact: float) -> float | None:
    return None if value is None else round(value - exact, 4)


def report(name: str, result: dict, epsilons) -> None:
    for shrink in SHRINKS:
        part = result[f"shrink {shrink:g}"]
        print(
            f"\n{name}, {result['sites']} sites, scores x{shrink:g} (SD {part['score_sd']}): "
            f"{part['test_records']} test records, {part['test_events']} events, exact C-index "
            f"{part['exact']['cindex']:.4f}, IBS {part['exact']['integrated_brier']:.4f}"
        )
        print(f"{'design':<12} {'epsilon':>8} {'metric':>17} {'bias':>8} {'sd':>7} {'rmse':>7} "
              f"{'<=0.01':>7} {'cover':>6} {'n/a':>4}")  # fmt: skip
        for design, rows in part["designs"].items():
            errors = rows["binning_error"]
            for metric, error in errors.items():
                print(f"{design:<12} {'no noise':>8} {metric:>17} {_show(error):>8}")
            for epsilon in epsilons:
                for metric, s in rows[f"epsilon {epsilon:g}"].items():
                    if metric == "cpu_seconds":
                        continue
                    print(
                        f"{design:<12} {epsilon:>8g} {metric:>17} {_show(s.get('bias')):>8} "
                        f"{_show(s.get('sd')):>7} {_show(s.get('rmse')):>7} "
                        f"{_show(s.get('within_0.01')):>7} {_show(s.get('coverage')):>6} "
                        f"{s['na']:>4}"
                    )
        print(f"C-index RMSE, fixed over probe edges: {part['cindex_rmse_ratio_fixed_over_probe']}")


def _show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=Path("survival_evaluation.json"))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--cohorts", default="synthetic,synthetic-large,tcga-brca")
    args = parser.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",")]
    results = {"repeats": args.repeats, "cohorts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (spec_path, files) in cohorts(args.cohorts.split(","), Path(tmp)).items():
            spec = load_spec(spec_path)
            results["cohorts"][name] = benchmark(spec, files, epsilons, args.repeats)
            report(name, results["cohorts"][name], epsilons)
    args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
