"""The envelope of a shard: argv with the sandbox in front, the shard's clean environment
and its start directory; on a host's own root (:func:`host_envelope`) or in a container
image's rootfs (:func:`image_envelope`). Both placements use them: the local executor on
this host, a Ray task on its node."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from sylphx._core.errors import ExecutorError
from sylphx._core.paths import MANIFEST_PATH
from sylphx._server.executors.base import LaunchRequest, Mount
from sylphx._server.executors.local.processes import check_program, visible_host_paths
from sylphx._server.images.store import UnpackedImage

from .sandbox import Policy, Sandbox, clean_env


def bwrap_prefix(mounts: list[Mount]) -> list[str]:
    """A bubblewrap prefix that shows the host as-is plus the volumes at their paths.

    The new root is a tmpfs holding binds of every top-level host entry, so a
    mount path that does not exist on the host is created in the tmpfs, not on
    the host.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise ExecutorError(
            "volumeMounts need bubblewrap (bwrap) on the executor host. Fix: install the"
            " Debian package 'bubblewrap' (make system-deps), or run without volumeMounts."
        )
    args = [bwrap, "--tmpfs", "/"]
    for entry in sorted(os.listdir("/")):
        host = f"/{entry}"
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif entry == "proc":
            args += ["--proc", "/proc"]
        elif entry == "dev":
            args += ["--dev-bind", "/dev", "/dev"]
        elif os.path.isdir(host):
            args += ["--bind", host, host]
    for mount in mounts:
        args += ["--ro-bind" if mount.read_only else "--bind", str(mount.source), mount.target]
    return [*args, "--"]


def place_manifest(request: LaunchRequest, directory: Path, *, sandbox: bool) -> LaunchRequest:
    """The merge step's request with its manifest written under ``directory`` (on the
    host that runs it), read-only: bound at MANIFEST_PATH in the sandbox, or, without
    one, named by its host path. Any other request is returned as it is."""
    if request.manifest is None:
        return request
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"manifest.attempt-{request.attempt}.json"
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    # a new file or nothing: never through a link someone put there (an unsandboxed
    # shard's working directory is this folder); rename replaces a link, not its target
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(partial, flags, 0o444)
    with os.fdopen(fd, "w") as fh:
        fh.write(request.manifest)
    os.replace(partial, path)  # a relaunch of the attempt writes the same file again
    if not sandbox:
        return dataclasses.replace(request, manifest_at=str(path))
    mount = Mount(path, MANIFEST_PATH, read_only=True)
    return dataclasses.replace(request, mounts=[*request.mounts, mount], manifest_at=MANIFEST_PATH)


def shard_env(
    request: LaunchRequest, *, image_env: dict[str, str] | None, host_path: str | None
) -> dict[str, str]:
    """The shard's clean environment: the platform's variables, the run's env, its granted
    secrets (and the image's Env, or the host PATH)."""
    return clean_env(
        platform=request.shard_env(),
        run_env=request.env,
        secrets=request.secrets,
        image_env=image_env,
        host_path=host_path,
    )


def own_volumes(mounts: Sequence[Mount], policy: Policy) -> None:
    """Volumes belong to the uid shards run as (see :meth:`Policy.identity`), so a shard
    can write its results; files shards write there are theirs too, and the control plane
    (root) reads, moves and deletes them as it likes. Only the volume's top directory is
    changed: files a root shard wrote before there stay root's. It is 0700: its path shows
    in the command line of the launch (/proc/PID/cmdline), and any local user of a shared
    machine read a volume 0755 by it (found by a review)."""
    if os.geteuid() != 0:
        return
    for mount in mounts:
        if mount.read_only:  # the platform's file (the manifest): readable, never theirs
            continue
        st = os.stat(mount.source)
        if (st.st_uid, st.st_gid) != (policy.uid, policy.gid):
            os.chown(mount.source, policy.uid, policy.gid)
        if st.st_mode & 0o077:
            os.chmod(mount.source, 0o700)


def host_envelope(
    request: LaunchRequest,
    *,
    sandbox: bool,
    policy: Policy,
    host_path: str | None,
    scratch: Callable[[], Path],
    die_with_parent: bool = False,
) -> tuple[list[str], dict[str, str], Path]:
    """The envelope of a shard run on a host's own root (no image), wherever that host is:
    argv (sandbox included), the shard's clean environment and the start directory. Both
    placements use it: the local executor on this host, a Ray task on its node."""
    env = shard_env(request, image_env=None, host_path=host_path)
    argv = list(request.command)
    workdir = request.working_dir
    if workdir is not None and not workdir.is_dir():
        raise ExecutorError(f"working directory {workdir} does not exist")
    if not sandbox:
        if request.mounts:
            argv = bwrap_prefix(request.mounts) + argv
        return argv, env, workdir or scratch()
    check_program(argv[0], env["PATH"], workdir)  # bwrap itself would only say "exit 1"
    own_volumes(request.mounts, policy)
    box = Sandbox(
        mounts=request.mounts,
        policy=policy,
        network=request.network,
        working_dir=str(workdir or "/tmp"),
        extra_ro=visible_host_paths(argv[0], env["PATH"], workdir),
        die_with_parent=die_with_parent,
    )
    return box.argv() + argv, env, Path("/")


def image_envelope(
    request: LaunchRequest, image: UnpackedImage, *, sandbox: bool, policy: Policy
) -> tuple[list[str], dict[str, str], Path]:
    """The envelope of a shard run in ``image`` (unpacked on this host): its rootfs as
    ``/`` read-only, its Env and WorkingDir, ENTRYPOINT + (command or CMD), in the sandbox
    (an image needs it: without it the shard would run on the host's root)."""
    if not sandbox:
        raise ExecutorError(
            "container images need the sandbox (SYLPHX_SANDBOX=on) and an image store"
        )
    argv = image.config.argv(request.command or None)
    env = shard_env(request, image_env=image.config.env, host_path=None)
    check_program(argv[0], env["PATH"], None, root=image.rootfs)
    own_volumes(request.mounts, policy)
    box = Sandbox(
        base=image.rootfs,
        mounts=request.mounts,
        policy=policy,
        network=request.network,
        working_dir=str(request.working_dir or image.config.working_dir or "/"),
    )
    return box.argv() + argv, env, Path("/")
