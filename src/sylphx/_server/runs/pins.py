"""What runs that have not ended hold on to outside the store: the images they run.

The image cache (``images/eviction.py``) asks before it removes an unpacked image: a
digest a queued or running run pins (retries and merge steps included) stays.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import select
from sqlalchemy.orm import Session

from sylphx._core.states import RUN_TERMINAL
from sylphx._server.store import RunRow

__all__ = ["pinned_images"]

_ENDED = [state.value for state in RUN_TERMINAL]


def pinned_images(reads: Callable[[], AbstractContextManager[Session]]) -> set[str]:
    """The image digests of every run that has not ended."""
    with reads() as s:
        found = s.scalars(select(RunRow.image_digests).where(RunRow.state.not_in(_ENDED)))
        return {d for digests in found if digests for d in digests.values()}
