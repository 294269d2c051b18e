"""What the escape tests of both executors share: a service on the host's loopback that
counts who connects (on the loopback, or at an address given to the host for the while),
the shard-side probe that tries to reach it, and a one-shard run with its logs."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

from conftest import Server


class Listener:
    """A TCP service on the host (its loopback by default) that records who connects."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def connect_probe(ports: list[int]) -> str:
    return (
        "import socket, json\nres = {}\n"
        f"for host in ('127.0.0.1', '10.0.2.2', 'localhost'):\n    for port in {ports!r}:\n"
        "        s = socket.socket(); s.settimeout(2)\n"
        "        try:\n            s.connect((host, port)); res[f'{host}:{port}'] = 'CONNECTED'\n"
        "        except OSError as e:\n            res[f'{host}:{port}'] = type(e).__name__\n"
        "res['ifaces'] = [n for _, n in socket.if_nameindex()]\nprint(json.dumps(res))\n"
    )


def run_shard(server: Server, command: list[str], **spec: Any) -> tuple[dict[str, Any], str, str]:
    """Run ``command`` as one nano shard; (the run when it ended, stdout, stderr)."""
    run = server.submit(command=command, machine="nano", **spec)
    done = server.wait(run["id"], timeout=90)
    logs = [
        server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0, "stream": s}).text
        for s in ("stdout", "stderr")
    ]
    return done, logs[0], logs[1]


@contextlib.contextmanager
def listening_at(address: str) -> Iterator[Listener]:
    """A Listener at ``address``, given to this host's loopback interface for the while
    (a cloud's metadata service answers the host's own requests so). Needs root and
    iproute2 (skips the test otherwise)."""
    import pytest

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip(f"needs root and iproute2 to give the host the address {address}")
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    try:
        listener = Listener(address)
        try:
            yield listener
        finally:
            listener.close()
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)
