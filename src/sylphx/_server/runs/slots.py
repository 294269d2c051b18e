"""Slots: how many of one kind of costly request an org, and every org together, may have
open at once in one API process; past either, a 429 (``quota_exceeded``) with
``Retry-After``, before any of the work is done. Followed log streams and log reads
(:mod:`.streams`) and the image look-ups of submits (:mod:`.facade`) are bounded so.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from sylphx._core.errors import QuotaExceeded

__all__ = ["RETRY_AFTER_SECONDS", "Kind", "Slots"]

RETRY_AFTER_SECONDS = 5  # a refusal: when one of those open may have ended


@dataclass(frozen=True)
class Kind:
    """What one kind of slot is called in a refusal."""

    what: str  # "followed log streams"
    field: str
    org_limit: str
    total_limit: str
    org_fix: str
    total_fix: str


class Slots:
    """Open bodies of one kind, by org: at most ``per_org`` for an org, ``total`` for all."""

    def __init__(self, kind: Kind, per_org: int, total: int) -> None:
        self.kind = kind
        self.per_org = per_org
        self.total = total
        self.open: Counter[str] = Counter()
        self.count = 0
        self._lock = threading.Lock()

    def take(self, org_id: str) -> None:
        kind = self.kind
        with self._lock:
            if self.count >= self.total:
                raise _refusal(
                    kind, "this API process has", self.count, self.total, kind.total_limit
                )
            if self.open[org_id] >= self.per_org:
                raise _refusal(
                    kind, "your org has", self.open[org_id], self.per_org, kind.org_limit
                )
            self.open[org_id] += 1
            self.count += 1

    def free(self, org_id: str) -> None:
        with self._lock:
            self.count -= 1
            self.open[org_id] -= 1
            if self.open[org_id] <= 0:
                del self.open[org_id]


def _refusal(kind: Kind, who: str, current: int, most: int, limit: str) -> QuotaExceeded:
    fix = kind.org_fix if limit == kind.org_limit else kind.total_fix
    rule = f"at most {most} {kind.what} at once"
    return QuotaExceeded(
        f"{who} {current} {kind.what} open, its most ({most}). Fix: {fix}.",
        details=[
            {
                "field": kind.field,
                "limit": limit,
                "max": most,
                "current": current,
                "rule": rule,
                "fix": fix,
            }
        ],
        retry_after=RETRY_AFTER_SECONDS,
    )
