"""The shared image cache serves a digest only to a source that vouches for it, holds
under a digest only that digest's image, and a run's shards run the image admitted.

Found by a review, each a way for one tenant to reach another's shards or get past its
own org's image policy:

- a layout's index.json naming a digest it does not hold (one already in the cache) was
  served the cached image;
- ``name@sha256:D`` was served from the cache without asking ``name``'s registry, so a
  known digest ran past the org's allowed sources;
- an image was unpacked from the tenant's own layout by tag, so an index.json swapped
  between the digest's look-up and umoci's read put another image under that digest,
  which other tenants then ran pinned;
- the image was looked up again by reference at launch, so a tag moved (a layout
  rewritten) after admission ran an image the policy and the scanner never saw.

And by a second review of the fixes: the control plane (root) followed a layout's
symlinks into another tenant's root-only folder; a launch read the tenant's file again
(a decompression bomb there held the store); a layout holding only an image's manifest
was served the cached image; JSON of another shape was a 500; /proc files and copies
without bounds could hang it or fill its disk.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import Server
from oci import BusyboxImages, busybox_images, open_to_shards  # noqa: F401 - the fixture
from sylphx._core.errors import ValidationError
from sylphx._server.images.store import ImageStore

REF_NAME = "org.opencontainers.image.ref.name"


def _index(layout: Path) -> dict[str, dict[str, object]]:
    index = json.loads((layout / "index.json").read_text())
    return {str(m["annotations"][REF_NAME]): m for m in index["manifests"]}


def _point(layout: Path, tag: str, at: str) -> None:
    """Make ``tag`` of ``layout`` name the manifest tag ``at`` names (a tenant's rewrite)."""
    entries = _index(layout)
    moved = {**entries[at], "annotations": {REF_NAME: tag}}
    manifests = [moved if name == tag else entry for name, entry in entries.items()]
    tmp = layout / "index.json.new"
    tmp.write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    os.replace(tmp, layout / "index.json")


@pytest.fixture
def layout(tmp_path: Path, busybox_images: BusyboxImages) -> Path:  # noqa: F811
    """The tenant's own copy of the busybox layout (tags latest and ep)."""
    mine = tmp_path / "tenant" / "layout"
    shutil.copytree(busybox_images.layout, mine)
    open_to_shards(mine)
    return mine


def test_a_layout_naming_a_cached_digest_it_does_not_hold_is_refused(
    tmp_path: Path, layout: Path
) -> None:
    store = ImageStore(tmp_path / "cache")
    victim = store.resolve(f"oci:{layout}:latest")  # another tenant's, now cached
    forged = tmp_path / "forged"
    shutil.copytree(layout, forged)
    ep = _index(forged)["ep"]
    (forged / "blobs" / "sha256" / victim.digest.partition(":")[2]).unlink()
    shutil.copy(  # the name of the victim's manifest, its own manifest's bytes
        forged / "blobs" / "sha256" / str(ep["digest"]).partition(":")[2],
        forged / "blobs" / "sha256" / victim.digest.partition(":")[2],
    )
    entry = {**ep, "digest": victim.digest, "annotations": {REF_NAME: "latest"}}
    (forged / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    with pytest.raises(ValidationError, match="does not match its digest"):
        store.resolve(f"oci:{forged}:latest")
    (forged / "blobs" / "sha256" / victim.digest.partition(":")[2]).unlink()
    with pytest.raises(ValidationError, match="is missing"):
        store.resolve(f"oci:{forged}:latest")


def test_a_pinned_reference_to_a_cached_digest_is_checked_with_its_registry(
    tmp_path: Path, layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ImageStore(tmp_path / "cache", registry_timeout=10)
    cached = store.resolve(f"oci:{layout}:latest")
    pinned = f"registry.invalid/acme/trainer@{cached.digest}"
    with pytest.raises(ValidationError, match="unreachable"):
        store.resolve(pinned)  # served from the cache before: never asked
    asked: list[list[str]] = []
    manifest = (layout / "blobs" / "sha256" / cached.digest.partition(":")[2]).read_bytes()

    def registry(args: list[str], *_: object, **__: object) -> bytes:
        asked.append(args)
        return answer

    monkeypatch.setattr(store, "_skopeo", registry)
    answer = b'{"another": "manifest"}'
    with pytest.raises(ValidationError, match=r"answered .* with another manifest"):
        store.resolve(pinned)
    answer = manifest  # the registry holds it: asked once, then recorded
    assert store.resolve(pinned).rootfs == cached.rootfs
    assert store.resolve(pinned).rootfs == cached.rootfs
    assert ImageStore(tmp_path / "cache").resolve(pinned).rootfs == cached.rootfs
    assert [a[-1] for a in asked] == [f"docker://registry.invalid/acme/trainer@{cached.digest}"] * 2
    other = f"registry.invalid/other/repo@{cached.digest}"  # another repository: asked again
    store.resolve(other)
    assert asked[-1][-1] == f"docker://registry.invalid/other/repo@{cached.digest}"


def test_an_image_is_unpacked_by_its_digest_never_by_its_tag_again(
    tmp_path: Path, layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tenant moves the tag at the worst moment: just after its digest was looked up.
    What is cached under that digest is still that digest's image."""
    store = ImageStore(tmp_path / "cache")
    looked_up = ImageStore._digest

    def then_moved(self: ImageStore, *args: object) -> str:
        digest = looked_up(self, *args)  # type: ignore[arg-type]
        _point(layout, "latest", "ep")
        return digest

    monkeypatch.setattr(ImageStore, "_digest", then_moved)
    latest = str(_index(layout)["latest"]["digest"])
    image = store.resolve(f"oci:{layout}:latest")
    assert image.digest == latest
    assert image.config.entrypoint == [] and image.config.cmd[0] == "/bin/sh"  # not ep's
    monkeypatch.undo()
    assert store.resolve(f"oci:{layout}:latest").config.entrypoint == ["/bin/echo"]


def test_an_admitted_digest_is_what_is_unpacked_after_the_tag_moved(
    tmp_path: Path, layout: Path
) -> None:
    """A node (or a cache) that has not seen the image yet copies the admitted digest's
    blobs from the layout, whatever its tag names now; blobs gone is a clear error."""
    latest = str(_index(layout)["latest"]["digest"])
    _point(layout, "latest", "ep")
    image = ImageStore(tmp_path / "node").resolve(f"oci:{layout}:latest", latest)
    assert image.digest == latest and image.config.entrypoint == []
    assert (image.rootfs / "bin" / "busybox").is_file()
    (layout / "blobs" / "sha256" / latest.partition(":")[2]).unlink()
    with pytest.raises(ValidationError, match=f"{latest.replace(':', '/')} is missing"):
        ImageStore(tmp_path / "other").resolve(f"oci:{layout}:latest", latest)


def test_a_fifo_or_an_endless_file_in_a_layout_is_refused_at_once(
    tmp_path: Path, layout: Path
) -> None:
    """The control plane reads the layout as root: a FIFO would hang it, /dev/zero fill it."""
    blob = layout / "blobs" / "sha256" / str(_index(layout)["latest"]["digest"]).split(":")[1]
    blob.unlink()
    blob.symlink_to("/dev/zero")
    start = time.monotonic()
    with pytest.raises(ValidationError, match="missing"):
        ImageStore(tmp_path / "cache").resolve(f"oci:{layout}:latest")
    (layout / "index.json").unlink()
    os.mkfifo(layout / "index.json")
    with pytest.raises(ValidationError, match=r"index\.json is missing"):
        ImageStore(tmp_path / "cache").resolve(f"oci:{layout}:latest")
    assert time.monotonic() - start < 10


def test_a_run_runs_the_image_admitted_not_what_its_tag_names_at_launch(
    server: Server, layout: Path
) -> None:
    """Through the API: attempt 1 fails, the tenant points the tag at another image, and
    attempt 2 (a retry, launched after the rewrite) still runs the admitted one."""
    vol, out = server.volume()
    tried = "/v/tried-$SYLPHX_SHARD_INDEX"
    run = server.submit(
        image=f"oci:{layout}:latest",
        command=[
            "/bin/sh",
            "-c",
            f"test -e {tried} || {{ touch {tried}; exit 1; }}; echo $GREETING",
        ],
        volumeMounts=[{"volumeId": vol, "mountPath": "/v"}],
        parallelism=2,
        gangScheduling=False,
        backoffLimitPerIndex=1,
        retryBackoff={"initialSeconds": 3},
    )
    latest = str(_index(layout)["latest"]["digest"])
    assert run["imageDigests"] == {f"oci:{layout}:latest": latest}
    server.wait_for(lambda: len(list(out.glob("tried-*"))) == 2)
    _point(layout, "latest", "ep")  # ep: ENTRYPOINT /bin/echo, so the command would be echoed
    done = server.wait(run["id"])
    assert done["status"] == "succeeded", server.shards(run["id"])
    assert done["imageDigests"] == {f"oci:{layout}:latest": latest}
    for shard in server.shards(run["id"]):
        assert shard["attempts"] == 2
        logs = server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": shard["index"]})
        assert logs.text.splitlines()[-1] == "hello"


SHARDS = (64000, 64000)  # the shards' user, as the control plane's settings say


def _tenant_layout_linking_into(tmp_path: Path, victim: Path) -> Path:
    """A layout of the attacker's own whose index.json and blobs are links into
    ``victim`` (a layout in a folder only root may read)."""
    mine = tmp_path / "attacker" / "layout"
    mine.mkdir(parents=True)
    (mine / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (mine / "index.json").symlink_to(victim / "index.json")
    (mine / "blobs").symlink_to(victim / "blobs")
    open_to_shards(mine)
    return mine


def test_a_tenants_files_are_read_as_the_shards_user_never_as_root(
    tmp_path: Path,
    busybox_images: BusyboxImages,  # noqa: F811
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the control plane reads as root only when it is root")
    private = tmp_path / "victim"
    private.mkdir(mode=0o700)
    victim = private / "layout"
    shutil.copytree(busybox_images.layout, victim)
    theirs = ImageStore(tmp_path / "theirs")  # read as root: an operator's own image
    attacker = _tenant_layout_linking_into(tmp_path, victim)
    for cache in (tmp_path / "cold", tmp_path / "theirs"):  # not cached; cached already
        if cache.name == "theirs":
            theirs.resolve(f"oci:{victim}:latest")  # root's own read (no tenant's ids)
        store = ImageStore(cache, reader=SHARDS)
        with pytest.raises(ValidationError, match=r"index\.json is missing"):
            store.resolve(f"oci:{attacker}:latest")
        with pytest.raises(ValidationError, match="that the shards' user can read"):
            store.resolve(f"oci:{victim}:latest")  # the victim's own, named: no oracle
    assert not (tmp_path / "cold" / "sha256").exists()  # nothing unpacked


def test_a_launch_never_reads_the_tenants_file_for_a_cached_admitted_image(
    tmp_path: Path, layout: Path
) -> None:
    store = ImageStore(tmp_path / "cache", reader=SHARDS)
    admitted = store.resolve(f"oci:{layout}:latest")
    shutil.rmtree(layout)
    os.mkfifo(layout)  # anything there now would hang, or hold the reconciler
    start = time.monotonic()
    again = store.resolve(f"oci:{layout}:latest", admitted.digest)
    assert again.rootfs == admitted.rootfs and time.monotonic() - start < 1


def _forge(layout: Path, blob: str, doc: object) -> str:
    """Write ``doc`` as a blob of ``layout``; returns its digest."""
    import hashlib

    raw = json.dumps(doc).encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    (layout / "blobs" / "sha256" / digest.partition(":")[2]).write_bytes(raw)
    del blob
    return digest


@pytest.mark.parametrize(
    "shape",
    ["manifests not a list", "layers not a list", "a layer not an object", "config a list"],
)
def test_json_of_another_shape_is_a_422_naming_the_image(
    tmp_path: Path, layout: Path, shape: str
) -> None:
    entry = _index(layout)["latest"]
    manifest = json.loads(
        (layout / "blobs" / "sha256" / str(entry["digest"]).partition(":")[2]).read_text()
    )
    if shape == "manifests not a list":
        index: dict[str, object] = {"schemaVersion": 2, "manifests": 5}
    else:
        if shape == "layers not a list":
            manifest["layers"] = 5
        elif shape == "a layer not an object":
            manifest["layers"] = [5]
        else:
            manifest["config"] = [1, 2]
        digest = _forge(layout, "manifest", manifest)
        moved = {**entry, "digest": digest, "size": len(json.dumps(manifest))}
        index = {"schemaVersion": 2, "manifests": [moved]}
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValidationError) as err:
        ImageStore(tmp_path / "cache").resolve(f"oci:{layout}:latest")
    assert err.value.details[0]["field"] == "image"


def test_a_layout_must_hold_every_blob_of_the_image_it_names(tmp_path: Path, layout: Path) -> None:
    """Its manifest alone (public bytes, for a public image) is not enough to be served
    the cached image; nor is a blob of another size than its descriptor says."""
    store = ImageStore(tmp_path / "cache")
    cached = store.resolve(f"oci:{layout}:latest")
    manifest = json.loads(
        (layout / "blobs" / "sha256" / cached.digest.partition(":")[2]).read_text()
    )
    layer = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].partition(":")[2]
    kept = layer.read_bytes()
    layer.write_bytes(kept + b"more")
    with pytest.raises(ValidationError, match="bytes, not"):
        store.resolve(f"oci:{layout}:latest")
    layer.write_bytes(bytes(len(kept)))  # of its size, but zeros (a sparse file, say)
    with pytest.raises(ValidationError, match="does not match its digest"):
        store.resolve(f"oci:{layout}:latest")
    layer.write_bytes(kept)
    assert store.resolve(f"oci:{layout}:latest").rootfs == cached.rootfs
    layer.unlink()
    with pytest.raises(ValidationError, match="is missing"):
        store.resolve(f"oci:{layout}:latest")


def test_an_image_over_the_bound_is_refused_before_any_copy(
    tmp_path: Path, layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sylphx._server.images import snapshot

    monkeypatch.setattr(snapshot, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(ValidationError, match="over the 0 GiB an image may have"):
        ImageStore(tmp_path / "cache").resolve(f"oci:{layout}:latest")
    assert not list((tmp_path / "cache").rglob("*.tar*"))


def test_a_compressed_archive_or_a_proc_file_is_refused_at_once(
    tmp_path: Path,
    layout: Path,
    busybox_images: BusyboxImages,  # noqa: F811
) -> None:
    import bz2

    packed = tmp_path / "image.tar"
    packed.write_bytes(bz2.compress(busybox_images.oci_archive.read_bytes()))
    with pytest.raises(ValidationError, match="uncompressed"):
        ImageStore(tmp_path / "cache").resolve(str(packed))
    (layout / "index.json").unlink()
    (layout / "index.json").symlink_to("/proc/self/status")  # its size says 0, and out
    with pytest.raises(ValidationError, match=r"index\.json is missing"):
        ImageStore(tmp_path / "cache", reader=SHARDS).resolve(f"oci:{layout}:latest")
    with pytest.raises(ValidationError, match="not a JSON object"):
        ImageStore(tmp_path / "cache").resolve(f"oci-archive:{_tar_of(layout, tmp_path)}")


def _tar_of(layout: Path, tmp_path: Path) -> Path:
    """An OCI archive of ``layout`` whose index.json is a /proc file's contents (empty)."""
    import tarfile

    out = tmp_path / "proc.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(layout / "oci-layout", "oci-layout")
        tar.add(Path("/proc/self/status"), "index.json")  # its size says 0
    return out


def test_no_magic_link_of_proc_is_followed_out_of_a_layout(tmp_path: Path, layout: Path) -> None:
    """A layout of links through /proc/PID/root (of a process running as the shards'
    user: another tenant's shard) entered that process's mount namespace, as the reader
    (found by a review). Links out of a layout are not followed, magic links never."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as the shards' user")
    sleeper = subprocess.Popen(["sleep", "30"], user=SHARDS[0], group=SHARDS[1], extra_groups=[])
    try:
        attacker = tmp_path / "attacker"
        attacker.mkdir()
        (attacker / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        via = f"/proc/{sleeper.pid}/root{layout}"
        (attacker / "index.json").symlink_to(f"{via}/index.json")
        (attacker / "blobs").symlink_to(f"{via}/blobs")
        open_to_shards(attacker)
        with pytest.raises(ValidationError, match=r"index\.json is missing"):
            ImageStore(tmp_path / "cache", reader=SHARDS).resolve(f"oci:{attacker}:latest")
        direct = f"oci:{via}:latest"  # named outright: through the magic link, refused too
        with pytest.raises(ValidationError, match="missing"):
            ImageStore(tmp_path / "cache", reader=SHARDS).resolve(direct)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_archives_extended_headers_are_read_only_so_far(tmp_path: Path) -> None:
    """A pax header is read whole into memory: one claiming GiBs (in a sparse file of a
    few KiB) took the control plane's memory with it (found by a review)."""
    import io
    import tarfile

    packed = tmp_path / "long.tar"
    with tarfile.open(packed, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("index.json")
        info.pax_headers = {"comment": "x" * (100 << 10)}  # over the 64 KiB a header may have
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ValidationError, match="extended header of"):
        ImageStore(tmp_path / "cache").resolve(str(packed))


def test_a_docker_archive_is_keyed_by_its_own_bytes_and_runs_under_a_root_plane(
    server: Server,
    tmp_path: Path,
    busybox_images: BusyboxImages,  # noqa: F811
) -> None:
    """skopeo's digest of a docker archive is made of its config and layer sizes: one of
    zero-filled layers was served the cached image. Keyed by the archive's own sha256, it
    is not; and read as the shards' user, it still runs (a review found every docker
    archive refused under a root control plane)."""
    import gzip

    mine = tmp_path / "tenant"
    mine.mkdir()
    archive = mine / "image.tar"
    shutil.copy(busybox_images.docker_archive, archive)
    open_to_shards(mine)
    run = server.submit(image=f"docker-archive:{archive}", command=["/bin/echo", "from-archive"])
    assert server.wait(run["id"])["status"] == "succeeded", server.shards(run["id"])
    logs = server.http.get(f"/v1/runs/{run['id']}/logs", params={"shard": 0}).text
    assert logs == "from-archive\n"
    import hashlib

    whole = hashlib.sha256(archive.read_bytes()).hexdigest()
    key = "sha256:" + hashlib.sha256(f"{whole}\0".encode()).hexdigest()
    assert run["imageDigests"] == {f"docker-archive:{archive}": key}
    packed = mine / "packed.tar"
    packed.write_bytes(gzip.compress(archive.read_bytes()))
    packed.chmod(0o644)
    refused = server.http.post(
        "/v1/runs", json={"image": f"docker-archive:{packed}", "command": ["true"]}
    )
    assert refused.status_code == 422 and "uncompressed" in refused.text


def test_a_sparse_blob_or_an_archive_of_too_many_members_is_refused_unread(
    tmp_path: Path, layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sparse layer of the right size cost its maker nothing and the control plane a
    read of all of it at every submit; a tar of a million empty members, 610 MiB of its
    memory (both found by a review)."""
    import tarfile

    from sylphx._server.images import reader, snapshot

    entry = _index(layout)["latest"]
    manifest = json.loads(
        (layout / "blobs" / "sha256" / str(entry["digest"]).partition(":")[2]).read_text()
    )
    layer = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].partition(":")[2]
    size = layer.stat().st_size
    layer.unlink()
    with open(layer, "wb") as fh:
        fh.truncate(size)  # holes only
    monkeypatch.setattr(snapshot, "_SPARSE_FROM", 0)
    with pytest.raises(ValidationError, match="sparse"):
        ImageStore(tmp_path / "cache").resolve(f"oci:{layout}:latest")
    many = tmp_path / "many.tar"
    with tarfile.open(many, "w") as tar:
        for i in range(50):
            tar.addfile(tarfile.TarInfo(f"empty-{i}"))
    monkeypatch.setattr(reader, "MAX_TAR_MEMBERS", 20)
    with pytest.raises(ValidationError, match="more than 20 members"):
        ImageStore(tmp_path / "cache").resolve(str(many))


def test_a_sparse_member_or_one_past_the_archives_end_is_refused(tmp_path: Path) -> None:
    """tarfile reads a sparse member's holes as zeros: an OCI archive of 10 KiB made the
    control plane hash 31 GiB and write 2 GiB (found by a review)."""
    import subprocess
    import tarfile

    if shutil.which("tar") is None:
        pytest.skip("needs GNU tar to write a sparse member")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "holes", "wb") as fh:
        fh.truncate(64 << 20)
    (src / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    (src / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    sparse = tmp_path / "sparse.tar"
    subprocess.run(
        [
            "tar",
            "--sparse",
            "-cf",
            str(sparse),
            "-C",
            str(src),
            "holes",
            "index.json",
            "oci-layout",
        ],
        check=True,
    )
    assert sparse.stat().st_size < 1 << 20
    with pytest.raises(ValidationError, match="holds more than the archive does"):
        ImageStore(tmp_path / "cache").resolve(str(sparse))
    cut = tmp_path / "cut.tar"
    with tarfile.open(cut, "w") as tar:
        tar.add(src / "index.json", "index.json")
    data = cut.read_bytes()
    cut.write_bytes(data[:512] + data[512:530])  # its header says more than is there
    with pytest.raises(ValidationError, match="not a readable"):
        ImageStore(tmp_path / "cache").resolve(str(cut))
