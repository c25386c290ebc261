"""Time per local training step, non-private and DP-SGD, and the node's data path and start-up.

Every configuration times the node's own functions (``train_plain``, ``train_dp``) on the same
rows in the same run, interleaved, after a warm-up: the median over repeats of one local round's
CPU time (optimizer and noise set-up included), divided by its steps. CPU time, not wall time, so
that other work on a shared machine does not enter the ratio. Beside them, the same round
through Opacus's ``make_private`` in each per-sample mode (hooks, ghost, ew, functorch) on the same
Poisson batches, and the node's previous code (Opacus hooks, and non-private training, both fed by
a per-record DataLoader). ``dp_over_nonprivate`` is the ratio for the default: the synthetic
study's 13 encoded features, logistic regression, batch 64, one local epoch, about 700 training
records; ``dp_over_nonprivate_by_config`` has the five ratios, the default first, and
``within_target`` says whether each is at most ``TARGET``. Torch runs one thread, as Ray gives
each simulated node.

    python benchmarks/throughput.py --json throughput.json [--repeats N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import opacus
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from federation.client.data import load_site_table, read_table
from federation.client.features import encode, resolve_scaling
from federation.client.partition import fresh_partition
from federation.client.training import (
    DPPlan,
    LocalSettings,
    poisson_batches,
    train_dp,
    train_plain,
)
from federation.synth import write_cohort
from federation.wire.spec import federated_columns, load_spec
from models.registry import build_model

OPACUS_MODES = ("hooks", "ghost", "ew", "functorch")
NOISE = 1.0  # any value: the noise multiplier does not change the cost of a step
TARGET = 1.5  # a DP-SGD step over a non-private one, at most


@dataclass(frozen=True)
class Config:
    name: str
    model: str
    hidden: tuple[int, ...]
    features: int
    batch_size: int
    records: int
    epochs: int = 1


CONFIGS = (
    Config("default: logistic, 13 features, batch 64", "logistic", (), 13, 64, 700),
    Config("mlp [32], 13 features, batch 64", "mlp", (32,), 13, 64, 700),
    Config("logistic, 100 features, batch 256", "logistic", (), 100, 256, 10_000),
    Config("mlp [64], 100 features, batch 256", "mlp", (64,), 100, 256, 10_000),
    Config("mlp [128, 64], 100 features, batch 512", "mlp", (128, 64), 100, 512, 10_240),
)


def rows(config: Config, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standardized features and 0/1 labels from a logistic model, like an encoded site."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(config.records, config.features)).astype(np.float32)
    logits = x @ rng.normal(scale=0.5, size=config.features) - 1.0
    y = (rng.random(config.records) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return x, y


def settings_of(config: Config) -> LocalSettings:
    return LocalSettings(config.epochs, config.batch_size, 0.5, 1.0)


def plan_of(config: Config) -> DPPlan:
    sample_rate = 1.0 / -(-config.records // config.batch_size)
    steps = config.epochs * int(1 / sample_rate)
    return DPPlan(NOISE, sample_rate, steps, steps)


def round_fns(config: Config) -> dict[str, tuple[Callable[[nn.Module], None], int]]:
    """Method name -> (one local round on a fresh model, its number of steps)."""
    x, y = rows(config)
    settings, plan = settings_of(config), plan_of(config)
    plain_steps = config.epochs * -(-config.records // config.batch_size)
    fns: dict[str, tuple[Callable[[nn.Module], None], int]] = {
        "nonprivate": (lambda m: train_plain(m, x, y, settings), plain_steps),
        "dp (allfed)": (
            lambda m: train_dp(m, x, y, settings, plan),
            plan.steps_per_round,
        ),
    }
    for mode in OPACUS_MODES:
        fns[f"opacus {mode}"] = (
            lambda m, mode=mode: opacus_round(m, x, y, settings, plan, mode),
            plan.steps_per_round,
        )
    fns["before: nonprivate, DataLoader"] = (
        lambda m: dataloader_round(m, x, y, settings, None),
        plain_steps,
    )
    fns["before: opacus hooks, DataLoader"] = (
        lambda m: dataloader_round(m, x, y, settings, plan),
        plan.steps_per_round,
    )
    return fns


def opacus_round(model, x, y, settings: LocalSettings, plan: DPPlan, mode: str) -> None:
    """One round through Opacus's ``make_private`` in ``mode``, on index-tensor Poisson batches
    (the same data path as ``train_dp``), so that only the per-sample machinery differs."""
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    loader = DataLoader(TensorDataset(features, labels), batch_size=settings.batch_size)
    loss_fn = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate)
    private = PrivacyEngine(accountant="prv").make_private(
        module=model.train(),
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=mode,
        **({"criterion": loss_fn} if mode == "ghost" else {}),
    )
    module, optimizer = private[0], private[1]
    criterion = private[2] if mode == "ghost" else loss_fn
    for batch in poisson_batches(len(y), plan.sample_rate, plan.steps_per_round):
        optimizer.zero_grad(set_to_none=True)
        criterion(module(features[batch]).squeeze(-1), labels[batch]).backward()
        optimizer.step()


def dataloader_round(model, x, y, settings: LocalSettings, plan: DPPlan | None) -> None:
    """The node's previous code: batches collated record by record by a DataLoader, and DP
    through ``make_private`` in Opacus's default (hooks) mode."""
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate)
    if plan is None:
        generator = torch.Generator().manual_seed(0)
        loader = DataLoader(
            dataset, batch_size=settings.batch_size, shuffle=True, generator=generator
        )
    else:
        model, optimizer, loader = PrivacyEngine(accountant="prv").make_private(
            module=model.train(),
            optimizer=optimizer,
            data_loader=DataLoader(dataset, batch_size=settings.batch_size),
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            poisson_sampling=True,
        )
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(settings.epochs):
        for features, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(features).squeeze(-1), labels).backward()
            optimizer.step()


def time_config(config: Config, repeats: int, warmup: int = 2) -> dict:
    """CPU microseconds per step of every method, median of ``repeats`` interleaved rounds."""
    fns = round_fns(config)
    fresh = build_model(config.model, config.features, config.hidden)
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for repeat in range(warmup + repeats):
        for name, (fn, steps) in fns.items():
            model = build_model(config.model, config.features, config.hidden)
            model.load_state_dict(fresh.state_dict())
            started = time.process_time()
            fn(model)
            if repeat >= warmup:
                seconds[name].append((time.process_time() - started) / steps)
    per_step = {name: statistics.median(values) * 1e6 for name, values in seconds.items()}
    base = per_step["nonprivate"]
    return {
        "config": config.__dict__ | {"hidden": list(config.hidden)},
        "steps_per_round": {name: steps for name, (_, steps) in fns.items()},
        "us_per_step": {name: round(value, 1) for name, value in per_step.items()},
        "over_nonprivate": {name: round(value / base, 2) for name, value in per_step.items()},
    }


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_data_path(repeats: int) -> dict:
    """One synthetic site of about 1,000 records: read and check the file, then encode it."""
    with tempfile.TemporaryDirectory() as work:
        files, spec_path = write_cohort(Path(work), n_sites=1, records_per_site=1000)
        spec, path = load_spec(spec_path), next(iter(files.values()))
        table = load_site_table(path, spec, fresh_partition(spec, _columns(path)))
        n = len(federated_columns(spec))

        def encode_site() -> None:
            center, scale = resolve_scaling(table, spec, [0.0] * n, [1.0] * n)
            encode(table, spec, center, scale, test=False)

        return {
            "records": len(table.label),
            "load_and_check_ms": round(
                median_seconds(
                    lambda: load_site_table(path, spec, fresh_partition(spec, _columns(path))),
                    repeats,
                )
                * 1e3,
                2,
            ),
            "encode_ms": round(median_seconds(encode_site, repeats) * 1e3, 3),
        }


def time_startup() -> dict:
    """What a node spends before its first step: importing the ClientApp (a fresh interpreter),
    calibrating the standardization noise at setup and the DP-SGD noise at its first round (the
    synthetic study: 700 records, batch 64, 10 rounds, PRV), cold and then remembered. The
    planning runs in a fresh interpreter too, so that nothing this process computed is
    remembered."""
    code = (
        "import time; t = time.perf_counter(); import federation.client.app; "
        "print(time.perf_counter() - t)"
    )
    imports = [float(_run_python(code)) for _ in range(3)]
    planning = json.loads(_run_python(PLANNING))
    return {"import_clientapp_s": round(statistics.median(imports), 2)} | {
        name: round(value, 5 if "remembered" in name else 3) for name, value in planning.items()
    }


PLANNING = """
import json, time
from federation.client.training import plan_dp
from privacy.accounting import GaussianRelease, calibrate_noise
started = time.perf_counter()
standardization = calibrate_noise(0.3, 1e-5, 1.0, 1, "prv")
setup = time.perf_counter() - started
prior = [GaussianRelease(standardization, 1.0, 1)]
started = time.perf_counter()
plan_dp(700, 64, 1, 10, 3.0, 1e-5, "prv", prior)
cold = time.perf_counter() - started
started = time.perf_counter()
plan_dp(700, 64, 1, 10, 3.0, 1e-5, "prv", prior)
warm = time.perf_counter() - started
print(json.dumps({"standardization_noise_s": setup, "first_round_plan_s": cold,
                  "first_round_plan_remembered_s": warm}))
"""


def _run_python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def print_tables(result: dict) -> None:
    for entry in result["detail"]["configs"]:
        print(f"\n{entry['config']['name']}  ({entry['config']['records']} records, 1 epoch)")
        print(f"  {'method':<34} {'us/step':>9} {'x nonprivate':>13}")
        for name, value in entry["us_per_step"].items():
            print(f"  {name:<34} {value:>9.1f} {entry['over_nonprivate'][name]:>13.2f}")
    print(f"\nDP-SGD step over a non-private step (target at most {TARGET}x):")
    print(f"  {'configuration':<42} {'allfed':>7} {'hooks':>7} {'ghost':>7}")
    for entry in result["detail"]["configs"]:
        ratios = entry["over_nonprivate"]
        print(
            f"  {entry['config']['name']:<42} {ratios['dp (allfed)']:>7.2f}"
            f" {ratios['opacus hooks']:>7.2f} {ratios['opacus ghost']:>7.2f}"
        )
    print(f"dp_over_nonprivate (default): {result['dp_over_nonprivate']}")
    print("data path:", result["detail"]["data_path"])
    print("start-up:", result["detail"]["startup"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per method")
    parser.add_argument("--quick", action="store_true", help="the default configuration only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # Opacus's secure-RNG and torch's backward-hook notices
    configs = CONFIGS[:1] if args.quick else CONFIGS
    timed = [time_config(config, args.repeats) for config in configs]
    by_config = {
        entry["config"]["name"]: entry["over_nonprivate"]["dp (allfed)"] for entry in timed
    }
    result = {
        "dp_over_nonprivate": timed[0]["over_nonprivate"]["dp (allfed)"],
        "dp_over_nonprivate_by_config": by_config,
        "target": TARGET,
        "within_target": all(ratio <= TARGET for ratio in by_config.values()),
        "detail": {
            "configs": timed,
            "data_path": time_data_path(args.repeats),
            "startup": time_startup(),
            "torch_threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "opacus": opacus.__version__},
        },
    }
    print_tables(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def _columns(path) -> list[str]:
    """The file's columns (a fresh partition's whole-row identity)."""
    return list(read_table(Path(path)).columns)


if __name__ == "__main__":
    main()
