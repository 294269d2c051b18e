"""Process helpers for executors: does the program exist, and which processes descend."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cgroups import ShardCgroup


def check_program(
    program: str, path: str, workdir: Path | None, *, root: Path | None = None
) -> None:
    """Fail the launch (exit 127, LaunchError) when the program does not exist, as a shell
    would, instead of starting a sandbox that can only fail. ``root``: an image's rootfs
    (its symlinks may point anywhere inside it, so existence is all that is checked)."""
    if root is not None:
        dirs = [""] if "/" in program else path.split(":")
        found = any(in_rootfs(root, f"{d}/{program}") for d in dirs)
    elif "/" in program:  # a relative one lies under the start directory (see searched)
        target = Path(program) if program.startswith("/") else (workdir or PRIVATE) / program
        seen = workdir is not None or program.startswith("/")  # (not the host's /tmp)
        found = seen and os.access(target, os.X_OK) and target.is_file()
    else:
        folders = os.pathsep.join(map(str, searched(path, workdir)))
        found = bool(folders) and shutil.which(program, path=folders) is not None
    if not found:
        raise FileNotFoundError(2, "No such file or directory (or not executable)", program)


def in_rootfs(root: Path, path: str) -> bool:
    """Whether ``path`` is there in the image rootfs ``root``, looked up as the sandbox
    will (with ``root`` as /): its ``..`` and links, absolute ones too, never leave it.
    (Looked up on the host as spelled, an image's link to /root, or a PATH of
    /../../root, told a tenant whether a file of the host exists: exit 127 or not.)"""
    todo = [part for part in path.split("/") if part not in ("", ".")]
    at: list[str] = []
    for _ in range(4096):  # components and links, each looked at once (ELOOP past it)
        if not todo:
            return True
        part = todo.pop(0)
        if part == "..":
            at = at[:-1]
            continue
        try:
            target = os.readlink(root.joinpath(*at, part))
        except FileNotFoundError:
            return False
        except OSError:  # not a link: a file or folder of the rootfs
            if not os.path.lexists(root.joinpath(*at, part)):
                return False
            at.append(part)
            continue
        at = [] if target.startswith("/") else at
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def shard_processes(pid: int) -> list[int]:
    """The shard's own processes below the sandbox started as ``pid``: its descendants
    but the sandbox's (bubblewrap's), which must not get the shard's SIGTERM -- a
    bubblewrap stage ended by it would end the shard before its grace period."""
    own = []
    for child in descendants(pid):
        try:
            with open(f"/proc/{child}/comm") as fh:
                if fh.read().strip() == "bwrap":
                    continue
        except OSError:
            continue
        own.append(child)
    return own


PRIVATE = Path("/tmp")  # each shard gets its own empty /tmp, its start directory by default


def searched(path: str, workdir: Path | None) -> list[Path]:
    """The host folders a sandboxed host shard's ``PATH`` has it search: an absolute entry
    as it is; a relative one (an empty one is the start directory) under its working
    directory, which it sees; none without one (it starts in its own empty /tmp). Never
    under this process's current directory, which is the control plane's, not the shard's."""
    folders = []
    for entry in path.split(os.pathsep):
        if entry.startswith("/"):
            folders.append(Path(entry))
        elif workdir is not None:
            folders.append(workdir / entry)
    return folders


def private_roots() -> tuple[Path, ...]:
    """Top-level host directories a shard does not get: the private ``/tmp``, and those an
    unprivileged user cannot search (``/root`` on most hosts). What a run needs from inside
    them (its working directory, its toolchains) is bound back read-only."""
    roots = [PRIVATE]
    for entry in os.scandir("/"):
        if (
            entry.is_dir(follow_symlinks=False)
            and entry.name not in ("proc", "dev", "tmp")
            and not entry.stat(follow_symlinks=False).st_mode & 0o001
        ):
            roots.append(Path(entry.path))
    return tuple(roots)


def closed_to(path: str, uid: int) -> str | None:
    """The first directory on the way to ``path`` (itself included) that a shard running
    as ``uid`` cannot enter, or None. Under a private root (:func:`private_roots`) the
    sandbox makes the folders on the way itself (0755), so only ``path`` counts there."""
    roots = private_roots()
    inside = any(Path(path).is_relative_to(r) for r in roots)
    steps = [path] if inside else [str(p) for p in reversed(Path(path).parents)] + [path]
    for step in steps:
        try:
            st = os.stat(step)
        except OSError:
            return step
        need = 0o005 if step == path else 0o001  # r-x on the directory itself
        if st.st_uid != uid and st.st_mode & need != need:
            return step
    return None


def _toolchain_root(directory: Path, roots: tuple[Path, ...]) -> Path | None:
    """The folder to bind back for ``directory`` (a bin folder's parent: a virtualenv's or
    an interpreter's prefix), if it lies under a private root."""
    if not any(directory.is_relative_to(r) for r in roots) or not directory.is_dir():
        return None
    root = directory.parent if directory.name == "bin" else directory
    # a private root itself is never bound back, however spelled (/tmp/../tmp, a link)
    return None if Path(os.path.realpath(root)) in roots else root


def visible_host_paths(program: str, path: str, workdir: Path | None) -> tuple[Path, ...]:
    """Host directories a sandboxed shard must still see, read-only, although they lie under
    a private root (:func:`private_roots`): its working directory, and the toolchains it
    runs -- a PATH entry's parent (a virtualenv's root: ``bin`` and ``lib``), an absolute
    program's, and where the PATH's programs link to (a virtualenv's ``python`` is often a
    link into an interpreter under ``/root``)."""
    roots = private_roots()
    # a private root itself (workingDir /tmp) is never bound whole: all of the host's /tmp
    # showed, every user's files there; the shard starts in its own private /tmp instead
    shown = workdir is not None and Path(os.path.realpath(workdir)) not in roots
    wanted: list[Path] = [workdir] if workdir is not None and shown else []
    bins = [folder for folder in searched(path, workdir) if folder != workdir]
    if program.startswith("/"):
        bins.append(Path(program).parent)
    targets = [target for directory in bins for target in _link_targets(directory)]
    for directory in [*bins, *dict.fromkeys(targets)]:
        root = _toolchain_root(directory, roots)
        if root is not None:
            wanted.append(root)
    return tuple(dict.fromkeys(wanted))


LINKS_TTL = 5.0  # seconds a folder's symlink targets are reused (see _link_targets)
LINKS_KEPT = 256  # folders whose answers are kept
# a folder, by (device, inode) -> its mtime, when it was read, and its links' targets
_links: dict[tuple[int, int], tuple[int, float, tuple[Path, ...]]] = {}


def _link_targets(directory: Path) -> tuple[Path, ...]:
    """The folders the symlinks in ``directory`` resolve into. Resolving every link of a
    distribution's /usr/bin costs ~40 ms, which each sandboxed launch paid (P7
    sandboxed: 43 ms of the server's CPU a run). So a folder's answer is reused while its
    mtime is unchanged (a link added, removed or replaced in it changes it) and for at
    most LINKS_TTL seconds (a link elsewhere on the way, repointed, is seen within that).
    It is kept by the folder's identity, not its spelling: ``/usr//bin``, ``/usr/./bin``
    and ``/usr/bin`` are one entry, so a tenant cannot flush it by respelling a folder."""
    try:
        st = os.stat(directory)
    except OSError:
        return ()
    now, key, mtime = time.monotonic(), (st.st_dev, st.st_ino), st.st_mtime_ns
    known = _links.pop(key, None)  # (put back last: the least recently used go first)
    if known is not None and known[0] == mtime and now - known[1] < LINKS_TTL:
        _links[key] = known
        return known[2]
    targets: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_symlink():
                targets.append(Path(os.path.realpath(entry.path)).parent)
    if len(_links) >= LINKS_KEPT:  # PATH folders are few: a tenant's many push out only
        del _links[next(iter(_links))]  # the least recently used, not /usr/bin
    found = _links[key] = (mtime, now, tuple(dict.fromkeys(targets)))
    return found[2]


def signal_shard(pid: int, sig: str, *, sandboxed: bool, group: ShardCgroup | None) -> None:
    """Ask (``term``) or force (``kill``) a shard started as process group ``pid`` to
    stop. SIGTERM goes to the shard's own processes in a sandbox, not to the sandbox
    itself, so the shard's grace period works -- unless the sandbox is still starting
    the shard, when the sandbox gets it (a TERM is never dropped); a kill takes its whole
    cgroup too."""
    if sig == "kill":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if group is not None:
            group.kill_all()
        return
    shard = shard_processes(pid) if sandboxed else []
    if not shard:  # unsandboxed, or the sandbox has not started the shard yet: it all goes
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        return
    for target in shard:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGTERM)
