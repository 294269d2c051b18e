"""``sylphx ui``: the dashboard's URL for a context with one, and for the embedded default
(a Unix socket) a loopback TCP relay, used for real: a `sylphx ui` process, the sign-in
page and a sign-in with the local key through it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SYLPHX = [sys.executable, "-m", "sylphx"]
TOKEN = re.compile(r'name="csrf" value="([^"]+)"')


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SYLPHX, *args], capture_output=True, text=True, env=os.environ | env, timeout=60
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_url_context_prints_its_dashboard(clean_env: Path) -> None:
    got = cli("ui", SYLPHX_URL="https://sylphx.example.com/")
    assert got.returncode == 0, got.stderr
    assert got.stdout == "https://sylphx.example.com/ui\n"
    flagged = cli("--url", "http://10.0.0.5:8080", "ui")
    assert flagged.stdout == "http://10.0.0.5:8080/ui\n"
    assert not (clean_env / "control.sock").exists()  # nothing local started for it


def test_the_relay_listens_on_loopback_only(clean_env: Path) -> None:
    for host in ("0.0.0.0", "192.168.1.10", "example.com"):
        got = cli("ui", "--host", host)
        assert got.returncode == 2, got
        assert "not a loopback address" in got.stderr
    assert not (clean_env / "control.sock").exists()  # refused before anything started


def test_the_relay_serves_the_embedded_dashboard(clean_env: Path) -> None:
    port = free_port()
    relay = subprocess.Popen(
        [*SYLPHX, "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            deadline = time.monotonic() + 90  # it starts the embedded control plane first
            while True:
                try:
                    form = c.get("/ui/login")
                    break
                except httpx.TransportError:
                    assert relay.poll() is None, relay.communicate()
                    assert time.monotonic() < deadline, "the relay never answered"
                    time.sleep(0.2)
            assert form.status_code == 200 and 'name="key"' in form.text
            assert (clean_env / "control.sock").exists()  # started by `sylphx ui`
            token = TOKEN.search(form.text)
            assert token is not None
            key = (clean_env / "local-token").read_text().strip()
            r = c.post("/ui/login", data={"key": key, "csrf": token[1], "next": "/ui/runs"})
            assert r.status_code == 303 and r.headers["location"] == "/ui/runs", r.text
            runs = c.get("/ui/runs")
            assert runs.status_code == 200 and "<h1>Runs</h1>" in runs.text
            assert c.get("/ui/org").status_code == 200  # the local org's page, signed in
    finally:
        relay.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = relay.communicate(timeout=30)
    assert relay.returncode == 0, err
    assert out.splitlines()[0] == f"{base}/ui"
    assert f"Sign in with the key in {clean_env / 'local-token'}" in err
    assert "relay stopped" in err
