"""Empirical privacy audit of a federated run: membership inference on canaries.

The audit crafts ``m`` canary records for one site (feature vectors drawn across the declared
bounds, away from the site's real records, with random labels: in a survival study, random
follow-up times up to the last interval's end and random events), includes each in that site's
training file independently with probability 1/2, and runs the study with ``simulate`` exactly
as users do. A Flower client mod copies what the audited site sends the server each round (its
trained weights, and the global weights and scaling it started from), so the attacks see exactly
the server's view. Three attacks score every canary (higher: more likely a member):

- ``loss``: minus the canary's loss under the final global model (what anyone given the model
  can do; a survival model's loss is the record's hazard loss, ``models.survival``);
- ``update``: the drop in the canary's loss from the global model the site received to the
  weights it returned, summed over rounds (each canary calibrated against itself);
- ``joint``: each canary's share of the site's round update, fitted by least squares on all
  canaries' clipped gradients at once and summed over rounds: the maximum-likelihood estimate
  of a Gaussian mechanism's input, the likelihood-ratio style attack on DP-SGD that the server
  can run. It needs more parameters than canaries (an MLP, not a 14-weight logistic model).

``privacy.audit`` turns the scores into ROC figures and the one-run epsilon lower bound, which
``audit.json`` puts beside the epsilon the site's accountant claims, with a verdict.
The audit folder holds copies of the sites' files: keep it where the data may be.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from flwr.app import Context, Message
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from federation.client.data import load_site_table, read_table
from federation.client.features import encode, resolve_scaling
from federation.client.partition import Partition
from federation.errors import AllfedError
from federation.server.outputs import clean_json
from federation.simulation import simulate
from federation.wire import protocol as p
from federation.wire.spec import StudySpec, model_cuts
from models.registry import build_model
from models.survival import DiscreteTimeHazard, hazard_loss, interval_targets
from privacy.audit import CONFIDENCE, attack_roc, one_run_bound, verdict

AUDIT_SPLIT = "audit-split"  # the split column the audit adds when the study has none
MEMBER = "audit-member"  # canaries.csv: 1 if the canary was put in the site's training file
MIN_CANARIES = 20


@dataclass(frozen=True)
class UpdateTap:
    """A Flower client mod that copies the audited site's train replies, as the server receives
    them, with the global weights and scaling of the round, to ``folder/round-NNNN.pt``."""

    partition: int
    folder: str

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        audited = int(context.node_config["partition-id"]) == self.partition
        if not audited or msg.metadata.message_type != "train" or reply.has_error():
            return reply
        if p.ARRAYS not in reply.content:
            return reply  # the site refused or failed this round: nothing reached the server
        config = msg.content[p.CONFIG]
        server_round = int(config[p.SERVER_ROUND])
        torch.save(
            {
                "sent": msg.content[p.ARRAYS].to_torch_state_dict(),
                "returned": reply.content[p.ARRAYS].to_torch_state_dict(),
                "center": list(config[p.SCALING_CENTER]),
                "scale": list(config[p.SCALING_SCALE]),
            },
            Path(self.folder) / f"round-{server_round:04d}.pt",
        )
        return reply


def run_audit(
    spec: StudySpec,
    sites: dict[str, Path],
    audit_site: str,
    out: Path,
    canaries: int = 500,
    seed: int = 0,
    client_mods: list | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Audit ``audit_site`` in a run of ``spec`` over ``sites``; write and return
    ``out/audit.json``. ``client_mods`` go around every site's handlers after the tap (tests
    use them to break a site's DP)."""
    if audit_site not in sites:
        raise AllfedError(f"--audit-site {audit_site}: no --site of that name")
    if canaries < MIN_CANARIES:
        raise AllfedError(f"--canaries must be at least {MIN_CANARIES}, not {canaries}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise AllfedError(f"{out}: the audit folder must be new or empty")
    data, updates = out / "data", out / "updates"
    data.mkdir(parents=True, exist_ok=True)
    updates.mkdir()
    rng = np.random.default_rng(seed)
    audit_spec, files = _write_sites(spec, sites, audit_site, canaries, data, rng)
    started = time.perf_counter()
    tap = UpdateTap(list(sites).index(audit_site), str(updates.resolve()))
    summary = simulate(
        audit_spec, files, out / "run", client_mods=[tap, *(client_mods or [])], verbose=verbose
    )
    site = summary["sites"][audit_site]
    if summary["status"] != "completed" or site["status"] != p.OK:
        reason = summary.get("error") or site.get("reason") or site["status"]
        raise AllfedError(f"the audited run did not complete for site {audit_site}: {reason}")
    canary_table = pd.read_csv(data / "canaries.csv", dtype=str)
    members = canary_table[MEMBER].astype(int).to_numpy().astype(bool)
    scores = _attack_scores(audit_spec, files[audit_site], data / "canaries.csv", out)
    report = _report(audit_spec, summary, audit_site, scores, members)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report = clean_json(report)  # JSON has no infinity: an unbounded figure is null
    (out / "audit.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    return report


def craft_canaries(
    frame: pd.DataFrame, spec: StudySpec, count: int, rng: np.random.Generator
) -> pd.DataFrame:
    """``count`` canary rows shaped like ``frame`` (the site's file, as text cells): every
    numeric feature uniform over its bounds (the observed range without bounds), categorical
    levels and the label uniform (a survival study's time uniform up to its last interval's end,
    its event 0 or 1), consent given; other columns copied from random rows."""
    canaries = frame.iloc[rng.integers(0, len(frame), count)].reset_index(drop=True)
    for column in spec.features.numeric:
        low, high = spec.features.bounds.get(column) or _observed_range(frame[column], column)
        canaries[column] = [f"{v:.4g}" for v in rng.uniform(low, high, count)]
    for column, levels in spec.features.categorical.items():
        canaries[column] = rng.choice(levels, count)
    if spec.study.task == "survival":
        last = max(spec.study.intervals)
        canaries[spec.study.time] = rng.integers(1, int(last) + 1, count).astype(str)
        canaries[spec.study.event] = rng.integers(0, 2, count).astype(str)
    else:
        canaries[spec.study.label] = rng.integers(0, 2, count).astype(str)
    if spec.study.consent:
        canaries[spec.study.consent] = "1"
    return canaries


def _write_sites(
    spec: StudySpec,
    sites: dict[str, Path],
    audit_site: str,
    count: int,
    data: Path,
    rng: np.random.Generator,
) -> tuple[StudySpec, dict[str, Path]]:
    """Copies of the site files, the audited one with its member canaries, in ``data``; and the
    spec to run. Canaries must be training records: without a split column in the study, the
    audit adds one (each real record in the test split with the study's test-fraction)."""
    split = spec.study.split or AUDIT_SPLIT
    files: dict[str, Path] = {}
    canaries = None
    for name, path in sites.items():
        frame = read_table(Path(path), spec.features.na_values)
        if not spec.study.split:
            if AUDIT_SPLIT in frame.columns:
                raise AllfedError(f"{path}: column {AUDIT_SPLIT!r} is reserved for the audit")
            test = rng.random(len(frame)) < spec.study.test_fraction
            frame[AUDIT_SPLIT] = np.where(test, "test", "train")
        if name == audit_site:
            canaries = craft_canaries(frame, spec, count, rng)
            canaries[split] = "train"
            canaries[MEMBER] = (rng.random(count) < 0.5).astype(int)
            members = canaries[canaries[MEMBER] == 1].drop(columns=MEMBER)
            frame = pd.concat([frame, members], ignore_index=True)
        files[name] = data / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    assert canaries is not None
    canaries.to_csv(data / "canaries.csv", index=False)
    audit_spec = spec if spec.study.split else spec.with_overrides(study={"split": AUDIT_SPLIT})
    return audit_spec, files


def _observed_range(values: pd.Series, column: str) -> tuple[float, float]:
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    if numbers.empty:
        raise AllfedError(f"column {column!r} has no values to draw canaries from")
    return float(numbers.min()), float(numbers.max())


def _attack_scores(
    spec: StudySpec, site_file: Path, canary_file: Path, out: Path
) -> dict[str, np.ndarray]:
    """Every canary's score under each attack, from what the server saw."""
    rounds = sorted((out / "updates").glob("round-*.pt"))
    if not rounds:
        raise AllfedError("the audited site sent no update to the server")
    first = torch.load(rounds[0], weights_only=True)
    x, y = _canary_inputs(spec, site_file, canary_file, first["center"], first["scale"])
    model = build_model(spec.model.name, x.shape[1], spec.model.hidden, model_cuts(spec))
    model.load_state_dict(torch.load(out / "run" / "model.pt", weights_only=True))
    names = [name for name, _ in model.named_parameters()]  # the gradients' order
    scores = {"loss": -_losses(model, x, y), "update": np.zeros(len(y)), "joint": np.zeros(len(y))}
    for path in rounds:
        step = torch.load(path, weights_only=True)
        model.load_state_dict(step["sent"])
        before, start = _losses(model, x, y), _clipped_gradients(model, x, y, spec)
        model.load_state_dict(step["returned"])
        after, end = _losses(model, x, y), _clipped_gradients(model, x, y, spec)
        change = torch.cat([(step["returned"][k] - step["sent"][k]).reshape(-1) for k in names])
        scores["update"] += before - after
        scores["joint"] += _contributions((start + end) / 2, change)
    return scores


def _contributions(gradients: torch.Tensor, change: torch.Tensor) -> np.ndarray:
    """How much of each canary's (descent) gradient the update holds: the least-squares fit of
    the update on all canaries' gradients at once, so that canaries explain each other away.
    Under Gaussian noise this is the maximum-likelihood estimate of each canary's share."""
    fit = torch.linalg.lstsq(-gradients.T.double(), change.double().unsqueeze(1))
    return fit.solution.squeeze(1).numpy()


def _canary_inputs(
    spec: StudySpec, site_file: Path, canary_file: Path, center: list, scale: list
) -> tuple[torch.Tensor, torch.Tensor]:
    """The canaries encoded exactly as the audited node encodes its training rows."""
    # The audit's spec has a split column, so the partition is that column's.
    split = Partition({"method": "column", "column": spec.study.split}, b"")
    site_table = load_site_table(site_file, spec, split)
    site_center, site_scale = resolve_scaling(site_table, spec, center, scale)
    table = load_site_table(canary_file, spec, split, trainable=False)
    x, y = encode(table, spec, site_center, site_scale, test=False)
    return torch.from_numpy(x), torch.from_numpy(y)


def _losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Each canary's loss: a survival model's hazard loss (``y``: time and event), else the
    binary cross-entropy of its label."""
    with torch.no_grad():
        if isinstance(model, DiscreteTimeHazard):
            return hazard_loss(model, x, y).numpy()
        logits = model(x).squeeze(-1)
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").numpy()


def _clipped_gradients(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, spec: StudySpec
) -> torch.Tensor:
    """Each canary's loss gradient (flattened, in parameter order), clipped to the study's
    max-grad-norm as DP-SGD clips it."""
    params = {name: param.detach() for name, param in model.named_parameters()}

    def loss(weights, features, label):
        score = functional_call(model, weights, (features.unsqueeze(0),))
        if isinstance(model, DiscreteTimeHazard):  # the record's hazard loss, as in training
            at_risk, happened = interval_targets(label.unsqueeze(0), model.cuts)
            logits = score + weights["baseline"]
            terms = F.binary_cross_entropy_with_logits(logits, happened, reduction="none")
            return (terms * at_risk).sum()
        return F.binary_cross_entropy_with_logits(score.reshape(()), label)

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([per_example[name].reshape(len(y), -1) for name in params], dim=1)
    norms = flat.norm(dim=1, keepdim=True)
    return flat * (spec.privacy.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


def _report(
    spec: StudySpec,
    summary: dict[str, Any],
    audit_site: str,
    scores: dict[str, np.ndarray],
    members: np.ndarray,
) -> dict[str, Any]:
    site = summary["sites"][audit_site]
    claimed = site["epsilon"] if spec.privacy.enabled else None
    rocs = {name: attack_roc(values, members) for name, values in scores.items()}
    strongest = max(rocs, key=lambda name: rocs[name].auc)
    bound = one_run_bound(scores, members, spec.privacy.delta, CONFIDENCE)
    return {
        "study": summary["study"],
        "audit_site": audit_site,
        "rounds": summary["rounds"],
        "model": spec.model.name,
        "canaries": len(members),
        "members": int(members.sum()),
        "claimed_epsilon": claimed,
        "delta": spec.privacy.delta,
        "noise_multiplier": site.get("noise_multiplier"),
        "attack": strongest,
        "attack_auc": rocs[strongest].auc,
        "tpr_at_1pct_fpr": rocs[strongest].tpr_at_1pct_fpr,
        "tpr_at_0_1pct_fpr": rocs[strongest].tpr_at_0_1pct_fpr,
        "attacks": {name: vars(roc) for name, roc in rocs.items()},
        "empirical_epsilon_lower": bound.lower,
        "empirical_epsilon_ci": [bound.lower, bound.upper],
        "empirical_epsilon": bound.as_dict(),
        "verdict": verdict(claimed, bound),
    }
