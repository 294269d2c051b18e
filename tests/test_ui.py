"""The web dashboard over HTTP (no browser): signing in, the cookie's flags, the security
headers, CSRF on every POST, org scoping (another org's run is a 404) and escaping.
tests/test_ui_browser.py drives it in a real Chromium."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from conftest import Server
from sylphx._core.palette import STATE_COLORS
from sylphx._server.runs.live import MAX_LIVE_PER_ORG
from sylphx._server.store import ApiKeyRow
from sylphx._server.tenancy import orgs

UI = Path(__file__).resolve().parents[1] / "src" / "sylphx" / "_server" / "http" / "ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SCRIPT = "<script>alert(1)</script>"
TOKEN = re.compile(r'name="csrf" value="([^"]+)"')


def sign_in(url: str, key: str, **headers: str) -> httpx.Client:
    """A client holding a dashboard session of the org of ``key``."""
    c = httpx.Client(base_url=url, timeout=30, headers=headers)
    form = c.get("/ui/login")
    assert form.status_code == 200
    token = TOKEN.search(form.text)
    assert token is not None
    r = c.post("/ui/login", data={"key": key, "csrf": token[1], "next": "/ui/runs"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/runs", r.text
    return c


def csrf_of(c: httpx.Client, path: str = "/ui/runs") -> str:
    got = TOKEN.search(c.get(path).text)
    assert got is not None
    return got[1]


@pytest.fixture
def ui(tenant: Server) -> Iterator[httpx.Client]:
    c = sign_in(tenant.url, tenant.token)
    yield c
    c.close()


def test_pages_send_a_stranger_to_the_sign_in(shared_server: Server) -> None:
    with httpx.Client(base_url=shared_server.url) as c:
        for path in ("/ui/runs", "/ui/usage", "/ui/org", "/ui/runs/wrk_x", "/ui/runs/wrk_x/live"):
            r = c.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/ui/login?next="), path
        assert c.get("/ui").headers["location"] == "/ui/runs"
        # a forged or tampered cookie is no session
        c.cookies.set("sylphx_ui", "eyJvIjoib3JnX3Rlc3QifQ.00", path="/ui")
        assert c.get("/ui/runs").status_code == 303


def test_signing_in_sets_a_signed_httponly_strict_cookie(tenant: Server) -> None:
    with httpx.Client(base_url=tenant.url) as c:
        form = c.get("/ui/login")
        token = TOKEN.search(form.text)
        assert token is not None
        bad = c.post("/ui/login", data={"key": "sx_nope", "csrf": token[1]})
        assert bad.status_code == 401 and "unknown or revoked" in bad.text
        assert "sylphx_ui=" not in bad.headers.get("set-cookie", "")
        r = c.post("/ui/login", data={"key": tenant.token, "csrf": token[1]})
        assert r.status_code == 303
        cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("sylphx_ui="))
        flags = {f.strip().lower() for f in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/ui", "max-age=43200"} <= flags
        assert "secure" not in flags  # plain http on loopback
        assert tenant.token not in cookie  # the key is checked, never kept
        assert c.get("/ui/runs").status_code == 200
        # signing out needs the CSRF token too, then the session is gone
        assert c.post("/ui/logout", data={}).status_code == 403
        out = c.post("/ui/logout", data={"csrf": csrf_of(c)})
        assert out.status_code == 303
        assert c.get("/ui/runs").status_code == 303


def test_the_cookies_are_secure_over_https(tenant: Server) -> None:
    # uvicorn trusts X-Forwarded-Proto from loopback (a TLS-terminating proxy in front)
    https = {"X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=tenant.url, headers=https) as c:
        form = c.get("/ui/login")
        assert "secure" in form.headers["set-cookie"].lower()
        nonce = form.headers["set-cookie"].split(";")[0]  # httpx keeps Secure ones for https
        token = TOKEN.search(form.text)
        assert token is not None
        r = c.post(
            "/ui/login",
            data={"key": tenant.token, "csrf": token[1]},
            headers={"Cookie": nonce},
        )
        assert r.status_code == 303
        session = next(v for v in r.headers.get_list("set-cookie") if v.startswith("sylphx_ui="))
        assert "secure" in session.lower()


def test_sign_in_needs_its_form_token(tenant: Server) -> None:
    with httpx.Client(base_url=tenant.url) as c:
        c.get("/ui/login")
        r = c.post("/ui/login", data={"key": tenant.token, "csrf": "forged"})
        assert r.status_code == 403
        assert "sylphx_ui=" not in r.headers.get("set-cookie", "")


def test_every_answer_has_the_strict_headers(ui: httpx.Client, tenant: Server) -> None:
    run = tenant.submit(command=["true"], machine="nano")
    paths = [
        "/ui/login",
        "/ui/runs",
        "/ui/usage",
        "/ui/org",
        f"/ui/runs/{run['id']}",
        f"/ui/runs/{run['id']}/live",
        "/ui/runs/wrk_unknown",
        "/ui/no/such/page",
        "/ui/static/ui.css",
        "/ui/static/run.js",
        "/ui/static/palette.css",
    ]
    for path in paths:
        r = ui.get(path)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer", path
    assert ui.get("/ui/static/run.js").headers["content-type"].startswith("text/javascript")
    assert ui.get("/ui/static/nope.js").status_code == 404
    bad = ui.get(f"/ui/runs/{run['id']}/shards/0", params={"stream": "nope"})
    assert bad.status_code == 422 and bad.headers["content-security-policy"] == CSP
    assert ui.get("/ui/runs/rows", params={"status": "", "q": "", "cursor": ""}).is_success
    css = ui.get("/ui/static/palette.css").text
    assert all(color in css for color in STATE_COLORS.values())  # the one palette


def test_the_templates_have_no_inline_script_or_style() -> None:
    for template in (UI / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert not re.search(r"\sstyle=|<style", text), template.name
        assert not re.search(r"\son[a-z]+=", text), template.name


def test_posts_without_the_csrf_token_are_refused(ui: httpx.Client, tenant: Server) -> None:
    run = tenant.submit(command=["sleep", "30"], machine="nano")
    cancel = f"/ui/runs/{run['id']}/cancel"
    assert ui.post(cancel, data={}).status_code == 403
    assert ui.post(cancel, data={"csrf": "0" * 64}).status_code == 403
    token = csrf_of(ui, cancel)
    other = {"Origin": "https://evil.example"}
    assert ui.post(cancel, data={"csrf": token}, headers=other).status_code == 403
    cross = {"Sec-Fetch-Site": "cross-site"}
    assert ui.post(cancel, data={"csrf": token}, headers=cross).status_code == 403
    assert not tenant.get(run["id"])["cancelRequested"]
    r = ui.post(cancel, data={"csrf": token})
    assert r.status_code == 303 and r.headers["location"] == f"/ui/runs/{run['id']}"
    assert tenant.wait(run["id"])["status"] == "cancelled"
    # retry, where the API has it: the same guard
    retry = f"/ui/runs/{run['id']}/retry"
    assert ui.post(retry, data={}).status_code == 403
    assert ui.post(retry, data={"csrf": token}).status_code == 303
    assert tenant.get(run["id"])["reopened"] == 1
    tenant.http.post(f"/v1/runs/{run['id']}/cancel")


def test_another_orgs_run_is_a_404(ui: httpx.Client, tenant: Server, shared_server: Server) -> None:
    theirs = shared_server.submit(command=["true"], machine="nano")
    shared_server.wait(theirs["id"])
    token = csrf_of(ui)
    base = f"/ui/runs/{theirs['id']}"
    for path in (base, f"{base}/live", f"{base}/details", f"{base}/cancel", f"{base}/shards/0",
                 f"{base}/shards/0/log"):  # fmt: skip
        assert ui.get(path).status_code == 404, path
    assert ui.post(f"{base}/retry", data={"csrf": token}).status_code == 404
    assert theirs["id"] not in ui.get("/ui/runs").text
    assert "No runs." in ui.get(f"/ui/runs?q={theirs['id']}").text  # found only in theirs


def test_a_script_in_a_command_env_or_log_stays_text(ui: httpx.Client, tenant: Server) -> None:
    command = ["sh", "-c", f"echo '{SCRIPT}'; echo '{SCRIPT}' >&2; true # {SCRIPT}"]
    run = tenant.submit(command=command, machine="nano", env={"NOTE": SCRIPT})
    tenant.wait(run["id"])
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    base = f"/ui/runs/{run['id']}"
    pages = ["/ui/runs", f"/ui/runs?q={run['id']}", "/ui/runs/rows", base, f"{base}/shards/0",
             f"{base}/shards/0?stream=stderr"]  # fmt: skip
    for path in pages:
        text = ui.get(path).text
        assert SCRIPT not in text, path
        assert escaped in text, path
    live = ui.get(f"{base}/live").json()
    assert SCRIPT not in live["header"]
    raw = ui.get(f"{base}/shards/0/log", params={"stream": "stderr", "download": "true"})
    assert raw.headers["content-type"].startswith("text/plain")  # never parsed as HTML
    assert raw.headers["content-disposition"].startswith("attachment")
    assert raw.text == SCRIPT + "\n"


def test_usage_and_org_pages(ui: httpx.Client, tenant: Server) -> None:
    run = tenant.submit(command=["sleep", "0.2"], machine="nano", parallelism=2)
    tenant.wait(run["id"])
    usage = ui.get("/ui/usage").text
    assert 'id="usage-chart"' in usage and usage.count('class="bar"') >= 1
    assert "nano" in usage and "credits applied" in usage and "billable" in usage
    org = ui.get("/ui/org").text
    assert "<meter" in org and "API keys" in org
    assert tenant.token not in org and tenant.token[:10] not in org  # never a key's value


def test_search_by_id_and_command_and_filter_by_status(ui: httpx.Client, tenant: Server) -> None:
    a = tenant.submit(command=["echo", "needle-alpha"], machine="nano")
    b = tenant.submit(command=["false"], machine="nano")
    tenant.wait(a["id"]), tenant.wait(b["id"])
    found = ui.get("/ui/runs", params={"q": "needle-alpha"}).text
    assert a["id"] in found and b["id"] not in found
    assert b["id"] in ui.get("/ui/runs", params={"q": b["id"][-6:]}).text
    failed = ui.get("/ui/runs", params={"status": "failed"}).text
    assert b["id"] in failed and a["id"] not in failed


def test_revoking_the_key_ends_its_sessions(tenant: Server) -> None:
    with tenant.plane.sessions.begin() as s:
        org = orgs.find_org(s, tenant.org_id)
        _, key = orgs.create_key(s, org.id, name="browser", now=tenant.plane.now())
    c = sign_in(tenant.url, key)
    try:
        assert c.get("/ui/runs").status_code == 200
        with tenant.plane.sessions.begin() as s:
            row = s.scalars(select(ApiKeyRow).where(ApiKeyRow.hash == orgs.hash_key(key))).one()
            orgs.revoke_key(s, row.id, tenant.plane.now())
        time.sleep(tenant.settings.auth_cache_seconds + 0.2)  # the key cache's TTL
        r = c.get("/ui/runs")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    finally:
        c.close()


def test_the_wheel_ships_every_asset() -> None:
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((UI.parents[4] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["sylphx"]
    package = UI.parents[2]  # src/sylphx
    for asset in [*(UI / "templates").iterdir(), *(UI / "static").iterdir()]:
        name = str(asset.relative_to(package))
        assert any(fnmatch.fnmatch(name, g) for g in globs), name


def test_the_models_the_pages_draw() -> None:
    from datetime import UTC, datetime, timedelta

    from sylphx._core.views import AttemptView, ShardView, UsageByMachine, UsageReport
    from sylphx._server.http.ui import model

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    retried = ShardView(
        index=3,
        status="failed",
        attempts=2,
        preemptions=1,
        exit_code=3,
        reason="Error",
        duration_seconds=4.0,
        history=[
            AttemptView(attempt=1, status="preempted", started_at=at(0), ended_at=at(1)),
            AttemptView(attempt=2, status="failed", exit_code=3, started_at=at(2), ended_at=at(4)),
        ],
    )
    state, glyph, title = model.cell(retried)
    assert (state, glyph) == ("failed", "✗")
    assert title == "shard 3 · failed · exit 3 · Error · 2 attempts · 1 preempted · 4s"
    chart = model.timeline([retried], None, at(0), at(5))
    (row,) = chart.rows
    assert [b.state for b in row.bars] == ["preempted", "failed"]  # the worst drawn last
    assert [b.hatched for b in row.bars] == [True, False]
    assert len(row.waits) == 1 and row.extra == 1  # the wait between, one restart
    day = UsageReport.model_validate(
        {"org": "o", "plan": "p", "from": t0, "to": at(86400), "computeSeconds": 30,
         "creditsApplied": 30, "billableSeconds": 0, "monthlyCreditSeconds": 100,
         "byMachine": [UsageByMachine(machine="nano", wall_seconds=80, compute_seconds=10),
                       UsageByMachine(machine="large", wall_seconds=5, compute_seconds=20)]}
    )  # fmt: skip
    usage = model.usage_chart([(t0, day)])
    assert usage.total == 30 and [t for t, _ in usage.tiers] == ["large", "nano"]
    assert round(sum(b.height for b in usage.bars)) == 200  # the tallest day fills the plot


def test_a_run_with_a_merge_step_shows_it(ui: httpx.Client, tenant: Server) -> None:
    run = tenant.submit(
        command=["true"], machine="nano", parallelism=2, merge={"command": ["true"]}
    )
    tenant.wait(run["id"])
    page = ui.get(f"/ui/runs/{run['id']}").text
    assert "merge step" in page and 'badge s-succeeded">succeeded' in page
    assert ">merge</text>" in page  # its own row on the timeline, last


def test_a_live_update_waits_for_a_shard_to_change(ui: httpx.Client, tenant: Server) -> None:
    """With the version the page has, ``/live`` is a long-poll: "no change" at its bound
    (a short one here), the update as soon as a shard changes."""
    from datetime import UTC, datetime

    script = 'if [ "$SYLPHX_SHARD_INDEX" = 0 ]; then sleep 4; else sleep 60; fi'
    run = tenant.submit(command=["sh", "-c", script], machine="nano", parallelism=2)
    live = f"/ui/runs/{run['id']}/live"
    try:
        tenant.wait_for(lambda: [c[0] for c in ui.get(live).json()["cells"]] == ["running"] * 2)
        version = ui.get(live).json()["version"]
        assert f'data-version="{version}"' in ui.get(f"/ui/runs/{run['id']}").text
        # nothing changes for a second: "no change" at the bound, not before
        start = time.monotonic()
        same = ui.get(live, params={"version": version, "wait": 1})
        took = time.monotonic() - start
        assert same.status_code == 200 and same.json() == {"changed": False, "version": version}
        assert 0.95 <= took < 3
        assert ui.get(live, params={"version": version, "wait": 26}).status_code == 422
        # shard 0 ends: the answer comes as soon as it is stored, well before the bound
        asked = datetime.now(UTC)
        while True:
            moved = ui.get(live, params={"version": version, "wait": 20}).json()
            assert moved["changed"] and moved["version"] != version
            version = moved["version"]
            if moved["cells"][0][0] == "succeeded":
                break
        answered = datetime.now(UTC)
        assert moved["cells"][1][0] == "running" and moved["active"]
        ended = datetime.fromisoformat(tenant.shards(run["id"])[0]["endedAt"])
        assert asked < ended, "the shard ended before the wait began: nothing was waited for"
        assert (answered - ended).total_seconds() < 2.0
        # a stale version is answered at once, with the update
        start = time.monotonic()
        stale = ui.get(live, params={"version": "1.2.3", "wait": 20}).json()
        assert stale["changed"] and stale["version"] == version
        assert time.monotonic() - start < 2
    finally:
        tenant.http.post(f"/v1/runs/{run['id']}/cancel")


def test_live_updates_waiting_are_bounded_per_org(
    ui: httpx.Client, tenant: Server, shared_server: Server
) -> None:
    import threading

    waiters = shared_server.plane.runs.live_waiters
    run = tenant.submit(command=["sleep", "60"], machine="nano")
    live = f"/ui/runs/{run['id']}/live"
    tenant.wait_for(lambda: ui.get(live).json()["cells"][0][0] == "running")
    version = ui.get(live).json()["version"]
    second = sign_in(tenant.url, tenant.token)
    got: list[httpx.Response] = []
    held = threading.Thread(
        target=lambda: got.append(ui.get(live, params={"version": version, "wait": 20}))
    )
    waiters.per_org = 1
    try:
        held.start()
        shared_server.wait_for(lambda: len(waiters) == 1)
        busy = second.get(live, params={"version": version, "wait": 20})
        assert busy.status_code == 429 and "live dashboard updates" in busy.text
    finally:
        waiters.per_org = MAX_LIVE_PER_ORG
        second.close()
        tenant.http.post(f"/v1/runs/{run['id']}/cancel")  # a change: the held one answers
    held.join(timeout=15)
    assert got and got[0].json()["changed"]
    assert len(waiters) == 0
