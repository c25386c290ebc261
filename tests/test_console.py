"""`allfed console` as its users meet it: a real server process, Debian's Chromium driven by
Playwright, the ledgers and run directory of a real `allfed simulate` started during the test.

The browser must show the ledger figures `allfed privacy ledger --json` and `allfed privacy
audit --json` print, a run's rounds advancing without a reload, and a request without the token
must be refused. Screenshots of every page go to the test's folder (the path is printed).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cli_helpers import invoke
from playwright.sync_api import Page, expect, sync_playwright

from federation.synth import write_cohort
from privacy.accounting import GaussianRelease
from privacy.ledger import Budget, Ledger, PlannedRelease, RunPlan

ROUNDS = 4
SITES = ("urban-academic", "community-health", "rural-network")
TIGHT = "rural-network"  # spent most of its budget on an earlier run: refuses this one
POLICY = 'lifetime-epsilon = 8.0\nmax-epsilon-per-run = 3.0\nmax-delta = 1e-5\naccountant = "prv"\n'
TIGHT_POLICY = "lifetime-epsilon = 3.5\nmax-epsilon-per-run = 3.0\nmax-delta = 1e-5\n"


def chromium() -> str:
    """Debian's Chromium (Playwright's own download does not work here): missing is a failure."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "Debian's Chromium is not installed; the console's browser tests need it: "
            "apt-get install -y --no-install-recommends chromium (.ci/run does)"
        )
    return path


def allfed(*args: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-c", "from federation.cli import main; main()", *args]
    return subprocess.Popen(command, env={**os.environ, "COLUMNS": "200"}, text=True, **popen)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def console_address(process: subprocess.Popen, timeout: float = 60) -> str:
    """The `open http://...?token=...` line the console prints at start."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            assert process.poll() is None, f"allfed console exited: {process.stderr.read()}"
            continue
        if found := re.match(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)", line):
            return found.group(1)
    raise AssertionError("allfed console printed no address")


def http(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def earlier_run(ledger_dir: Path) -> None:
    """An earlier study's run at the tight site, recorded by the site's own Ledger."""
    budget = Budget(lifetime_epsilon=3.5, lifetime_delta=1e-5, accountant="prv")
    release = PlannedRelease("dp-sgd", "train", GaussianRelease(2.0, 0.1, 100))  # epsilon 2.35
    book = Ledger(ledger_dir / f"{TIGHT}.sqlite")
    plan = RunPlan("earlier-run-0001", "earlier-study", "prv", 1e-5, 3.0, (release,))
    assert book.admit(plan, budget) is None
    assert book.record_release(plan.run_id, 1, release, budget) is None
    book.record_message(plan.run_id, 1, "train", "ok", ["arrays/0.weight"], {"0.weight": [1, 13]})


def cli_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert invoke(*args, "--json") == 0
    return json.loads(capsys.readouterr().out)


def shoot(page: Page, folder: Path, name: str) -> None:
    """A full-page screenshot once every plot has loaded (a broken one fails the test)."""
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth)")
    path = folder / f"{name}.png"
    page.screenshot(path=path, full_page=True)  # listed at the end (capsys reads the CLI)


@pytest.mark.slow
def test_console_in_a_browser(tmp_path, capsys):
    executable = chromium()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    files, study = write_cohort(tmp_path / "data", n_sites=3, records_per_site=600, seed=5)
    assert set(files) == set(SITES)
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    (tmp_path / "tight.toml").write_text(TIGHT_POLICY, encoding="utf-8")
    ledgers, runs = tmp_path / "ledgers", tmp_path / "runs"
    ledgers.mkdir()
    runs.mkdir()
    earlier_run(ledgers)
    governance = []
    for name, path in files.items():
        policy = tmp_path / ("tight.toml" if name == TIGHT else "policy.toml")
        governance += ["--site", f"{name}={path}", "--policy", f"{name}={policy}"]
    console = allfed(
        "console",
        "--ledger-dir",
        str(ledgers),
        "--runs",
        str(runs),
        "--policy",
        f"{TIGHT}={tmp_path / 'tight.toml'}",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with (tmp_path / "simulate.log").open("w") as log:
        simulate = allfed(
            "simulate",
            "--study",
            str(study),
            *governance,
            "--ledger-dir",
            str(ledgers),
            "--out",
            str(runs / "live"),
            "--rounds",
            str(ROUNDS),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        address = console_address(console)
        base, token = address.split("/?token=")
        gate_refuses_without_token(base, token)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(address)
                assert "token" not in page.url  # kept in a cookie, out of the address bar
                expect(page.locator("h1")).to_have_text("Overview")
                watch_the_run_live(page, base, token, shots)
                assert simulate.wait(timeout=180) == 0, (tmp_path / "simulate.log").read_text()
                check_the_run_page(page, base, runs / "live", shots)
                check_the_site_pages(page, base, ledgers, capsys, shots)
                page.goto(base + "/")
                for name in SITES:
                    cli = cli_json(
                        capsys, "privacy", "ledger", "--ledger", str(ledgers / f"{name}.sqlite")
                    )
                    row = page.locator(f'#sites tr[data-site="{name}"]')
                    expect(row.locator('[data-field="spent"]')).to_have_text(
                        f"{cli['lifetime_epsilon']:.4f}"
                    )
                shoot(page, shots, "overview")
            finally:
                browser.close()
    finally:
        stop(simulate)
        stop(console)
    for path in sorted(shots.iterdir()):
        print(f"screenshot: {path}")


def gate_refuses_without_token(base: str, token: str) -> None:
    assert http(base + "/")[0] == 403
    assert http(base + "/api/runs/live")[0] == 403
    assert http(base + "/?token=wrong")[0] == 403
    assert http(base + "/static/console.css")[0] == 403
    assert http(base + "/", headers={"Authorization": "token wrong"})[0] == 403
    status, body = http(base + "/", headers={"Authorization": f"token {token}"})
    assert status == 200 and b"Overview" in body
    assert http(base + "/", "POST", {"Authorization": f"token {token}"})[0] == 405
    assert http(base + "/", "DELETE", {"Authorization": f"token {token}"})[0] == 405
    # A page reached through another name (DNS rebinding) is refused even with the token.
    assert (
        http(base + "/", headers={"Authorization": f"token {token}", "Host": "evil.example"})[0]
        == 400
    )


def watch_the_run_live(page: Page, base: str, token: str, shots: Path) -> None:
    """Open the run's page as soon as its directory exists and watch rounds land, no reload."""
    deadline = time.monotonic() + 120
    while http(base + "/api/runs/live", headers={"Authorization": f"token {token}"})[0] != 200:
        assert time.monotonic() < deadline, "the run directory never appeared"
        time.sleep(0.3)
    page.goto(base + "/runs/live")
    page.evaluate("window.notReloaded = true")
    first = int(page.locator("#rounds-done").inner_text())
    assert first < ROUNDS, "the run finished before its page was opened: nothing to watch"
    expect(page.locator("#run-status")).to_have_text("in progress")
    page.wait_for_function(
        "first => Number(document.querySelector('#rounds-done').textContent) > first",
        arg=first,
        timeout=120_000,
    )
    shoot(page, shots, "run-in-progress")
    expect(page.locator("#run-status")).to_have_text("completed", timeout=120_000)
    expect(page.locator("#rounds-done")).to_have_text(str(ROUNDS))
    assert page.evaluate("window.notReloaded === true"), "the page reloaded instead of updating"


def check_the_run_page(page: Page, base: str, run: Path, shots: Path) -> None:
    """The run's figures are its own files' figures."""
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    page.goto(base + "/runs/live")
    expect(page.locator("#rounds tbody tr")).to_have_count(len(rows))
    assert rows[-1]["metrics"] is not None  # the sites evaluate the final model
    for row in rows:
        if row["metrics"] is None:
            continue
        auroc = row["metrics"]["pooled"].get("auroc")  # absent or None where withheld
        cell = page.locator(f'#rounds tr[data-round="{row["round"]}"] [data-field="auroc"]')
        expect(cell).to_contain_text("n/a" if auroc is None else f"{auroc:.3f}")
    for name, site in summary["sites"].items():
        cell = page.locator(f'#run-sites tr[data-site="{name}"] [data-field="epsilon"]')
        expect(cell).to_have_text("n/a" if site["epsilon"] is None else f"{site['epsilon']:.4f}")
    assert summary["sites"][TIGHT]["status"] == "refused"
    expect(page.locator(f'#run-sites tr[data-site="{TIGHT}"]')).to_contain_text("refused")
    shoot(page, shots, "run-completed")
    page.click("text=Full report")
    expect(page.locator("h1")).to_contain_text(summary["study"])
    shoot(page, shots, "run-report")
    page.goto(base + "/runs/live")
    page.click("text=Model card")
    expect(page.locator("h1")).to_have_text(f"Model card: {summary['study']}")
    shoot(page, shots, "run-model-card")


def check_the_site_pages(page: Page, base: str, ledgers: Path, capsys, shots: Path) -> None:
    """Every figure of a site's page equals `allfed privacy ledger --json` and `audit --json`."""
    for name in SITES:
        path = str(ledgers / f"{name}.sqlite")
        ledger = cli_json(capsys, "privacy", "ledger", "--ledger", path)
        audit = cli_json(capsys, "privacy", "audit", "--ledger", path)
        page.goto(f"{base}/sites/{name}")
        expect(page.locator("#lifetime-epsilon")).to_have_text(f"{ledger['lifetime_epsilon']:.4f}")
        expect(page.locator("#lifetime-budget")).to_have_text(f"{ledger['lifetime_budget']:g}")
        left = ledger["lifetime_budget"] - ledger["lifetime_epsilon"]
        expect(page.locator("#lifetime-left")).to_have_text(f"{left:.4f}")
        expect(page.locator("#lifetime-delta")).to_have_text(f"{ledger['delta']:g}")
        expect(page.locator("#accountant")).to_have_text(ledger["accountant"])
        assert ledger["entries"], f"{name}: the run recorded no release"
        expect(page.locator("#releases tbody tr")).to_have_count(len(ledger["entries"]))
        for entry in ledger["entries"]:
            row = page.locator(f'#releases tr[data-release="{entry["id"]}"]')
            for field, text in (
                ("round", str(entry["round"])),
                ("mechanism", entry["mechanism"]),
                ("steps", str(entry["steps"])),
                ("noise_multiplier", f"{entry['noise_multiplier']:.4g}"),
                ("run_epsilon_after", f"{entry['run_epsilon_after']:.4f}"),
                ("lifetime_epsilon_after", f"{entry['lifetime_epsilon_after']:.4f}"),
            ):
                expect(row.locator(f'[data-field="{field}"]')).to_have_text(text)
        for run in audit["runs"]:
            row = page.locator(f'#ledger-runs tr[data-run="{run["run_id"]}"]')
            expect(row.locator('[data-field="epsilon"]')).to_have_text(f"{run['epsilon']:.4f}")
        sent = sum(len(run["messages"]) for run in audit["runs"])
        expect(page.locator("#messages tbody tr")).to_have_count(sent)
        refused = [run for run in audit["runs"] if run["status"] == "refused"]
        if name == TIGHT:
            assert refused and "lifetime budget 3.5" in refused[0]["reason"]
            expect(page.locator("#refusals")).to_contain_text(refused[0]["reason"])
            expect(page.locator("#policy-file")).to_contain_text("max-epsilon-per-run")
        else:
            assert not refused
        shoot(page, shots, f"site-{name}")


def test_console_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    assert invoke("console") == 2
    assert "--ledger-dir" in capsys.readouterr().err
    assert invoke("console", "--runs", str(tmp_path / "absent")) == 2
    assert "not a folder" in capsys.readouterr().err
    # Anything but loopback needs --expose: the console is for this machine.
    assert invoke("console", "--runs", str(tmp_path), "--host", "0.0.0.0") == 2
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "--expose" in err and "Traceback" not in err


def test_a_file_that_is_not_a_ledger_is_shown_as_such_and_left_untouched(tmp_path):
    """Opening any SQLite file with Ledger would add the ledger's tables: the console checks
    first, on a read-only connection."""
    import sqlite3

    from federation.console.views import Sources, is_ledger, site_summary
    from federation.errors import AllfedError

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    before = other.read_bytes()
    earlier_run(tmp_path)
    sources = Sources(tmp_path, None, {})
    assert set(sources.ledgers()) == {"other", TIGHT}
    assert is_ledger(tmp_path / f"{TIGHT}.sqlite") and not is_ledger(other)
    with pytest.raises(AllfedError, match=r"other\.sqlite: not an allfed ledger"):
        site_summary("other", other)
    assert other.read_bytes() == before


def test_a_participants_epsilon_is_shown_per_partition(tmp_path, capsys):
    """A participant's epsilon per partition is that partition's releases composed with those
    over all records, as `allfed privacy ledger --json` gives it, and the page shows the same."""
    from starlette.testclient import TestClient

    from federation.console.app import build_app
    from federation.console.views import Sources
    from privacy.accounting import compute_epsilon

    budget = Budget(lifetime_epsilon=8.0, lifetime_delta=1e-5, accountant="prv")
    releases = {
        "all": PlannedRelease("analysis-count", "all", GaussianRelease(8.0, 1.0, 1)),
        "train": PlannedRelease("dp-sgd", "train", GaussianRelease(1.5, 0.1, 60)),
        "test": PlannedRelease("evaluation-histograms", "test", GaussianRelease(4.0, 1.0, 2)),
    }
    path = tmp_path / "site-a.sqlite"
    book = Ledger(path)
    plan = RunPlan("run-with-partitions", "a-study", "prv", 1e-5, 3.0, tuple(releases.values()))
    assert book.admit(plan, budget) is None
    for round_, release in enumerate(releases.values()):
        assert book.record_release(plan.run_id, round_, release, budget) is None
    cli = cli_json(capsys, "privacy", "ledger", "--ledger", str(path))
    expected = {
        part: compute_epsilon([releases["all"].release, releases[part].release], 1e-5, "prv")
        for part in ("test", "train")
    }
    assert cli["partitions"] == pytest.approx(expected, rel=1e-12)
    assert cli["lifetime_epsilon"] == max(cli["partitions"].values())
    app = build_app(Sources(tmp_path, None, {}), "t0ken")
    client = TestClient(app, base_url="http://127.0.0.1")
    page = client.get("/sites/site-a", headers={"Authorization": "token t0ken"})
    assert page.status_code == 200
    for part, value in cli["partitions"].items():
        assert re.search(
            rf'data-partition="{part}"><td>{part}</td><td class="num">{value:.4f}<', page.text
        )
    assert client.get("/sites/site-a").status_code == 403
