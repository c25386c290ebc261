"""``allfed run launch``'s run config: any text (a spec, a path, an analysis request) reaches the
ServerApp as written, read the way ``flwr run --run-config FILE`` reads it."""

import json
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import fuse_dicts, parse_config_args

from federation.deploy.runs import run_config
from federation.wire import protocol as p
from federation.wire.spec import parse_spec, spec_from_run_config

AWKWARD = 'patient\'s "age" \'\'\' """ \\ \t é 😀'
SPEC = f"""
[study]
name = {json.dumps(AWKWARD, ensure_ascii=False)}
label = "it's"
[features]
numeric = ["a\\"b", 'c\\d']
categorical = {{ "x'y" = ["'", '"', "\\r\\n"] }}
"""


def flower_reads(config: Path) -> dict:
    """The run config as ``flwr run`` sends it, fused with the app's defaults as the SuperLink
    fuses them (an unknown key fails there)."""
    try:
        overrides = parse_config_args([str(config)])
    finally:
        config.unlink()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    return fuse_dicts(pyproject["tool"]["flwr"]["app"]["config"], overrides)


@pytest.mark.parametrize("resume", [False, True])
def test_quotes_backslashes_and_unicode_survive_the_run_config(tmp_path, resume):
    folder = tmp_path / 'it\'s "x"'
    folder.mkdir()
    study = folder / "study.toml"
    study.write_text(parse_spec(SPEC).to_toml(), encoding="utf-8")
    out = folder / "out \\ 'run'"
    analysis = json.dumps({"table": [AWKWARD], "by": "x'y"})
    config = flower_reads(run_config(study, out, 3, resume=resume, analysis=analysis))
    assert config[p.RUN_STUDY] == study.read_text(encoding="utf-8")
    assert config[p.RUN_RESUME if resume else p.RUN_OUT] == str(out)
    assert config[p.RUN_EXPECTED_SITES] == 3
    assert json.loads(config[p.RUN_ANALYSIS]) == json.loads(analysis)
    assert spec_from_run_config(config) == parse_spec(SPEC)
