"""Synthetic multi-site cardiometabolic cohorts, for demos and tests.

Real cohorts cannot leave their sites, so examples and tests need data that behaves like them:
sites that differ in who they serve (demographics, risk factors, baseline risk: non-IID),
missing labs, a consent flag, and an outcome drawn from a known logistic model so that a
federated fit can be judged against the truth. A survival cohort (``task="survival"``) has the
same records with a time to event in days instead: a known proportional hazard (the same
predictors' effects as log hazard ratios, a Weibull baseline scaled by the site's baseline),
administrative censoring (entry spread over the years before the data were drawn) and random
loss to follow-up. Frames hold no identifiers (no names, ids or
dates). Everything is deterministic by seed: site ``k`` draws from the ``k``-th child of
``np.random.SeedSequence(seed)``, so adding sites never changes the earlier ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from federation.wire.spec import parse_spec

SEXES = ("female", "male")
RACES = ("Black", "White", "Hispanic", "Asian", "AIAN", "Other")
RURALITY = ("urban", "rural")
SMOKING = ("never", "former", "current")
BOUNDS = {
    "age": (18, 90),
    "bmi": (15, 60),
    "sbp": (80, 220),
    "cholesterol": (100, 400),
    "hba1c": (4, 14),
    "family_history": (0, 1),
}
MISSING_RATES = {"bmi": 0.03, "cholesterol": 0.05, "hba1c": 0.08, "smoking": 0.02}
COLUMNS = (
    "age",
    "sex",
    "race_ethnicity",
    "rurality",
    "bmi",
    "sbp",
    "cholesterol",
    "hba1c",
    "smoking",
    "family_history",
    "consent",
    "outcome",
)

# The generating model: log-odds per population standard deviation (centre, sd) of each
# numeric predictor, plus indicator effects. Fixed constants rather than sample statistics,
# so a row's risk does not depend on which other rows it is pooled with.
_SCALES = {
    "age": (55.0, 15.0),
    "bmi": (28.5, 6.0),
    "sbp": (130.0, 18.0),
    "cholesterol": (200.0, 40.0),
    "hba1c": (5.8, 1.0),
}
_SLOPES = {"age": 0.75, "bmi": 0.25, "sbp": 0.35, "cholesterol": 0.25, "hba1c": 0.6}
_MALE, _FAMILY = 0.3, 0.5
_SMOKING = {"never": 0.0, "former": 0.3, "current": 0.75}
_INTERCEPT = -1.8
# The survival outcome: cumulative hazard (t / SCALE)^SHAPE x exp(log hazard ratio + baseline).
SURVIVAL_COLUMNS = ("time", "event")
HORIZONS = (365, 1095, 1825)
INTERVALS = (182, 365, 730, 1095, 1460, 1825)
_WEIBULL_SHAPE, _WEIBULL_SCALE = 1.2, 12 * 365.25  # days
_FOLLOW_UP = (365, 6 * 365)  # administrative censoring: days from entry to the data's end
_DROPOUT_RATE = 0.05 / 365.25  # loss to follow-up, per day


@dataclass(frozen=True)
class SiteProfile:
    """Who a site serves: demographic mix, risk-factor shifts and baseline log-odds."""

    name: str
    age: tuple[float, float]  # mean, sd
    female: float
    rural: float
    races: tuple[float, ...]  # probabilities, in RACES order
    smoking: tuple[float, float, float]  # never, former, current
    bmi: float  # mean
    sbp: float  # shift, mmHg
    hba1c: float  # shift, %
    baseline: float  # site-specific log-odds added to the shared intercept
    consent: float


PROFILES = (
    SiteProfile(
        "urban-academic",
        (50, 16),
        0.55,
        0.05,
        (0.22, 0.40, 0.20, 0.12, 0.01, 0.05),
        (0.62, 0.25, 0.13),
        27.5,
        -2,
        -0.1,
        -0.05,
        0.97,
    ),
    SiteProfile(
        "rural-network",
        (58, 15),
        0.52,
        0.85,
        (0.05, 0.83, 0.07, 0.01, 0.02, 0.02),
        (0.45, 0.30, 0.25),
        30.0,
        3,
        0.0,
        0.0,
        0.96,
    ),
    SiteProfile(
        "community-health",
        (46, 15),
        0.60,
        0.25,
        (0.18, 0.22, 0.47, 0.06, 0.02, 0.05),
        (0.60, 0.20, 0.20),
        29.5,
        0,
        0.25,
        -0.1,
        0.95,
    ),
    SiteProfile(
        "va-medical",
        (63, 13),
        0.10,
        0.35,
        (0.20, 0.65, 0.08, 0.02, 0.01, 0.04),
        (0.35, 0.43, 0.22),
        29.5,
        4,
        0.1,
        -0.4,
        0.98,
    ),
    SiteProfile(
        "tribal-clinic",
        (45, 15),
        0.56,
        0.75,
        (0.01, 0.10, 0.05, 0.01, 0.80, 0.03),
        (0.48, 0.20, 0.32),
        31.0,
        2,
        0.45,
        0.1,
        0.95,
    ),
    SiteProfile(
        "safety-net",
        (48, 16),
        0.50,
        0.15,
        (0.38, 0.18, 0.34, 0.04, 0.01, 0.05),
        (0.45, 0.23, 0.32),
        30.0,
        5,
        0.3,
        0.15,
        0.95,
    ),
)


def site_names(n_sites: int) -> list[str]:
    """Profile names in order, cycled with a numeric suffix (``urban-academic-2``) past six."""
    names = []
    for i in range(n_sites):
        cycle, k = divmod(i, len(PROFILES))
        names.append(PROFILES[k].name + (f"-{cycle + 1}" if cycle else ""))
    return names


def true_risk(df: pd.DataFrame, site: str) -> np.ndarray:
    """Outcome probability under the generating model, for rows of ``site``'s frame.

    Exact for complete rows. The outcome was drawn before values were masked, so a missing
    predictor is held at its population centre (contributes nothing), as mean imputation would.
    """
    return 1.0 / (1.0 + np.exp(-_linear_predictor(df, site, _INTERCEPT)))


def true_log_hazard_ratio(df: pd.DataFrame, site: str) -> np.ndarray:
    """A survival cohort's log hazard ratio under the generating model, the site's baseline
    included: the log-odds of ``true_risk`` less the shared intercept (same caveats)."""
    return _linear_predictor(df, site, 0.0)


def _linear_predictor(df: pd.DataFrame, site: str, intercept: float) -> np.ndarray:
    profile = _profile(site)
    logit = np.full(len(df), intercept + profile.baseline)
    for column, (centre, sd) in _SCALES.items():
        z = (df[column].to_numpy(dtype=float) - centre) / sd
        logit += _SLOPES[column] * np.nan_to_num(z)
    logit += _MALE * (df["sex"] == "male").to_numpy()
    logit += _FAMILY * df["family_history"].to_numpy(dtype=float)
    logit += df["smoking"].map(_SMOKING).fillna(0.0).to_numpy(dtype=float)
    return logit


def synthesize_cohort(
    n_sites: int = 3, records_per_site: int = 1000, seed: int = 0, task: str = "binary"
) -> dict[str, pd.DataFrame]:
    """Site name -> frame with ``COLUMNS`` (a survival cohort: ``time`` and ``event`` in place
    of ``outcome``). Sizes vary ±20% around ``records_per_site``, deterministically, because
    real sites never contribute equal numbers."""
    if n_sites < 1 or records_per_site < 1:
        raise ValueError("n_sites and records_per_site must be at least 1")
    if task not in ("binary", "survival"):
        raise ValueError(f"task must be 'binary' or 'survival', got {task!r}")
    children = np.random.SeedSequence(seed).spawn(n_sites)
    return {
        name: _site_frame(name, records_per_site, np.random.default_rng(child), task)
        for name, child in zip(site_names(n_sites), children, strict=True)
    }


def study_toml(
    name: str = "cardiometabolic-risk",
    rounds: int | None = None,
    target_epsilon: float = 3.0,
    task: str = "binary",
) -> str:
    """TOML text of a study spec for the synthetic columns, checked with ``parse_spec``. The
    training settings are left to the planner (``privacy.planner``), ``rounds`` too unless given.

    ``race_ethnicity`` is a group column (fairness is reported per group) but not a feature:
    race is a social category, not a biological risk factor, and the generating model ignores it.
    """

    def table(items: dict) -> str:
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in items.items()) + " }"

    categorical = {"sex": SEXES, "smoking": SMOKING, "rurality": RURALITY}
    outcome = 'task = "binary"\nlabel = "outcome"'
    if task == "survival":
        outcome = (
            'task = "survival"\ntime = "time"\nevent = "event"\n'
            f"horizons = {list(HORIZONS)}\nintervals = {list(INTERVALS)}"
        )
    text = f"""\
[study]
name = {json.dumps(name)}
{outcome}
groups = ["race_ethnicity", "sex", "rurality"]
group-levels = {{ race_ethnicity = {json.dumps(list(RACES))} }}
consent = "consent"
test-fraction = 0.3
seed = 42

[features]
numeric = {json.dumps(list(BOUNDS))}
categorical = {table({k: list(v) for k, v in categorical.items()})}
missing = {table(dict.fromkeys(MISSING_RATES, "impute"))}
bounds = {table({k: list(v) for k, v in BOUNDS.items()})}

[model]
name = "logistic"

[training]
{"" if rounds is None else f"rounds = {int(rounds)}"}

[privacy]
enabled = true
target-epsilon = {float(target_epsilon)!r}
delta = 1e-5
max-grad-norm = 1.0
accountant = "prv"
"""
    parse_spec(text, source="synthetic study spec")
    return text


def write_cohort(
    out_dir: Path | str,
    n_sites: int,
    records_per_site: int,
    seed: int = 0,
    fmt: str = "csv",
    task: str = "binary",
) -> tuple[dict[str, Path], Path]:
    """Write ``<site>.csv`` (or ``.parquet``) per site and ``study.toml`` into ``out_dir``."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for site, frame in synthesize_cohort(n_sites, records_per_site, seed, task).items():
        paths[site] = out / f"{site}.{fmt}"
        if fmt == "csv":
            frame.to_csv(paths[site], index=False)
        else:
            frame.to_parquet(paths[site], index=False)
    spec_path = out / "study.toml"
    name = "cardiometabolic-survival" if task == "survival" else "cardiometabolic-risk"
    spec_path.write_text(study_toml(name, task=task), encoding="utf-8")
    return paths, spec_path


def _profile(site: str) -> SiteProfile:
    base, _, suffix = site.rpartition("-")
    name = base if suffix.isdigit() else site
    for profile in PROFILES:
        if profile.name == name:
            return profile
    raise ValueError(f"unknown synthetic site {site!r}")


def _site_frame(
    site: str, records: int, rng: np.random.Generator, task: str = "binary"
) -> pd.DataFrame:
    """Draw one site's complete records, their outcomes, then mask values (MCAR)."""
    p = _profile(site)
    n = max(1, round(records * rng.uniform(0.8, 1.2)))
    age = np.clip(rng.normal(*p.age, n), *BOUNDS["age"]).round()
    bmi = p.bmi + 0.04 * (age - 50) + rng.normal(0, 5.5, n)
    sbp = 122 + 0.45 * (age - 50) + 0.6 * (bmi - 28) + p.sbp + rng.normal(0, 14, n)
    hba1c = 5.0 + 0.012 * (age - 50) + 0.05 * (bmi - 28) + p.hba1c + rng.gamma(1.5, 0.5, n) - 0.25
    df = pd.DataFrame(
        {
            "age": age.astype(np.int64),
            "sex": rng.choice(SEXES, n, p=(p.female, 1 - p.female)),
            "race_ethnicity": rng.choice(RACES, n, p=p.races),
            "rurality": rng.choice(RURALITY, n, p=(1 - p.rural, p.rural)),
            "bmi": np.clip(bmi, *BOUNDS["bmi"]).round(1),
            "sbp": np.clip(sbp, *BOUNDS["sbp"]).round().astype(np.int64),
            "cholesterol": np.clip(
                195 + 0.3 * (age - 50) + rng.normal(0, 38, n), *BOUNDS["cholesterol"]
            ).round(),
            "hba1c": np.clip(hba1c, *BOUNDS["hba1c"]).round(1),
            "smoking": rng.choice(SMOKING, n, p=p.smoking),
            "family_history": (rng.random(n) < 0.25).astype(np.int64),
            "consent": (rng.random(n) < p.consent).astype(np.int64),
        }
    )
    if task == "survival":
        df["time"], df["event"] = _survival_outcome(true_log_hazard_ratio(df, site), rng)
    else:
        df["outcome"] = (rng.random(n) < true_risk(df, site)).astype(np.int64)
    for column, rate in MISSING_RATES.items():
        df.loc[rng.random(n) < rate, column] = None
    return df


def _survival_outcome(log_hazard_ratio: np.ndarray, rng: np.random.Generator):
    """Days to the event or to censoring (whole days, at least 1), and the event flag: the
    event time inverts the Weibull cumulative hazard at a unit exponential draw."""
    n = len(log_hazard_ratio)
    draw = rng.exponential(1.0, n) / np.exp(log_hazard_ratio)
    event_time = _WEIBULL_SCALE * draw ** (1 / _WEIBULL_SHAPE)
    censoring = np.minimum(rng.uniform(*_FOLLOW_UP, n), rng.exponential(1 / _DROPOUT_RATE, n))
    time = np.maximum(1, np.ceil(np.minimum(event_time, censoring))).astype(np.int64)
    return time, (event_time <= censoring).astype(np.int64)
