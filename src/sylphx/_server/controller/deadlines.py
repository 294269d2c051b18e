"""Deadline policy: when a live attempt is sent SIGTERM, and when SIGKILL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Action = Literal["term", "kill"]


@dataclass(frozen=True)
class LiveAttempt:
    started_at: datetime
    stop_reason: str | None
    stop_requested_at: datetime | None
    killed_at: datetime | None


def next_action(
    attempt: LiveAttempt,
    *,
    now: datetime,
    timeout_seconds: int,
    grace_seconds: float,
    cancel_requested: bool,
) -> tuple[Action, str] | None:
    """``("term", reason)`` when the attempt must be asked to stop (timeout or cancel),
    or, when a preemption asked it to stop, ``("kill", "preempt")`` after the grace;
    ``("kill", reason)`` once the grace period after that has passed, else None."""
    if attempt.stop_reason is None:
        if cancel_requested:
            return ("term", "cancel")
        if now >= attempt.started_at + timedelta(seconds=timeout_seconds):
            return ("term", "timeout")
        return None
    requested = attempt.stop_requested_at
    if attempt.killed_at is None and requested is not None:
        return (
            ("kill", attempt.stop_reason)
            if now >= requested + timedelta(seconds=grace_seconds)
            else None
        )
    return None
