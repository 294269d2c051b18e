"""The per-shard security envelope on the local executor: real bubblewrap, real cgroups."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conftest import Server
from sylphx._core.machines import MACHINES
from sylphx._server.executors.local.cgroups import CPU_PERIOD_US, Cgroups, pids_max


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def logs(server: Server, run_id: str, shard: int = 0, stream: str = "stdout") -> str:
    r = server.http.get(f"/v1/runs/{run_id}/logs", params={"shard": shard, "stream": stream})
    return r.text


def test_escape_attempts_fail(server: Server) -> None:
    mine, mine_dir = server.volume()
    _theirs, theirs_dir = server.volume()
    (theirs_dir / "secret.txt").write_text("other run's data")
    neighbour = server.submit(command=["sleep", "30"], machine="nano")
    server.wait_for(lambda: server.get(neighbour["id"])["status"] == "running")
    home = server.settings.home
    probe = server.submit(
        command=sh(
            "touch /escape-root 2>/dev/null && echo root:WROTE || echo root:denied;"
            f" cat {theirs_dir}/secret.txt 2>/dev/null || echo volume:hidden;"
            f" ls {home} 2>/dev/null | grep -q . && echo home:VISIBLE || echo home:hidden;"
            " ps -e -o comm= | grep -qx sleep && echo procs:VISIBLE || echo procs:hidden;"
            " echo hi > /mine/ok && echo volume:writable;"
            " echo scratch > /tmp/x && echo tmp:writable"
        ),
        machine="nano",
        volumeMounts=[{"volumeId": mine, "mountPath": "/mine"}],
    )
    assert server.wait(probe["id"])["status"] == "succeeded"
    assert logs(server, probe["id"]).split() == [
        "root:denied",
        "volume:hidden",
        "home:hidden",
        "procs:hidden",
        "volume:writable",
        "tmp:writable",
    ]
    assert not Path("/escape-root").exists()
    assert (mine_dir / "ok").read_text() == "hi\n"
    server.http.post(f"/v1/runs/{neighbour['id']}/cancel")


def test_clean_environment_and_own_hostname(server: Server) -> None:
    os.environ["SYLPHX_TEST_LEAK"] = "server-secret"
    try:
        run = server.submit(command=sh("env | sort; hostname"), env={"MINE": "1"})
        server.wait(run["id"])
    finally:
        del os.environ["SYLPHX_TEST_LEAK"]
    out = logs(server, run["id"])
    names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
    assert "MINE" in names and "SYLPHX_SHARD_INDEX" in names
    assert "SYLPHX_TEST_LEAK" not in names and "SYLPHX_HOME" not in names
    assert names - {"MINE", "PATH", "HOME", "LANG", "PWD", "SHLVL", "_"} <= {
        "SYLPHX_RUN_ID",
        "SYLPHX_SHARD_INDEX",
        "SYLPHX_SHARD_COUNT",
        "SYLPHX_SHARD_ATTEMPT",
        "SYLPHX_MACHINE",
    }
    assert out.splitlines()[-1] == "sylphx-shard"


def test_network_can_be_turned_off(server: Server) -> None:
    code = (
        "import socket\ns=socket.socket()\ns.settimeout(2)\ntry:\n"
        "    s.connect(('127.0.0.1', 9))\nexcept OSError as e:\n    print(type(e).__name__)\n"
    )
    on = server.submit(
        command=[sys.executable, "-c", "import socket; print(len(socket.if_nameindex()) > 1)"]
    )
    off = server.submit(
        command=[sys.executable, "-c", "import socket; print(len(socket.if_nameindex()) > 1)"],
        network=False,
    )
    unreachable = server.submit(command=[sys.executable, "-c", code], network=False)
    for run in (on, off, unreachable):
        server.wait(run["id"])
    assert logs(server, on["id"]).strip() == "True"  # the host's interfaces
    assert logs(server, off["id"]).strip() == "False"  # loopback only
    assert logs(server, unreachable["id"]).strip() in ("ConnectionRefusedError", "OSError")


def test_oom_shard_is_reported_oomkilled_while_siblings_succeed(server: Server) -> None:
    grab = "b = bytearray(400 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    run = server.submit(
        command=sh(
            f'[ "$SYLPHX_SHARD_INDEX" = 1 ] && exec {sys.executable} -c "{grab}"; echo fine'
        ),
        parallelism=3,
        machine="nano",  # 256 MiB ceiling
    )
    done = server.wait(run["id"])
    assert done["status"] == "partial"
    shards = server.shards(run["id"])
    assert [s["status"] for s in shards] == ["succeeded", "failed", "succeeded"]
    assert shards[1]["exitCode"] == 137
    assert shards[1]["reason"].startswith("OOMKilled")


def test_cpu_quota_of_nano_is_about_a_tenth_of_a_cpu(server: Server) -> None:
    burn = (
        "import os, time\nt = time.time()\nwhile time.time() - t < 3: pass\n"
        "c = os.times()\nprint((c.user + c.system) / (time.time() - t))"
    )
    run = server.submit(command=[sys.executable, "-c", burn], machine="nano")
    server.wait(run["id"])
    share = float(logs(server, run["id"]))
    assert 0.02 < share < 0.2, share  # 0.1 vCPU, with a generous bound


def test_shard_processes_that_escape_their_group_are_still_killed(server: Server) -> None:
    # setsid puts the sleep in a new session: only the cgroup and the pid namespace hold it
    run = server.submit(command=sh("setsid sleep 60 & sleep 60"), machine="nano")
    server.wait_for(lambda: server.get(run["id"])["status"] == "running")
    server.http.post(f"/v1/runs/{run['id']}/cancel")
    assert server.wait(run["id"], timeout=20)["status"] == "cancelled"
    from conftest import pids_of_run

    server.wait_for(lambda: pids_of_run(run["id"]) == [], timeout=10)


def test_toolchains_under_the_private_tmp_stay_usable_read_only(
    server: Server, tmp_path: Path
) -> None:
    import subprocess

    venv = tmp_path / "venv"  # under /tmp, which each shard sees empty
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    run = server.submit(
        command=[
            str(venv / "bin" / "python"),
            "-c",
            "import sys, pathlib; print(sys.prefix); pathlib.Path(sys.prefix, 'x').write_text('x')",
        ],
    )
    server.wait(run["id"])
    assert logs(server, run["id"]) == f"{venv}\n"  # found and ran from inside the sandbox
    assert "Read-only file system" in logs(server, run["id"], stream="stderr")


def test_a_shards_cgroup_carries_its_tiers_limits() -> None:
    """What ``Cgroups.create`` writes is what the kernel enforces: the tier's memory ceiling,
    CPU quota and pids limit (read back from the real cgroup files)."""
    tier = MACHINES["small"]
    cgroups = Cgroups()
    cgroups.check()
    group = cgroups.create(f"limits-{os.getpid()}", "small")
    try:
        quota = str(int(tier.vcpu * CPU_PERIOD_US))
        if cgroups.v2:
            (d,) = map(Path, group.dirs)
            assert (d / "memory.max").read_text().strip() == str(tier.memory_bytes)
            assert (d / "cpu.max").read_text().split() == [quota, str(CPU_PERIOD_US)]
            assert (d / "pids.max").read_text().strip() == str(pids_max("small"))
        else:
            mem, cpu, pids = map(Path, group.dirs)
            assert (mem / "memory.limit_in_bytes").read_text().strip() == str(tier.memory_bytes)
            assert (cpu / "cpu.cfs_quota_us").read_text().strip() == quota
            assert (cpu / "cpu.cfs_period_us").read_text().strip() == str(CPU_PERIOD_US)
            assert (pids / "pids.max").read_text().strip() == str(pids_max("small"))
        assert cgroups.create(f"limits-{os.getpid()}", "small") == group  # again: same group
    finally:
        group.remove()
    assert cgroups.existing(f"limits-{os.getpid()}") is None
