"""Image GC: when the image cache's disk is short, the least recently used images that no
run pins are removed (kubelet's image GC); a pinned, recent or locked one never is.

Before, nothing ever left the cache: filled by many images, it refused every org's next
image until an operator cleaned up by hand.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import Server
from oci import BusyboxImages, busybox_images, open_to_shards  # noqa: F401 - the fixture
from sylphx._core.spec import RunSpec
from sylphx._server.images import eviction
from sylphx._server.images.store import ImageStore
from sylphx._server.runs.pins import pinned_images
from sylphx._server.tenancy import orgs

UNIT = 1 << 30  # each fake image's size


class Disk:
    """A fake filesystem of ``total`` GiB whose used part is its images plus ``other``."""

    def __init__(self, cache: Path, total: int = 100, other: int = 0) -> None:
        self.cache, self.total, self.other = cache, total * UNIT, other * UNIT

    def __call__(self, _: Path) -> tuple[int, int]:
        images = len(list((self.cache / "sha256").glob("*"))) * 10 * UNIT
        return self.total, self.total - images - self.other


def _image(cache: Path, name: str, age: float) -> str:
    folder = cache / "sha256" / (name * 64)[:64]
    folder.mkdir(parents=True)
    (folder / "image.json").write_text(json.dumps({"bytes": 10 * UNIT}))
    then = time.time() - age
    os.utime(folder / "image.json", (then, then))
    return f"sha256:{folder.name}"


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Disk:
    fake = Disk(tmp_path)
    monkeypatch.setattr(eviction, "_disk", fake)
    monkeypatch.setattr(eviction, "reserve", lambda _: 5 * UNIT)
    return fake


def _unpacks_seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that unpack an image from now on."""
    seen: list[str] = []
    unpack = ImageStore._unpack

    def spy(self: ImageStore, *args: object) -> None:
        seen.append(threading.current_thread().name)
        unpack(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageStore, "_unpack", spy)
    return seen


@pytest.fixture
def plane(
    make_server: Callable[..., Server],
    busybox_images: BusyboxImages,  # noqa: F811
    tmp_path: Path,
) -> tuple[Server, Path]:
    """A control plane, and a tenant's copy of the busybox layout (tags latest, ep)."""
    layout = tmp_path / "layout"
    shutil.copytree(busybox_images.layout, layout)
    open_to_shards(tmp_path)
    return make_server(), layout


def _left(cache: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (cache / "sha256").glob("*")}


@pytest.mark.parametrize(
    ("images", "other", "need", "pinned", "kept"),
    [
        # 9 images of 10 GiB: 90% used, over HIGH (85%): the oldest go until 80%
        ("abcdefghi", 0, 0, "", "bcdefghi"),
        # under HIGH, and room for what is asked: nothing goes
        ("abcdefgh", 0, 0, "", "abcdefgh"),
        # under HIGH, but 16 GiB asked with 20 free and 5 kept: one goes (30 free)
        ("abcdefgh", 0, 16, "", "bcdefgh"),
        # 15 GiB asked: it fits above the reserve, nothing goes
        ("abcdefgh", 0, 15, "", "abcdefgh"),
        # pinned ones are skipped, the next least recently used goes instead
        ("abcdefghi", 0, 0, "ab", "abdefghi"),
        # everything pinned: nothing goes, whatever the pressure
        ("abcdefghi", 0, 0, "abcdefghi", "abcdefghi"),
        # the disk filled by something else: every image no run pins may go
        ("abc", 70, 0, "c", "c"),
        # the host's own data past LOW (80%): images go only down to the reserve, not all
        # (found by a review: nothing went at all)
        ("abc", 81, 0, "", "c"),
    ],
)
def test_least_recently_used_unpinned_images_go_first(
    tmp_path: Path, disk: Disk, images: str, other: int, need: int, pinned: str, kept: str
) -> None:
    disk.other = other * UNIT
    digests = {
        name: _image(tmp_path, name, 3600 * (len(images) - i)) for i, name in enumerate(images)
    }  # "a" least recently used
    keep = {digests[name] for name in pinned}
    eviction.evict(tmp_path, need * UNIT, lambda: keep)
    assert _left(tmp_path) == {digests[name] for name in kept}
    assert not list((tmp_path / "tmp").glob("evicted.*"))  # renamed away, then deleted


def test_a_recent_or_locked_image_stays_and_a_store_without_pins_never_evicts(
    tmp_path: Path, disk: Disk
) -> None:
    recent = _image(tmp_path, "r", eviction.GRACE / 2)  # an admission that has not stored
    locked = _image(tmp_path, "l", 7200)  # being unpacked again by another process
    old = [_image(tmp_path, name, 7200) for name in "abcdefg"]
    eviction.evict(tmp_path, 0, None)  # a store made without in_use (tests, tools)
    assert len(_left(tmp_path)) == 9
    disk.other = 60 * UNIT  # short of everything the old ones hold
    (tmp_path / "locks").mkdir()
    with open(tmp_path / "locks" / f"{locked.replace(':', '-')}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        eviction.evict(tmp_path, 0, set)
    assert _left(tmp_path) == {recent, locked}
    assert all(digest not in _left(tmp_path) for digest in old)


def test_a_served_image_counts_as_used(
    tmp_path: Path,
    busybox_images: BusyboxImages,  # noqa: F811
) -> None:
    store = ImageStore(tmp_path / "cache")
    image = store.resolve(f"oci:{busybox_images.layout}:latest")
    meta = store.path_for(image.digest) / "image.json"
    os.utime(meta, (0, 0))
    store.resolve(f"oci:{busybox_images.layout}:latest", image.digest)  # a launch's look-up
    assert time.time() - meta.stat().st_mtime < 60


def _sized(store: ImageStore, digest: str, size: int) -> None:
    """Record ``digest``'s unpacked size as ``size`` (as the fake disk counts it), unused
    for long."""
    meta = store.path_for(digest) / "image.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "bytes": size}))
    os.utime(meta, (0, 0))


def test_the_store_makes_room_and_unpacks_an_evicted_image_again(
    tmp_path: Path,
    busybox_images: BusyboxImages,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    pins: set[str] = set()
    store = ImageStore(cache, in_use=lambda: pins)
    latest = store.resolve(f"oci:{busybox_images.layout}:latest")
    ep = store.resolve(f"oci:{busybox_images.layout}:ep")
    for image in (latest, ep):
        _sized(store, image.digest, 10 * UNIT)
    pins.add(ep.digest)  # a queued run's
    monkeypatch.setattr(eviction, "_disk", Disk(cache, total=20))  # 2 images: 100% used
    monkeypatch.setattr(eviction, "reserve", lambda _: UNIT)
    other = store.resolve(f"docker-archive:{busybox_images.docker_archive}")  # its own key
    assert not store.path_for(latest.digest).exists()  # least recently used, not pinned
    assert store.path_for(ep.digest).exists() and (other.rootfs / "bin" / "busybox").exists()
    again = store.resolve(f"oci:{busybox_images.layout}:latest", latest.digest)
    assert (again.rootfs / "bin" / "busybox").exists()


def test_an_image_that_can_never_fit_empties_nothing(
    tmp_path: Path, disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: an image too big for the disk removed every unpinned image,
    then was refused anyway; repeated for free, it emptied the cache for everyone."""
    for name in "abcdefgh":  # 80% used: 20 free, 5 kept
        digest = _image(tmp_path, name, 7200)
        meta = tmp_path / "sha256" / digest.partition(":")[2] / "image.json"
        meta.write_text(json.dumps({"bytes": 10 * UNIT}))
        os.utime(meta, (0, 0))
    assert eviction.evict(tmp_path, 96 * UNIT, set) == 0  # 80 + 20 free < 96 + 5
    assert len(_left(tmp_path)) == 8
    assert eviction.evict(tmp_path, 94 * UNIT, set) == 8  # it fits once all go


def test_leftovers_of_a_crash_go_at_the_next_collection(tmp_path: Path, disk: Disk) -> None:
    (tmp_path / "tmp" / ("evicted.sha256-" + "e" * 64 + ".xyz") / "rootfs").mkdir(parents=True)
    crashed = tmp_path / "tmp" / ("sha256-" + "c" * 64 + ".xyz")
    unpacking = tmp_path / "tmp" / ("sha256-" + "u" * 64 + ".xyz")
    crashed.mkdir()
    unpacking.mkdir()
    (tmp_path / "locks").mkdir()
    disk.other = 90 * UNIT
    with open(tmp_path / "locks" / ("sha256-" + "u" * 64 + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another process is unpacking it
        eviction.evict(tmp_path, 0, set)
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == [unpacking.name]


def test_a_store_that_cannot_say_what_runs_pin_is_a_503(tmp_path: Path, disk: Disk) -> None:
    from sylphx._core.errors import ServerUnavailable

    _image(tmp_path, "a", 7200)
    disk.other = 90 * UNIT

    def down() -> Any:
        raise sa.exc.OperationalError("SELECT", {}, OSError("the store is down"))

    with pytest.raises(ServerUnavailable, match="cannot tell which images"):
        eviction.evict(tmp_path, 0, lambda: pinned_images(down))
    assert len(_left(tmp_path)) == 1


def test_an_admission_holds_its_images_until_its_run_is_stored(tmp_path: Path, disk: Disk) -> None:
    digest = _image(tmp_path, "a", 7200)
    disk.other = 90 * UNIT
    holds = eviction.Holds()
    holds.hold([digest, digest])
    holds.release([digest])
    assert eviction.evict(tmp_path, 0, set, holds) == 0
    holds.release([digest])
    assert eviction.evict(tmp_path, 0, set, holds) == 1


def test_a_submit_cancelled_while_its_checks_run_lets_go_of_its_images(
    plane: tuple[Server, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks of a submit naming an image run in a thread, which a cancel cannot
    stop: it lands once the thread is done. The digests the checks held were then never
    let go, so image GC kept that image until a restart, whatever pinned it."""
    server, layout = plane
    service = server.plane.runs
    checked, go = threading.Event(), threading.Event()
    real = type(service)._admit

    def held_then_slow(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return real(self, *args, **kwargs)
        finally:
            checked.set()
            go.wait(30)

    monkeypatch.setattr(type(service), "_admit", held_then_slow)
    spec = RunSpec(image=f"oci:{layout}:latest", command=["true"])
    before = server.http.get("/v1/runs").json()

    async def cancelled() -> None:
        task = asyncio.ensure_future(service.submit(spec, server.org_id))
        await asyncio.to_thread(checked.wait, 30)
        assert service.images.holds()  # held by the checks, in the thread
        task.cancel()
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    assert service.images.holds() == set()
    assert server.http.get("/v1/runs").json() == before  # nothing stored


@pytest.mark.parametrize("caller_gone_first", [False, True])
def test_a_claim_lets_go_of_its_digests_whichever_ends_last(caller_gone_first: bool) -> None:
    holds = eviction.Holds()
    claim = eviction.Claim(holds)

    def check() -> dict[str, str]:
        holds.hold(["sha256:a"])
        return {"img": "sha256:a"}

    if caller_gone_first:
        claim.close()
    assert claim.take(check) == {"img": "sha256:a"}
    assert holds() == (set() if caller_gone_first else {"sha256:a"})
    claim.close()
    assert holds() == set()


def test_runs_that_have_not_ended_pin_their_images(
    plane: tuple[Server, Path],
) -> None:
    server, layout = plane
    running = server.submit(image=f"oci:{layout}:latest", command=["sleep", "60"])
    done = server.submit(image=f"oci:{layout}:ep", command=["x"])
    server.wait(done["id"])
    (running_digest,) = server.get(running["id"])["imageDigests"].values()
    (done_digest,) = server.get(done["id"])["imageDigests"].values()
    assert running_digest != done_digest
    assert pinned_images(server.plane.reads) == {running_digest}
    server.http.post(f"/v1/runs/{running['id']}/cancel")
    server.wait(running["id"])
    assert pinned_images(server.plane.reads) == set()


def test_a_retried_run_gets_its_evicted_image_back_before_it_is_reopened(
    plane: tuple[Server, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unpacked at launch, the image would be unpacked inside the reconciler's pass."""
    server, layout = plane
    run = server.submit(image=f"oci:{layout}:latest", command=["/bin/sh", "-c", "exit 3"])
    assert server.wait(run["id"])["status"] == "failed"
    (digest,) = server.get(run["id"])["imageDigests"].values()
    images = server.plane.images
    _sized(images, digest, 10 * UNIT)
    monkeypatch.setattr(eviction, "_disk", Disk(images.cache_dir, total=10))  # a full disk
    monkeypatch.setattr(eviction, "reserve", lambda _: 0)
    assert eviction.evict(images.cache_dir, 0, images.in_use) == 1  # ended: not pinned
    assert not images.path_for(digest).exists()
    monkeypatch.setattr(eviction, "_disk", lambda _: (100 * UNIT, 100 * UNIT))
    unpacked_in = _unpacks_seen(monkeypatch)
    answer = server.http.post(f"/v1/runs/{run['id']}/retry")
    assert answer.status_code == 200, answer.text
    assert images.path_for(digest).exists()  # before the 200: by the retry itself
    server.wait(run["id"])
    assert len(unpacked_in) == 1 and "reconciler" not in unpacked_in[0]


def _evicted_run(
    server: Server, layout: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> tuple[str, str]:
    """A run of the layout's image, ended, then its image collected: (run id, digest)."""
    run = server.submit(image=f"oci:{layout}:latest", command=command)
    server.wait(run["id"])
    (digest,) = server.get(run["id"])["imageDigests"].values()
    images = server.plane.images
    _sized(images, digest, 10 * UNIT)
    with monkeypatch.context() as patch:
        patch.setattr(eviction, "_disk", Disk(images.cache_dir, total=10))
        patch.setattr(eviction, "reserve", lambda _: 0)
        assert eviction.evict(images.cache_dir, 0, images.in_use) == 1
    return run["id"], digest


def test_a_retry_that_is_refused_unpacks_nothing_and_the_policy_of_now_applies(
    plane: tuple[Server, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by a review: the unpack came before the retry's own checks, and the org's
    image policy of today was never asked."""
    server, layout = plane
    run_id, digest = _evicted_run(server, layout, monkeypatch, ["/bin/sh", "-c", "exit 0"])
    answer = server.http.post(f"/v1/runs/{run_id}/retry", json={"indices": "0"})
    assert answer.status_code == 409 and "index 0 succeeded" in answer.text, answer.text
    assert not server.plane.images.path_for(digest).exists()
    with server.plane.sessions.begin() as s:
        orgs.find_org(s, "org_test").image_policy = {"denyDigests": [digest]}
    answer = server.http.post(f"/v1/runs/{run_id}/retry", json={"indices": "0"})
    assert answer.status_code == 422 and "deny list" in answer.json()["message"], answer.text
    assert not server.plane.images.path_for(digest).exists()
    assert server.plane.images.holds() == set()


def test_a_launch_never_unpacks_an_image_gone_from_the_cache(
    plane: tuple[Server, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Removed behind the pins' back (another API process's collection, an operator):
    the shard fails saying so, and no pass unpacks anything (every org's would wait)."""
    server, layout = plane
    blocker = server.submit(command=["sleep", "60"], machine="large")  # all 2 vCPU
    waiting = server.submit(image=f"oci:{layout}:latest", command=["/bin/sh", "-c", "exit 0"])
    assert server.get(waiting["id"])["status"] == "queued"
    (digest,) = server.get(waiting["id"])["imageDigests"].values()
    images = server.plane.images
    shutil.rmtree(images.path_for(digest))  # an operator, say
    unpacked_in = _unpacks_seen(monkeypatch)
    server.http.post(f"/v1/runs/{blocker['id']}/cancel")
    assert server.wait(waiting["id"])["status"] == "failed"
    (shard,) = server.shards(waiting["id"])
    assert "not in this host's image cache" in shard["reason"], shard
    assert unpacked_in == []
    assert images.holds() == set()


def test_a_shard_running_an_image_keeps_it_from_a_nodes_collection(
    tmp_path: Path, disk: Disk
) -> None:
    """A Ray node cannot ask the store what runs pin: its shards lock their images."""
    digest = _image(tmp_path, "a", 7200)
    disk.other = 90 * UNIT
    with eviction.using(tmp_path, digest):
        assert eviction.evict(tmp_path, 0, frozenset) == 0
    assert eviction.evict(tmp_path, 0, frozenset) == 1


def test_an_image_touched_while_it_is_renamed_away_is_put_back(
    tmp_path: Path, disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look-up between the collection's last look and its rename: kept after all."""
    digest = _image(tmp_path, "a", 7200)
    disk.other = 90 * UNIT
    rename = os.rename
    calls: list[str] = []

    def looked_up_meanwhile(src: Path, dst: Path) -> None:
        if not calls:
            os.utime(Path(src) / "image.json")  # a look-up's touch, just before the rename
        calls.append(str(dst))
        rename(src, dst)

    monkeypatch.setattr(eviction.os, "rename", looked_up_meanwhile)
    assert eviction.evict(tmp_path, 0, frozenset) == 0
    assert len(calls) == 2  # away, and back
    assert _left(tmp_path) == {digest}
    assert (tmp_path / "sha256" / digest.partition(":")[2] / "image.json").exists()


def test_a_merge_steps_image_is_pinned_and_served_from_the_cache(
    plane: tuple[Server, Path],
) -> None:
    server, layout = plane
    blocker = server.submit(command=["sleep", "60"], machine="large")  # all 2 vCPU
    run = server.submit(
        command=["/bin/sh", "-c", "exit 0"],
        parallelism=2,
        image=f"oci:{layout}:latest",
        merge={"image": f"oci:{layout}:ep", "command": ["merged"]},
    )
    digests = set(server.get(run["id"])["imageDigests"].values())
    assert pinned_images(server.plane.reads) == digests  # queued: both pinned
    server.http.post(f"/v1/runs/{blocker['id']}/cancel")
    done = server.wait(run["id"])
    assert done["status"] == "succeeded", server.shards(run["id"])
    assert len(set(done["imageDigests"].values())) == 2
    merged = server.http.get(f"/v1/runs/{run['id']}/logs", params={"merge": "true"}).text
    assert merged == "merged\n"


def test_a_run_stored_before_images_were_pinned_is_never_unpacked_at_launch(
    plane: tuple[Server, Path],
) -> None:
    """Found by a review: with no digest, a launch looked the reference up (a layout
    hashed, a registry pulled) and unpacked, inside the pass; a retry re-ran whatever
    the tag named by then, past the org's policy."""
    server, layout = plane
    blocker = server.submit(command=["sleep", "60"], machine="large")  # all 2 vCPU
    run = server.submit(image=f"oci:{layout}:latest", command=["/bin/sh", "-c", "exit 0"])
    with server.plane.sessions.begin() as s:  # as migration 0017 left older runs
        s.execute(sa.text("UPDATE runs SET image_digests = NULL WHERE id = :id"), {"id": run["id"]})
    server.http.post(f"/v1/runs/{blocker['id']}/cancel")
    assert server.wait(run["id"])["status"] == "failed"
    (shard,) = server.shards(run["id"])
    assert "not in this host's image cache. Fix: submit it again" in shard["reason"], shard
    answer = server.http.post(f"/v1/runs/{run['id']}/retry")
    assert answer.status_code == 409 and "before its images were pinned" in answer.text


def test_short_of_inodes_is_short_of_room(
    tmp_path: Path, disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: collection looked at bytes only, so an image refused for want
    of inodes never made any free."""
    pinned = _image(tmp_path, "p", 7200)
    old = {_image(tmp_path, name, 7200) for name in "ab"}
    monkeypatch.setattr(eviction, "reserve_inodes", lambda _: 1 << 62)  # always short
    assert eviction.evict(tmp_path, 0, {pinned}.copy) == 2  # (bytes: plenty free)
    assert _left(tmp_path) == {pinned}
    assert not old & _left(tmp_path)
