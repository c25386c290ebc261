"""The CLI's contract for user mistakes: one line on stderr, exit code 2, no traceback."""

import json

import pandas as pd
import pytest
from cli_helpers import invoke, run_allfed
from typer.testing import CliRunner

from federation.cli import app

runner = CliRunner()


def test_site_check_accepts_a_good_file(cohort, capsys):
    files, spec_path = cohort
    path = next(iter(files.values()))
    assert invoke("site", "check", "--study", str(spec_path), str(path)) == 0
    words = " ".join(capsys.readouterr().out.split())
    assert words.startswith(f"{path}: ok, ") and "test records in a preview of the fixed" in words
    assert invoke("site", "check", "--study", str(spec_path), str(path), "--json") == 0
    check = json.loads(capsys.readouterr().out)
    assert check["file"] == str(path) and check["ok"] is True and check["partition"] == "preview"
    consented = pd.read_csv(path)["consent"].astype(str).str.lower().isin(["1", "true", "yes"])
    assert check["n_train"] + check["n_test"] == consented.sum()  # every rule here imputes
    assert check["features"] == 9 and check["label"] == "outcome" and check["warnings"] == []


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
            "[privacy] target-epsilon: must be positive, got -1.0",
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


def test_version_is_the_installed_package():
    from importlib.metadata import version

    done = run_allfed("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"allfed {version('allfed')}"


def test_run_status_of_a_missing_directory_exits_2(tmp_path):
    done = run_allfed("run", "status", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such run directory"


def test_the_same_file_as_two_sites_is_refused(cohort, tmp_path, capsys):
    files, spec_path = cohort
    path = next(iter(files.values()))
    for command in (
        ["simulate", "--study", str(spec_path), "--out", str(tmp_path / "run")],
        [
            "analyze",
            "count",
            "--study",
            str(spec_path),
            "--target-epsilon",
            "1",
            "--out",
            str(tmp_path / "c"),
        ],
    ):
        assert invoke(*command, "--site", f"a={path}", "--site", f"b={path}") == 2
        assert capsys.readouterr().err.strip() == (
            f"error: --site b: {path} is also site a's file; each site needs its own"
        )


def test_a_run_directory_is_never_overwritten_without_force(cohort, tmp_path):
    files, spec_path = cohort
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    sites = [arg for name, path in files.items() for arg in ("--site", f"{name}={path}")]
    done = run_allfed("simulate", "--study", str(spec_path), "--out", str(out), *sites)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: --out {out}: already holds a run; pass --force to replace it "
        "(or --resume to continue it)"
    )
    assert (out / "summary.json").read_text() == "{}"
    demo = tmp_path / "demo"
    (demo / "run").mkdir(parents=True)
    (demo / "run" / "metrics.jsonl").write_text("")
    done = run_allfed("demo", "--out", str(demo))
    assert done.returncode == 2 and "already holds a run; pass --force" in done.stderr


def test_an_unwritable_run_directory_is_refused_before_any_site_starts(cohort, tmp_path):
    files, spec_path = cohort
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    sites = [arg for name, path in files.items() for arg in ("--site", f"{name}={path}")]
    done = run_allfed("simulate", "--study", str(spec_path), "--out", str(blocker / "run"), *sites)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: --out {blocker / 'run'}: cannot write the run directory")
    assert "Traceback" not in done.stderr


def test_contradictions_and_too_few_sites_fail_at_once(cohort, tmp_path, capsys):
    files, spec_path = cohort
    name, path = next(iter(files.items()))
    base = ["simulate", "--study", str(spec_path), "--out", str(tmp_path / "run")]
    assert invoke(*base, "--site", f"{name}={path}", "--no-dp", "--target-epsilon", "5") == 2
    assert capsys.readouterr().err.strip() == (
        "error: --no-dp and --target-epsilon contradict each other; give one"
    )
    assert invoke(*base, "--site", f"{name}={path}") == 2
    assert capsys.readouterr().err.strip() == (
        "error: 1 site(s) given, fewer than [training] min-sites = 2: the run cannot start"
    )
    sites = [arg for site, file in files.items() for arg in ("--site", f"{site}={file}")]
    assert invoke(*base, *sites, "--resume", "--force") == 2
    assert capsys.readouterr().err.strip() == (
        "error: --resume continues the run in --out and --force replaces it; give one"
    )
    assert invoke(*base, *sites, "--resume") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: cannot resume {tmp_path / 'run'}: no checkpoint.pt there (no round completed)"
    )
    for epsilon, why in (
        ("1e9", "1e+09 is above 100, where a DP guarantee means nothing; to train without DP, "
         "say so (enabled = false, --no-dp)"),
        ("0.001", "0.001 is below 0.01, which no noise level reaches in a useful plan"),
    ):  # fmt: skip
        assert invoke(*base, *sites, "--target-epsilon", epsilon) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: command-line overrides: [privacy] target-epsilon: {why}"
        )
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_run_that_fails_exits_1_with_its_reason(cohort, tmp_path, capsys, monkeypatch):
    """The run's own failure (fewer than min-sites left, tests/test_faults.py runs it) is exit 1
    with the summary's reason, not a traceback."""
    import federation.simulation

    files, spec_path = cohort
    failed = {
        "status": "failed",
        "study": "cardiometabolic-risk",
        "model": "logistic",
        "error": "round 2: only 1 site(s) left, min-sites = 2",
        "rounds": 1,
        "sites": {},
        "metrics": {},
    }
    monkeypatch.setattr(federation.simulation, "simulate", lambda *args, **kwargs: failed)
    sites = [arg for name, path in files.items() for arg in ("--site", f"{name}={path}")]
    code = invoke("simulate", "--study", str(spec_path), "--out", str(tmp_path / "run"), *sites)
    assert code == 1
    assert "run failed: round 2: only 1 site(s) left, min-sites = 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["synth"], "the site files"),
        (["certs", "--host", "127.0.0.1"], "the certificates"),
        (["node", "keygen"], "the key"),
    ],
)
def test_an_unwritable_destination_is_one_line_before_any_work(command, what, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert invoke(*command, "--out", str(blocker / "out")) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --out {blocker / 'out'}: cannot write {what} (Not a directory)"
    )


def test_run_launch_refuses_an_earlier_run_before_submitting(cohort, tmp_path, capsys):
    _, spec_path = cohort
    (tmp_path / "summary.json").write_text("{}")
    assert invoke("run", "launch", "--study", str(spec_path), "--out", str(tmp_path)) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --out {tmp_path}: already holds a run; pass --force to replace it "
        "(or --resume to continue it)"
    )
    args = ("run", "launch", "--study", str(spec_path), "--out", str(tmp_path))
    assert invoke(*args, "--resume", "--force") == 2
    assert capsys.readouterr().err.strip() == (
        "error: --resume continues the run in --out and --force replaces it; give one"
    )


@pytest.mark.parametrize("timeout", ["0", "-5", "nan"])
def test_run_launch_refuses_a_timeout_that_could_not_wait_before_submitting(
    timeout, cohort, tmp_path, capsys
):
    """A run submitted with a timeout of none would run on at the SuperLink unwatched."""
    _, spec_path = cohort
    args = ("run", "launch", "--study", str(spec_path), "--out", str(tmp_path / "run"))
    assert invoke(*args, "--timeout", timeout) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --timeout: expected seconds above 0, got {float(timeout):g}"
    )
    assert not (tmp_path / "run").exists()
