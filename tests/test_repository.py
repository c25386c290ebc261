"""The tree itself: no file holds what a half-finished merge leaves behind."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = {".py", ".md", ".toml", ".html", ".css", ".js", ".txt", ".cfg", ".sh"}
SKIPPED = {".git", ".venv", "node_modules", "__pycache__", ".ruff_cache", ".pytest_cache"}
MARKER = re.compile(r"^(<{7}( |$)|={7}$|>{7}( |$))", re.MULTILINE)


def _text_files() -> list[Path]:
    files = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [
            name for name in subfolders if name not in SKIPPED and not name.endswith(".egg-info")
        ]
        at_ci = Path(folder).name == ".ci"
        files += [Path(folder, name) for name in names if at_ci or Path(name).suffix in TEXT]
    return files


def test_no_file_holds_merge_conflict_markers():
    files = _text_files()
    assert any(path.name == "README.md" for path in files)
    marked = [
        str(path.relative_to(ROOT))
        for path in files
        if MARKER.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert marked == []
