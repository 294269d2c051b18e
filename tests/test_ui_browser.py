"""The web dashboard in a real headless Chromium (Debian's ``chromium``, driven by
Playwright's Python API; never a downloaded browser) against a real control plane with
two orgs: signing in, a 256-shard run watched live to ``partial``, a failed shard's
stderr, cancelling, the usage chart, org scoping, escaping and CSRF.

The screenshots go to a temporary folder, or to docs/img (the README's) with
SYLPHX_UI_SCREENSHOTS=1. Run in the SQLite pass only: the store is not what this tests;
marked slow (~40 s), so `make test` runs it and `make check` does not."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TEST_STORE, Server, start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip install -e .[dev])")
pytestmark = [
    pytest.mark.slow,  # ~40 s: in make test (and CI), not in make check's fast loop
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium (make system-deps)"),
    pytest.mark.skipif(
        TEST_STORE == "postgresql", reason="the browser suite runs in the SQLite pass only"
    ),
]

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
SCRIPT = "<script>window.__pwned=1</script>"
# 256 shards: every 50th from 7 fails (twice: one retry each); the rest take a moment
SHARD = (
    'sleep 0.$((SYLPHX_SHARD_INDEX % 4)); echo "shard $SYLPHX_SHARD_INDEX: hello";'
    " if [ $((SYLPHX_SHARD_INDEX % 50)) -eq 7 ]; then"
    ' echo "boom at $SYLPHX_SHARD_INDEX <script>window.__pwned=1</script>" >&2; exit 3; fi'
)
FAILING = [7, 57, 107, 157, 207]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A control plane (32 nano shards at once) and the key of a second org."""
    server, stop = start_server(tmp_path_factory.mktemp("ui") / "home", local_cpus=4.0)
    other = server.new_org("other")
    yield server, other
    stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("SYLPHX_UI_SCREENSHOTS") == "1":
        return DOCS_IMG
    return tmp_path_factory.mktemp("shots")


def signed_in(browser: Any, url: str, key: str) -> Any:
    """A new browser context and page, signed in with ``key`` through the form."""
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("dialog", lambda d: pytest.fail(f"a dialog opened: {d.message}"))
    page.goto("/ui/runs")
    assert "/ui/login" in page.url  # no session: the sign-in form
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/runs")
    return page


@pytest.fixture(scope="module")
def page(browser: Any, plane: tuple[Server, str]) -> Iterator[Any]:
    server, _ = plane
    p = signed_in(browser, server.url, server.token)
    yield p
    p.context.close()


state: dict[str, str] = {}


def test_sign_in_with_a_key(page: Any) -> None:
    assert page.locator("h1").inner_text() == "Runs"
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["sylphx_ui"]["httpOnly"] and cookies["sylphx_ui"]["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it


def test_a_256_shard_run_goes_live_from_running_to_partial(
    page: Any, plane: tuple[Server, str], shots: Path
) -> None:
    server, _ = plane
    run = server.submit(
        command=["sh", "-c", SHARD],
        parallelism=256,
        machine="nano",
        gangScheduling=False,
        backoffLimitPerIndex=1,
        retryBackoff={"initialSeconds": 0.5},
        env={"NOTE": SCRIPT},
    )
    state["big"] = run["id"]
    page.goto(f"/ui/runs/{run['id']}")
    assert page.locator("#grid a.cell").count() == 256
    page.evaluate("window.__sameDocument = true")  # gone if the page were ever reloaded
    seen_running = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = page.locator("#run-status").inner_text()
        done = page.locator("#grid .s-succeeded").count()
        if status == "running" and 0 < done < 251:
            seen_running = True  # some cells ended while the run went on
        if status == "partial":
            break
        time.sleep(0.3)
    assert status == "partial"
    assert seen_running, "never saw the grid part-way"
    assert page.evaluate("window.__sameDocument") is True  # updated in place
    failed = page.locator("#grid .s-failed")
    assert failed.count() == len(FAILING)
    assert [int(i) for i in failed.evaluate_all("l => l.map(a => a.dataset.i)")] == FAILING
    assert page.locator("#grid .s-succeeded").count() == 256 - len(FAILING)
    assert "attempts" in failed.first.get_attribute("title")  # the hover text
    # the details came in at the end: failure groups, the timeline with the retries
    page.wait_for_selector("table.groups")
    assert page.locator("svg.timeline rect.bar[data-status=failed]").count() >= 2
    assert page.locator("#cancel").count() == 0  # nothing to cancel any more
    assert page.locator("#retry").is_visible()
    page.screenshot(path=str(shots / "ui-run.png"), full_page=True)


def test_open_a_failed_shard_and_read_its_stderr(page: Any) -> None:
    page.goto(f"/ui/runs/{state['big']}")
    page.click('#grid a[data-i="57"]')
    page.wait_for_url("**/shards/57")
    assert "failed" in page.locator("h1").inner_text()
    page.select_option("select[name=stream]", "stderr")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**stream=stderr**")
    log = page.locator("#log").inner_text()
    assert f"boom at 57 {SCRIPT}" in log  # the <script> in the log is text
    assert page.evaluate("window.__pwned") is None
    # the attempt picker: the first attempt failed the same way
    page.select_option("select[name=attempt]", "1")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**attempt=1**")
    assert "boom at 57" in page.locator("#log").inner_text()
    assert page.locator("#download").get_attribute("href").endswith("download=true")


def test_follow_a_shards_log_live(page: Any, plane: tuple[Server, str]) -> None:
    server, _ = plane
    lines = "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.4; done"
    run = server.submit(command=["sh", "-c", lines], machine="nano")
    server.wait_for(lambda: server.get(run["id"])["aggregate"]["running"] == 1)
    page.goto(f"/ui/runs/{run['id']}/shards/0")
    page.click("#follow")
    sync_api.expect(page.locator("#follow")).to_have_text("Ended", timeout=30_000)
    log = page.locator("#log").inner_text()
    assert [f"line{i}" for i in range(1, 7)] == log.split()


def test_a_script_in_a_command_stays_text(page: Any, plane: tuple[Server, str]) -> None:
    server, _ = plane
    run = server.submit(command=["sh", "-c", f"echo '{SCRIPT}' # {SCRIPT}"], machine="nano")
    server.wait(run["id"])
    page.goto(f"/ui/runs/{run['id']}")
    assert SCRIPT in page.locator("#command").inner_text()
    page.goto(f"/ui/runs/{run['id']}/shards/0")
    assert page.locator("#log").inner_text().strip() == SCRIPT
    page.goto("/ui/runs")
    assert SCRIPT in page.locator("#rows").inner_text()
    assert page.evaluate("window.__pwned") is None


def test_cancel_a_run(page: Any, plane: tuple[Server, str]) -> None:
    server, _ = plane
    run = server.submit(command=["sleep", "60"], machine="nano", parallelism=3)
    page.goto(f"/ui/runs/{run['id']}")
    page.click("#cancel")
    page.wait_for_url("**/cancel")
    assert "Cancel this run?" in page.locator("h1").inner_text()
    page.click("#confirm")
    page.wait_for_url(f"**/ui/runs/{run['id']}")
    # (the page's CSP forbids eval: Playwright's wait_for_function cannot run there)
    sync_api.expect(page.locator("#run-status")).to_have_text("cancelled", timeout=30_000)
    assert server.get(run["id"])["status"] == "cancelled"


def test_a_post_without_the_csrf_token_is_refused(page: Any, plane: tuple[Server, str]) -> None:
    server, _ = plane
    run = server.submit(command=["sleep", "60"], machine="nano")
    forged = page.request.post(f"/ui/runs/{run['id']}/cancel", form={"confirm": "yes"})
    assert forged.status == 403  # the session cookie alone is not enough
    assert not server.get(run["id"])["cancelRequested"]
    server.http.post(f"/v1/runs/{run['id']}/cancel")


def test_another_orgs_session_gets_404_for_the_run_page(
    browser: Any, plane: tuple[Server, str]
) -> None:
    server, other_key = plane
    theirs = signed_in(browser, server.url, other_key)
    try:
        response = theirs.goto(f"/ui/runs/{state['big']}")
        assert response.status == 404
        assert state["big"] not in theirs.content() or "not found" in theirs.content().lower()
        theirs.goto("/ui/runs")
        assert "No runs." in theirs.locator("#rows").inner_text()
    finally:
        theirs.context.close()


def test_the_usage_chart_renders_with_data(page: Any, shots: Path) -> None:
    page.goto("/ui/usage")
    bars = page.locator("#usage-chart rect.bar")
    assert bars.count() >= 1
    box = bars.first.bounding_box()
    assert box is not None and box["height"] > 1
    assert float(page.locator("#compute").inner_text().replace(",", "")) > 0
    page.screenshot(path=str(shots / "ui-usage.png"), full_page=True)
    page.goto("/ui/org")
    assert page.locator("#shards-gauge").count() == 1


def test_the_runs_list_refreshes_in_place(
    page: Any, plane: tuple[Server, str], shots: Path
) -> None:
    server, _ = plane
    page.goto("/ui/runs")
    page.evaluate("window.__sameDocument = true")
    run = server.submit(command=["true"], machine="nano")
    sync_api.expect(page.locator("#rows")).to_contain_text(run["id"], timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True
    server.wait(run["id"])
    page.goto("/ui/runs")
    page.screenshot(path=str(shots / "ui-runs.png"), full_page=True)
