"""A run directory's checkpoint as the server writes it: for the resume tests and for the writer
process they kill (which imports this module, not a test module)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from federation.server.outputs import CHECKPOINT_FORMAT, RunDirectory
from federation.wire.spec import StudySpec


def write_checkpoint(out: Path, spec: StudySpec, round_: int, size: int = 4) -> RunDirectory:
    """A checkpoint after ``round_`` whose one array is ``size`` copies of ``round_``, so that a
    reader can tell a checkpoint mixing two writes from a whole one."""
    directory = RunDirectory(out, resume=True)  # keeps an existing checkpoint
    directory.write_checkpoint(
        {
            "format": CHECKPOINT_FORMAT,
            "spec": spec.to_toml(),
            "run_key": "k",
            "round": round_,
            "arrays": {"w": torch.full((size,), float(round_))},
            "strategy": {},
            "state": json.dumps({"scaling": [[], []], "sites": [], "metrics": {}, "rows": []}),
        }
    )
    return directory
