"""ImageStore: every local image format, config parsing, caching, locking, failures.

Real skopeo/umoci/bwrap on images built from busybox-static; no network traffic leaves
this machine (registry refs use the reserved `.invalid` TLD, which fails in DNS).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from oci import BusyboxImages, busybox_images, layout_digest  # noqa: F401 - the fixture
from sylphx._core.errors import ExecutorError, ValidationError
from sylphx._server.executors.local.processes import check_program
from sylphx._server.images.reach import check_reachable, host_of
from sylphx._server.images.refs import parse_ref
from sylphx._server.images.store import ImageConfig, ImageStore, UnpackedImage

HELLO = ImageConfig(
    env={"GREETING": "hello"},
    working_dir="/work",
    entrypoint=[],
    cmd=["/bin/sh", "-c", "echo $GREETING"],
)

WRAPPER = """#!/bin/sh
# counts `umoci unpack` calls, then (optionally) lingers after a successful unpack
[ "$1" = unpack ] && echo $$ >> "$UMOCI_COUNT"
"{real}" "$@" || exit $?
[ "$1" = unpack ] && sleep "${{UMOCI_DELAY:-0}}"
exit 0
"""


@pytest.fixture
def counter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a counting `umoci` wrapper first on PATH; returns the count file."""
    real = shutil.which("umoci")
    assert real is not None
    bindir = tmp_path / "wrapbin"
    bindir.mkdir()
    (bindir / "umoci").write_text(WRAPPER.format(real=real))
    (bindir / "umoci").chmod(0o755)
    count = tmp_path / "umoci-count"
    count.touch()
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("UMOCI_COUNT", str(count))
    return count


def unpacks(count: Path) -> int:
    return len(count.read_text().split())


def assert_busybox(image: UnpackedImage) -> None:
    assert (image.rootfs / "bin" / "busybox").is_file()
    assert os.readlink(image.rootfs / "bin" / "sh") == "busybox"
    assert image.digest.startswith("sha256:") and len(image.digest) == 71


# -- formats -----------------------------------------------------------------------------


def test_oci_layout(tmp_path: Path, busybox_images: BusyboxImages) -> None:  # noqa: F811
    store = ImageStore(tmp_path / "cache")
    layout = busybox_images.layout
    image = store.resolve(f"oci:{layout}:latest")
    assert_busybox(image)
    assert image.ref == f"oci:{layout}:latest"
    assert image.digest == layout_digest(layout, "latest") == store.digest(f"oci:{layout}")
    assert image.rootfs == tmp_path / "cache" / "sha256" / image.digest[7:] / "rootfs"
    assert image.config == HELLO
    # A plain absolute path works too (no tag: `latest`), and hits the same cache entry.
    assert store.resolve(str(layout)).rootfs == image.rootfs
    assert store.resolve(f"{layout}:latest").rootfs == image.rootfs


def test_entrypoint_variant(tmp_path: Path, busybox_images: BusyboxImages) -> None:  # noqa: F811
    image = ImageStore(tmp_path).resolve(f"oci:{busybox_images.layout}:ep")
    assert image.digest == layout_digest(busybox_images.layout, "ep")
    assert image.config.entrypoint == ["/bin/echo"]
    assert image.config.cmd == ["from-cmd"]
    assert image.config.env == {"GREETING": "hello"}
    assert image.config.argv(None) == ["/bin/echo", "from-cmd"]


@pytest.mark.parametrize("prefixed", [True, False])
def test_oci_archive(tmp_path: Path, busybox_images: BusyboxImages, prefixed: bool) -> None:  # noqa: F811
    path = busybox_images.oci_archive
    ref = f"oci-archive:{path}:latest" if prefixed else str(path)
    store = ImageStore(tmp_path)
    image = store.resolve(ref)
    assert_busybox(image)
    assert image.config == HELLO
    assert image.digest == store.digest(ref)


@pytest.mark.parametrize("prefixed", [True, False])
def test_docker_archive(tmp_path: Path, busybox_images: BusyboxImages, prefixed: bool) -> None:  # noqa: F811
    path = busybox_images.docker_archive
    ref = f"docker-archive:{path}" if prefixed else str(path)
    assert parse_ref(ref).kind == "docker-archive"
    store = ImageStore(tmp_path)
    image = store.resolve(ref)
    assert_busybox(image)
    assert image.config == HELLO
    assert image.digest == store.digest(ref) == store.digest(ref)  # stable


def test_rootfs_runs_under_bwrap(tmp_path: Path, busybox_images: BusyboxImages) -> None:  # noqa: F811
    image = ImageStore(tmp_path).resolve(f"oci:{busybox_images.layout}:latest")
    argv = ["bwrap", "--ro-bind", str(image.rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
    argv += ["--tmpfs", "/tmp", "--chdir", image.config.working_dir or "/", "--clearenv"]
    for key, value in image.config.env.items():
        argv += ["--setenv", key, value]
    argv += ["--", *image.config.argv(["/bin/sh", "-c", "echo $GREETING; pwd; ls /bin/env"])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hello", "/work", "/bin/env"]
    assert subprocess.run(argv[:-4] + image.config.argv(None), capture_output=True).stdout == (
        b"hello\n"
    )


# -- argv --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "command", "expected"),
    [
        ([], ["sh"], None, ["sh"]),
        ([], ["sh"], [], ["sh"]),
        ([], ["sh"], ["python", "x.py"], ["python", "x.py"]),
        (["/init"], [], None, ["/init"]),
        (["/init"], ["--flag"], None, ["/init", "--flag"]),
        (["/init"], ["--flag"], ["run"], ["/init", "run"]),
        ([], [], ["echo", "hi"], ["echo", "hi"]),
    ],
)
def test_argv_docker_semantics(
    entrypoint: list[str], cmd: list[str], command: list[str] | None, expected: list[str]
) -> None:
    config = ImageConfig(env={}, working_dir=None, entrypoint=entrypoint, cmd=cmd)
    assert config.argv(command) == expected


def test_argv_empty_names_command() -> None:
    config = ImageConfig(env={}, working_dir=None, entrypoint=[], cmd=[])
    with pytest.raises(ValidationError) as err:
        config.argv(None)
    assert err.value.details[0]["field"] == "command"
    assert "Fix:" in err.value.message


def test_config_from_oci_blob() -> None:
    blob = {"config": {"Env": ["A=1", "B=x=y", "C"], "WorkingDir": "", "Cmd": None}}
    config = ImageConfig.from_oci(blob)
    assert config == ImageConfig({"A": "1", "B": "x=y", "C": ""}, None, [], [])


# -- cache and locking -------------------------------------------------------------------


def test_second_resolve_is_a_cache_hit(
    tmp_path: Path,
    busybox_images: BusyboxImages,  # noqa: F811
    counter: Path,
) -> None:
    store = ImageStore(tmp_path / "cache")
    first = store.resolve(f"oci:{busybox_images.layout}:latest")
    mtime = first.rootfs.stat().st_mtime_ns
    again = ImageStore(tmp_path / "cache").resolve(str(busybox_images.layout))
    assert again == UnpackedImage(str(busybox_images.layout), first.digest, first.rootfs, HELLO)
    assert unpacks(counter) == 1
    assert first.rootfs.stat().st_mtime_ns == mtime
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_concurrent_threads_and_process_unpack_once(
    tmp_path: Path,
    busybox_images: BusyboxImages,  # noqa: F811
    counter: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UMOCI_DELAY", "1")
    cache, ref = tmp_path / "cache", f"oci-archive:{busybox_images.oci_archive}"
    script = (
        "import sys; from pathlib import Path; from sylphx._server.images.store import ImageStore;"
    )
    script += "print(ImageStore(Path(sys.argv[1])).resolve(sys.argv[2]).rootfs)"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(cache), ref], stdout=subprocess.PIPE, text=True
    )
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ImageStore(cache).resolve(ref).rootfs))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert len(results) == 3 and {*results, Path(out.strip())} == {results[0]}
    assert unpacks(counter) == 1


def test_crash_mid_unpack_leaves_nothing_complete(
    tmp_path: Path,
    busybox_images: BusyboxImages,  # noqa: F811
    counter: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache, ref = tmp_path / "cache", f"oci:{busybox_images.layout}:latest"
    script = (
        "import sys; from pathlib import Path; from sylphx._server.images.store import ImageStore;"
    )
    script += "ImageStore(Path(sys.argv[1])).resolve(sys.argv[2])"
    env = {**os.environ, "UMOCI_DELAY": "30"}
    argv = [sys.executable, "-c", script, str(cache), ref]
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while not list(cache.glob("tmp/*/bundle/rootfs/bin/busybox")):  # unpacked, not renamed
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the resolver and its umoci, mid-unpack
    proc.wait()
    final = ImageStore(cache).path_for(layout_digest(busybox_images.layout, "latest"))
    assert not final.exists()
    image = ImageStore(cache).resolve(ref)  # the lock died with the process
    assert image.rootfs == final / "rootfs"
    assert_busybox(image)
    assert unpacks(counter) == 2
    assert not list((cache / "tmp").iterdir())  # the crashed leftover was removed


# -- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref", ["registry.invalid/x:1", "docker://registry.invalid/acme/trainer:tag"]
)
def test_unreachable_registry(tmp_path: Path, ref: str) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    start = time.monotonic()
    with pytest.raises(ValidationError) as err:
        ImageStore(tmp_path, registry_timeout=10).resolve(ref)
    assert time.monotonic() - start < 20
    message = err.value.message
    assert "registry.invalid" in message and "unreachable" in message
    assert "local OCI layout" in message
    assert err.value.details[0]["field"] == "image"


def test_pinned_digest_needs_no_network(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    store = ImageStore(tmp_path)
    assert store.digest(f"registry.invalid/acme/trainer:v1@{digest}") == digest
    with pytest.raises(ValidationError, match="unreachable"):
        store.resolve(f"registry.invalid/acme/trainer@{digest}")
    with pytest.raises(ValidationError, match="malformed digest"):
        store.digest("registry.invalid/acme/trainer@sha256:abc")


@pytest.mark.parametrize(
    "ref",
    ["/no/such/image", "oci:/no/such/layout:v1", "oci-archive:/no/such.tar", "/no/such.tar:v1"],
)
def test_missing_path(tmp_path: Path, ref: str) -> None:
    with pytest.raises(ValidationError) as err:
        ImageStore(tmp_path).resolve(ref)
    assert err.value.details[0] == {
        "field": "image",
        "rule": "path_missing",
        "fix": err.value.details[0]["fix"],
    }
    assert "Fix:" in err.value.message


def test_bad_tag_lists_tags(tmp_path: Path, busybox_images: BusyboxImages) -> None:  # noqa: F811
    with pytest.raises(ValidationError, match=r"tag 'nope' not found .*tags: latest, ep"):
        ImageStore(tmp_path).digest(f"oci:{busybox_images.layout}:nope")
    with pytest.raises(ValidationError, match="tag 'nope'"):
        ImageStore(tmp_path).resolve(f"oci-archive:{busybox_images.oci_archive}:nope")


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    with pytest.raises(ValidationError, match="not a readable, uncompressed tar"):
        ImageStore(tmp_path).resolve(str(junk))


def test_missing_tools_name_the_package(
    tmp_path: Path,
    busybox_images: BusyboxImages,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ExecutorError, match=r"Debian package 'skopeo'.*make system-deps"):
        ImageStore(tmp_path).resolve(f"docker-archive:{busybox_images.docker_archive}")
    with pytest.raises(ExecutorError, match="Debian package 'umoci'"):
        ImageStore(tmp_path).resolve(f"oci:{busybox_images.layout}:latest")


def test_registry_names() -> None:
    assert parse_ref("ghcr.io/acme/trainer:tag").registry == "ghcr.io"
    assert parse_ref("docker://localhost:5000/x").registry == "localhost:5000"
    assert parse_ref("python:3.11").registry == "docker.io"
    assert parse_ref("acme/trainer").registry == "docker.io"
    with pytest.raises(ValidationError):
        parse_ref("  ")


def test_private_registries_are_refused_unless_allowed() -> None:
    assert [host_of(r) for r in ("reg.io", "reg.io:5000", "[::1]:5000", "::1")] == [
        "reg.io",
        "reg.io",
        "::1",
        "::1",
    ]
    for registry in ("localhost:5000", "127.0.0.1", "10.1.2.3:443", "169.254.169.254", "[::1]"):
        with pytest.raises(ValidationError, match="private or special address"):
            check_reachable(registry, ())
    check_reachable("localhost:5000", ("localhost:5000",))  # the operator's own
    check_reachable("10.1.2.3", ("10.1.2.3",))
    check_reachable("registry.invalid", ())  # no such name: skopeo will say unreachable
    check_reachable("8.8.8.8", ())  # a public address


def test_a_layout_naming_a_digest_that_is_a_path_is_refused(tmp_path: Path) -> None:
    """A digest read from a tenant's own layout becomes paths of the store (its lock, its
    unpack folder, removed when stale, as root): "../../victim/" there reached out of the
    cache (found by a review). Every digest a layout names must be sha256:<hex>."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for digest in ("../../victim/", "sha256:../../../victim", "sha256:" + "A" * 64):
        entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest}
        index = {"schemaVersion": 2, "manifests": [{**entry, "size": 1}]}
        (layout / "index.json").write_text(json.dumps(index))
        store = ImageStore(tmp_path / "cache" / "images")
        with pytest.raises(ValidationError, match="not sha256"):
            store.resolve(f"oci:{layout}")
        with pytest.raises(ValidationError, match="not sha256"):
            store.digest(f"oci:{layout}")
    assert (victim / "keep").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout", "victim"]  # nothing made


def test_a_program_is_looked_up_inside_the_image_never_on_the_host(tmp_path: Path) -> None:
    """Whether an image run's program exists is looked up with the rootfs as / (its
    ``..`` and links, absolute ones too, stay inside it): looked up on the host as
    spelled, a PATH of /../../.. or an image's link to /etc told a tenant whether a
    host file exists (exit 127 or not; found by a review)."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "usr").mkdir()
    (root / "usr" / "bin").symlink_to("/bin")  # absolute: the image's /bin
    (root / "hostetc").symlink_to("/etc")  # the image's /etc: there is none
    check_program("tool", "/usr/bin", None, root=root)
    check_program("/usr/bin/../bin/tool", "", None, root=root)
    assert os.path.exists("/etc/passwd")  # on the host, it is
    for program, path in (
        ("passwd", "/../../../../../../etc"),
        ("passwd", "/hostetc"),
        ("/hostetc/passwd", ""),
        (f"/../../../../../..{root}/bin/tool", ""),
    ):
        with pytest.raises(FileNotFoundError):
            check_program(program, path, None, root=root)
