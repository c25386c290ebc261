"""The model card: what a reviewer needs to judge the run's model, in ``model_card.json`` and
the Markdown ``model_card.md``.

It follows the TRIPOD / TRIPOD-AI items that apply to a federated, DP-trained model: source of
data, outcome, predictors, sample size, missing data, the full model specification (for logistic
regression the coefficients on each feature's own scale, so the model can be applied by hand),
performance with its uncertainty, intended use and limitations. Everything in it is public
already: the spec, the model's weights, the federation's scaling (a DP release), each site's
training-record count (declared public) and what the evaluation releases gave (DP estimates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from jinja2 import Environment, PackageLoader, StrictUndefined

from federation.wire.model_files import MODEL_ONNX, SITE_SCALED
from federation.wire.spec import StudySpec, feature_names, federated_columns, parse_spec
from models.export import ONNX_INPUT, ONNX_OPSET, ONNX_OUTPUTS

# The released metrics a card shows: (key in summary.json's metrics, what it is).
CARD_METRICS = (
    ("auroc", "AUROC (discrimination)"),
    ("auprc", "AUPRC"),
    ("brier", "Brier score"),
    (
        "calibration_in_the_large_observed_minus_predicted",
        "calibration-in-the-large (observed minus mean predicted risk)",
    ),
    ("calibration_intercept", "calibration intercept (slope fixed at 1)"),
    ("calibration_slope", "calibration slope"),
    ("prevalence", "outcome prevalence"),
    ("accuracy", "accuracy at risk 0.5"),
    ("sensitivity", "sensitivity at risk 0.5"),
    ("specificity", "specificity at risk 0.5"),
)
SITE_METRICS = ("auroc", "brier", "calibration_in_the_large_observed_minus_predicted")
SITE_LABELS = ("AUROC", "Brier", "calibration-in-the-large")


def card_metrics(spec: StudySpec) -> tuple[tuple[str, str], ...]:
    """The pooled figures a card shows for the study's task (a survival study's at its
    horizons, ``server.survival_evaluation``)."""
    if spec.study.task != "survival":
        return CARD_METRICS
    horizons = [f"{h:g}" for h in spec.study.horizons]
    return (
        ("cindex", "Harrell's C-index (discrimination)"),
        ("uno_cindex", f"Uno's C-index (censoring-weighted, to day {horizons[-1]})"),
        *((f"auc_{h}", f"time-dependent AUC at day {h}") for h in horizons),
        ("integrated_brier", f"integrated Brier score (IPCW, to day {horizons[-1]})"),
        *((f"observed_risk_{h}", f"observed risk by day {h} (Kaplan-Meier)") for h in horizons),
        *((f"predicted_risk_{h}", f"mean predicted risk by day {h}") for h in horizons),
    )


def site_metrics(spec: StudySpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The per-site figures a card shows (keys, column labels)."""
    if spec.study.task != "survival":
        return SITE_METRICS, SITE_LABELS
    last = f"{spec.study.horizons[-1]:g}"
    return ("cindex", f"auc_{last}", "integrated_brier"), (
        "C-index",
        f"AUC at day {last}",
        "integrated Brier",
    )


def build_model_card(
    spec: StudySpec,
    state_dict: Mapping[str, torch.Tensor],
    *,
    rounds: int,
    scaling: list[dict[str, Any]],
    privacy: dict[str, Any],
    sites: dict[str, dict[str, Any]],
    metrics: Mapping[str, Any],
    evaluated_round: int | None,
    diagnostics: list[str],
) -> dict[str, Any]:
    """``model_card.json``: the keys of earlier cards (study to spec) and the reviewer's
    sections after them (``sites`` as in ``summary.json``; ``metrics`` its ``metrics``)."""
    names = feature_names(spec)
    card: dict[str, Any] = {
        "study": spec.study.name,
        "task": spec.study.task,
        "label": spec.study.label,
        "rounds": rounds,
        "strategy": spec.training.strategy,
        "model": {
            "name": spec.model.name,
            "hidden": list(spec.model.hidden) if spec.model.name == "mlp" else [],
            "parameters": int(sum(t.numel() for t in state_dict.values())),
            **_hazard_model(spec),
        },
        "features": names,
        "scaling": scaling,
        "privacy": privacy,
        "sites": sites,
        "spec": spec.to_toml(),
        "intended_use": intended_use(spec),
        "data": data_section(spec, sites),
        "training": training_section(spec),
        "inputs": inputs_section(names),
        "coefficients": coefficients(spec, state_dict, scaling),
        "performance": performance(metrics, evaluated_round, spec),
        "diagnostics": list(diagnostics),
    }
    card["limitations"] = limitations(spec, card)
    return card


def _hazard_model(spec: StudySpec) -> dict[str, Any]:
    """A survival model's interval ends (``models.registry.build_model``'s ``cuts``)."""
    if spec.study.task != "survival":
        return {}
    return {
        "intervals": list(spec.study.intervals),
        "kind": (
            "discrete-time hazard: hazard in interval k = sigmoid(risk score + baseline_k); "
            "model.pt's and model.onnx's output is the risk score (higher: earlier event)"
        ),
    }


def training_section(spec: StudySpec) -> dict[str, Any]:
    """How the model was fitted (TRIPOD's model specification, with the DP-SGD settings)."""
    training, privacy = spec.training, spec.privacy
    return {
        "method": (
            f"federated {training.strategy} of local "
            + ("DP-SGD (Opacus)" if privacy.enabled else "SGD (no DP)")
        ),
        "local_epochs": training.local_epochs,
        "batch_size": training.batch_size,
        "steps_per_round": training.steps_per_round,
        "learning_rate": training.learning_rate,
        "max_grad_norm": privacy.max_grad_norm if privacy.enabled else None,
        "loss": (
            "per record, the summed binary cross-entropy of an event in each interval it was "
            "at risk in (a sum of per-record terms: each record's gradient is clipped)"
            if spec.study.task == "survival"
            else "binary cross-entropy"
        ),
        "initial_model": "zeros" if spec.model.name == "logistic" else f"seed {spec.study.seed}",
    }


def scaling_rows(
    spec: StudySpec,
    center: list[float],
    scale: list[float],
    warnings: Mapping[str, str],
    estimated_bounds: Mapping[str, tuple[float, float]],
) -> list[dict[str, Any]]:
    """Per numeric feature, the center and scale the sites used: the federation's (pooled) or,
    where the spec or DP left a column unpooled, each site's own (center and scale ``None``),
    and the bounds its values were clipped to: declared, or estimated privately for the run."""
    all_bounds = {**spec.features.bounds, **estimated_bounds}
    names = [spec.features.numeric[i] for i in federated_columns(spec, all_bounds)]
    pooled = dict(zip(names, zip(center, scale, strict=True), strict=True))
    rows = []
    for column in spec.features.numeric:
        c, s = pooled.get(column, (None, None))
        bounds = all_bounds.get(column)
        rows.append(
            {
                "feature": column,
                "center": c,
                "scale": s,
                "bounds": list(bounds) if bounds is not None else None,
                "bounds_estimated": column in estimated_bounds,
                "source": "federation" if column in pooled else SITE_SCALED,
                "warning": warnings.get(column),
            }
        )
    return rows


def coefficients(
    spec: StudySpec, state_dict: Mapping[str, torch.Tensor], scaling: list[dict[str, Any]]
) -> dict[str, Any]:
    """A logistic model on each feature's own scale. The model sees ``z = (clip(x) - c) / s``,
    so a coefficient ``b`` is ``b / s`` per unit of the clipped ``x`` and the intercept moves by
    ``-sum(b * c / s)``; a missing (imputed) numeric value counts as ``c``. A categorical
    level's coefficient applies as it is, against the column's first level (the reference, 0);
    its input is centred (indicator minus 1/L, ``wire.encoding.categorical_inputs``), which
    moves the intercept by ``-sum(b) / L``, and a missing (imputed) level counts as the mean of
    its column's L coefficients. A column scaled by each site's own rows has no single
    per-unit coefficient, nor has the intercept then."""
    if spec.model.name != "logistic":
        reason = f"the {spec.model.name} model has no per-feature coefficients"
        return {"available": False, "reason": reason}
    if spec.study.task == "survival":
        reason = "a survival model's coefficients (log hazard odds ratios) are not tabulated yet"
        return {"available": False, "reason": reason}
    weight = state_dict["0.weight"].double().reshape(-1).tolist()  # models.registry's layout
    intercept = float(state_dict["0.bias"].double().reshape(-1)[0])
    rows, shift, local = [], 0.0, []
    for i, row in enumerate(scaling):
        b = weight[i]
        entry = {"input": row["feature"], "feature": row["feature"], "level": None}
        entry["reference"] = False
        entry["standardized"] = b
        if row["center"] is None:
            entry["per_unit"] = entry["odds_ratio_per_unit"] = None
            local.append(row["feature"])
        else:
            per_unit = b / row["scale"]
            entry["per_unit"], entry["odds_ratio_per_unit"] = per_unit, _exp(per_unit)
            shift += per_unit * row["center"]
        entry["bounds"] = row["bounds"]
        rows.append(entry)
    offset = len(scaling)
    for column, levels in spec.features.categorical.items():
        for k, level in enumerate(levels):
            b = 0.0  # the first level is the reference, which has no input
            if k > 0:
                b, offset = weight[offset], offset + 1
                shift += b / len(levels)  # the input is the indicator minus 1/L
            rows.append(
                {
                    "input": f"{column}={level}" + (" (reference)" if k == 0 else ""),
                    "feature": column,
                    "level": level,
                    "reference": k == 0,
                    "standardized": b,
                    "per_unit": b,
                    "odds_ratio_per_unit": _exp(b),
                    "bounds": None,
                }
            )
    return {
        "available": True,
        "intercept_standardized": intercept,
        "intercept": None if local else intercept - shift,
        "site_scaled": local,
        "rows": rows,
        "formula": (
            "logit(risk) = intercept + sum of per_unit * value, with each numeric value first "
            "clipped to its bounds (a missing one counts as its center), and the coefficient of "
            "each categorical level the record has (a column's first level, its reference, has "
            "0; a missing level counts 1/L of each of its column's L levels); "
            "risk = 1 / (1 + exp(-logit))"
        ),
    }


def performance(
    metrics: Mapping[str, Any], evaluated_round: int | None, spec: StudySpec
) -> dict[str, Any]:
    """The released evaluation of the final model, pooled and per site, each figure with its
    95% interval (DP noise and sampling) or the reason it is n/a."""
    per_site, _ = site_metrics(spec)
    pooled = metrics.get("pooled") or {}
    result: dict[str, Any] = {
        "evaluated_round": evaluated_round,
        "validation": (
            "each site's fixed test partition (records not used in training), scored at the "
            "site; figures are DP estimates from the sites' noisy evaluation releases"
        ),
    }
    if not pooled or "withheld_reason" in pooled:
        result["withheld_reason"] = pooled.get("withheld_reason", "no evaluation was released")
        return result
    result.update(
        n_test=pooled.get("n"),
        n_test_se=pooled.get("n_se"),
        events=pooled.get("n_events" if spec.study.task == "survival" else "n_pos"),
        pooled={key: _figure(pooled, key) for key, _ in card_metrics(spec)},
        per_site={
            name: (
                {"withheld_reason": site["withheld_reason"]}
                if "withheld_reason" in site
                else {key: _figure(site, key) for key in per_site}
            )
            for name, site in (metrics.get("per_site") or {}).items()
        },
    )
    return result


def _figure(metrics: Mapping[str, Any], key: str) -> dict[str, Any]:
    reason = (metrics.get("na_reason") or {}).get(key)
    value = metrics.get(key)
    if value is None and reason is None:
        reason = "not released"
    return {"value": value, "ci": metrics.get(f"{key}_ci"), "na_reason": reason}


def data_section(spec: StudySpec, sites: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Source of data, outcome, predictors, sample size and missing-data handling."""
    features = spec.features
    ok = [s for s in sites.values() if s["status"] == "ok"]
    missing = {}
    for column in features.columns:
        rule = features.missing.get(column)
        if rule == "drop":
            missing[column] = "records missing it are excluded"
        elif rule == "impute" and column in features.numeric:
            missing[column] = "imputed at the center (the federation's mean, or the site's)"
        elif rule == "impute":
            missing[column] = "imputed as the average of its levels (all its inputs 0)"
        else:
            missing[column] = "none allowed (a site with a missing value is refused)"
    return {
        "source": (
            f"records held at {len(sites)} partner sites, each checked at its site against the "
            "study spec (types, declared levels, label values, identifiers, minimum size)"
            + (", OMOP CDM cohorts defined by the spec's [cohort]" if spec.cohort else "")
            + "; only DP releases left the sites"
        ),
        "consent": (
            f"records without consent in `{spec.study.consent}` are excluded"
            if spec.study.consent
            else "no consent column: every record is used"
        ),
        "outcome": (
            f"`{spec.study.event}` (0/1) at `{spec.study.time}` (days), censored where "
            f"`{spec.study.event}` is 0; horizons "
            + ", ".join(f"{h:g}" for h in spec.study.horizons)
            + " days"
            if spec.study.task == "survival"
            else f"`{spec.study.label}` (0/1)"
        ),
        "numeric_predictors": list(features.numeric),
        "categorical_predictors": {c: list(v) for c, v in features.categorical.items()},
        "missing": missing,
        "n_train": sum(s["n_train"] for s in ok),
        "n_train_note": "exact (each site's training-record count is public)",
        "n_test_note": "noisy (from the evaluation release), null at or under 20",
    }


def inputs_section(names: list[str]) -> dict[str, Any]:
    """What ``model.pt`` and ``model.onnx`` take: the encoded features, in this order."""
    return {
        "order": names,
        "encoding": (
            "numeric: (value clipped to its bounds - center) / scale, a missing value 0; "
            "categorical: one input per declared level, 1 for the record's level, all 0 when "
            "missing; float32"
        ),
        "onnx": {
            "file": MODEL_ONNX,
            "opset": ONNX_OPSET,
            "input": ONNX_INPUT,
            "input_shape": ["rows", len(names)],
            "outputs": list(ONNX_OUTPUTS),
        },
    }


def limitations(spec: StudySpec, card: Mapping[str, Any]) -> list[str]:
    """What the card's reader must know before using the model."""
    notes = [
        "Internal validation only: the test records are other participants of the same sites; "
        "there is no external or temporal validation.",
        "Every performance figure is a DP estimate; its interval covers the DP noise and "
        "sampling, and a withheld figure is one the noise made meaningless.",
        "Values beyond a feature's bounds are clipped to them: the model does not distinguish "
        "values beyond the bounds.",
        "The sites' populations differ: a pooled figure can hide a site or group where the "
        "model does worse (per site above; per group in summary.json and report.html).",
    ]
    if spec.privacy.enabled:
        notes.append(
            "DP-SGD clips and noises every record's gradient: the model is less accurate, and "
            "may be less well calibrated, than one trained without DP on the same records."
        )
    local = [row["feature"] for row in card["scaling"] if row["center"] is None]
    if local:
        notes.append(
            f"{', '.join(local)} {'is' if len(local) == 1 else 'are'} scaled by each site's own "
            "training rows: the same value gives a different risk at different sites; apply the "
            "model at a site of the run with that site's scaling (`allfed predict --site`)."
        )
    if spec.model.name == "logistic" and spec.features.categorical:
        notes.append(
            "Every declared level has its own input (no reference level): compare levels by "
            "the differences of their coefficients (log odds ratios); a level's coefficient on "
            "its own is relative to a missing value."
        )
    absent = [name for name, s in card["sites"].items() if s["status"] != "ok"]
    if absent:
        notes.append(f"Sites that did not contribute to the final model: {', '.join(absent)}.")
    return notes


def intended_use(spec: StudySpec) -> str:
    return (
        f"Research use within the study {spec.study.name!r}: estimating the risk of "
        f"`{spec.study.outcome}` for participants like those of the training sites, with the "
        "predictors encoded as above. Not validated for clinical decisions; a site scoring its "
        "own patients with `allfed predict` does so under its own governance."
    )


def render_model_card(card: dict[str, Any]) -> str:
    """``model_card.md`` from ``model_card.json``'s content (a Jinja2 Markdown template)."""
    template = _TEMPLATES.get_template("model_card.jinja.md")
    spec = parse_spec(card["spec"], "the model card's spec")
    keys, labels = site_metrics(spec)
    return template.render(
        card=card, metric_labels=card_metrics(spec), site_metrics=keys, site_labels=labels
    )


def _fmt(value: Any, digits: int = 3) -> str:
    """A released figure: fixed decimals (n/a when withheld)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _sig(value: Any, digits: int = 4) -> str:
    """A coefficient or a scale: significant digits (n/a when there is none)."""
    return "n/a" if value is None else f"{value:.{digits}g}"


def _interval(ci: list[float] | None, digits: int = 3) -> str:
    return "" if not ci else f" ({_fmt(ci[0], digits)} to {_fmt(ci[1], digits)})"


def _figure_text(figure: Mapping[str, Any]) -> str:
    """A released figure with its interval, or n/a with the reason."""
    if figure["value"] is None:
        return f"n/a ({figure['na_reason']})"
    return _fmt(figure["value"]) + _interval(figure["ci"])


def _cell(value: Any) -> str:
    """Text safe in a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _exp(value: float) -> float | None:
    return math.exp(value) if value < 700 else None


_TEMPLATES = Environment(
    loader=PackageLoader("federation.server", "templates"),
    autoescape=False,  # Markdown, not HTML: the console renders it with raw HTML disabled
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_TEMPLATES.filters.update(fmt=_fmt, sig=_sig, interval=_interval, figure=_figure_text, cell=_cell)
