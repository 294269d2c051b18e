"""What runs that have not ended hold on to outside the store: the images they run.

The image cache (``images/eviction.py``) asks before it removes an unpacked image: a
digest a queued or running run pins (retries and merge steps included) stays. A run
retried gets its images back first (:func:`images_again`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from sylphx._core.errors import ConflictError, ServerUnavailable
from sylphx._core.states import RUN_TERMINAL
from sylphx._server.images import policy as image_policy
from sylphx._server.images.store import ImageStore
from sylphx._server.store import OrgRow, RunRow

from .slots import Slots

__all__ = ["Again", "images_again", "pinned_images"]

Reads = Callable[[], AbstractContextManager[Session]]

_ENDED = [state.value for state in RUN_TERMINAL]


def pinned_images(reads: Reads) -> set[str]:
    """The image digests of every run that has not ended (ServerUnavailable when the store
    cannot say: image GC then removes nothing)."""
    try:
        with reads() as s:
            found = s.scalars(select(RunRow.image_digests).where(RunRow.state.not_in(_ENDED)))
            return {d for digests in found if digests for d in digests.values()}
    except SQLAlchemyError as exc:
        raise ServerUnavailable(
            "the image cache cannot tell which images runs need (the store could not be"
            f" read: {type(exc).__name__}). Fix: retry in a few seconds"
        ) from exc


@dataclass(frozen=True)
class Again:
    """A retry of ``run_id`` and what :func:`images_again` works with."""

    run_id: str
    org_id: str
    local: bool  # the local executor (Ray nodes unpack in the task)
    reads: Reads
    sessions: sessionmaker[Session]
    lookups: Slots  # the image look-ups an org may have going at once


def images_again(ask: Again, images: ImageStore, reopen: Callable[[Session], Any]) -> list[str]:
    """The images of a run about to be retried: checked against the org's image policy
    as it is now, held in the cache until the run is reopened (returned: the caller
    releases them), and unpacked again if image GC removed them since it ended -- else
    its launch could not run them: inside the reconciler's pass nothing is unpacked. Only
    a retry that would be accepted unpacks anything (``reopen``, tried and undone)."""
    with ask.reads() as s:
        run, org = s.get(RunRow, ask.run_id), s.get(OrgRow, ask.org_id)
        if run is None or run.org_id != ask.org_id or org is None:
            return []  # (the reopen answers 404)
        pinned, policy = dict(run.image_digests or {}), org.image_policy
        named = run.spec.get("image") or (run.spec.get("merge") or {}).get("image")
    if named and not pinned:  # stored before digests were kept: nothing admitted to rerun
        raise ConflictError(
            f"run {ask.run_id} was stored before its images were pinned, and cannot be"
            " retried. Fix: submit it again (its images are admitted anew)",
            details=[{"field": "image", "rule": "pinned", "fix": "submit the run again"}],
        )
    for ref, digest in pinned.items():
        image_policy.recheck(ref, digest, policy)
    images.holds.hold(pinned.values())
    try:
        missing = [(ref, d) for ref, d in pinned.items() if not images.cached(d)]
        if missing and ask.local:
            _tried(ask.sessions, reopen)
            ask.lookups.take(ask.org_id)
            try:
                for ref, digest in missing:
                    images.resolve(ref, digest)
            finally:
                ask.lookups.free(ask.org_id)
    except BaseException:
        images.holds.release(pinned.values())
        raise
    return list(pinned.values())


class _Undo(Exception):
    pass


def _tried(sessions: sessionmaker[Session], work: Callable[[Session], Any]) -> None:
    """``work`` in a transaction rolled back: its refusals, none of its writes."""
    try:
        with sessions.begin() as s:
            work(s)
            raise _Undo
    except _Undo:
        pass
