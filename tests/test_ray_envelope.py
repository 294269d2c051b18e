"""The local executor's shard envelope holds on a Ray node too (issue #16 item 7): the same
code path builds it in the Ray task. Run as a tenant would, through the API, on the
session's real loopback Ray cluster; each test asserts on the host side where it can."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from attacks import Listener, connect_probe, listening_at, run_shard
from conftest import Server, pid_alive, pids_of_run
from sylphx._core.errors import ExecutorError
from sylphx._server.executors.base import LaunchRequest, Signal
from sylphx._server.executors.envelope import node as nodeenvelope
from sylphx._server.executors.local.cgroups import Cgroups
from sylphx._server.executors.ray.remote import NodeEnvelope, run_streaming

pytestmark = pytest.mark.slow

# Runs in the shard: who it is, what it may do, what it holds open.
PRIVILEGES = r"""
import json, os, subprocess
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
os.makedirs("/tmp/x", exist_ok=True)
def rc(cmd):
    return subprocess.run(cmd, capture_output=True).returncode
print(json.dumps({
    "uid": os.getuid(),
    "capeff": status["CapEff"].strip(),
    "seccomp": status["Seccomp"].strip(),
    "mount": rc(["mount", "-t", "tmpfs", "none", "/tmp/x"]),
    "unshare": rc(["unshare", "-U", "true"]),
    "mounted": os.path.ismount("/tmp/x"),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
}))
"""


def test_a_ray_shard_is_an_unprivileged_user_under_the_seccomp_filter(
    ray_server: Server,
) -> None:
    assert ray_server.plane.executor.name == "ray"
    done, out, err = run_shard(ray_server, [sys.executable, "-c", PRIVILEGES])
    assert done["status"] == "succeeded", (done, err)
    got = json.loads(out.splitlines()[-1])
    assert got["uid"] != 0
    assert got["capeff"] == "0000000000000000"
    assert got["seccomp"] == "2"  # filter mode: bubblewrap loaded the filter
    assert got["mount"] != 0 and not got["mounted"]
    assert got["unshare"] != 0
    # stdio and the listing's own fd: nothing of the worker, the filter or the pipes
    assert got["fds"] == [0, 1, 2, 3], got


def test_a_ray_shard_reaches_nothing_on_the_hosts_loopback(
    ray_server: Server, ray_cluster: Any
) -> None:
    listener = Listener()
    api_port = int(ray_server.url.rsplit(":", 1)[1])
    gcs_port = int(ray_cluster.address.rsplit(":", 1)[1])  # Ray's own services too
    try:
        probe = connect_probe([listener.port, api_port, gcs_port])
        on, out_on, err_on = run_shard(ray_server, [sys.executable, "-c", probe])
        off, out_off, err_off = run_shard(ray_server, [sys.executable, "-c", probe], network=False)
    finally:
        listener.close()
    assert on["status"] == "succeeded", (on, err_on)
    assert off["status"] == "succeeded", (off, err_off)
    assert listener.accepted == 0  # host side: nobody ever connected
    assert "CONNECTED" not in out_on + out_off
    assert "tap0" in json.loads(out_on)["ifaces"]  # network: true has its own way out
    assert "no network" not in err_on  # slirp4netns was attached
    assert json.loads(out_off)["ifaces"] == ["lo"]


def test_a_ray_shard_reaches_no_cloud_metadata_service(ray_server: Server) -> None:
    """As on the local executor (test_escapes): the prohibit routes are added by the same
    code on the node, before the shard starts."""
    with listening_at("169.254.169.254") as metadata:
        probe = (
            "import socket\ns = socket.socket(); s.settimeout(5)\n"
            f"try:\n    s.connect(('169.254.169.254', {metadata.port})); print('CONNECTED')\n"
            "except OSError as e:\n    print(type(e).__name__)\n"
        )
        done, out, err = run_shard(ray_server, [sys.executable, "-c", probe])
    assert done["status"] == "succeeded", err
    assert metadata.accepted == 0 and out == "PermissionError\n"


def test_the_control_planes_home_is_not_listable_from_a_ray_shard(
    ray_server: Server, tmp_path: Path
) -> None:
    """The run's working directory contains the home (it lies below it): binding it
    read-only on the node must not show the home again."""
    home = ray_server.settings.home
    assert home.is_relative_to(tmp_path)
    tmp_path.chmod(0o755)  # a working directory the shard's unprivileged user can read
    key = ray_server.settings.secrets_key_file.read_text().strip()
    probe = (
        f"for d in {home} {home}/state {home}/logs; do ls -A $d 2>/dev/null; done; echo ---;"
        f" cat {home}/secrets.key 2>/dev/null | head -c 200; ls -A {tmp_path}"
    )
    done, out, err = run_shard(ray_server, ["sh", "-c", probe], workingDir=str(tmp_path))
    assert done["status"] == "succeeded", (done, err)
    listed, _, rest = out.partition("---\n")
    assert listed.strip() == "", listed
    assert key not in rest
    assert home.name in rest  # the working directory itself is there: the home is empty


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def _worker_of(pids: list[int]) -> int | None:
    """The Ray worker that started the shard: its nearest ancestor that is no part of the
    launch chain (bubblewrap, setpriv, the shells in front)."""
    try:
        pid = _parent(pids[0])
        while pid > 1:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() not in ("bwrap", "setpriv", "sh", "bash", "sleep"):
                    return pid
            pid = _parent(pid)
    except (OSError, IndexError):
        return None
    return None


def test_a_ray_shard_dies_with_the_worker_that_started_it(ray_server: Server) -> None:
    """A lost worker (or node) leaves no shard behind: the sandbox's pid namespace dies
    with bubblewrap, which dies with the worker (the shard's own uid cannot keep a
    parent-death signal: a change of credentials clears it)."""
    run = ray_server.submit(command=["sleep", "300"], machine="nano")
    ray_server.wait_for(lambda: len(pids_of_run(run["id"])) >= 1, timeout=60)
    time.sleep(0.5)  # the sandbox is up: sleep is running inside it
    pids = pids_of_run(run["id"])
    worker = _worker_of(pids)
    assert worker is not None and worker != os.getpid()
    with open(f"/proc/{worker}/cmdline", "rb") as fh:
        assert b"ray" in fh.read().lower()  # a Ray worker, not the control plane
    os.kill(worker, signal.SIGKILL)
    ray_server.wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=20)
    ray_server.http.post(f"/v1/runs/{run['id']}/cancel")
    ray_server.wait(run["id"], timeout=60)


def test_a_ray_shard_runs_in_its_tiers_cgroup(ray_server: Server) -> None:
    """Seen from the host: every process of the shard is in its attempt's cgroup (the
    shard's own view is its cgroup namespace, rooted there)."""
    run = ray_server.submit(command=["sleep", "300"], machine="nano")
    ray_server.wait_for(lambda: len(pids_of_run(run["id"])) >= 1, timeout=60)
    time.sleep(0.5)
    pids = pids_of_run(run["id"])
    v2 = Cgroups().v2
    for pid in pids:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            v1 = any(c in controllers.split(",") for c in ("memory", "pids", "cpu"))
            if v1 or (controllers == "" and v2):
                assert path.startswith("/sylphx/"), (pid, line)
    ray_server.http.post(f"/v1/runs/{run['id']}/cancel")
    assert ray_server.wait(run["id"], timeout=60)["status"] == "cancelled"
    assert not any(pid_alive(p) for p in pids)


# -- the Ray task body on this host, without a cluster ---------------------------------------
SANDBOXED = NodeEnvelope(sandbox=True, enforce_tiers=False)


def _stream(tmp_path: Path, command: list[str], network: bool = True) -> tuple[Any, str, str]:
    """(result, stdout, stderr) of ``run_streaming`` in the sandbox."""
    req = LaunchRequest(
        "run1", 0, 1, 1, True, command, {}, "nano", f"{tmp_path}/out", f"{tmp_path}/err",
        None, network=network,
    )  # fmt: skip
    out: list[bytes] = []
    err: list[bytes] = []

    def ship(o: bytes, e: bytes) -> Signal | None:
        out.append(o)
        err.append(e)
        return None

    result = run_streaming(req, "ray:run1:0:1", SANDBOXED, ship)
    return result, b"".join(out).decode(), b"".join(err).decode()


def test_the_filter_is_compiled_once_per_worker_and_held_in_memory() -> None:
    first = nodeenvelope.seccomp_filter()
    assert first == nodeenvelope.seccomp_filter()
    assert first.startswith(f"/proc/{os.getpid()}/fd/")
    fd = int(first.rsplit("/", 1)[1])
    assert os.fstat(fd).st_mode & 0o777 == 0o600
    with pytest.raises(PermissionError):  # sealed: nobody changes it
        os.write(fd, b"x")
    assert not os.get_inheritable(fd)  # no other child of the worker gets it


def test_a_node_without_slirp4netns_fails_the_launch_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodeenvelope, "slirp4netns_path", lambda: None)
    with pytest.raises(ExecutorError, match="slirp4netns, which is not installed"):
        _stream(tmp_path, ["true"])
    assert _stream(tmp_path, ["true"], network=False)[0] == (0, None, [])  # not needed


def test_a_node_without_libseccomp_fails_the_launch_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> bytes:
        raise ExecutorError("the shard seccomp filter needs libseccomp (not found)")

    monkeypatch.setattr(nodeenvelope, "_filter", [])
    monkeypatch.setattr(nodeenvelope, "build_filter", missing)
    with pytest.raises(ExecutorError, match="libseccomp"):
        _stream(tmp_path, ["true"], network=False)


def test_a_network_that_could_not_be_attached_is_said_in_the_shards_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodeenvelope, "slirp4netns_path", lambda: "/bin/false")
    probe = "import socket; print([n for _, n in socket.if_nameindex()])"
    result, out, err = _stream(tmp_path, [sys.executable, "-c", probe])
    assert result == (0, None, [])
    assert out.strip() == "['lo']"  # it ran, without a way out
    assert err.startswith("sylphx: the shard has no network: slirp4netns did not configure")


def test_slirp4netns_ends_with_the_shard(tmp_path: Path) -> None:
    result, out, _ = _stream(tmp_path, ["cat", "/proc/net/dev"])
    assert result == (0, None, []) and "tap0" in out
    assert _slirps() == []  # gone and reaped: no zombie left in the worker


def _slirps() -> list[str]:
    """This process's slirp4netns children (zombies included), as their stat lines."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and "(slirp4netns)" in stat:
                found.append(stat)
    return found


def test_rays_session_folder_is_not_a_working_dir(ray_server: Server) -> None:
    """Ray keeps every worker's logs and its sockets under its temp folder on each node:
    a run cannot bind it in as its working directory (or a PATH entry)."""
    for spec in (
        {"workingDir": "/tmp/ray/session_latest/logs"},
        {"env": {"PATH": "/usr/bin:/bin:/tmp/ray/session_latest"}},
    ):
        r = ray_server.http.post("/v1/runs", json={"command": ["true"], **spec})
        assert r.status_code == 422, r.text
        assert r.json()["details"][0]["field"] in ("workingDir", "env.PATH")


def test_a_tenant_cannot_hold_the_hosts_sandbox_start_slots(ray_server: Server) -> None:
    """Attacked through the API: a shard that tries to open and lock every start slot
    (which would stall every other tenant's sandbox starts on its host) reaches none;
    seen from the host while it runs, each slot is free."""
    from sylphx._server.executors.ray import startslots

    count = startslots.SLOTS_PER_CPU * (os.cpu_count() or 1)
    grab = " ".join(  # `command`: a failed redirection does not end the shell
        f"command exec {3 + i}>>{startslots.FOLDER}/{i} 2>/dev/null && flock -n {3 + i};"
        for i in range(count)
    )
    run = ray_server.submit(command=["sh", "-c", f"{grab} sleep 300"], machine="nano")
    try:
        ray_server.wait_for(lambda: len(pids_of_run(run["id"])) >= 1, timeout=60)
        time.sleep(1.0)
        held = [startslots.take(slots=count, patience=0) for _ in range(count)]
        assert all(slot is not None for slot in held), "a tenant holds a start slot"
        for slot in held:
            assert slot is not None
            slot.release()
    finally:
        ray_server.http.post(f"/v1/runs/{run['id']}/cancel")
    ray_server.wait(run["id"], timeout=60)
