"""A registry's skopeo runs off the host's network: what it connects to is checked
connection by connection, so a registry's redirect, token realm or rebound name cannot
make the control plane (root) send requests into the host or its private networks.
Asserted host side: listeners at private addresses see nobody."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from attacks import Listener, listening_at
from sylphx._core.errors import ValidationError
from sylphx._server.executors.envelope import egress
from sylphx._server.images.store import ImageStore

pytestmark = pytest.mark.skipif(not egress.confinable(), reason="needs root, bwrap, slirp4netns")

PROBE = (
    "import json, socket, sys\nres = {}\n"
    "for target in sys.argv[1:]:\n"
    "    host, port = target.rsplit(':', 1)\n"
    "    s = socket.socket(); s.settimeout(5)\n"
    "    try:\n        s.connect((host, int(port))); res[target] = 'CONNECTED'\n"
    "    except OSError as e:\n        res[target] = type(e).__name__\n"
    "print(json.dumps(res))\n"
)


def test_a_confined_command_reaches_no_private_address_of_the_host(tmp_path: Path) -> None:
    loopback = Listener()
    with listening_at("169.254.169.254") as metadata, listening_at("10.254.254.254") as lan:
        targets = [
            f"169.254.169.254:{metadata.port}",
            f"10.254.254.254:{lan.port}",
            f"127.0.0.1:{loopback.port}",
            f"10.0.2.2:{loopback.port}",  # slirp4netns's gateway: the host's loopback
        ]
        done = egress.run_confined(["/usr/bin/python3", "-c", PROBE, *targets], [tmp_path], 60)
        loopback.close()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert metadata.accepted == lan.accepted == loopback.accepted == 0  # host side
    assert "CONNECTED" not in seen.values(), seen
    assert seen[targets[0]] == seen[targets[1]] == "PermissionError"  # refused at once


def test_it_writes_only_where_it_is_told_and_times_out_whole(tmp_path: Path) -> None:
    mine, other = tmp_path / "work", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    script = f"open({str(mine / 'a')!r}, 'w').write('x'); open({str(other / 'b')!r}, 'w')"
    done = egress.run_confined(["/usr/bin/python3", "-c", script], [mine], 60)
    assert (mine / "a").read_text() == "x" and not (other / "b").exists()
    assert done.returncode != 0 and b"Error" in done.stderr
    start = time.monotonic()
    with pytest.raises(Exception, match="timed out"):
        egress.run_confined(["sleep", "30"], [], 1)
    assert time.monotonic() - start < 10


def test_the_store_pulls_from_a_registry_confined(tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    calls: list[Any] = []

    def spy(argv: Any, writable: Any, timeout: float, *, look: Any) -> Any:
        calls.append(argv)
        return egress.run_confined(argv, writable, timeout, look=look)

    store = ImageStore(tmp_path, registry_timeout=10, confine=spy)
    with pytest.raises(ValidationError, match="unreachable"):
        store.resolve("registry.invalid/acme/trainer:1")
    assert calls and calls[0][-1] == "docker://registry.invalid/acme/trainer:1"
    allowed = ImageStore(
        tmp_path, registry_timeout=10, confine=spy, private_registries=("x.invalid",)
    )
    calls.clear()
    with pytest.raises(ValidationError, match="unreachable"):
        allowed.resolve("x.invalid/acme/trainer:1")  # the operator's own: the host's network
    assert calls == []


def test_what_it_is_told_to_hide_and_the_password_hashes_it_never_reads(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "secrets.key").write_text("key")
    work = home / "images" / "tmp" / "w"
    work.mkdir(parents=True)
    script = (
        "import sys\nfor p in sys.argv[1:]:\n"
        "    try:\n        open(p).read(); print('READ', p)\n"
        "    except OSError as e:\n        print(type(e).__name__, p)\n"
    )
    paths = [str(home / "secrets.key"), "/etc/shadow", str(work)]
    done = egress.run_confined(
        ["/usr/bin/python3", "-c", script, *paths[:2]], [work], 60, hide=[home]
    )
    assert done.returncode == 0, done.stderr
    assert "READ" not in done.stdout.decode(), done.stdout
