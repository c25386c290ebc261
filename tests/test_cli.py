"""The CLI's contract for user mistakes: one line on stderr, exit code 2, no traceback."""

import pytest
from cli_helpers import invoke
from typer.testing import CliRunner

from federation.cli import app

runner = CliRunner()


def test_site_check_accepts_a_good_file(cohort, capsys):
    files, spec_path = cohort
    assert invoke("site", "check", "--study", str(spec_path), str(next(iter(files.values())))) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("site", "check", "--study", "{spec}", "{missing}"), "file not found"),
        (("site", "check", "--study", "{missing}", "{site}"), "study spec not found"),
        (
            ("simulate", "--study", "{spec}", "--site", "nopath", "--out", "{out}"),
            "expected NAME=PATH",
        ),
        (("simulate", "--study", "{spec}", "--site", "a={missing}", "--out", "{out}"), "site a:"),
        (
            (
                "simulate",
                "--study",
                "{spec}",
                "--site",
                "a={site}",
                "--out",
                "{out}",
                "--strategy",
                "x",
            ),
            "--strategy must be one of",
        ),
        (
            (
                "simulate",
                "--study",
                "{spec}",
                "--site",
                "a={site}",
                "--out",
                "{out}",
                "--target-epsilon",
                "-1",
            ),
            "target-epsilon must be positive",
        ),
    ],
)
def test_user_mistakes_exit_2_with_one_line(cohort, tmp_path, capsys, args, message):
    files, spec_path = cohort
    values = {
        "spec": spec_path,
        "site": next(iter(files.values())),
        "missing": tmp_path / "nope.csv",
        "out": tmp_path / "out",
    }
    assert invoke(*(a.format(**values) for a in args)) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split())
    assert "Traceback" not in err


def test_synth_writes_files_and_a_spec(tmp_path):
    result = runner.invoke(
        app, ["synth", "--out", str(tmp_path), "--sites", "2", "--records", "150"]
    )
    assert result.exit_code == 0
    assert (tmp_path / "study.toml").exists() and len(list(tmp_path.glob("*.csv"))) == 2
