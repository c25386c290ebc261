"""What every descriptive analysis's page shares: the HTML skeleton (title, the privacy and
method paragraphs, the numbered notes), the notes' numbering, and writing ``<name>.json`` beside
``<name>.html``.

Each analysis's module fills the skeleton's ``body`` block. The templates live in Python, not
in files beside it: a Flower app bundle (FAB) carries only Python, TOML, Markdown, YAML and JSON
files, and the ServerApp may run from one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import DictLoader, Environment, Template

from federation.server.outputs import clean_json, write_atomic
from federation.server.style import PAGE_CSS

_SKELETON = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title><style>{{ css }}</style></head>
<body>
<h1>{{ title }}</h1>
<p class="muted">{{ privacy }}</p>
<p class="muted">{{ method }}</p>
{% block body %}{% endblock %}
{% if notes %}
<ol class="muted">
{% for note in notes %}<li>{{ note }}</li>
{% endfor %}
</ol>
{% endif %}
</body></html>
"""
_PAGES = Environment(autoescape=True, loader=DictLoader({"analysis.html": _SKELETON}))


def page_template(body: str) -> Template:
    """The skeleton with ``body`` (Jinja2, autoescaped) as its ``body`` block."""
    return _PAGES.from_string(
        '{% extends "analysis.html" %}{% block body %}' + body + "{% endblock %}"
    )


def render_page(
    template: Template, title: str, privacy: str, method: str, notes: list[str], **body: Any
) -> str:
    return template.render(
        title=title, css=PAGE_CSS, privacy=privacy, method=method, notes=notes, **body
    )


def note_number(notes: list[str], text: str) -> int:
    """The number of ``text`` among the page's notes, added the first time it is needed."""
    if text not in notes:
        notes.append(text)
    return notes.index(text) + 1


def write_analysis(out: Path, name: str, result: dict[str, Any], html: str) -> tuple[Path, Path]:
    """Write ``out/<name>.json`` (the result) and ``out/<name>.html``; return their paths."""
    json_path, html_path = out / f"{name}.json", out / f"{name}.html"
    write_atomic(json_path, json.dumps(clean_json(result), indent=2) + "\n")
    write_atomic(html_path, html)
    return json_path, html_path
