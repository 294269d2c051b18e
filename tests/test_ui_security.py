"""The dashboard attacked over HTTP as a hostile tenant would: a big log's page, log reads
past the org's cap, non-ASCII cookies and tokens, a copied cookie after sign-out, what the
cookie holds, and the headers of what the app answers by itself under /ui. Also the
session key file: refused when another user could know or choose it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server
from sylphx._core.limits import MAX_BODY_BYTES
from sylphx._server.http.ui import session_key, shard_page
from sylphx._server.runs import logs
from sylphx._server.runs.streams import READS_PER_ORG, RETRY_AFTER_SECONDS
from test_ui import CSP, csrf_of, sign_in

BIG = 16 << 20  # a log bigger than what loopback sockets buffer for a reader who waits
SCRIPT = f"echo FIRST-LINE; yes abcdefghijklmnopqrstuvwxyz | head -c {BIG}; echo; echo LAST-LINE"


def _cookie_of(c: httpx.Client) -> str:
    value = c.cookies.get("sylphx_ui", path="/ui")
    assert value is not None
    return value


# -- 1. a page reads only the tail it shows; reads are bounded per org -------------------
def test_a_big_logs_page_reads_only_its_tail_and_reads_are_capped_per_org(
    tenant: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tenant.submit(command=["sh", "-c", SCRIPT], machine="nano")
    assert tenant.wait(run["id"])["status"] == "succeeded"
    read: list[int] = []
    real = logs.read_from

    def counting(path: str, offset: int, limit: int) -> tuple[list[bytes], int]:
        chunks, after = real(path, offset, limit)
        read.append(sum(map(len, chunks)))
        return chunks, after

    monkeypatch.setattr(logs, "read_from", counting)
    page_path = f"/ui/runs/{run['id']}/shards/0"
    log_path = f"{page_path}/log"
    with closing(sign_in(tenant.url, tenant.token)) as c:
        page = c.get(page_path)
        assert page.status_code == 200
        assert "LAST-LINE" in page.text and "FIRST-LINE" not in page.text
        assert sum(read) <= shard_page.SHOWN_BYTES + 1, sum(read)  # not the 16 MiB
        # downloads held open (their reader waits) take the org's log-read slots ...
        streams = tenant.plane.runs.log_streams
        small = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]  # no autotuned 32 MiB buffer
        holder = httpx.Client(
            base_url=tenant.url, transport=httpx.HTTPTransport(socket_options=small)
        )
        holder.cookies.set("sylphx_ui", _cookie_of(c), path="/ui")
        held = [holder.stream("GET", log_path, params={"download": "true"}) for _ in range(4)]
        assert len(held) == READS_PER_ORG
        try:
            for stream in held:
                assert stream.__enter__().status_code == 200  # its headers, then it waits
            assert streams.reading_for(tenant.org_id) == READS_PER_ORG
            for path in (log_path, page_path):  # ... past them: a 429 page, with Retry-After
                refused = c.get(path)
                assert refused.status_code == 429, refused.text[:300]
                assert refused.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
                assert refused.headers["Content-Security-Policy"] == CSP
                assert "log reads" in refused.text
            # another org is not held back by this one's reads
            other = tenant.new_org(f"o-{os.urandom(4).hex()}")
            with closing(sign_in(tenant.url, other)) as them:
                assert them.get("/ui/runs").status_code == 200
        finally:
            for stream in held:
                stream.__exit__(None, None, None)
            holder.close()
        tenant.wait_for(lambda: streams.reading_for(tenant.org_id) == 0)
        assert c.get(page_path).status_code == 200


# -- 2. non-ASCII cookies and tokens: a 4xx page, never a bare 500 -------------------------
def test_a_non_ascii_cookie_or_token_is_refused_with_the_headers(tenant: Server) -> None:
    with httpx.Client(base_url=tenant.url) as c:
        r = c.get("/ui/runs", headers={b"Cookie": b"sylphx_ui=abc.\xe9"})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        assert r.headers["Content-Security-Policy"] == CSP
        c.get("/ui/login")  # the sign-in form's nonce cookie
        r = c.post("/ui/login", data={"key": tenant.token, "csrf": "\u00e9\u4e2d"})
        assert r.status_code == 403 and r.headers["Content-Security-Policy"] == CSP
    with closing(sign_in(tenant.url, tenant.token)) as c:
        r = c.post("/ui/logout", data={"csrf": "caf\u00e9"})
        assert r.status_code == 403 and r.headers["Content-Security-Policy"] == CSP
        assert c.get("/ui/runs").status_code == 200  # still signed in
        mac = _cookie_of(c).partition(".")[2]
        r = c.get(  # a signed body, a mac with a non-ASCII byte
            "/ui/runs", headers={b"Cookie": f"sylphx_ui={_cookie_of(c)[:-1]}".encode() + b"\xff"}
        )
        assert mac and r.status_code == 303
        assert r.headers["Content-Security-Policy"] == CSP


# -- 3. the session key file ---------------------------------------------------------------
def test_the_session_key_is_made_private_and_kept(tmp_path: Path) -> None:
    key = session_key.load(tmp_path)
    path = tmp_path / session_key.KEY_FILE
    assert len(key) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert session_key.load(tmp_path) == key
    assert [p.name for p in tmp_path.iterdir()] == [session_key.KEY_FILE]  # no temp left


@pytest.mark.parametrize("kind", ["0644", "symlink", "empty", "short"])
def test_a_session_key_others_could_know_or_choose_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / session_key.KEY_FILE
    good = os.urandom(32).hex()
    if kind == "symlink":
        target = tmp_path / "elsewhere"
        target.write_text(good)
        target.chmod(0o600)
        path.symlink_to(target)
    else:
        path.write_text({"0644": good, "empty": "", "short": good[:10]}[kind])
        path.chmod(0o644 if kind == "0644" else 0o600)
    with pytest.raises(session_key.SessionKeyRefused) as refused:
        session_key.load(tmp_path)
    said = str(refused.value)
    assert str(path) in said and "Fix: remove it" in said
    assert "every dashboard session ends" in said
    assert {"0644": "mode 0644", "symlink": "symbolic link", "empty": "empty"}.get(kind, "") in said


def test_a_refused_session_key_is_a_500_page_with_the_headers(
    make_server: Callable[..., Server],
) -> None:
    server = make_server()
    path = server.settings.home / session_key.KEY_FILE
    path.write_text(os.urandom(32).hex())
    path.chmod(0o644)
    with httpx.Client(base_url=server.url) as c:
        r = c.get("/ui/login")
        assert r.status_code == 500 and r.headers["Content-Security-Policy"] == CSP
        assert str(path) not in r.text  # the operator's log names it, not the tenant's page


# -- 4. signing out ends the session, not only this browser's cookie ------------------------
def test_a_copied_cookie_is_no_session_after_sign_out(tenant: Server) -> None:
    with closing(sign_in(tenant.url, tenant.token)) as c:
        copied = _cookie_of(c)
        assert c.post("/ui/logout", data={"csrf": csrf_of(c)}).status_code == 303
    with httpx.Client(base_url=tenant.url) as thief:
        thief.cookies.set("sylphx_ui", copied, path="/ui")
        r = thief.get("/ui/runs")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    with closing(sign_in(tenant.url, tenant.token)) as again:  # signing in again works
        assert again.get("/ui/runs").status_code == 200


# -- 5. the cookie holds the key's id, not its stored hash ----------------------------------
def test_the_cookie_holds_no_hash_of_the_key(tenant: Server) -> None:
    stored = hashlib.sha256(tenant.token.encode()).hexdigest()
    with closing(sign_in(tenant.url, tenant.token)) as c:
        value = _cookie_of(c)
        body = value.partition(".")[0]
        data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        assert stored not in value and stored not in json.dumps(data)
        assert tenant.token not in json.dumps(data)
        assert data["o"] == tenant.org_id and data["k"].startswith("key_")


# -- 6. what the app answers by itself under /ui has the headers too ------------------------
def test_a_405_and_a_413_under_ui_have_the_headers(tenant: Server) -> None:
    with httpx.Client(base_url=tenant.url) as c:
        r = c.delete("/ui/login")
        assert r.status_code == 405 and r.headers["Content-Security-Policy"] == CSP
        assert r.headers["X-Frame-Options"] == "DENY"
        r = c.post("/ui/login", content=b"x" * (MAX_BODY_BYTES + 1))
        assert r.status_code == 413 and r.headers["Content-Security-Policy"] == CSP
        # the API's own answers are left as they were
        assert "Content-Security-Policy" not in c.delete("/v1/org").headers
