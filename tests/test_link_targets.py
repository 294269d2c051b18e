"""Which host folders a sandboxed shard's PATH links lead to (``visible_host_paths``),
read once per folder and reused while the folder is unchanged, for a few seconds at most."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sylphx._server.executors.local import processes


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "_links", {})


def _scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = os.scandir

    def scandir(path: Any) -> Any:
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(processes.os, "scandir", scandir)
    return seen


def test_a_folders_links_are_read_once_and_again_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, one, two = tmp_path / "bin", tmp_path / "one", tmp_path / "two"
    for d in (bin_dir, one, two):
        d.mkdir()
    (bin_dir / "a").symlink_to(one / "a")
    scans = _scans(monkeypatch)
    assert processes._link_targets(bin_dir) == (one,)
    assert processes._link_targets(bin_dir) == (one,)
    assert scans == [str(bin_dir)]  # the second answer was the first's
    (bin_dir / "b").symlink_to(two / "b")  # the folder changed: read again at once
    os.utime(bin_dir, ns=(1, 1))  # (a changed mtime, even within the clock's tick)
    assert set(processes._link_targets(bin_dir)) == {one, two}
    assert len(scans) == 2


def test_a_link_repointed_elsewhere_is_seen_within_the_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bin/py -> alt/py -> one/py``; alt/py repointed to two/py leaves bin's mtime as it
    was: the answer may be that old for LINKS_TTL seconds, never longer."""
    bin_dir, alt, one, two = (tmp_path / d for d in ("bin", "alt", "one", "two"))
    for d in (bin_dir, alt, one, two):
        d.mkdir()
    (alt / "py").symlink_to(one / "py")
    (bin_dir / "py").symlink_to(alt / "py")
    stamp = os.stat(bin_dir).st_mtime_ns
    clock = [1000.0]
    monkeypatch.setattr(processes.time, "monotonic", lambda: clock[0])
    assert processes._link_targets(bin_dir) == (one,)
    (alt / "py").unlink()
    (alt / "py").symlink_to(two / "py")
    assert os.stat(bin_dir).st_mtime_ns == stamp
    clock[0] += processes.LINKS_TTL - 0.1
    assert processes._link_targets(bin_dir) == (one,)
    clock[0] += 0.2
    assert processes._link_targets(bin_dir) == (two,)


def test_a_missing_folder_has_no_links(tmp_path: Path) -> None:
    assert processes._link_targets(tmp_path / "nowhere") == ()


def test_respelling_a_folder_reads_it_no_more_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answers are kept by the folder itself, not by how a PATH spells it: a tenant's
    runs naming /usr/bin as ``/usr/lib/../bin``, ``/usr/lib/../lib/../bin``... reuse one
    answer, and cannot push the others out."""
    bin_dir, one = tmp_path / "bin", tmp_path / "one"
    for d in (bin_dir, one):
        d.mkdir()
    (bin_dir / "a").symlink_to(one / "a")
    scans = _scans(monkeypatch)
    spellings = [f"{tmp_path}{'/one/..' * i}/bin" for i in range(300)]
    assert len({str(Path(spelled)) for spelled in spellings}) == 300
    for spelled in spellings:
        assert processes._link_targets(Path(spelled)) == (one,)
    assert len(scans) == 1 and len(processes._links) == 1


def test_many_folders_push_out_the_least_recently_used_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant naming many distinct folders (64 a run) pushes out the answers used least
    recently, one at a time: a folder every launch uses is not read again for them."""
    monkeypatch.setattr(processes, "LINKS_KEPT", 8)
    hot = tmp_path / "hot"
    hot.mkdir()
    cold = [tmp_path / f"cold{i}" for i in range(40)]
    for folder in cold:
        folder.mkdir()
    scans = _scans(monkeypatch)
    processes._link_targets(hot)
    for folder in cold:
        processes._link_targets(folder)
        processes._link_targets(hot)  # every launch's /usr/bin
    assert scans.count(str(hot)) == 1 and len(processes._links) == 8
