"""Calibration of DP federated risk models: what under-predicted, why, and the result now.

Three cohorts: the demo's (``write_cohort(dir, 3, 1000, seed=0)``: three synthetic sites of
about 1,000 records, 21% with the outcome), a mid-sized synthetic one (``write_cohort(dir, 4,
600, seed=1)``: sites of about 420 training records, 6 steps a round at the planner's settings)
and FLamby's Fed-Heart-Disease (four hospitals of 30 to 199 training records,
``/work/shared/data/uci-heart-disease``), its binary and one-hot columns declared categorical.
Each cohort's sites are loaded once, so that every run and the centralized reference share one
train/test split (the synthetic sites' hash partition is drawn afresh at every load). Every
model is scored by this script, record by record, on the pooled test rows: AUROC, mean
predicted risk against observed, calibration-in-the-large (observed minus mean predicted),
calibration intercept and slope (``scoring.py``), mean and SD over repeats (the DP noise comes
from the OS, so repeats differ). Training runs in process with the node's own
functions (``inprocess.py``): the standardization release and pooling, ``encode``, the planner,
``train_dp`` / ``train_plain``, FedAvg weighted by records.

Parts:

- ``ablation``: the demo at epsilon 3 with the previous flat clipping of each record's loss
  gradient, clipping without noise, noise without clipping (not private: diagnosis only), a grid
  of clip norms, and the logit-gradient clipping that replaced it.
- ``final``: centralized non-private logistic regression on the same split beside allfed without
  DP and at epsilon 8, 3 and 1, logistic and MLP, at the planner's settings (``privacy.planner``)
  and at the spec's defaults.

    python benchmarks/calibration.py --json calibration.json [--parts ablation,final]
        [--repeats 5] [--cohorts demo,mid,heart] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from heart import categorical_frames, categorical_study_text, default_heart_data
from inprocess import centralized, fedavg, federate, load_tables, risks, with_privacy
from scoring import score, summarize
from torch import nn
from torch.nn import functional as F

from federation.client.layers import forward_through_linears
from federation.client.training import (
    LocalSettings,
    clipped_gradient_sum,
    dp_optimizer,
    poisson_batches,
    train_plain,
)
from federation.synth import write_cohort
from federation.wire.spec import load_spec, parse_spec

EPSILONS = (None, 8.0, 3.0, 1.0)
MODELS = ("logistic", "mlp")


def synthetic_cohort(tmp: Path, name: str, sites: int, records: int, seed: int):
    paths, spec_path = write_cohort(tmp / name, sites, records, seed=seed)
    spec = load_spec(spec_path)
    return spec, load_tables(spec, paths)


def heart_cohort(tmp: Path, data: Path):
    folder = tmp / "heart"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for center, frame in categorical_frames(data).items():
        paths[center] = folder / f"{center}.csv"
        frame.to_csv(paths[center], index=False)
    training = {"rounds": 20, "batch-size": 32, "learning-rate": 2.0}
    spec = parse_spec(categorical_study_text(3.0, training))
    return spec, load_tables(spec, paths)


def allfed(spec, tables, epsilon, model, planned, repeats, trainer=None, exact_scaling=False):
    """Scores of ``repeats`` federated runs on the sites' ``tables`` (each run with its own
    standardization release)."""
    run_spec = with_privacy(spec, epsilon)
    run_spec = run_spec.with_overrides(model={"name": model})
    scores, warned = [], 0
    for _ in range(repeats if epsilon is not None else 1):
        federation = federate(run_spec, tables, exact_scaling=exact_scaling)
        warned += bool(federation.scaling_warnings)
        kwargs = {"trainer": trainer} if trainer else {}
        final = fedavg(federation, spec=run_spec, planned=planned, **kwargs)
        x, y = federation.test_rows()
        scores.append(score(y, risks(final, x)))
    return {**summarize(scores), "runs_with_scaling_warnings": warned}


# -- ablation: the previous clipping and variants of it (diagnosis, not the node's code) ------


def flat_clipped_gradient_sum(model, features, labels, max_grad_norm):
    """The previous rule: each record's whole loss gradient scaled by Opacus's flat clip factor
    ``min(1, C / (|(p - y) J| + 1e-6))``, which depends on the label."""
    logits, linears, inputs, outputs = forward_through_linears(model, features)
    loss = F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels, reduction="sum")
    grads = torch.autograd.grad(loss, outputs)
    squared = sum(
        g.square().sum(1) * (a.square().sum(1) + 1)
        for a, g in zip(inputs, grads, strict=True)
    )  # fmt: skip
    factor = (max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
    for layer, a, g in zip(linears, inputs, grads, strict=True):
        clipped = g * factor.unsqueeze(1)
        layer.weight.grad = clipped.T @ a
        layer.bias.grad = clipped.sum(0)


def variant(gradient=flat_clipped_gradient_sum, clip=None, noise=True):
    """``train_dp``'s loop with another gradient rule, clip norm or no noise (never private
    when the clip is off: the noise is then for the norm ``clip`` names, not a bound)."""

    def trainer(model: nn.Module, x, y, settings: LocalSettings, plan) -> None:
        if plan is None:
            train_plain(model, x, y, settings)
            return
        features, labels = torch.from_numpy(x), torch.from_numpy(y)
        rng = torch.Generator().manual_seed(secrets.randbits(63))
        scaled = replace(settings, max_grad_norm=clip or settings.max_grad_norm)
        run_plan = plan if noise else replace(plan, noise_multiplier=0.0)
        optimizer = dp_optimizer(model, scaled, run_plan, len(y), generator=rng)
        model.train()
        for batch in poisson_batches(len(y), plan.sample_rate, plan.steps_per_round, rng):
            optimizer.zero_grad(set_to_none=True)
            gradient(model, features[batch], labels[batch], scaled.max_grad_norm)
            optimizer.step()

    return trainer


def unclipped(model, features, labels, max_grad_norm):
    clipped_gradient_sum(model, features, labels, float("inf"))


def ablation(spec, tables, repeats) -> list[dict]:
    """The demo at epsilon 3, the spec's defaults (10 rounds, batch 64, learning rate 0.5)."""
    rows = []
    cases = [
        ("flat clipping C=1, noisy scaling (previous node)", variant(), False),
        ("flat clipping C=1, exact scaling", variant(), True),
        ("flat clipping C=1 without noise", variant(noise=False), True),
        ("noise for C=1 without clipping (not private)", variant(unclipped), True),
        ("neither (Poisson batches only)", variant(unclipped, noise=False), True),
        *[(f"flat clipping C={c}", variant(clip=c), True) for c in (0.5, 2.0, 4.0, 8.0)],
        *[
            (f"flat clipping C={c} without noise", variant(clip=c, noise=False), True)
            for c in (0.5, 2.0, 4.0, 8.0)
        ],
        ("logit-gradient clipping C=1 without noise", variant(clipped_gradient_sum, noise=False),
         True),
        ("logit-gradient clipping C=1 (node now), exact scaling", None, True),
        ("logit-gradient clipping C=1 (node now), noisy scaling", None, False),
    ]  # fmt: skip
    for label, trainer, exact in cases:
        result = allfed(spec, tables, 3.0, "logistic", False, repeats, trainer, exact)
        rows.append({"case": label, **result})
        print(_line(label, result), flush=True)
    return rows


def at_rate_one(spec, tables, epsilon):
    """The planner's settings of a logistic model under DP at learning rate 1 where every site
    takes 5 or more steps a round (the rule before 2026-12-04, the baseline of the rate the
    planner now raises there), else None."""
    run = with_privacy(spec, epsilon).with_overrides(model={"name": "logistic"})
    training = run.planned(min(t.n_train for t in tables.values())).training
    if epsilon is None or training.steps_per_round < 5 or training.learning_rate == 1.0:
        return None
    kept = ("rounds", "local_epochs", "batch_size", "steps_per_round")
    return spec.with_overrides(
        training={**{k: getattr(training, k) for k in kept}, "learning_rate": 1.0}
    )


def final(cohorts: dict, repeats: int) -> dict:
    out = {}
    for name, (spec, tables) in cohorts.items():
        reference = centralized(spec, tables)
        print(_line(f"{name}: centralized logistic regression (no DP)", reference), flush=True)
        rows = []
        for model in MODELS:
            variants = [("planner", spec, True), ("spec defaults", spec, False)]
            if model == "logistic":
                variants.append(("planner at rate 1", None, False))
            for settings, base, planned in variants:
                for epsilon in EPSILONS:
                    run_spec = base if base is not None else at_rate_one(spec, tables, epsilon)
                    if run_spec is None:
                        continue
                    started = time.perf_counter()
                    result = allfed(run_spec, tables, epsilon, model, planned, repeats)
                    eps = "no DP" if epsilon is None else f"eps {epsilon:g}"
                    label = f"{name}: allfed {model}, {settings}, {eps}"
                    rows.append(
                        {"model": model, "settings": settings, "epsilon": epsilon, **result,
                         "seconds": round(time.perf_counter() - started, 1)}
                    )  # fmt: skip
                    print(_line(label, result), flush=True)
        out[name] = {"centralized": reference, "allfed": rows}
    return out


def _line(label: str, r: dict) -> str:
    def cell(key, fmt):
        sd = r.get(f"{key}_sd")
        return format(r[key], fmt) + (f" ± {sd:.3f}" if sd else "")

    return (
        f"{label:58s} AUROC {cell('auroc', '.3f')}, predicted {cell('mean_predicted', '.3f')} "
        f"vs observed {r['observed']:.3f}, CITL {cell('citl', '+.3f')}, intercept "
        f"{cell('calibration_intercept', '+.2f')}, slope {cell('calibration_slope', '.2f')}"
    )


def main() -> None:
    default_data = default_heart_data()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--parts", default="ablation,final")
    parser.add_argument("--cohorts", default="demo,mid,heart")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=str(default_data), help="folder of the raw UCI files")
    args = parser.parse_args()
    report: dict = {"repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="allfed-calibration-") as tmp:
        cohorts = {}
        if "demo" in args.cohorts:
            cohorts["demo"] = synthetic_cohort(Path(tmp), "demo", 3, 1000, seed=0)
        if "mid" in args.cohorts:
            cohorts["mid"] = synthetic_cohort(Path(tmp), "mid", 4, 600, seed=1)
        if "heart" in args.cohorts:
            cohorts["heart"] = heart_cohort(Path(tmp), Path(args.data))
        if "ablation" in args.parts and "demo" in cohorts:
            report["ablation_demo_epsilon_3"] = ablation(*cohorts["demo"], args.repeats)
        if "final" in args.parts:
            report["final"] = final(cohorts, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
