"""The parts of the Ray executor that run inside the cluster.

``LogHub`` (:mod:`.hub`) is the home's detached actor on the control plane's node: it
submits and owns every attempt's task, so they outlive the control plane. Shards ship
their output to it in chunks while they run -- redacted and capped on the node first, by
the same :mod:`.shardlog` code the local executor's supervisor uses, so no secret
value travels or reaches a disk -- and it appends them to the attempt's log
files (the same files the local executor writes) and answers each chunk with
the signal the control plane wants delivered, so log shipping doubles as the
control channel. ``run_shard`` is the Ray task: on whatever node Ray picked it
builds the shard's envelope with the same code the local executor uses
(:func:`.envelope.host_envelope`: bubblewrap sandbox with a read-only root, the
run's volumes bound at their mount paths, a clean environment, the shard's own uid,
seccomp filter and network; :mod:`.nodeenvelope` gives it the filter and the network
pipes the supervisor gives a local shard) and, where the node has them, a cgroup with
the tier's CPU quota and memory ceiling. The shard dies with the worker that runs the
task (its node lost, or the task cancelled), never with the control plane.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sylphx._core.errors import ExecutorError, SylphxError
from sylphx._server.executors.base import LaunchRequest, Signal
from sylphx._server.executors.envelope import egress
from sylphx._server.executors.envelope.node import NodeFds
from sylphx._server.executors.envelope.sandbox import Policy
from sylphx._server.executors.envelope.shard import (
    host_envelope,
    image_envelope,
    place_manifest,
)
from sylphx._server.executors.local.cgroups import Cgroups, ShardCgroup
from sylphx._server.executors.local.netstack import CHAIN_ENV
from sylphx._server.executors.local.processes import check_program, signal_shard
from sylphx._server.executors.local.shardlog import Shaper
from sylphx._server.executors.local.statefiles import OOM_REASON
from sylphx._server.images.eviction import using
from sylphx._server.images.layers import MAX_UNPACKED_BYTES
from sylphx._server.images.store import ImageStore

from . import shardcgroups, shardproc

STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class NodeEnvelope:
    """What the control plane asks of every node: the sandbox (on unless the operator
    turned it off), tier enforcement where the node has cgroups, and the operator's
    shard policy (hidden paths, network, the shard's uid, seccomp)."""

    sandbox: bool = True
    enforce_tiers: bool = True
    policy: Policy = field(default_factory=Policy)
    max_log_bytes: int = 1 << 30  # per stream of an attempt (SYLPHX_MAX_LOG_BYTES)
    image_cache: str = "/var/cache/sylphx/images"  # where a node unpacks images (its own)
    private_registries: tuple[str, ...] = ()  # SYLPHX_PRIVATE_REGISTRIES (images/reach.py)
    image_max_unpacked: int = MAX_UNPACKED_BYTES  # SYLPHX_IMAGE_MAX_UNPACKED_BYTES


_hubs: dict[str, Any] = {}  # per worker process: hub name -> actor handle
_images: dict[tuple[Any, ...], ImageStore] = {}  # per worker: cache, registries, reader
_waiters: list[ThreadPoolExecutor] = []  # per worker process: one thread that waits on Ray


def _get_off_main_thread(ref: Any) -> Any:
    """``ray.get(ref)``, waited for in a helper thread. A blocking get in a task's main
    thread makes Ray lend the task's CPU out until it returns -- to other tasks, and to new
    Python workers started for them -- while the shard still uses that CPU: the node is
    oversubscribed and, on a small host, busy starting workers (seen as most of P6)."""
    import ray

    if not _waiters:
        _waiters.append(ThreadPoolExecutor(1, thread_name_prefix="sylphx-ship"))
    return _waiters[0].submit(ray.get, ref).result()


Ship = Callable[[bytes, bytes], "Signal | None"]


def run_streaming(
    request: LaunchRequest,
    handle: str,
    envelope: NodeEnvelope,
    ship: Ship,
    *,
    interval: float = 0.2,
    first: float = 0.1,
    chunk: int = 1 << 20,
    drain_seconds: float = 2.0,
    on_start: Callable[[float], None] = lambda started: None,
    on_exit: Callable[[float], None] = lambda ended: None,
) -> tuple[int, str | None, list[str]]:
    """Run the attempt in its envelope with piped output; ``ship(stdout, stderr)`` is called
    ``first`` seconds after the start, then at least every ``interval`` seconds, with
    the output so far (the attempt's secret values
    masked, each stream capped at ``envelope.max_log_bytes``) and returns the signal the
    control plane wants delivered; ``on_start(epoch)`` once the process was spawned and
    ``on_exit(epoch)`` once it exited (the window billed; the output may drain after).
    Returns (raw return code, reason, the streams that hit the cap). The process tree is
    gone on return."""
    scratch: list[str] = []  # made only if the envelope asks (unsandboxed, no working dir)

    def make_scratch() -> Path:
        if not scratch:
            scratch.append(tempfile.mkdtemp(prefix="sylphx-scratch-"))
        return Path(scratch[0])

    group = None
    cgroups: Cgroups | None = None
    fds = None  # a sandboxed shard's filter and network pipes
    held = contextlib.ExitStack()  # the shard's image, kept from the node's collection
    try:
        if request.manifest is not None:  # a merge step: its manifest, on this node
            request = place_manifest(request, make_scratch(), sandbox=envelope.sandbox)
        if request.image is not None:  # unpacked on this node, by the same image store code
            argv, env, cwd = _image_envelope(request, envelope, held)
        else:
            argv, env, cwd = host_envelope(
                request,
                sandbox=envelope.sandbox,
                policy=envelope.policy,
                host_path=os.environ.get("PATH"),
                scratch=make_scratch,
                die_with_parent=True,
            )
        if not envelope.sandbox and request.command:  # as the sandbox does: a clear 127
            check_program(request.command[0], env.get("PATH", ""), cwd)
        if envelope.sandbox:
            fds = NodeFds.for_shard(request.network, envelope.policy, env)
            argv = fds.prefix() + argv
            env = dict(CHAIN_ENV)  # the shard's own comes in at ENV_FD (see netstack)
        cgroups = shardcgroups.node_cgroups() if envelope.enforce_tiers else None
        if cgroups is not None:
            group = shardcgroups.create(cgroups, handle, request.machine)
            argv = group.join_prefix() + argv
        shapers = [Shaper(envelope.max_log_bytes, request.secrets.values()) for _ in STREAMS]
        code = _stream(argv, env, cwd, fds, group, ship, shapers, (on_start, on_exit),
                       interval=interval, first=first, chunk=chunk,
                       drain_seconds=drain_seconds)  # fmt: skip
        reason = None
        if group is not None and group.oom_killed():
            reason = OOM_REASON
        return code, reason, [s for s, o in zip(STREAMS, shapers, strict=True) if o.truncated]
    finally:
        held.close()
        if fds is not None:
            fds.close()
        if group is not None and cgroups is not None:
            shardcgroups.release(cgroups, group)
        if scratch:
            shutil.rmtree(scratch[0], ignore_errors=True)


def _image_envelope(
    request: LaunchRequest, envelope: NodeEnvelope, held: contextlib.ExitStack
) -> tuple[list[str], dict[str, str], Path]:
    """The shard's image, unpacked on this node and kept from its collection while
    ``held`` is open (see images.eviction.using), and the envelope that runs it."""
    assert request.image is not None
    reader = (envelope.policy.uid, envelope.policy.gid)  # a tenant's files: theirs
    images = _node_images(envelope, reader, tuple(envelope.policy.hide), envelope.policy.egress)
    for _ in range(3):
        image = images.resolve(request.image, request.image_digest)
        lock = held.enter_context(contextlib.ExitStack())
        lock.enter_context(using(images.cache_dir, image.digest))
        if images.cached(image.digest):
            break
        lock.close()  # collected in between: unlocked (an unpack locks it too), again
    else:
        raise ExecutorError(f"the image {request.image!r} kept being removed from this node")
    policy = envelope.policy
    return image_envelope(request, image, sandbox=envelope.sandbox, policy=policy)


def _read(
    readable: list[int],
    bufs: dict[int, bytearray],
    shaper: dict[int, Shaper],
    open_fds: set[int],
) -> None:
    """Read what each readable pipe holds into its buffer (shaped: capped, redacted); a
    pipe at its end leaves ``open_fds``."""
    for fd in readable:
        data = os.read(fd, 1 << 16)
        if data:
            bufs[fd] += shaper[fd].feed(data)
        else:
            open_fds.discard(fd)
            bufs[fd] += shaper[fd].finish()


def _stream(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    fds: NodeFds | None,  # None: unsandboxed
    group: ShardCgroup | None,
    ship: Ship,
    shapers: list[Shaper],  # stdout's and stderr's
    marks: tuple[Callable[[float], None], Callable[[float], None]],  # on_start, on_exit
    *,
    interval: float,
    first: float,
    chunk: int,
    drain_seconds: float,
) -> int:
    sandboxed = fds is not None
    proc, slot = shardproc.spawn(argv, env, cwd, fds)
    marks[0](time.time())  # started
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    shaper = dict(zip(bufs, shapers, strict=True))
    open_fds = set(bufs)
    exit_fd = shardproc.pidfd(proc.pid)  # readable once the leader exits; None: poll every 20 ms
    next_ship = time.monotonic() + first
    exited_at: float | None = None
    try:
        bufs[err_fd] += shardproc.up(proc, fds, slot)  # shipped first: no network, why
        while True:
            readable: list[int] = []
            watch = [*open_fds, *([exit_fd] if exit_fd is not None and exited_at is None else [])]
            if watch:
                wait = min(max(next_ship - time.monotonic(), 0.0), interval)
                readable = select.select(watch, [], [], wait)[0]
            else:  # the shard closed its output and no pidfd: just watch for the exit
                time.sleep(0.02)
            _read([fd for fd in readable if fd != exit_fd], bufs, shaper, open_fds)
            if exited_at is None and shardproc.leader_exited(proc.pid):
                exited_at = time.monotonic()
                marks[1](time.time())  # exited
                shardproc.kill_group(
                    proc.pid, signal.SIGKILL
                )  # stragglers; also closes their pipes
            done = exited_at is not None and (
                not open_fds or time.monotonic() - exited_at > drain_seconds
            )
            if done:  # what the redactors still hold (a no-op for a stream at its end)
                for fd in open_fds:
                    bufs[fd] += shaper[fd].finish()
            size = len(bufs[out_fd]) + len(bufs[err_fd])
            if done and not size:  # nothing left to ship; a signal would come too late
                break
            if done or size >= chunk or time.monotonic() >= next_ship:
                sig = ship(bytes(bufs[out_fd]), bytes(bufs[err_fd]))
                bufs = {fd: bytearray() for fd in bufs}  # shipped
                next_ship = time.monotonic() + interval
                if sig is not None and exited_at is None:
                    signal_shard(proc.pid, sig, sandboxed=sandboxed, group=group)
            if done:
                break
        return proc.wait()
    finally:
        shardproc.close(proc, exit_fd, slot)


Result = tuple[int, str | None, list[str], float | None, float]


def _node_images(
    envelope: NodeEnvelope,
    reader: tuple[int, int],
    hide: tuple[Path, ...],
    user: tuple[int, int],
) -> ImageStore:
    cache_dir, private_registries = envelope.image_cache, envelope.private_registries
    key = (cache_dir, private_registries, envelope.image_max_unpacked, reader, hide, user)
    store = _images.get(key)
    if store is None:
        hidden = functools.partial(egress.run_confined, hide=hide, user=user)
        confine = hidden if egress.confinable() else None
        store = ImageStore(
            Path(cache_dir),
            private_registries=private_registries,
            reader=reader,
            confine=confine,
            max_unpacked=envelope.image_max_unpacked,
            in_use=frozenset,  # the store is not here: running shards lock theirs (using)
        )
        _images[key] = store
    return store


def node_tools() -> dict[str, bool]:
    """Ray task body: what this node has of what container images need (see
    ``RayExecutor.check_images``)."""
    return {tool: shutil.which(tool) is not None for tool in ("bwrap", "skopeo", "umoci")}


def run_shard(request: LaunchRequest, handle: str, hub_name: str, envelope: NodeEnvelope) -> Result:
    """Ray task body: run one attempt on this node, shipping logs to the named hub, and
    telling it the moment the process started (the attempt is ``running`` and billed from
    then: never while the task waited in Ray's queue or for its node). The start goes with
    the first chunk, 0.1 s in; a shard ended by then tells it with its result: no call of
    its own, and one pass fewer per short shard (P6).

    Returns (raw return code, reason, the streams that hit the log cap, when the process
    started and when the task ended, epoch seconds). A shard that cannot start is exit
    127 with a ``LaunchError`` reason and the cause in its stderr, as on the local
    executor.
    """
    import ray
    from ray.exceptions import RayActorError

    node = ray.get_runtime_context().get_node_id()
    hub: Any = _hubs.get(hub_name) or _hubs.setdefault(hub_name, ray.get_actor(hub_name))
    paths = (request.stdout_path, request.stderr_path)
    started: list[float] = []
    ended: list[float] = []
    told: list[bool] = []  # whether the hub was told of the start

    def ship(out: bytes, err: bytes) -> Signal | None:
        nonlocal hub
        try:
            start = started[0] if started and not told else None
            result = _get_off_main_thread(hub.push.remote(handle, node, paths, out, err, start))
        except RayActorError:  # this worker knew an earlier hub of that name: ask again
            hub = _hubs[hub_name] = ray.get_actor(hub_name)
            start = started[0] if started else None
            result = _get_off_main_thread(hub.push.remote(handle, node, paths, out, err, start))
        told.append(True)
        return result  # type: ignore[no-any-return]

    try:
        code, reason, cut = run_streaming(
            request, handle, envelope, ship, on_start=started.append, on_exit=ended.append
        )
        return code, reason, cut, started[0] if started else None, (ended or [time.time()])[0]
    except (OSError, SylphxError) as exc:  # e.g. command not found, no bwrap, bad image
        ship(b"", f"sylphx: could not start the shard: {exc}\n".encode())
        return 127, f"LaunchError: {exc}", [], None, time.time()


def run_slot(hub_name: str, slot: str, envelope: NodeEnvelope) -> None:
    """Ray task body of a slot (see :mod:`.slots`): run the attempts the named hub hands
    this slot, one after another, each with :func:`run_shard`, reporting how each ended
    with the next take; return once the hub has none for it (or is gone). The slot
    keeps its tier's resources while it waits: the take is waited for off the main
    thread (see ``_get_off_main_thread``)."""
    import ray
    from ray.exceptions import RayActorError

    hub: Any = _hubs.get(hub_name) or _hubs.setdefault(hub_name, ray.get_actor(hub_name))
    take = hub.take.options(concurrency_group="slots")  # the hub's threads for idle slots
    done: tuple[str, Any] | None = None
    while True:
        try:
            got = _get_off_main_thread(take.remote(slot, done))
        except RayActorError:  # this worker may know an earlier hub of that name: ask again
            try:
                hub = _hubs[hub_name] = ray.get_actor(hub_name)
                take = hub.take.options(concurrency_group="slots")
                got = _get_off_main_thread(take.remote(slot, done))
            except (RayActorError, ValueError):  # no hub (ValueError: none of that name)
                return  # a new hub does not know this slot either: it answers None
        if got is None:
            return
        handle, request = got
        try:
            done = ("result", run_shard(request, handle, hub_name, envelope))
        except Exception as exc:  # as a task of its own would fail: its last line
            done = ("error", f"{type(exc).__name__}: {exc}"[:300])
