"""The run directory: what a central team keeps from a run.

``summary.json`` (the contract in DESIGN.md), ``metrics.jsonl`` (one line per round),
``model.pt`` (the final weights, also as ``model.onnx``) with ``model_card.json`` and
``model_card.md`` (``federation.server.model_card``), ``report.html``
(built from the summary and the rounds alone, so ``allfed report`` can rebuild it), ``run.log``
and ``checkpoint.pt`` (the state after the last completed round, which ``--resume`` continues).
Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tomllib
from pathlib import Path
from typing import Any

import torch

from federation.errors import AllfedError
from federation.server.model_card import render_model_card
from federation.wire.model_files import MODEL, MODEL_CARD, MODEL_CARD_MD, MODEL_ONNX
from models.export import onnx_bytes
from models.registry import build_model

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
LOG = "run.log"
REPORT = "report.html"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: the evaluation release (representation, diagnostics)

_LOGGERS = ("allfed", "flwr")


class RunDirectory:
    """Writes one run's outputs under ``path`` (created if needed)."""

    def __init__(self, path: Path, resume: bool = False) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        if not resume:  # a new run never shows an earlier run's outputs, even if it fails
            outputs = (METRICS, CHECKPOINT, SUMMARY, MODEL, MODEL_ONNX, MODEL_CARD, MODEL_CARD_MD)
            for name in (*outputs, REPORT):
                (self.path / name).unlink(missing_ok=True)
        self._log_handler: logging.Handler | None = None

    def start_log(self) -> None:
        """Copy allfed's and Flower's log records of this run into ``run.log`` (appended to on
        a resume)."""
        mode = "a" if self.resume else "w"
        handler = logging.FileHandler(self.path / LOG, mode=mode, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler.setLevel(logging.INFO)
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        self._log_handler = handler

    def stop_log(self) -> None:
        if self._log_handler is not None:
            for name in _LOGGERS:
                logging.getLogger(name).removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def append_round(self, row: dict[str, Any]) -> None:
        with (self.path / METRICS).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean_json(row)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite_rounds(self, rows: list[dict[str, Any]]) -> None:
        """``metrics.jsonl`` as of the checkpoint: a row written after it is dropped on resume."""
        self._write_text(METRICS, "".join(json.dumps(clean_json(r)) + "\n" for r in rows))

    def write_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Temp file in the run directory, fsync, rename, fsync the directory: a crash leaves
        the previous checkpoint or the new one, never part of one."""
        path = self.path / CHECKPOINT
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        directory = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.write_json(SUMMARY, summary)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self._write_text(name, json.dumps(clean_json(data), indent=2) + "\n")

    def write_report(self, summary: dict[str, Any]) -> None:
        write_report(self.path, summary)

    def write_model(self, state_dict: dict[str, torch.Tensor], card: dict[str, Any]) -> None:
        """``model.pt``, the same model as ONNX (``card['inputs']``), and the card."""
        tmp = self.path / (MODEL + ".tmp")
        torch.save(state_dict, tmp)
        tmp.replace(self.path / MODEL)
        model = build_model(
            card["model"]["name"],
            len(card["features"]),
            card["model"]["hidden"],
            card["model"].get("intervals", ()),  # a survival model's interval ends
        )
        model.load_state_dict(state_dict)
        tmp = self.path / (MODEL_ONNX + ".tmp")
        tmp.write_bytes(onnx_bytes(model, len(card["features"])))
        tmp.replace(self.path / MODEL_ONNX)
        self._write_text(MODEL_CARD, json.dumps(clean_json(card), indent=2) + "\n")
        self._write_text(MODEL_CARD_MD, render_model_card(card))

    def _write_text(self, name: str, text: str) -> None:
        write_atomic(self.path / name, text)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, then rename: a reader never sees part."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def checkpoint_state(**state: Any) -> str:
    """The JSON part of a checkpoint (everything but tensors), NaN-safe."""
    return json.dumps(clean_json(state))


def load_checkpoint(path: Path, spec_toml: str) -> dict[str, Any]:
    """The checkpoint of run directory ``path`` for a resume of the study ``spec_toml``.

    Raises a one-line ``AllfedError`` when there is none, it cannot be read, or the spec differs
    (naming the first difference): a resume continues exactly the run that was started.
    """
    file = Path(path) / CHECKPOINT
    if not file.is_file():
        raise AllfedError(f"cannot resume {path}: no {CHECKPOINT} there (no round completed)")
    try:
        checkpoint = torch.load(file, weights_only=True)
        checkpoint["state"] = json.loads(checkpoint["state"])
    except Exception as error:
        raise AllfedError(f"cannot resume {path}: {CHECKPOINT} is unreadable ({error})") from None
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise AllfedError(f"cannot resume {path}: unknown checkpoint format")
    if difference := spec_difference(checkpoint["spec"], spec_toml):
        raise AllfedError(f"cannot resume {path}: the study spec changed ({difference})")
    return checkpoint


def spec_difference(before: str, after: str) -> str | None:
    """The first setting (dotted key) that differs between two specs' TOML, or None."""
    old, new = _flatten(tomllib.loads(before)), _flatten(tomllib.loads(after))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key} was {old.get(key)!r}, now {new.get(key)!r}"
    return None


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_report(path: Path, summary: dict[str, Any]) -> Path:
    """``report.html`` in run directory ``path``, from ``summary`` and the rounds on disk."""
    from federation.server.report import render_report  # matplotlib only when a report is due

    report = Path(path) / REPORT
    write_atomic(report, render_report(clean_json(summary), read_rounds(path)))
    return report


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (none if the run ended before its first round)."""
    metrics = Path(path) / METRICS
    if not metrics.exists():
        return []
    lines = metrics.read_text(encoding="utf-8").splitlines()
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as error:
        raise AllfedError(f"{metrics}: not valid JSON lines ({error})") from None


def rebuild_report(path: Path) -> Path:
    """``report.html`` of an existing run directory, from its summary.json and metrics.jsonl."""
    summary_path = Path(path) / SUMMARY
    if not summary_path.is_file():
        raise AllfedError(f"{path}: no {SUMMARY} here; not a run directory")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AllfedError(f"{summary_path}: not valid JSON ({error})") from None
    if not isinstance(summary, dict) or "study" not in summary or "sites" not in summary:
        raise AllfedError(f"{summary_path}: not an allfed run summary")
    return write_report(path, summary)


def clean_json(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become null, tuples lists, numpy scalars numbers."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
