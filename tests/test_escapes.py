"""Escape attempts, made as a tenant would: through the API, in a real bubblewrap sandbox
with real cgroups and the real seccomp filter. Each test asserts on the host side (the
host file is not there, the value is not in any output, the process is still in its
cgroup), not only on the shard's exit code."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from attacks import Listener, connect_probe, listening_at, run_shard
from conftest import Server, pids_of_run
from sylphx._server.executors.envelope.sandbox import Policy, Sandbox, clean_env
from sylphx._server.executors.local.cgroups import Cgroups, pids_max
from sylphx._server.executors.local.processes import visible_host_paths
from sylphx._server.plane import shard_policy

# Runs inside the shard: every attempt, each reported as "ok" (it worked: an escape) or
# the error that stopped it.
ATTACKS = r"""
import ctypes, json, os, socket, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}

def attempt(name, fn):
    try:
        r = fn()
        out[name] = "ok" if r is None or (type(r) is int and r == 0) else f"failed:{r}"
    except Exception as exc:
        out[name] = f"{type(exc).__name__}:{exc}"

def sh(cmd):
    return subprocess.run(["sh", "-c", cmd], capture_output=True).returncode

def sys_call(fn, *args):
    r = getattr(libc, fn)(*args)
    return 0 if r >= 0 else -ctypes.get_errno()

out["uid"] = os.getuid()
out["capeff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
attempt("remount_var_rw", lambda: sh("mount -o remount,bind,rw /var"))
attempt("remount_root_rw", lambda: sh("mount -o remount,rw /"))
attempt("mount_tmpfs", lambda: sys_call("mount", b"none", b"/tmp", b"tmpfs", 0, None))
attempt("mount_proc", lambda: sh("mkdir -p /tmp/p && mount -t proc proc /tmp/p"))
attempt("mount_cgroup", lambda: sh("mkdir -p /tmp/cg && mount -t cgroup -o memory none /tmp/cg"))
attempt("mount_cgroup2", lambda: sh("mkdir -p /tmp/cg2 && mount -t cgroup2 none /tmp/cg2"))
attempt("unshare_user", lambda: sys_call("unshare", 0x10000000))
attempt("unshare_user_cmd", lambda: sh("unshare -U -r true"))
attempt("unshare_mount", lambda: sys_call("unshare", 0x00020000))
attempt("setns", lambda: sys_call("setns", 0, 0))
attempt("ptrace_attach_1", lambda: sys_call("ptrace", 16, 1, 0, 0))
attempt("bpf", lambda: sys_call("syscall", 321, 0, 0, 0))
attempt("keyctl", lambda: sys_call("syscall", 250, 0, 0, 0, 0, 0))
attempt("perf_event_open", lambda: sys_call("syscall", 298, 0, 0, -1, -1, 0))
attempt("kexec_load", lambda: sys_call("syscall", 246, 0, 0, 0, 0))
attempt("init_module", lambda: sys_call("syscall", 175, 0, 0, b""))
attempt("personality_no_aslr", lambda: 0 if libc.personality(0x0040000) != -1 else -1)
attempt("read_shadow", lambda: open("/etc/shadow").read() and None)
attempt("su_root", lambda: sh("su -c true root </dev/null"))
attempt("write_proc_sys", lambda: open("/proc/sys/kernel/hostname", "w").write("x") and None)
attempt("chroot", lambda: sys_call("chroot", b"/tmp"))
print(json.dumps(out))
"""


def test_a_shard_is_an_unprivileged_user_that_cannot_mount_unshare_or_trace(
    server: Server,
) -> None:
    marker = Path(f"/var/tmp/sylphx-escape-{uuid.uuid4().hex}")
    attack = ATTACKS + (
        f"\nattempt('write_host_var', lambda: sh('mount -o remount,bind,rw /var 2>/dev/null;"
        f" echo pwned > {marker}'))\nprint(json.dumps(out))\n"
    )
    done, out, err = run_shard(server, [sys.executable, "-c", attack])
    assert done["status"] == "succeeded", err
    got = json.loads(out.splitlines()[-1])
    assert got["uid"] != 0
    assert got["capeff"] == "0000000000000000"
    escapes = {name: result for name, result in got.items() if result == "ok"}
    assert escapes == {}, (escapes, got, err)
    assert not marker.exists()  # the host's /var was not written
    shadow = Path("/etc/shadow").read_text()
    assert shadow.splitlines()[0] not in out + err  # nothing of the host's shadow leaked


def test_nothing_of_the_control_plane_is_visible_even_from_around_the_home(
    server: Server, tmp_path: Path
) -> None:
    """The run's working directory and a PATH entry contain SYLPHX_HOME (it lies below
    them): binding them read-only must not show it again, nor the volume root."""
    home = server.settings.home
    assert home.is_relative_to(tmp_path)
    tmp_path.chmod(0o755)  # a working directory the shard's unprivileged user can read
    key = server.settings.secrets_key_file.read_text().strip()
    token = server.settings.local_token_file
    _theirs, theirs_dir = server.volume()
    (theirs_dir / "other.txt").write_text("another org's data")
    probe = (
        f"for f in {home}/secrets.key {home}/sylphx.db {theirs_dir}/other.txt {token}; do"
        "  cat $f 2>/dev/null | head -c 200; done;"
        f" ls -A {home} {home}/state {home}/logs 2>/dev/null;"
        " find / -xdev \\( -name secrets.key -o -name 'sylphx.db*' -o -name local-token \\)"
        " -print 2>/dev/null | head"
    )
    done, out, err = run_shard(
        server,
        ["sh", "-c", probe],
        workingDir=str(tmp_path),
        env={"PATH": f"{tmp_path}:/usr/local/bin:/usr/bin:/bin"},
    )
    assert done["status"] == "succeeded", err
    assert key not in out
    assert "another org's data" not in out
    assert "SQLite format" not in out
    for name in ("secrets.key", "sylphx.db", "local-token", "state", "logs", "volumes"):
        assert name not in out, (name, out)


def test_links_planted_in_a_volume_bring_back_no_other_tenants_volume_or_log(
    server: Server,
) -> None:
    """A tenant's shard plants links in its own volume (into the volume root, the logs,
    the state folder), then runs a program from that volume's host path: the folders a
    sandbox binds back for a program's links must never be the home's (found by a
    helper's attack: every tenant's volumes and logs were readable)."""
    home = server.settings.home
    victim = server.client(server.new_org("victim"))
    vol = victim.post("/v1/volumes", json={"name": "private"}).json()["id"]
    secret = f"VICTIM-{uuid.uuid4().hex}"
    (server.settings.volumes_dir / vol / "secret.txt").write_text(secret)
    mine, mine_dir = server.volume()
    links = " && ".join(
        f"ln -s {target}/x /w/bin/{name}"
        for name, target in (
            ("volumes", server.settings.volumes_dir),
            ("logs", server.settings.logs_dir),
            ("state", home / "state"),
        )
    )
    plant = f"mkdir -p /w/bin && cp /bin/sh /w/bin/sh && {links}"
    done, _, err = run_shard(
        server, ["sh", "-c", plant], volumeMounts=[{"volumeId": mine, "mountPath": "/w"}]
    )
    assert done["status"] == "succeeded", err
    assert (mine_dir / "bin" / "volumes").is_symlink()  # planted, on the host
    probe = (
        f"cat {server.settings.volumes_dir}/{vol}/secret.txt; ls -A {server.settings.logs_dir}"
        f" {home}/state {server.settings.volumes_dir}; grep -rs VICTIM {server.settings.logs_dir}"
    )
    for spec in (
        {"command": [str(mine_dir / "bin" / "sh"), "-c", probe]},
        {"command": ["true"], "merge": {"command": [str(mine_dir / "bin" / "sh"), "-c", probe]}},
    ):
        r = server.http.post("/v1/runs", json={**spec, "machine": "nano"})
        assert r.status_code == 422, r.text
        assert r.json()["details"][0]["field"].endswith("command[0]")
    # and the sandbox itself: what such a program's links lead to is never bound back
    policy = shard_policy(server.settings)
    planted = [Path(os.path.realpath(mine_dir / "bin" / n)).parent for n in ("volumes", "logs")]
    extra = [*planted, mine_dir / "bin", server.settings.volumes_dir]
    argv = Sandbox(policy=policy, extra_ro=extra).argv()
    bound = {argv[i + 1] for i, arg in enumerate(argv) if arg == "--ro-bind"}
    assert not bound & {str(p) for p in extra}, bound
    assert str(server.settings.volumes_dir / vol / "secret.txt") not in " ".join(argv)


def test_a_link_to_a_folder_around_a_hidden_path_is_not_bound(tmp_path: Path) -> None:
    """bwrap binds a link's target at the link's name, where the hidden path inside the
    target would not be covered again: such a link (a PATH entry, a toolchain's folder)
    is not bound back at all; the folder itself, bound as it is, has the path covered."""
    data, home = tmp_path / "data", tmp_path / "data" / "home"
    home.mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    policy = Policy(hide=(home,))
    argv = Sandbox(policy=policy, extra_ro=[tmp_path / "link"]).argv()
    assert str(tmp_path / "link") not in argv
    argv = Sandbox(policy=policy, extra_ro=[data]).argv()
    assert str(data) in argv and argv[argv.index(str(home)) - 1] == "--tmpfs"


def test_a_relative_path_entry_is_never_the_control_planes_own_folder(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative PATH entry names a folder under the shard's start directory, not under
    the control plane's: the links in the control plane's ``./bin`` are not followed, so
    the folder they lead to (a private one, here under /tmp) is not bound back."""
    cwd, tool = tmp_path / "plane-cwd", tmp_path / "private-tool"
    (cwd / "bin").mkdir(parents=True)
    (tool / "bin").mkdir(parents=True)
    shutil.copy("/bin/sh", tool / "bin" / "sh")
    (tool / "marker").write_text("the control plane's")
    (cwd / "bin" / "sh").symlink_to(tool / "bin" / "sh")
    monkeypatch.chdir(cwd)  # the in-process control plane's current directory
    done, out, err = run_shard(
        server,
        ["sh", "-c", f"cat {tool}/marker || echo unseen"],
        env={"PATH": "bin:/usr/bin:/bin"},
    )
    assert done["status"] == "succeeded", err
    assert "unseen" in out and "the control plane's" not in out


def test_path_cannot_come_from_a_secret(server: Server) -> None:
    """A secret replaces the run's env at launch, after the submit's checks of PATH: so
    a secret named PATH is refused at submit (its value is not known until launch)."""
    r = server.http.post("/v1/runs", json={"command": ["true"], "secrets": ["PATH"]})
    assert r.status_code == 422, r.text
    assert r.json()["details"][0]["field"] == "secrets" and "env" in r.json()["details"][0]["fix"]
    # a run stored before that rule (its spec is not checked again) still gets the env's
    env = clean_env(
        platform={}, run_env={"PATH": "/usr/bin"}, secrets={"PATH": "/x", "K": "v"},
        image_env=None, host_path=None,
    )  # fmt: skip
    assert env["PATH"] == "/usr/bin" and env["K"] == "v"


def test_the_merge_step_is_checked_as_what_it_runs(server: Server) -> None:
    """The merge step runs with its own env over the run's, and maybe an image of its own:
    its PATH, program and image are checked as the run's are (found by an attack review:
    ``merge.env.PATH`` through /proc brought back the folders the control plane's own
    links led to)."""
    volumes = server.settings.volumes_dir
    cases = [
        ({"merge": {"command": ["true"], "env": {"PATH": "/proc/self/cwd/bin"}}}, "merge.env.PATH"),
        (
            {"merge": {"command": ["true"], "env": {"PATH": f"/usr/bin:{volumes}"}}},
            "merge.env.PATH",
        ),
        ({"merge": {"command": [f"{volumes}/v/sh"]}}, "merge.command[0]"),
        ({"merge": {"command": ["true"], "image": f"oci:{volumes}/v/layout"}}, "merge.image"),
        ({"env": {"PATH": ":".join(["/usr/bin"] * 65)}}, "env.PATH"),
        ({"merge": {"command": ["true"], "env": {"PATH": "/bin:" * 64}}}, "merge.env.PATH"),
    ]
    for spec, field in cases:
        r = server.http.post("/v1/runs", json={"command": ["true"], "machine": "nano", **spec})
        assert r.status_code == 422, (spec, r.text)
        assert r.json()["details"][0]["field"] == field, r.text
    assert server.http.get("/v1/runs").json()["items"] == []  # nothing stored


def test_an_image_reference_cannot_make_the_control_plane_probe_the_host(
    server: Server,
) -> None:
    """An ``image`` naming a registry at a private or loopback address is refused before
    the control plane connects to it: its answers (refused, EOF, not TLS) told a tenant
    what listens on the host's ports (found by an attack review)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    with listener:
        for image in (f"127.0.0.1:{port}/probe:1", f"localhost:{port}/probe:1"):
            r = server.http.post("/v1/runs", json={"command": ["true"], "image": image})
            assert r.status_code == 422, r.text
            assert r.json()["details"][0]["rule"] == "private_registry", r.text
            r = server.http.post("/v1/runs?dryRun=true", json={"command": ["true"], "image": image})
            assert "private or special address" in r.text, r.text  # the quote's refusal
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody came
    merge = {"command": ["true"], "image": f"127.0.0.1:{port}/probe:1"}
    r = server.http.post("/v1/runs", json={"command": ["true"], "merge": merge})
    assert r.status_code == 422 and "private" in r.text, r.text


def test_a_registry_that_never_answers_holds_few_threads(server: Server) -> None:
    """A submit naming an image resolves it on a thread of the pool every sync route
    shares, for as long as the registry takes: an org may have 2 such look-ups at once
    (8 for every org), past which a submit is a 429 at once; other tenants' requests go
    on (found by an attack review: 45 submits to a registry that never answered made
    another tenant's GET /v1/runs take 17.6 s)."""
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    registry = f"127.0.0.1:{listener.getsockname()[1]}"
    images = server.plane.images
    images.private_registries, images.registry_timeout = (registry,), 4.0
    answers: list[int] = []

    def submit(i: int) -> None:
        spec = {"command": ["true"], "image": f"{registry}/slow{i}:1"}
        answers.append(server.http.post("/v1/runs", json=spec).status_code)

    try:
        slow = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
        for t in slow:
            t.start()
        time.sleep(0.5)  # both looking up
        r = server.http.post("/v1/runs", json={"command": ["true"], "image": f"{registry}/x:1"})
        assert r.status_code == 429 and r.json()["details"][0]["field"] == "image", r.text
        assert r.headers["Retry-After"]
        other = server.client(server.new_org("other"))
        started = time.monotonic()
        assert other.get("/v1/runs").status_code == 200
        assert time.monotonic() - started < 2
        for t in slow:
            t.join()
        assert answers == [422, 422]  # the registry's time out, each answered
        r = server.http.post("/v1/runs", json={"command": ["true"], "image": f"{registry}/x:1"})
        assert r.status_code == 422  # the slots are free again
    finally:
        images.private_registries, images.registry_timeout = (), 60.0
        listener.close()


def test_a_layout_whose_digest_is_a_path_touches_nothing_outside_the_cache(
    server: Server, tmp_path: Path
) -> None:
    """A tenant's own OCI layout (readable by the shards' user, as required) names a
    digest that is a path out of the image cache: refused at submit, a dry run too, and
    the folder that path names is left as it was (the control plane, as root, created a
    lock file there and removed what matched beside it)."""
    base = Path(tempfile.mkdtemp(prefix="sylphx-layout-"))
    try:
        os.chmod(base, 0o755)
        victim, layout = base / "victim", base / "layout"
        victim.mkdir()
        (victim / "keep").write_text("mine")
        layout.mkdir(mode=0o755)
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        escape = os.path.relpath(victim, server.settings.home / "images" / "tmp") + "/"
        manifest = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1}
        index = {"schemaVersion": 2, "manifests": [{**manifest, "digest": escape}]}
        (layout / "index.json").write_text(json.dumps(index))
        for path in (layout, layout / "oci-layout", layout / "index.json"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        for query in ("", "?dryRun=true"):
            r = server.http.post(
                f"/v1/runs{query}", json={"command": ["true"], "image": f"oci:{layout}"}
            )
            assert sorted(os.listdir(victim)) == ["keep"]  # host side: nothing made, removed
            assert (victim / "keep").read_text() == "mine"
            assert "layout_broken" in r.text and r.status_code in (200, 422), r.text
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_shard_cannot_rewrite_its_start_record_to_outrun_its_timeout(
    server: Server,
) -> None:
    """Its timeout counts from the start its supervisor records beside its pid (host
    side). The shard knows where that record lies, tries to push it an hour ahead, and
    times out on time anyway: the record is out of its reach and unchanged."""
    state = server.settings.home / "state"
    script = (  # every attempt's record, were they reachable
        'for f in "$0"/*/0.1/pid; do read p t s < "$f" &&'
        ' echo "$p $t $(( s + 3600000000000 ))" > "$f"; done 2>/dev/null; exec sleep 60'
    )
    target = server.submit(
        command=["sh", "-c", script, str(state)],
        machine="nano",
        timeoutSeconds=2,
    )
    folder = state / target["id"] / "0.1"
    server.wait_for(lambda: (folder / "pid").exists(), timeout=30)
    before = (folder / "pid").read_text()
    done = server.wait(target["id"])
    assert done["status"] == "timed_out", done
    assert (folder / "pid").read_text() == before  # host side: untouched
    (attempt,) = server.shards(target["id"])[0]["history"]
    started = datetime.fromisoformat(attempt["startedAt"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(attempt["endedAt"].replace("Z", "+00:00"))
    assert 1.9 <= (ended - started).total_seconds() < 2 + 10 + 5  # deadline, then grace


def test_a_shard_cannot_leave_its_cgroup_or_raise_its_limits(server: Server) -> None:
    escape = (
        "for c in memory pids cpu; do mkdir -p /tmp/$c; mount -t cgroup -o $c none /tmp/$c"
        " 2>/dev/null && echo $$ > /tmp/$c/cgroup.procs && echo ESCAPED-$c; done;"
        " for f in /sys/fs/cgroup/memory/cgroup.procs /sys/fs/cgroup/cgroup.procs; do"
        "  echo $$ > $f 2>/dev/null && echo ESCAPED-$f; done;"
        " ls /sys/fs/cgroup; cat /proc/self/cgroup; sleep 30"
    )
    run = server.submit(command=["sh", "-c", escape], machine="nano")
    server.wait_for(lambda: server.get(run["id"])["status"] == "running")
    server.wait_for(lambda: len(pids_of_run(run["id"])) > 0, timeout=10)
    import time

    time.sleep(1.5)  # the escape attempts are done; the sleep is running
    for pid in pids_of_run(run["id"]):  # host side: every process still in its cgroups
        text = Path(f"/proc/{pid}/cgroup").read_text()
        for line in text.splitlines():
            _, controllers, path = line.split(":", 2)
            v1 = any(c in controllers.split(",") for c in ("memory", "pids", "cpu"))
            if v1 or (controllers == "" and Cgroups().v2):
                assert path.startswith("/sylphx/"), (pid, line)
    server.http.post(f"/v1/runs/{run['id']}/cancel")
    server.wait(run["id"], timeout=30)
    out = server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0}).text
    assert "ESCAPED" not in out
    assert "sylphx" not in out  # no other tenant's cgroup (run ids) to be seen


def test_pids_are_capped_by_the_tier(server: Server) -> None:
    bomb = (
        "import threading, time\nn = 0\ntry:\n    while n < 5000:\n"
        "        threading.Thread(target=time.sleep, args=(5,), daemon=True).start(); n += 1\n"
        "except RuntimeError:\n    pass\nprint(n)\n"
    )
    _done, out, _ = run_shard(server, [sys.executable, "-c", bomb])
    assert int(out.strip()) < pids_max("nano")  # it hit the ceiling, not 5000
    assert server.http.get("/healthz").status_code == 200  # the host still has pids


def test_the_hosts_loopback_and_the_control_plane_are_unreachable(server: Server) -> None:
    listener = Listener()
    api_port = int(server.url.rsplit(":", 1)[1])
    try:
        probe = connect_probe([listener.port, api_port])
        on, out_on, err_on = run_shard(server, [sys.executable, "-c", probe])
        off, out_off, _ = run_shard(server, [sys.executable, "-c", probe], network=False)
    finally:
        listener.close()
    assert on["status"] == "succeeded", err_on
    assert listener.accepted == 0  # host side: nobody ever connected
    with_net, without = json.loads(out_on), json.loads(out_off)
    assert "CONNECTED" not in out_on + out_off
    assert "tap0" in with_net["ifaces"]  # network: true still has a way out
    assert without["ifaces"] == ["lo"]
    assert off["status"] == "succeeded"


METADATA = "169.254.169.254"


@pytest.fixture
def metadata_service() -> Iterator[Listener]:
    """A stand-in for a cloud's metadata service: a listener at 169.254.169.254 on this
    host (as the real one answers the host's own requests)."""
    with listening_at(METADATA) as listener:
        yield listener


def _host_address() -> str | None:
    """An address of this host other than loopback, if it has one."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        address = line.split()[3].partition("/")[0]
        if address != METADATA:
            return address
    return None


def test_the_cloud_metadata_service_is_unreachable_from_a_shard(
    server: Server, metadata_service: Listener
) -> None:
    """slirp4netns connects from the host, and the metadata service gives the host
    machine's own credentials to whoever asks from it: a prohibit route in each shard's
    network closes it, and the host's own addresses (a connection to one came from the
    host itself, past its firewall's notion of another machine; found by a review)."""
    address = _host_address()
    control = Listener(address) if address else None
    probe = (
        "import socket, json\nres = {}\n"
        f"for host, port in [({METADATA!r}, {metadata_service.port}), ({METADATA!r}, 80),"
        f" ({address!r}, {control.port if control else 0})]:\n"
        "    if not host: continue\n"
        "    s = socket.socket(); s.settimeout(5)\n"
        "    try:\n        s.connect((host, port)); res[f'{host}:{port}'] = 'CONNECTED'\n"
        "    except OSError as e:\n        res[f'{host}:{port}'] = type(e).__name__\n"
        "print(json.dumps(res))\n"
    )
    try:
        done, out, err = run_shard(server, [sys.executable, "-c", probe])
    finally:
        if control is not None:
            control.close()
    assert done["status"] == "succeeded", err
    seen = json.loads(out)
    assert metadata_service.accepted == 0  # host side: nobody reached it
    assert seen[f"{METADATA}:{metadata_service.port}"] == "PermissionError"  # at once
    assert seen[f"{METADATA}:80"] == "PermissionError"
    if control is not None:  # the host's own address: its connections would come from it
        assert seen[f"{address}:{control.port}"] == "PermissionError" and control.accepted == 0


def test_a_shard_cannot_signal_another_tenants_shard(server: Server) -> None:
    other = server.new_org("neighbour")
    with server.client(other) as theirs:
        victim = theirs.post("/v1/runs", json={"command": ["sleep", "30"], "machine": "nano"})
        assert victim.status_code == 201, victim.text
        vid = victim.json()["id"]
        server.wait_for(lambda: len(pids_of_run(vid)) > 0, timeout=20)
        pids = " ".join(str(p) for p in pids_of_run(vid))
        done, _out, _ = run_shard(server, ["sh", "-c", f"kill -9 {pids} 2>&1; echo tried"])
        assert done["status"] == "succeeded"
        assert all(os.path.exists(f"/proc/{p}") for p in pids.split())  # still alive
        assert theirs.get(f"/v1/runs/{vid}").json()["status"] == "running"
        theirs.post(f"/v1/runs/{vid}/cancel")


def test_the_tenants_environment_never_reaches_the_root_side_of_the_launch(
    server: Server, tmp_path: Path
) -> None:
    """LD_PRELOAD (and the loader's other variables) in a run's env: a library in the
    tenant's own volume, named by its host path, must never be loaded by the processes
    that start the sandbox as root (nor by the sandbox's bubblewrap stages)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("needs a C compiler to build the preloaded library")
    marker = Path(f"/var/tmp/sylphx-preload-{uuid.uuid4().hex}")
    vol, vol_dir = server.volume()
    src = tmp_path / "evil.c"
    src.write_text(
        "#include <stdio.h>\n#include <unistd.h>\n"
        "__attribute__((constructor)) static void evil(void) {\n"
        f'  FILE *f = fopen("{marker}", "a");\n'
        '  if (f) { fprintf(f, "uid=%d comm\\n", (int)geteuid()); fclose(f); }\n}\n'
    )
    lib = vol_dir / "evil.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    lib.chmod(0o755)
    try:
        done, out, err = run_shard(
            server,
            ["sh", "-c", "echo ran"],
            env={"LD_PRELOAD": str(lib), "GCONV_PATH": str(vol_dir), "LD_AUDIT": str(lib)},
            volumeMounts=[{"volumeId": vol, "mountPath": "/vol"}],
        )
        assert done["status"] == "succeeded", err
        assert out == "ran\n"
        assert not marker.exists(), marker.read_text()  # nothing loaded it, as root or not
    finally:
        marker.unlink(missing_ok=True)


def test_a_sqlite_store_kept_elsewhere_hides_its_wal_and_index_too(
    make_server: Any, tmp_path: Path
) -> None:
    """SYLPHX_DATABASE_URL points outside the home, in a folder others can enter: a run
    started there sees neither the store nor its -wal/-shm (every org's recent writes)."""
    if not os.environ.get("SYLPHX_TEST_STORE", "sqlite").startswith("sqlite"):
        pytest.skip("a SQLite store")
    tmp_path.chmod(0o755)
    db_dir = tmp_path / "db"
    db_dir.mkdir(mode=0o755)
    server = make_server(database_url=f"sqlite:///{db_dir / 'sylphx.db'}")
    server.http.post("/v1/secrets", json={"name": "TOKEN", "value": "hunter2"})
    assert (db_dir / "sylphx.db-wal").exists()
    probe = "for f in sylphx.db sylphx.db-wal sylphx.db-shm; do head -c 4096 $f | strings; done"
    done, out, err = run_shard(server, ["sh", "-c", probe], workingDir=str(db_dir))
    assert done["status"] == "succeeded", err
    for leak in ("SQLite", "org_test", "TOKEN", "secrets"):
        assert leak not in out, (leak, out)


def test_a_local_image_is_run_only_if_the_shards_user_could_read_it(
    server: Server, tmp_path: Path, busybox_images: Any
) -> None:
    """The control plane (root) unpacks a local image for the run: one in a folder only
    root can read, or one under the home, is refused with one answer whether it is there
    or not; a readable one runs."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(busybox_images.layout, private / "layout")
    shutil.copy(busybox_images.oci_archive, private / "image.tar")
    unreadable = {  # image -> the path it names
        str(private / "layout"): str(private / "layout"),
        f"oci-archive:{private / 'image.tar'}:latest": str(private / "image.tar"),
        str(private / "absent"): str(private / "absent"),
        "/root/.ssh": "/root/.ssh",
        "/etc/shadow": "/etc/shadow",
    }
    rules = set()
    for image, path in [*unreadable.items(), (str(server.settings.home), "")]:
        r = server.http.post("/v1/runs", json={"command": ["true"], "image": image})
        assert r.status_code == 422, (image, r.text)
        detail = r.json()["details"][0]
        assert detail["field"] == "image", r.text
        if path:  # the same answer whether it is there or not
            rules.add(detail["rule"].replace(repr(path), "PATH"))
        else:
            assert "shards never see" in detail["rule"], r.text
    assert len(rules) == 1 and "cannot be read by the shards'" in rules.pop()
    assert server.http.get("/v1/runs").json()["items"] == []
    done, out, err = run_shard(server, ["echo", "in the image"], image=str(busybox_images.layout))
    assert done["status"] == "succeeded", err
    assert out == "in the image\n"


def test_another_local_user_reads_nothing_of_the_home(server: Server) -> None:
    """On a shared machine the home was 0755 (the umask's): any local user read the store
    (runs' specs and env), every tenant's logs, volumes and the image cache, and could
    hold its lock files (a read-only handle takes a flock), keeping it from reconciling."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another local user")
    vol, vol_dir = server.volume()
    _, out, _ = run_shard(server, ["sh", "-c", "echo private-output"])
    assert out == "private-output\n"
    home = server.settings.home
    for folder in home.parents:  # a local user may pass through the test's own folders
        if folder != Path("/"):
            folder.chmod(folder.stat().st_mode | 0o711)
    targets = [
        str(home / "sylphx.db") if (home / "sylphx.db").exists() else str(home),
        str(server.settings.logs_dir),
        str(home / "images"),
        str(home / "state"),
        str(server.settings.volumes_dir),
        str(home / "controller.lock"),  # to hold (a read-only handle takes a flock)
        # (PostgreSQL leases the reconciler with an advisory lock: no file there)
        *([str(home / "reconciler.lock")] if (home / "reconciler.lock").exists() else []),
    ]
    probe = (
        "import os, sys, json\nres = {}\nfor p in sys.argv[1:]:\n"
        "    try:\n        res[p] = os.listdir(p) if os.path.isdir(p) else str(open(p).read(1))\n"
        "    except OSError as e:\n        res[p] = type(e).__name__\nprint(json.dumps(res))\n"
    )
    seen = json.loads(
        subprocess.run(
            ["/usr/bin/python3", "-c", probe, *targets],  # not root's own Python (in /root)
            user=64123, group=64123, extra_groups=[], capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert set(seen.values()) == {"PermissionError"}, seen
    mode = vol_dir.stat().st_mode & 0o777  # its name shows in a launch's command line:
    assert (mode, vol in seen) == (0o700, False)  # the volume itself is its shards' alone


def test_a_working_dir_of_tmp_shows_none_of_the_hosts_tmp(server: Server) -> None:
    """workingDir /tmp bound all of the host's /tmp (read-only) into the shard: every
    user's and tenant's files left there. The shard now starts in its own /tmp."""
    marker = Path(tempfile.gettempdir()) / f"sylphx-other-user-{uuid.uuid4().hex}"
    marker.write_text("someone else's")
    marker.chmod(0o644)
    try:
        done, out, err = run_shard(
            server, ["sh", "-c", f"pwd; cat {marker} 2>/dev/null || echo unseen"], workingDir="/tmp"
        )
    finally:
        marker.unlink()
    assert done["status"] == "succeeded", err
    assert out == "/tmp\nunseen\n"
    for spelled in ("/tmp/../tmp", "/tmp/./", "/tmp/../tmp/bin"):  # nor through PATH
        assert visible_host_paths("/bin/sh", f"{spelled}:/usr/bin", None) == ()
