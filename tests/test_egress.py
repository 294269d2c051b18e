"""A registry's skopeo runs off the host's network: what it connects to is checked
connection by connection, so a registry's redirect, token realm or rebound name cannot
make the control plane (root) send requests into the host or its private networks.
Asserted host side: listeners at private addresses see nobody. And it runs as a user of
its own with no capabilities, so a skopeo exploited by a registry's answer reads no
root-owned file and leaves nothing of its user's behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attacks import Listener, listening_at
from oci import BusyboxImages, busybox_images, layout_digest  # noqa: F401 (a fixture)
from sylphx._core.errors import ValidationError
from sylphx._server.executors.envelope import egress
from sylphx._server.executors.local.cgroups import EGRESS_PREFIX, Cgroups
from sylphx._server.images.store import ImageStore

pytestmark = pytest.mark.skipif(not egress.confinable(), reason="needs root, bwrap, slirp4netns")
USER = (64001, 64001)  # SYLPHX_EGRESS_UID/GID's default: what the server passes

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
        argv = ["/usr/bin/python3", "-c", PROBE, *targets]
        done = egress.run_confined(argv, [tmp_path], 60, user=USER)
        loopback.close()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert metadata.accepted == lan.accepted == loopback.accepted == 0  # host side
    assert "CONNECTED" not in seen.values(), seen
    assert seen[targets[0]] == seen[targets[1]] == "PermissionError"  # refused at once


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A folder on the host outside /tmp (the sandbox has a /tmp of its own, so a path
    there proves nothing), that anyone may enter: only the sandbox keeps it out."""
    path = Path(tempfile.mkdtemp(prefix="sylphx-egress-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_it_writes_only_where_it_is_told_and_times_out_whole(host_dir: Path) -> None:
    mine, other = host_dir / "work", host_dir / "other"
    mine.mkdir()
    other.mkdir(mode=0o777)
    other.chmod(0o777)  # (past the umask): writable to anyone, but read-only to it
    script = f"open({str(mine / 'a')!r}, 'w').write('x'); open({str(other / 'b')!r}, 'w')"
    done = egress.run_confined(["/usr/bin/python3", "-c", script], [mine], 60, user=USER)
    assert (mine / "a").read_text() == "x" and not (other / "b").exists()
    assert (mine / "a").stat().st_uid == mine.stat().st_uid == USER[0]  # never root's
    assert done.returncode != 0 and b"Read-only file system" in done.stderr
    start = time.monotonic()
    with pytest.raises(Exception, match="timed out"):
        egress.run_confined(["sleep", "30"], [], 1, user=USER)
    assert time.monotonic() - start < 10


def test_the_store_pulls_from_a_registry_confined(tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    calls: list[Any] = []

    def spy(argv: Any, writable: Any, timeout: float, *, look: Any) -> Any:
        calls.append(argv)
        return egress.run_confined(argv, writable, timeout, look=look, user=USER)

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


def test_what_it_is_told_to_hide_and_the_password_hashes_it_never_reads(host_dir: Path) -> None:
    home = host_dir / "home"
    home.mkdir(mode=0o755)
    (home / "secrets.key").write_text("key")
    (home / "secrets.key").chmod(0o644)  # anyone's to read, were it not hidden
    work = home / "images" / "tmp" / "w"
    work.mkdir(parents=True)
    script = (
        "import sys\nfor p in sys.argv[1:]:\n"
        "    try:\n        open(p).read(); print('READ', p)\n"
        "    except OSError as e:\n        print(type(e).__name__, p)\n"
    )
    paths = [str(home / "secrets.key"), "/etc/shadow", str(work)]
    done = egress.run_confined(
        ["/usr/bin/python3", "-c", script, *paths[:2]], [work], 60, hide=[home], user=USER
    )
    assert done.returncode == 0, done.stderr
    assert "READ" not in done.stdout.decode(), done.stdout


IDENTITY = (
    "import json, os\nstatus = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
    "out = {k: status[k].split() for k in ('Uid', 'Gid', 'Groups', 'CapInh', 'CapPrm',"
    " 'CapEff', 'CapBnd', 'CapAmb')}\n"
    "try:\n    out['secret'] = open(os.environ['SECRET']).read()\n"
    "except OSError as e:\n    out['secret'] = type(e).__name__\n"
    "out['root'] = os.listdir('/root')\nout['beside'] = os.listdir(os.environ['BESIDE'])\n"
    "open(os.path.join(os.environ['WORK'], 'layer'), 'w').write('x')\n"
    "print(json.dumps(out))\n"
)


@pytest.mark.parametrize("hidden", [False, True], ids=["a closed cache", "in a hidden home"])
def test_a_registrys_skopeo_runs_as_its_own_user_with_no_capabilities(hidden: bool) -> None:
    """Before, it ran as root with its capabilities dropped: root still owns root's files,
    so a skopeo exploited by a registry's answer could read any 0600 file of root's the
    hidden paths missed, and everything under /root -- the default home of a root control
    plane (~/.sylphx: its store and secrets key) too, as /root was skipped as a folder
    shards never get. Its work folder sits in the image cache, root's alone (0700), or in
    a hidden home: the way to it shows nothing else of either."""
    fd, secret = tempfile.mkstemp(prefix="sylphx-egress-secret-", dir="/var/tmp")  # root, 0600
    os.write(fd, b"root's")
    os.close(fd)
    cache = Path(tempfile.mkdtemp(prefix="sylphx-egress-cache-", dir="/var/tmp"))  # 0700
    probe = Path(tempfile.mkdtemp(prefix="sylphx-egress-probe-", dir="/root"))
    try:
        (cache / "other-image").mkdir()
        work = cache / "tmp" / "w"
        work.mkdir(parents=True)
        env = f"SECRET={secret} BESIDE={cache} WORK={work}".split()
        argv = ["/usr/bin/env", *env, "/usr/bin/python3", "-c", IDENTITY]
        hide = [cache] if hidden else []
        done = egress.run_confined(argv, [work], 60, hide=hide, user=USER)
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["Uid"] == [str(USER[0])] * 4 and seen["Gid"] == [str(USER[1])] * 4
        assert seen["Groups"] == []
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(seen[caps][0], 16) == 0, (caps, seen[caps])
        assert seen["secret"] == "PermissionError"
        assert seen["root"] == [] and seen["beside"] == ["tmp"]  # not /root, not the cache
        # host side: what it wrote is its user's (never root's: no setuid-root file)
        assert (work / "layer").read_text() == "x"
        assert (work / "layer").stat().st_uid == work.stat().st_uid == USER[0]
        assert (work / "layer").stat().st_gid == work.stat().st_gid == USER[1]
    finally:
        os.unlink(secret)
        shutil.rmtree(cache)
        shutil.rmtree(probe)


def test_skopeo_copies_an_image_as_that_user_into_the_cache(
    busybox_images: BusyboxImages,  # noqa: F811
) -> None:
    """What the store asks of a registry's skopeo (``copy`` into its work folder in the
    image cache), done as the egress user: it needs no more than it is given, and all it
    wrote is that user's."""
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    source = Path(tempfile.mkdtemp(prefix="sylphx-egress-source-", dir="/var/tmp"))
    cache = Path(tempfile.mkdtemp(prefix="sylphx-egress-cache-", dir="/var/tmp"))  # 0700
    try:
        shutil.copytree(busybox_images.layout, source / "layout")
        for top, dirs, files in os.walk(source):  # a registry's answer: anyone may read it
            for name in (*dirs, *files):
                os.chmod(os.path.join(top, name), 0o755 if name in dirs else 0o644)
        os.chmod(source, 0o755)
        work = cache / "tmp" / "w"
        work.mkdir(parents=True, mode=0o700)
        argv = [shutil.which("skopeo") or "skopeo", "copy", "--quiet"]
        argv += [f"oci:{source / 'layout'}:latest", f"oci:{work / 'layout'}:image"]
        done = egress.run_confined(argv, [work], 120, user=USER)
        assert done.returncode == 0, done.stderr
        written = [Path(top) / name for top, dirs, files in os.walk(work) for name in dirs + files]
        assert (work / "layout" / "index.json").is_file() and len(written) > 4
        assert {path.lstat().st_uid for path in [work, *written]} == {USER[0]}
    finally:
        shutil.rmtree(source)
        shutil.rmtree(cache)


def test_the_store_gives_a_registrys_skopeo_no_say_over_the_rest_of_its_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    busybox_images: BusyboxImages,  # noqa: F811
) -> None:
    """Found by a review: skopeo was given the whole work folder of an unpack, where umoci
    then makes the bundle, as root. A skopeo exploited by a registry's answer wrote a valid
    layout and ``bundle -> /a/host/folder``: umoci (root) unpacked the image there, made
    the folder 0700, and the cache entry became a link to it. Now it writes ``pull/`` only;
    whatever it leaves beside its layout is never followed."""
    import sylphx._server.images.store as image_store

    monkeypatch.setattr(image_store, "check_reachable", lambda *a, **k: None)
    victim = tmp_path / "victim"  # e.g. another org's volume, or /etc
    victim.mkdir(mode=0o755)
    (victim / "theirs").write_text("x")
    given: list[Path] = []

    layout = busybox_images.layout
    manifest = (layout / "blobs" / "sha256" / layout_digest(layout, "latest")[7:]).read_bytes()

    def exploited(argv: Any, writable: Any, timeout: float, *, look: Any) -> Any:
        if "inspect" in argv:  # the manifest, as the registry serves it (root hashes it)
            return subprocess.CompletedProcess(argv, 0, manifest, b"")
        given.extend(writable)
        source = f"oci:{busybox_images.layout}:latest"  # a valid layout, where it is told
        subprocess.run(["skopeo", "copy", "--quiet", source, argv[-1]], check=True)
        os.symlink(victim, Path(writable[0]) / "bundle")  # ... and beside it
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    store = ImageStore(tmp_path / "cache", confine=exploited)
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    digest = layout_digest(busybox_images.layout, "latest")
    image = store.resolve(f"registry.example/acme/x@{digest}")
    assert sorted(os.listdir(victim)) == ["theirs"]  # host side: untouched
    assert victim.stat().st_mode & 0o777 == 0o755
    final = store.path_for(digest)
    assert final.is_dir() and not final.is_symlink() and image.rootfs == final / "rootfs"
    assert given and given[0].name == "pull"


def test_a_registrys_skopeo_has_a_memory_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: the sandbox's /tmp is a tmpfs bubblewrap cannot size, and skopeo's
    own memory had no bound: an exploited one could fill the host's memory until the OOM
    killer chose the control plane. It now runs in a cgroup of its own (a machine tier);
    shown here with a small one, and its cgroup gone afterwards (host side)."""
    monkeypatch.setattr(egress, "TIER", "nano")  # 256 MiB
    base = Cgroups().bases[0]
    fill = "head -c 600000000 /dev/zero > /tmp/fill && echo kept"
    done = egress.run_confined(["/bin/sh", "-c", fill], [], 120, user=USER)
    assert done.returncode != 0 and b"kept" not in done.stdout
    assert not [p for p in base.iterdir() if p.name.startswith(EGRESS_PREFIX)]
    small = "head -c 50000000 /dev/zero > /tmp/f && echo kept"
    small_done = egress.run_confined(["/bin/sh", "-c", small], [], 120, user=USER)
    assert small_done.returncode == 0 and small_done.stdout == b"kept\n", small_done.stderr
