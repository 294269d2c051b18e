"""A registry's image is checked by root before it is unpacked into the shared cache.

The threat: a registry's skopeo exploited by the registry's answers (it runs confined, as
its own user, but writes the pulled image). Before, root's umoci unpacked whatever OCI
layout skopeo left, and the cache kept it under the digest asked for: org A pins a
well-known digest on its own registry, its skopeo writes another image, and org B, pinning
that digest on the real registry, is served A's files from the cache (F2 of the
twenty-fourth session's review). Now the manifest is fetched and hashed by root, skopeo
copies only blobs (``dir:``), and root builds its own layout of the blobs that match.

There is no registry on this machine: ``_skopeo`` is replaced by one that answers
``inspect --raw`` from a table of manifests, and a ``copy`` by running the real skopeo
from a local layout into the destination asked for (an exploited one copies another image).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server
from oci import BusyboxImages, busybox_images, layout_digest  # noqa: F401 - the fixture
from registry import Registry as LoopbackRegistry
from sylphx._core.errors import ValidationError
from sylphx._server.images import platforms
from sylphx._server.images.policy import admit, pinned_here
from sylphx._server.images.sources import Sources
from sylphx._server.images.store import ImageStore

REPO = "registry.example/acme/app"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _sha(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class Registry:
    """``skopeo`` as the store calls it, against a registry held in memory: manifests by
    digest; a copy of a digest runs the real skopeo from ``source`` (an image reference
    skopeo reads) into the destination the store names. ``copies`` is what was asked."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.images: dict[str, str] = {}  # digest -> what a copy of it copies
        self.asked: list[list[str]] = []
        self.after_copy: Callable[[Path], None] = lambda dest: None

    def add(self, raw: bytes, source: str | None = None) -> str:
        digest = _sha(raw)
        self.manifests[digest] = raw
        if source is not None:
            self.images[digest] = source
        return digest

    def __call__(self, args: list[str], *_: object, **__: object) -> bytes:
        self.asked.append(args)
        if "inspect" in args:
            return self.manifests[args[-1].rpartition("@")[2]]
        src, dest = args[-2], args[-1]
        assert src.startswith("docker://"), src
        copied = self.images[src.rpartition("@")[2]]
        subprocess.run(["skopeo", "copy", "--quiet", copied, dest], check=True)
        self.after_copy(Path(dest.split(":")[1]))
        return b""


@pytest.fixture
def registry(busybox_images: BusyboxImages, tmp_path: Path) -> Registry:  # noqa: F811
    """The busybox image ``latest`` as an OCI manifest, and as a Docker schema 2 one
    (skopeo's conversion, in a ``dir:`` copy), with gzip layers and with plain tars."""
    reg = Registry()
    layout = busybox_images.layout
    latest = f"oci:{layout}:latest"
    raw = (layout / "blobs" / "sha256" / layout_digest(layout, "latest")[7:]).read_bytes()
    assert reg.add(raw, latest) == layout_digest(layout, "latest")
    v2s2 = tmp_path / "v2s2"
    subprocess.run(["skopeo", "copy", "-q", "-f", "v2s2", latest, f"dir:{v2s2}"], check=True)
    reg.add((v2s2 / "manifest.json").read_bytes(), f"dir:{v2s2}")
    plain = tmp_path / "v2s2-uncompressed"  # (a review found these refused)
    argv = ["skopeo", "copy", "-q", "-f", "v2s2", "--dest-decompress", latest, f"dir:{plain}"]
    subprocess.run(argv, check=True)
    assert b'image.rootfs.diff.tar"' in (plain / "manifest.json").read_bytes()
    reg.add((plain / "manifest.json").read_bytes(), f"dir:{plain}")
    return reg


def _store(tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> ImageStore:
    store = ImageStore(tmp_path / "cache")
    monkeypatch.setattr(store, "_skopeo", registry)
    return store


def _latest_config_ok(store: ImageStore, ref: str) -> None:
    image = store.resolve(ref)
    assert image.config.cmd == ["/bin/sh", "-c", "echo $GREETING"]
    assert image.config.entrypoint == []  # not ep's
    assert (image.rootfs / "bin" / "busybox").is_file()


@pytest.mark.parametrize("kind", ["oci", "docker", "docker_uncompressed"])
def test_a_registry_image_is_unpacked_from_a_layout_root_made_of_checked_blobs(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    oci, docker, plain = registry.manifests
    digest = {"oci": oci, "docker": docker, "docker_uncompressed": plain}[kind]
    store = _store(tmp_path, registry, monkeypatch)
    _latest_config_ok(store, f"{REPO}@{digest}")
    assert store.resolve(f"{REPO}@{digest}").digest == digest  # keyed by the registry's
    inspect, copy = registry.asked
    assert inspect[-3:] == ["inspect", "--raw", f"docker://{REPO}@{digest}"]
    assert copy[-2] == f"docker://{REPO}@{digest}" and copy[-1].startswith("dir:")
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # the work folder is gone


def test_only_a_pinned_digest_held_here_and_checked_for_its_repository_skips_the_registry(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a submit may admit with no registry look-up (and so no look-up slot): a
    digest-pinned reference whose image is unpacked here and whose repository was
    checked to hold it; a tag, another repository, or a path always goes the long way."""
    digest = next(iter(registry.manifests))
    store = _store(tmp_path, registry, monkeypatch)
    ref = f"{REPO}@{digest}"
    assert pinned_here(ref, store) is None  # not pulled yet
    store.resolve(ref)
    asked = len(registry.asked)
    assert pinned_here(ref, store) == digest
    assert pinned_here(f" {ref} ", store) == digest
    assert pinned_here(f"registry.example/other/app@{digest}", store) is None  # not checked
    assert pinned_here(f"{REPO}:latest", store) is None  # a tag: the registry names it
    assert pinned_here(f"{REPO}@sha256:{'0' * 64}", store) is None  # not held here
    assert pinned_here(f"{REPO}@sha256:../../x", store) is None
    assert pinned_here(f"oci:{tmp_path}", store) is None  # a tenant's files
    assert pinned_here("", store) is None
    assert len(registry.asked) == asked  # none of it asked the registry


def test_a_pinned_digest_collected_meanwhile_is_pulled_again_at_admission(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submit's second image pinned here may be collected while its first is pulled
    (minutes, past image GC's grace): admitted, it is pulled again, never admitted
    gone (its launch would fail: not in this host's image cache; attack review)."""
    digest = next(iter(registry.manifests))
    store = _store(tmp_path, registry, monkeypatch)
    ref = f"{REPO}@{digest}"
    store.resolve(ref)
    pinned = pinned_here(ref, store)
    shutil.rmtree(store.path_for(digest))  # image GC, meanwhile
    copies = len([a for a in registry.asked if "copy" in a])
    assert admit(ref, None, store, None, pinned=pinned) == digest
    assert store.cached(digest)
    assert len([a for a in registry.asked if "copy" in a]) == copies + 1


def test_a_digest_vouched_for_by_many_repositories_costs_one_look_up(tmp_path: Path) -> None:
    """Whether a repository vouched for a digest is one file's name, however many others
    did: a file listing them all, a line each, could be grown by a tenant's own registry
    until every submit naming the digest read megabytes of it (attack review)."""
    sources = Sources(tmp_path / "sources")
    digest, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    for n in range(2000):
        sources.record(f"evil.example/{'x' * 900}{n}", digest)
    assert not sources.vouched("ghcr.io/acme/app", digest)
    sources.record("ghcr.io/acme/app", digest)
    assert sources.vouched("ghcr.io/acme/app", digest)
    for near in ("ghcr.io/acme/ap", "ghcr.io/acme/app\nevil.example/x0", "ghcr.io/acme/app "):
        assert not sources.vouched(near, digest)
    assert not sources.vouched("ghcr.io/acme/app", other)
    assert all(path.stat().st_size == 0 for path in (tmp_path / "sources").iterdir())


def test_an_index_is_followed_to_this_machines_image_by_its_checked_digest(
    tmp_path: Path,
    registry: Registry,
    busybox_images: BusyboxImages,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layout = busybox_images.layout
    ep = (layout / "blobs" / "sha256" / layout_digest(layout, "ep")[7:]).read_bytes()
    ep_digest = registry.add(ep, f"oci:{layout}:ep")
    latest = layout_digest(layout, "latest")
    other = "s390x" if ARCH != "s390x" else "riscv64"

    def entry(digest: str, raw: bytes, arch: str) -> dict[str, object]:
        kind = "application/vnd.oci.image.manifest.v1+json"
        plat = {"os": "linux", "architecture": arch}
        return {"mediaType": kind, "digest": digest, "size": len(raw), "platform": plat}

    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(ep_digest, ep, other), entry(latest, registry.manifests[latest], ARCH)],
    }
    digest = registry.add(json.dumps(index).encode())
    store = _store(tmp_path, registry, monkeypatch)
    _latest_config_ok(store, f"{REPO}@{digest}")
    assert store.resolve(f"{REPO}@{digest}").digest == digest
    assert [a[-1] for a in registry.asked if "inspect" in a] == [
        f"docker://{REPO}@{digest}",
        f"docker://{REPO}@{latest}",
    ]
    assert registry.asked[-1][-2] == f"docker://{REPO}@{latest}"  # the entry it checked


@pytest.mark.skipif(ARCH != "amd64", reason="x86-64 micro-architecture levels")
def test_an_index_entry_for_a_cpu_level_above_this_ones_is_never_pulled(
    tmp_path: Path,
    registry: Registry,
    busybox_images: BusyboxImages,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a CPU of level x86-64-v2, an index's amd64/v4 entry (AVX-512: SIGILL here) is
    passed over for its plain amd64 one; with only the v4 one, a 422 naming the level."""
    layout = busybox_images.layout
    ep = (layout / "blobs" / "sha256" / layout_digest(layout, "ep")[7:]).read_bytes()
    ep_digest = registry.add(ep, f"oci:{layout}:ep")
    latest = layout_digest(layout, "latest")
    kind = "application/vnd.oci.image.manifest.v1+json"
    v4 = {"os": "linux", "architecture": "amd64", "variant": "v4"}
    faster = {"mediaType": kind, "digest": ep_digest, "size": len(ep), "platform": v4}
    plain = {"mediaType": kind, "digest": latest, "size": len(registry.manifests[latest])}
    plain["platform"] = {"os": "linux", "architecture": "amd64"}
    index = {"schemaVersion": 2, "mediaType": _INDEX, "manifests": [faster, plain]}
    digest = registry.add(json.dumps(index).encode())
    only = registry.add(json.dumps({**index, "manifests": [faster]}).encode())
    sse4 = {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}
    monkeypatch.setattr(platforms, "_cpu_flags", lambda: frozenset(sse4))
    platforms.host_variants.cache_clear()
    try:
        store = _store(tmp_path, registry, monkeypatch)
        assert store.resolve(f"{REPO}@{digest}").digest == digest
        assert f"docker://{REPO}@{ep_digest}" not in [a[-1] for a in registry.asked]
        assert registry.asked[-1][-2] == f"docker://{REPO}@{latest}"  # the entry pulled
        with pytest.raises(ValidationError) as caught:
            store.resolve(f"{REPO}@{only}")
        assert "linux/amd64 up to v2" in caught.value.message
        assert caught.value.details[0]["rule"] == "platform_missing"
    finally:
        platforms.host_variants.cache_clear()


def _exploited(registry: Registry, change: Callable[[Path], None]) -> None:
    registry.after_copy = change


@pytest.mark.parametrize(
    "how",
    [
        "another_image",
        "a_blob_rewritten",
        "a_blob_linked_out",
        "a_blob_hard_linked",
        "blobs_link",
    ],
)
def test_an_exploited_skopeo_cannot_put_another_image_in_the_cache_under_a_digest(
    tmp_path: Path,
    registry: Registry,
    busybox_images: BusyboxImages,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """Org A names the well-known digest on a registry whose answers exploit skopeo;
    org B then pins that digest: it must get the real image, never A's."""
    layout = busybox_images.layout
    digest = layout_digest(layout, "latest")
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"x" * 4096)

    def rewrite(dest: Path) -> None:  # the same sizes, other bytes: the config too
        for blob in [p for p in dest.iterdir() if len(p.name) == 64]:
            size = blob.stat().st_size
            blob.write_bytes(b"\0" * size)

    def link_out(dest: Path) -> None:
        for blob in [p for p in dest.iterdir() if len(p.name) == 64]:
            blob.unlink()
            blob.symlink_to(secret)

    def hard_link(dest: Path) -> None:  # (its own file: protected_hardlinks allows that)
        for blob in [p for p in dest.iterdir() if len(p.name) == 64]:
            os.link(blob, tmp_path / blob.name)

    def folder_linked(dest: Path) -> None:
        """Another org's root-only copy of the very blobs, reached through ``blobs``."""
        theirs = tmp_path / "other-org"
        shutil.copytree(dest, theirs)
        theirs.chmod(0o700)
        shutil.rmtree(dest)
        dest.symlink_to(theirs)

    changes = {
        "a_blob_rewritten": rewrite,
        "a_blob_linked_out": link_out,
        "a_blob_hard_linked": hard_link,
        "blobs_link": folder_linked,
    }
    if how == "another_image":
        registry.images[digest] = f"oci:{layout}:ep"  # ep's blobs in latest's place
    else:
        _exploited(registry, changes[how])
    store = _store(tmp_path, registry, monkeypatch)
    with pytest.raises(ValidationError, match="is not the image its checked manifest names"):
        store.resolve(f"evil.example/x@{digest}")  # org A's
    assert not store.cached(digest)
    assert not list((tmp_path / "cache" / "tmp").iterdir())
    registry.images[digest] = f"oci:{layout}:latest"  # the real registry, for org B
    registry.after_copy = lambda dest: None
    _latest_config_ok(store, f"{REPO}@{digest}")


def test_a_manifest_that_does_not_hash_to_its_digest_is_refused(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = next(iter(registry.manifests))
    registry.manifests[digest] = registry.manifests[digest].replace(b"layers", b"layerz")
    store = _store(tmp_path, registry, monkeypatch)
    with pytest.raises(ValidationError, match=r"answered .* with another manifest"):
        store.resolve(f"{REPO}@{digest}")
    assert not [a for a in registry.asked if "copy" in a]  # nothing pulled
    assert not store.cached(digest)


_INDEX = "application/vnd.oci.image.index.v1+json"
_SOME = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("manifest", "says"),
    [
        ({"schemaVersion": 1, "name": "x", "fsLayers": []}, "cannot be unpacked"),
        ({"schemaVersion": 2, "layers": []}, "no config"),
        ({"schemaVersion": 2, "config": {"digest": "..", "size": 1}, "layers": []}, "sha256"),
        ({"schemaVersion": 2, "config": {"digest": _SOME}, "layers": []}, "no valid size"),
        ({"schemaVersion": 2, "mediaType": _INDEX, "manifests": []}, "platform"),
        ({"schemaVersion": 2, "mediaType": ["x"], "config": {}, "layers": []}, "shaped as"),
        ({"schemaVersion": 2, "manifests": [{"platform": "linux"}]}, "platform"),
        ({"schemaVersion": 2, "manifests": "x"}, "no list of manifests"),
        ({"schemaVersion": 2, "config": {"mediaType": {}}, "layers": []}, "shaped as"),
        ({"schemaVersion": 2, "config": {"digest": _SOME, "size": 1}, "layers": [7]}, "shaped as"),
        ({"schemaVersion": 2, "config": {"digest": _SOME, "size": 40 << 30}, "layers": []}, "GiB"),
    ],
)
def test_a_manifest_that_cannot_be_used_is_refused_naming_the_image(
    tmp_path: Path,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    manifest: dict[str, object],
    says: str,
) -> None:
    digest = registry.add(json.dumps(manifest).encode())
    store = _store(tmp_path, registry, monkeypatch)
    with pytest.raises(ValidationError, match=says) as caught:
        store.resolve(f"{REPO}@{digest}")
    assert caught.value.details[0]["field"] == "image"
    assert "Fix:" in caught.value.message
    assert not [a for a in registry.asked if "copy" in a]


def test_umoci_unpacks_only_the_manifest_root_wrote_of_what_it_checked(
    tmp_path: Path,
    registry: Registry,
    busybox_images: BusyboxImages,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Go reads JSON keys without regard to case, the last winning: a manifest whose
    ``"Layers"`` repeats a layer 300 times after ``"layers"`` named it once was measured
    here as one layer and unpacked by umoci 300 times (found by a review). umoci now
    reads a manifest root writes of the descriptors it checked, and nothing else."""
    served = tmp_path / "served"
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{busybox_images.layout}:latest", f"dir:{served}"],
        check=True,
    )
    doc = json.loads((served / "manifest.json").read_text())
    doc["Layers"] = doc["layers"] * 300
    (served / "manifest.json").write_text(json.dumps(doc))
    digest = registry.add((served / "manifest.json").read_bytes(), f"dir:{served}")
    store = _store(tmp_path, registry, monkeypatch)
    unpacked: list[dict[str, object]] = []
    umoci = store._umoci

    def seen(layout: Path, tag: str, bundle: Path, what: str) -> None:
        index = json.loads((layout / "index.json").read_text())
        blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
        unpacked.append(json.loads(blob.read_text()))
        umoci(layout, tag, bundle, what)

    monkeypatch.setattr(store, "_umoci", seen)
    _latest_config_ok(store, f"{REPO}@{digest}")
    assert set(unpacked[0]) == {"schemaVersion", "mediaType", "config", "layers"}
    assert unpacked[0]["layers"] == doc["layers"]


def test_an_image_over_the_limit_is_refused_before_any_of_it_is_copied(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 33 << 30}
    manifest = {
        "schemaVersion": 2,
        "config": {"digest": _SOME, "size": 10},
        "layers": [{**layer, "digest": "sha256:" + "b" * 64}],
    }
    digest = registry.add(json.dumps(manifest).encode())
    store = _store(tmp_path, registry, monkeypatch)
    with pytest.raises(ValidationError, match="over the 32 GiB") as caught:
        store.resolve(f"{REPO}@{digest}")
    assert caught.value.details[0]["rule"] == "too_large"
    assert not [a for a in registry.asked if "copy" in a]


@pytest.fixture
def loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackRegistry]:
    """A real registry on loopback (HTTPS, tests/registry.py), whose certificate the real
    skopeo trusts; the store contacts it as an operator-listed private one."""
    reg = LoopbackRegistry(tmp_path).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(reg.ca))
    yield reg
    reg.stop()


def test_the_real_skopeo_pulls_from_a_real_registry_through_roots_checks(
    tmp_path: Path,
    loopback: LoopbackRegistry,
    busybox_images: BusyboxImages,  # noqa: F811
) -> None:
    """End to end, with nothing faked but the registry's server: by tag, by digest, a
    Docker schema 2 image, and an index followed to this machine's image."""
    layout = busybox_images.layout
    latest = loopback.add_layout(layout, "latest")
    v2s2 = tmp_path / "v2s2"
    subprocess.run(
        ["skopeo", "copy", "-q", "-f", "v2s2", f"oci:{layout}:latest", f"dir:{v2s2}"], check=True
    )
    for blob in v2s2.iterdir():
        if len(blob.name) == 64:
            loopback.blobs["sha256:" + blob.name] = blob.read_bytes()
    docker = loopback.add_manifest((v2s2 / "manifest.json").read_bytes())
    plat = {"os": "linux", "architecture": ARCH}
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "platform": plat}
    entry |= {"digest": latest, "size": len(loopback.manifests[latest])}
    index = {"schemaVersion": 2, "mediaType": _INDEX, "manifests": [entry]}
    listed = loopback.add_manifest(json.dumps(index).encode(), "multi")
    repo = f"{loopback.host}/acme/app"
    for n, (ref, digest) in enumerate(
        [(f"{repo}:latest", latest), (f"{repo}:multi", listed), (f"{repo}@{docker}", docker)]
    ):
        store = ImageStore(tmp_path / f"cache{n}", private_registries={loopback.host})
        _latest_config_ok(store, ref)
        assert store.resolve(ref).digest == digest
    assert any(r.startswith("GET /v2/acme/app/blobs/") for r in loopback.requests)


def test_a_run_of_a_registry_image_through_the_api(
    loopback: LoopbackRegistry,
    busybox_images: BusyboxImages,  # noqa: F811
    make_server: Callable[..., Server],
) -> None:
    """As a tenant submits it: the tag pinned at submit, pulled, checked, run."""
    latest = loopback.add_layout(busybox_images.layout, "latest")
    server = make_server(private_registries=(loopback.host,))
    image = f"{loopback.host}/acme/app:latest"
    run = server.submit(image=image, command=["/bin/echo", "from-registry"], parallelism=2)
    done = server.wait(run["id"])
    assert done["status"] == "succeeded", server.shards(run["id"])
    assert done["imageDigests"] == {image: latest}
    for index in (0, 1):
        logs = server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": index})
        assert logs.text == "from-registry\n"


def test_a_pinned_image_this_host_holds_is_admitted_while_stalled_look_ups_fill_the_slots(
    loopback: LoopbackRegistry,
    busybox_images: BusyboxImages,  # noqa: F811
    make_server: Callable[..., Server],
) -> None:
    """Four orgs fill every image look-up slot of the API process (2 each, 8 in all) with
    submits naming a registry that accepts and never answers. Another tenant's image by
    tag is a 429 meanwhile; its image pinned by a digest this host holds (pulled before
    and checked) is admitted at once, its run succeeds, and no registry is asked for it
    (found by an attack review: the four orgs stopped every image submit)."""
    latest = loopback.add_layout(busybox_images.layout, "latest")
    stall = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    stalled = f"127.0.0.1:{stall.getsockname()[1]}"
    server = make_server(private_registries=(loopback.host, stalled))
    pinned = f"{loopback.host}/acme/app@{latest}"
    first = server.submit(image=pinned, command=["/bin/echo", "ok"])  # pulled, checked, cached
    assert server.wait(first["id"])["status"] == "succeeded", server.shards(first["id"])[0][
        "reason"
    ]
    server.plane.images.registry_timeout = 8.0
    answers: list[int] = []
    attackers = [server.client(server.new_org(f"attacker{n}")) for n in range(4)]

    def submit(client: httpx.Client, i: int) -> None:
        spec = {"command": ["true"], "image": f"{stalled}/slow{i}:1"}
        answers.append(client.post("/v1/runs", json=spec).status_code)

    threads = [
        threading.Thread(target=submit, args=(client, i)) for client in attackers for i in range(2)
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)  # all eight looking up
        other = server.client(server.new_org("other"))
        by_tag = {"command": ["true"], "image": f"{loopback.host}/acme/app:latest"}
        r = other.post("/v1/runs", json=by_tag)
        assert r.status_code == 429 and r.json()["details"][0]["limit"] == "imageLookups", r.text
        asked = len(loopback.requests)
        started = time.monotonic()
        r = other.post("/v1/runs", json={"command": ["/bin/echo", "ok"], "image": pinned})
        assert r.status_code == 201, r.text
        assert time.monotonic() - started < 3  # not after the stalled look-ups
        assert len(loopback.requests) == asked  # host side: no registry was asked
        assert any(t.is_alive() for t in threads)  # the slots were still held
        run_id = r.json()["id"]
        ended = lambda: other.get(f"/v1/runs/{run_id}").json()["status"] == "succeeded"  # noqa: E731
        server.wait_for(ended)
        assert other.get(f"/v1/runs/{run_id}").json()["imageDigests"] == {pinned: latest}
    finally:
        for t in threads:
            t.join()
        stall.close()
    assert answers == [422] * 8  # each stalled look-up timed out, answered


def test_what_skopeo_says_of_a_failure_names_no_host_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """skopeo quotes its destination (and an exploited one anything it was given): the
    image cache's folder on the host is never shown to the tenant (found by a review)."""
    import sylphx._server.images.store as image_store

    cache = tmp_path / "cache"

    def failed(argv: list[str], timeout: float, look: object) -> object:
        said = f"lstat {cache}/tmp/sha256-x/pull/blobs: not a directory\n".encode()
        return subprocess.CompletedProcess(argv, 1, b"", said)

    monkeypatch.setattr(image_store, "run_watched", failed)
    store = ImageStore(cache, private_registries=("registry.example",))
    with pytest.raises(ValidationError) as caught:
        store.resolve(f"registry.example/acme/app@{_SOME}")
    assert str(cache) not in caught.value.message
    assert "<image cache>/tmp/sha256-x/pull/blobs" in caught.value.message
