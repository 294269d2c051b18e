"""Operator and account commands: `sylphx admin org|key`, `sylphx login`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import Server


def sylphx(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sylphx", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_admin_creates_orgs_and_keys_that_work(server: Server, tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYLPHX_")}
    admin = {
        **base,
        "SYLPHX_DATABASE_URL": server.settings.database_url,
        "SYLPHX_HOME": str(server.settings.home),
    }
    created = sylphx(
        "admin", "org", "create", "acme", "--plan", "pro", "--concurrent-shards", "10", env=admin
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("org_")
    dup = sylphx("admin", "org", "create", "acme", env=admin)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad = sylphx("admin", "org", "create", "Bad Name!", env=admin)
    assert bad.returncode == 2 and "not a valid org name" in bad.stderr
    key = sylphx("admin", "key", "create", "--org", "acme", "--name", "ci", env=admin)
    assert key.returncode == 0 and "not shown again" in key.stderr
    token = key.stdout.strip()
    assert token.startswith("sx_")
    listed = sylphx("admin", "key", "list", "--org", "acme", env=admin)
    assert token[:10] in listed.stdout and token not in listed.stdout
    orgs = json.loads(sylphx("admin", "org", "list", "--json", env=admin).stdout)
    acme = next(o for o in orgs if o["name"] == "acme")
    assert (acme["plan"], acme["concurrentShards"], acme["maxParallelism"]) == ("pro", 10, 256)
    changed = sylphx("admin", "org", "set", "acme", "--plan", "team", env=admin)
    assert changed.returncode == 0 and "plan team" in changed.stdout

    # the new key works against the API, and `login` remembers it
    user = {
        **base,
        "SYLPHX_URL": server.url,
        "SYLPHX_HOME": str(tmp_path / "user-home"),
        "SYLPHX_CONFIG_DIR": str(tmp_path / "user-config"),  # no context of this machine's
    }
    assert sylphx("runs", "list", env=user).returncode == 4  # no key yet: 401
    login = sylphx("login", "--token", token, env=user)
    assert login.returncode == 0 and "as org acme (team)" in login.stdout
    creds = tmp_path / "user-home" / "credentials.json"
    assert creds.stat().st_mode & 0o777 == 0o600
    ran = sylphx("run", "--", "true", env=user)
    assert ran.returncode == 0, ran.stderr
    key_id = next(line.split()[0] for line in listed.stdout.splitlines()[1:] if token[:10] in line)
    assert sylphx("admin", "key", "revoke", key_id, env=admin).returncode == 0
    time.sleep(server.settings.auth_cache_seconds)  # API processes refuse it within this
    denied = sylphx("runs", "list", env=user)
    assert denied.returncode == 4 and "revoked" in denied.stderr
