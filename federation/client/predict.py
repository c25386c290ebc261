"""``allfed predict``: a finished run's model applied to a site's own records, encoded exactly as
the site's node encodes them.

It runs at the site, on the site's records, and its scores file stays there: a risk per
participant is not a release (no DP, no disclosure control), so it never goes to the central
team. The checks are the node's own (``read_table``, ``check_features``): a file the node would
refuse is refused with the same line. The encoding is the node's (``encode_features``) with the
scaling of the run's model card. What scoring needs and training does not:

- The label and the consent, group and split columns are neither required nor read, and every
  row that passes the feature checks is scored: consent governs what a site contributes to a
  study; scoring its own patients at the site is local use, under the site's own governance.
- A row with a missing value where the spec's rule is "drop" is not scored (the model never saw
  such rows): its risk is empty and ``reason`` names the column. Every input row has its line,
  in input order, with its spreadsheet row number (the header is row 1).
- A numeric feature the run scaled by "each site's own training rows" is scaled as that site's
  node scaled it: from its training partition (its data file, the partition its ledger pinned),
  checked against the training-record count the site reported in the run. Never from the rows
  being scored: a batch of patients is not the training rows, and one row has no spread.
- A survival model's line holds its risk score (``score``: higher is an earlier event) and
  its chance of the event by each of the spec's horizons (``risk_<days>d``), from the
  model's baseline hazards.
- ``--id-column`` is copied beside each risk to link it back; it never enters the model, so the
  identifier check (direct identifiers such as an MRN) does not apply to that one column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from federation.client.data import (
    SiteTable,
    check_features,
    load_site_table,
    read_table,
    reject_identifiers,
    require_columns,
)
from federation.client.features import encode_features, resolve_scaling
from federation.client.partition import Partition
from federation.client.scoring import risks, survival_risks
from federation.errors import AllfedError, DataError
from federation.omop import is_source
from federation.wire.model_files import MODEL, MODEL_CARD, SITE_SCALED
from federation.wire.spec import (
    StudySpec,
    feature_names,
    federated_columns,
    model_cuts,
    parse_spec,
)
from models.registry import build_model
from privacy.ledger import Ledger, LedgerError

ROW, RISK, SCORE, REASON = "row", "risk", "score", "reason"
SITE_OPTIONS = "--site, --training-data and --ledger"


@dataclass(frozen=True)
class RunModel:
    """A finished run's final model with its card and the study spec it was trained on."""

    path: Path
    card: dict[str, Any]
    spec: StudySpec
    model: torch.nn.Module

    def site_scaled(self) -> list[str]:
        """The numeric features each site scaled by its own training rows."""
        return [row["feature"] for row in self.card["scaling"] if row["center"] is None]

    def bounds(self) -> dict[str, tuple[float, float]]:
        """The bounds each numeric feature was clipped to in the run: declared, or estimated
        privately for it (the card says which)."""
        return {
            row["feature"]: (float(row["bounds"][0]), float(row["bounds"][1]))
            for row in self.card["scaling"]
            if row.get("bounds") is not None
        }


@dataclass(frozen=True)
class TrainingSite:
    """A site of the run whose own scaling predict repeats: its name, data file and ledger."""

    name: str
    data: Path
    ledger: Path


def load_run_model(run: Path) -> RunModel:
    """The model of run directory ``run``, checked against its card and spec."""
    if not run.is_dir():
        raise AllfedError(f"{run}: no such run directory")
    for name in (MODEL, MODEL_CARD):
        if not (run / name).is_file():
            raise AllfedError(f"{run}: no {name} (the run has not completed)")
    card_path = run / MODEL_CARD
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AllfedError(f"{card_path}: not valid JSON") from None
    if not isinstance(card, dict) or not isinstance(card.get("spec"), str):
        raise AllfedError(f"{card_path}: no study spec (not an allfed model card)")
    spec = parse_spec(card["spec"], source=f"{card_path} (spec)")
    names = feature_names(spec)
    scaled = [row.get("feature") for row in card.get("scaling", [])]
    if card.get("features") != names or scaled != list(spec.features.numeric):
        raise AllfedError(f"{card_path}: its features or scaling differ from its study spec")
    model = build_model(spec.model.name, len(names), spec.model.hidden, model_cuts(spec))
    try:
        model.load_state_dict(torch.load(run / MODEL, weights_only=True))
    except Exception:  # torch raises several types for a file that is not this model's
        raise AllfedError(
            f"{run / MODEL}: does not hold the card's {spec.model.name} model "
            f"of {len(names)} inputs"
        ) from None
    return RunModel(run, card, spec, model)


def risk_columns(spec: StudySpec) -> list[str]:
    """The scores file's columns of a model's output: a binary model's risk; a survival model's
    score and its risk by each horizon."""
    if spec.study.task == "survival":
        return [SCORE, *(horizon_column(h) for h in spec.study.horizons)]
    return [RISK]


def horizon_column(horizon: float) -> str:
    return f"{RISK}_{horizon:g}d"


def run_scaling(run: RunModel, site: TrainingSite | None) -> tuple[np.ndarray, np.ndarray]:
    """Center and scale of every numeric feature: the federation's from the card, and for the
    site-scaled ones ``site``'s own, as its node computes them (``resolve_scaling``)."""
    spec, local = run.spec, run.site_scaled()
    pooled = [row for row in run.card["scaling"] if row["center"] is not None]
    if [row["feature"] for row in pooled] != [
        spec.features.numeric[i] for i in federated_columns(spec, run.bounds())
    ]:
        raise AllfedError(f"{run.path / MODEL_CARD}: its scaling differs from its study spec")
    center = [float(row["center"]) for row in pooled]
    scale = [float(row["scale"]) for row in pooled]
    if local and site is None:
        raise AllfedError(
            f"{run.path}: {', '.join(local)} {'was' if len(local) == 1 else 'were'} scaled by "
            f"{SITE_SCALED}; give {SITE_OPTIONS} (the site's name in the run, its data file and "
            "its node's ledger) to score as that site's node did"
        )
    if site is None:
        return np.array(center), np.array(scale)
    if not local:
        raise AllfedError(
            f"{SITE_OPTIONS} are not needed: the run scaled every numeric feature with the "
            "federation's center and scale (leave them out)"
        )
    return resolve_scaling(training_table(run, site), spec, center, scale, run.bounds())


def training_table(run: RunModel, site: TrainingSite) -> SiteTable:
    """``site``'s checked table under the partition its ledger pinned, as its node loads it."""
    sites = run.card["sites"]
    if site.name not in sites:
        raise AllfedError(f"--site {site.name}: not a site of this run ({', '.join(sites)})")
    if sites[site.name]["status"] != "ok":
        raise AllfedError(
            f"--site {site.name}: {sites[site.name]['status']} in this run, so no model of the "
            "run was scaled by its rows"
        )
    if not site.ledger.is_file():
        raise AllfedError(f"--ledger {site.ledger}: file not found")
    try:
        ledger = Ledger(site.ledger)
        definition = ledger.partition_definition()
        if definition is None:
            raise AllfedError(
                f"--ledger {site.ledger}: no partition pinned (no run of the site used it)"
            )
        partition = Partition(definition, ledger.partition_secret())
    except LedgerError as error:
        raise AllfedError(f"--ledger {error}") from None
    table = load_site_table(site.data, run.spec, partition)
    expected = sites[site.name]["n_train"]
    if table.n_train != expected:
        raise AllfedError(
            f"--training-data {site.data}: {table.n_train} training records, but site "
            f"{site.name} trained on {expected} in this run; the file or its partition changed "
            "since, so its scaling would differ"
        )
    return table


def score_file(
    run: RunModel,
    data: Path,
    center: np.ndarray,
    scale: np.ndarray,
    id_column: str | None = None,
) -> pd.DataFrame:
    """One line per row of ``data``, in order: its row number, its ``id_column``, its risk (or
    a survival model's score and risks, ``risk_columns``; empty when a "drop" rule leaves it
    unscored) and the reason it has none."""
    if is_source(data):
        raise DataError(f"{data}: an OMOP source; predict scores CSV or Parquet files")
    spec, source = run.spec, str(data)
    frame = read_table(data, spec.features.na_values)
    if id_column is not None:
        if id_column not in frame.columns:
            raise DataError(f"{data}: no column {id_column!r} (--id-column)", "missing-column")
        if id_column in (ROW, REASON, *risk_columns(spec)):
            raise AllfedError(f"--id-column {id_column}: clashes with a column of the scores")
    reject_identifiers(frame.drop(columns=[id_column]) if id_column else frame, source)
    require_columns(frame, list(spec.features.columns), source)
    rows = pd.Series(np.arange(len(frame)) + 2, index=frame.index)  # spreadsheet row numbers
    values = check_features(frame, spec, source, rows)
    keep = values.keep
    x = encode_features(
        values.numeric[keep], values.categorical[keep], spec, center, scale, run.bounds()
    )
    outputs = np.full((len(frame), len(risk_columns(spec))), np.nan)
    if spec.study.task == "survival":
        score, by_horizon = survival_risks(run.model, x, spec.study.horizons)
        outputs[keep] = np.column_stack([score, by_horizon])
    else:
        outputs[keep, 0] = risks(run.model, x)
    scores = pd.DataFrame({ROW: rows.to_numpy()})
    if id_column is not None:
        scores[id_column] = frame[id_column].to_numpy()
    for column, output in zip(risk_columns(spec), outputs.T, strict=True):
        scores[column] = output
    scores[REASON] = [f"missing {c} (its rule is drop)" if c else "" for c in values.dropped_by]
    return scores


def check_destination(out: Path, data: Path, force: bool) -> None:
    """Before any work: never write over the input, nor over a file without ``--force``."""
    if out.exists() and out.resolve() == data.resolve():
        raise AllfedError(f"--out {out}: is the --data file; write the scores elsewhere")
    if out.is_dir():
        raise AllfedError(f"--out {out}: is a directory; name the scores file")
    if out.exists() and not force:
        raise AllfedError(f"--out {out}: already exists; pass --force to replace it")
    folder = out.parent
    if not folder.is_dir():
        why = "is a file, not a folder" if folder.exists() else "does not exist"
        raise AllfedError(f"--out {out}: its folder {folder} {why}")


def write_scores(scores: pd.DataFrame, out: Path) -> None:
    """The scores as CSV, written to a temporary name and renamed (never half a file)."""
    tmp = out.with_name(out.name + ".tmp")
    try:
        scores.to_csv(tmp, index=False)
        tmp.replace(out)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise AllfedError(f"--out {out}: cannot write ({error.strerror or error})") from None


def predict(
    run_dir: Path,
    data: Path,
    out: Path,
    id_column: str | None = None,
    site: TrainingSite | None = None,
    force: bool = False,
) -> pd.DataFrame:
    """Score ``data`` with the model of ``run_dir`` and write the scores to ``out``."""
    check_destination(out, data, force)
    run = load_run_model(run_dir)
    center, scale = run_scaling(run, site)
    scores = score_file(run, data, center, scale, id_column)
    write_scores(scores, out)
    return scores
