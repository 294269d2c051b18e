"""The executor interface the reconciler drives."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from sylphx._core.machines import Resources

Signal = Literal["term", "kill"]


@dataclass(frozen=True)
class Mount:
    """A host directory bind-mounted read-write at ``target`` inside the shard (or, with
    ``read_only``, a file the platform gives it: the merge step's manifest)."""

    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class LaunchRequest:
    """Everything needed to start one attempt of one shard."""

    run_id: str
    index: int
    attempt: int
    count: int
    indexed: bool
    command: list[str]  # empty: the image's ENTRYPOINT/CMD
    env: dict[str, str]
    machine: str
    stdout_path: str  # log files (paths handed to other processes as they are)
    stderr_path: str
    working_dir: Path | None  # None: the executor's default (the sandbox's private /tmp)
    image: str | None = None
    # the image's digest found at admission (None: a run stored before images were
    # pinned): the image run, whatever ``image`` names by now (see images.store)
    image_digest: str | None = None
    mounts: list[Mount] = field(default_factory=list)
    # granted secrets, as env vars; their values are masked in the attempt's logs
    secrets: dict[str, str] = field(default_factory=dict)
    network: bool = True
    # the merge step's manifest (JSON), placed read-only where the envelope is built
    # (see envelope.shard.place_manifest); ``manifest_at``: its path as the shard sees it
    manifest: str | None = None
    manifest_at: str | None = None

    def shard_env(self) -> dict[str, str]:
        """The platform's variables for this shard (the run's env is added on top)."""
        env = {
            "SYLPHX_RUN_ID": self.run_id,
            "SYLPHX_SHARD_COUNT": str(self.count),
            "SYLPHX_SHARD_ATTEMPT": str(self.attempt),
            "SYLPHX_MACHINE": self.machine,
        }
        if self.indexed:
            env["SYLPHX_SHARD_INDEX"] = str(self.index)
        if self.manifest_at is not None:
            env["SYLPHX_MANIFEST"] = self.manifest_at
        return env


LAUNCH_ERROR = "LaunchError"  # how the reason of an attempt that never started begins
LOST = "Lost"  # ... and of one the executor lost track of (its supervisor died)


@dataclass(frozen=True)
class Exit:
    """A process that ended: its handle, raw return code and when it ended."""

    handle: str
    returncode: int
    ended_at: datetime
    reason: str | None = None  # an executor-specific cause, shown to the user
    # the executor lost the attempt (its node or supervisor died): a preemption, never a
    # failure of the shard's own
    lost: bool = False
    started_at: datetime | None = None  # the process's true start, when the executor knows it
    log_truncated: tuple[str, ...] = ()  # streams ("stdout", "stderr") that hit the log cap
    launched: bool = True  # False: it never became a process (exit 127): nothing to meter

    @classmethod
    def unlaunched(cls, handle: str, ended_at: datetime, why: str) -> Exit:
        """An attempt that could not be started: exit 127 (as a shell's "command not
        found"), reason ``LaunchError: why``."""
        return cls(handle, 127, ended_at, reason=f"{LAUNCH_ERROR}: {why}", launched=False)

    @classmethod
    def recorded(
        cls,
        handle: str,
        returncode: int,
        ended_at: datetime,
        reason: str | None,
        *,
        started_at: datetime | None = None,
        log_truncated: tuple[str, ...] = (),
    ) -> Exit:
        """An exit read back from an executor's own record (a state file, a Ray task's
        result), where the reason is all that says whether the attempt ever started and
        whether it was lost."""
        launched = not (reason or "").startswith(LAUNCH_ERROR)
        lost = (reason or "").startswith(f"{LOST}:")
        return cls(
            handle,
            returncode,
            ended_at,
            reason,
            started_at=started_at,
            log_truncated=log_truncated,
            launched=launched,
            lost=lost,
        )


Waker = Callable[[], None]  # what an executor calls when an attempt ended


class Executor(Protocol):
    """Runs shard attempts. Handles are opaque strings the executor can resolve later."""

    name: str
    # True: an attempt starts when the executor places it, reported by :meth:`starts`
    # (Ray); until then it is ``starting``, not running and not billed. False: it runs
    # from :meth:`flush` (local), and :meth:`starts` may then report its true start.
    reports_starts: bool
    # True: ended attempts come in batches of the executor's own (Ray: the hub's feed,
    # one long poll at a time, gathers the exits of a round trip), so a pass the waker
    # asks for waits no batch period, only as long as the previous pass's CPU time
    # (controller/loop.py). False: each exit calls it as it comes (local), and a pass
    # woken that way waits the loop's exit batch period to gather more (docs/adr/0007).
    batches_exits: bool

    def capacity(self) -> Resources:
        """Total resources shards may use at once."""
        ...

    def launch(self, request: LaunchRequest) -> str:
        """Check and prepare one attempt and return its handle; it starts at the next
        :meth:`flush`, never before: the reconciler stores the handle in its pass and
        flushes once the pass committed. Raises ExecutorError when it cannot start.
        Must be idempotent per (run, index, attempt): a second launch of an attempt that
        was already started adopts it."""
        ...

    def check_images(self) -> None:
        """Raise ValidationError naming ``image`` when this executor cannot run container
        images as it is set up (checked at submit: an image run is refused there, never
        accepted and then failed shard by shard)."""
        ...

    def flush(self, *, discard: bool = False) -> None:
        """Start whatever :meth:`launch` prepared (the pass that decided it committed), or
        with ``discard`` drop it (the pass was rolled back). Never raises for an attempt
        that could not start: a later :meth:`poll` reports it (exit 127; LaunchError, or
        Lost where the host, not the shard, was at fault)."""
        ...

    def drop(self, handles: Collection[str]) -> None:
        """Forget prepared launches not yet flushed (their rows were rolled back)."""
        ...

    def adopt(self, handle: str) -> bool:
        """After a restart: watch an attempt a previous control plane started. False when
        the handle means nothing to this executor (the attempt is then recorded as lost)."""
        ...

    def started(self, handle: str) -> bool:
        """Whether an adopted attempt was ever handed over to be started. False: its pass
        committed but the control plane went away before it flushed; the reconciler
        launches it again (idempotent: if it did start meanwhile, it is adopted)."""
        ...

    def poll(self) -> list[Exit]:
        """Attempts that ended since the last call (each reported once)."""
        ...

    def starts(self) -> list[tuple[str, datetime]]:
        """Attempts whose process started since the last call, with when (each reported
        once). Without :attr:`reports_starts`, the true start of attempts already running
        from their flush: their timeout and their bill count from it."""
        ...

    def signal(self, handle: str, sig: Signal) -> None:
        """Ask (term) or force (kill) an attempt's whole process tree to stop."""
        ...

    def alive(self, handle: str) -> bool:
        """Whether this executor still knows the attempt as running."""
        ...

    def set_waker(self, wake: Waker) -> None:
        """Give the executor a callable to call (from any thread) when an attempt ends."""
        ...

    def reserve_gang(self, run_id: str, n: int, machine: str) -> bool:
        """Hold all ``n`` slots of a gang run before any of its shards launches: True once
        held (Ray: a placement group of n bundles, ready), False while it waits (asked
        again next pass). An executor that admits on capacity alone answers True."""
        ...

    def forget_run(self, run_id: str) -> None:
        """Drop what the executor keeps of a run that ended and was deleted (its attempts'
        state files); every attempt of it has ended and been settled."""
        ...

    def close(self) -> None:
        """Release watchers; running attempts are left alone."""
        ...
