"""The host paths a run names, checked against the host at submit.

Nothing of the control plane is visible to a shard, whatever its spec says: a host run
(no ``image``) whose ``workingDir``, ``env.PATH`` entry or volume ``mountPath`` is, or lies
under, a path hidden from shards (``Settings.hidden_paths``: the home, the volume root, the
logs, the key file, the socket, a SQLite store kept elsewhere, ``SYLPHX_SHARD_HIDE``) is
refused with a 422 naming the field and the fix, never bound. Paths are resolved first
(symlinks, ``//``, ``..``, ``.``), as the kernel resolves them on this host; one that goes
through ``/proc`` (``/proc/self/cwd``, ``/dev/fd/3``: magic links, whose target depends on
the process that follows them, so what is checked here is not what a shard would get) is
refused too.
A host run's ``workingDir`` must also be an existing directory, so a mistyped one is a 422
now, not a failed launch later that reads as if the command had failed.

A run with an ``image`` names paths of the image's filesystem: only the spec model's
lexical rules (``_paths.py``) apply to it.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from pathlib import Path
from typing import Any

from sylphx._core.errors import ValidationError
from sylphx._core.merge import MERGE_INDEX
from sylphx._core.paths import is_within
from sylphx._core.spec import RunSpec
from sylphx._server.executors.local.processes import PRIVATE, closed_to
from sylphx._server.images.reader import as_reader, reading_as
from sylphx._settings import Settings

__all__ = ["check_host_paths", "reads_host"]

_HIDDEN = "is, or lies under, a path of the control plane that shards never see"
_RESOLVED = " (symlinks, '..' and '//' resolved)"
_VIA_PROC = "goes through /proc, whose links lead where the process following them is"
_MAX_LINKS = 40  # as the kernel's ELOOP limit


def check_host_paths(spec: RunSpec, settings: Settings, *, local: bool) -> None:
    """Raise :class:`ValidationError` (nothing is stored) when a host run names a path
    hidden from shards (``settings.hidden_paths()``) or one through ``/proc``, or, with
    ``local`` (the shards run on this host), a ``workingDir`` that is not an existing
    directory here. The run's shards and its merge step are checked each as what it is:
    a step with an image names paths of the image, and costs nothing here; one without
    runs on the host (a host run's merge step may have an image of its own)."""
    steps = _steps(spec)
    for prefix, step in steps:
        if step.image is not None:
            _check_image_path(step.image, settings, f"{prefix}image")
    hosted = [(prefix, step) for prefix, step in steps if step.image is None]
    if not hosted:
        return
    roots: list[str] = []  # resolved (a few syscalls each) when a path needs them
    details: list[dict[str, Any]] = []

    def refuse(field: str, spelled: str, fix: str) -> str | None:
        """Add the detail ``spelled`` earns, if any; else return it resolved."""
        real, via_proc = resolve(spelled)
        if not roots:
            roots.extend(str(p) for p in settings.hidden_paths())
        if via_proc:
            details.append(_detail(field, f"{spelled!r} {_VIA_PROC}", fix))
        elif _is_hidden(spelled, real, roots):
            details.append(_detail(field, f"{spelled!r} {_HIDDEN}{_RESOLVED}", fix))
        else:
            return real
        return None

    workdir = spec.working_dir
    if workdir is not None:
        real = refuse(
            "workingDir",
            workdir,
            "start the run from (or give) a directory outside the control plane's data"
            " directory (SYLPHX_HOME), e.g. your project's; the SDK and CLI send the current"
            " directory by default (CLI: --workdir DIR)",
        )
        if real is not None and local:
            details.extend(_workdir_on_host(workdir, real, settings))
    for field, path, fix in _named(spec, hosted):
        refuse(field, path, fix)
    if details:
        lines = [f"{d['field']}: {d['rule']}. Fix: {d['fix']}" for d in details]
        raise ValidationError("; ".join(lines), details=details)


_PATH_FIX = (
    "remove that entry from PATH; keep the tools a run uses outside the control"
    " plane's data directory (SYLPHX_HOME)"
)
_PROGRAM_FIX = (  # the sandbox binds back the folders its program's folder links to
    "run a program from a path of your own, or from a volume's mountPath inside the"
    " shard (e.g. /data/bin/tool), never the control plane's data directory"
)
_MOUNT_FIX = "mount the volume at a path of your own, e.g. /cache or /data/out"


def reads_host(spec: RunSpec) -> bool:
    """Whether :func:`check_host_paths` reads this host's filesystem for ``spec`` (an
    image, a ``workingDir`` or a path it names); a spec that names none is checked
    without a system call."""
    steps = _steps(spec)
    if any(step.image is not None for _, step in steps):
        return True
    return spec.working_dir is not None or bool(_named(spec, steps))


def _named(spec: RunSpec, hosted: list[tuple[str, RunSpec]]) -> list[tuple[str, str, str]]:
    """The host paths, but the ``workingDir``, that the host steps ``hosted`` name:
    (field, path as spelled, the fix when it is refused)."""
    workdir = spec.working_dir
    named = [  # (an empty PATH entry is the start directory, checked with workingDir)
        (f"{prefix}env.PATH", os.path.join(workdir or PRIVATE, entry), _PATH_FIX)
        for prefix, path in _paths(spec, hosted)
        for entry in path.split(":")
        if entry
    ]
    named += [  # a program named by its host path (the sandbox binds its folder's links)
        (f"{prefix}command[0]", step.command[0], _PROGRAM_FIX)
        for prefix, step in hosted
        if step.command and step.command[0].startswith("/")
    ]
    named += [  # (mount paths normalised by the spec model)
        (f"volumeMounts[{i}].mountPath", mount.mount_path, _MOUNT_FIX)
        for i, mount in enumerate(spec.volume_mounts)
    ]
    return named


def _steps(spec: RunSpec) -> list[tuple[str, RunSpec]]:
    """What runs: the shards (``spec``) and the merge step (as it runs: the run's spec
    with the merge's command, image, env over the run's...), by their fields' prefix."""
    return [("", spec), *([("merge.", spec.for_index(MERGE_INDEX))] if spec.merge else [])]


def _paths(spec: RunSpec, hosted: list[tuple[str, RunSpec]]) -> list[tuple[str, str]]:
    """The PATH each host step searches, by the prefix of the field that sets it: the
    merge step's own env, or the run's (checked once, if both steps run on the host)."""
    found: dict[str, str] = {}
    for prefix, step in hosted:
        if "PATH" in step.env:
            own = not prefix or (spec.merge is not None and "PATH" in spec.merge.env)
            found.setdefault(prefix if own else "", step.env["PATH"])
    return list(found.items())


def resolve(path: str) -> tuple[str, bool]:
    """``os.path.realpath(path)`` for an absolute ``path``, and whether resolving it went
    through ``/proc`` (spelled there, or led there by a symlink such as ``/dev/fd``)."""
    todo = deque(path.split("/"))
    current, via_proc, links = "/", False, 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        step = os.path.join(current, part)
        via_proc = via_proc or is_within(step, "/proc")
        try:
            target = os.readlink(step)
        except OSError:  # not a symlink, or not there: the rest is taken as spelled
            current = step
            continue
        links += 1
        if links > _MAX_LINKS:  # a loop: the kernel would refuse it (ELOOP) as well
            return os.path.join(step, *todo), via_proc
        if target.startswith("/"):
            current = "/"
        todo.extendleft(reversed(target.split("/")))
    return current, via_proc


def _is_hidden(spelled: str, real: str, roots: list[str]) -> bool:
    """Whether the path, as spelled or resolved, is or lies under a root."""
    lexical = "/" + os.path.normpath(spelled).lstrip("/")  # normpath keeps a leading "//"
    return any(is_within(p, root) for p in (real, lexical) for root in roots)


def _detail(field: str, rule: str, fix: str) -> dict[str, Any]:
    return {"field": field, "rule": rule, "fix": fix}


def _workdir_on_host(spelled: str, real: str, settings: Settings) -> list[dict[str, Any]]:
    """What is wrong with a host run's ``workingDir`` on this host (resolved: ``real``):
    not an existing directory, or (sandboxed, as root) closed to the shards' user."""
    if not os.path.isdir(real):
        what = "is not a directory" if os.path.lexists(real) else "does not exist"
        return [
            _detail(
                "workingDir",
                f"{spelled!r} {what} on the host",
                "give an existing directory, or start the run from one (the SDK and CLI"
                " send the current directory by default; CLI: --workdir DIR)",
            )
        ]
    closed = None
    if settings.sandbox and os.geteuid() == 0:
        closed = closed_to(real, settings.shard_uid)
    if closed is None:
        return []
    return [
        _detail(
            "workingDir",
            f"{spelled!r} cannot be entered by the shards' unprivileged user"
            f" (uid {settings.shard_uid}): {closed!r} is not readable and"
            " searchable by others",
            f"make it so (chmod o+rx {closed}), or start the run from a"
            " directory others can read (CLI: --workdir DIR)",
        )
    ]


_IMAGE_FIX = (
    "give an image the shards' user can read (chmod o+r, and o+x on its folders), kept"
    " outside the control plane's data directory, or a registry reference"
)


def _check_image_path(image: str, settings: Settings, field: str) -> None:
    """A local image path (an OCI layout or archive on this host) is read by the control
    plane, which may be root: refuse one hidden from shards, or one the shards' user could
    not read itself (one message for that and for a path that is not there, so the answer
    tells a tenant nothing of what only root may see)."""
    path = _local_image_path(image)
    if path is None:
        return
    with reading_as((settings.shard_uid, settings.shard_gid)), as_reader():
        real, via_proc = resolve(path)  # links followed as a shard would: no oracle of root's
    roots = [str(p) for p in settings.hidden_paths()]
    if via_proc or _is_hidden(path, real, roots):
        rule = f"{path!r} {_VIA_PROC if via_proc else _HIDDEN + _RESOLVED}"
    elif os.geteuid() == 0 and _unreadable(real, settings.shard_uid):
        rule = (
            f"{path!r} does not exist or cannot be read by the shards' unprivileged user"
            f" (uid {settings.shard_uid})"
        )
    else:
        return
    details = [_detail(field, rule, _IMAGE_FIX)]
    raise ValidationError(f"{field}: {rule}. Fix: {_IMAGE_FIX}", details=details)


def _local_image_path(image: str) -> str | None:
    """The host path an image reference names (``oci:``, ``oci-archive:``,
    ``docker-archive:`` or a plain path, with an optional ``:tag``), or None (a registry)."""
    for kind in ("oci-archive:", "docker-archive:", "oci:"):
        if image.startswith(kind):
            return os.path.abspath(image[len(kind) :].partition(":")[0])
    if not image.startswith(("/", "./", "../")):
        return None
    head, sep, tail = image.rpartition(":")
    if sep and "/" not in tail and not os.path.lexists(image):
        image = head  # path:tag
    return os.path.abspath(image)


def _unreadable(path: str, uid: int) -> bool:
    """Whether ``uid`` could not read ``path`` (a folder: list and enter it) by the
    permission bits on the way, or it is not there."""
    steps = [*(str(p) for p in reversed(Path(path).parents)), path]
    for step in steps:
        try:
            st = os.stat(step)
        except OSError:
            return True
        last = step == path
        need = (0o005 if stat.S_ISDIR(st.st_mode) else 0o004) if last else 0o001
        if st.st_uid != uid and st.st_mode & need != need:
            return True
    return False
