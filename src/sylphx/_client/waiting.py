"""How the SDK waits for a run to end, shared by the sync and async clients (and the CLI).

Each request is a long-poll, ``GET /v1/runs/{id}?wait=SECONDS``: the server answers as soon
as the run is terminal, or after ``wait`` seconds with the view it has then. A server that
refuses ``wait`` (422 naming it: an older one) is polled plainly instead, and one that
answers a long-poll early without an end (it ignores ``wait``, or has too many waiting) is
paced by the caller's ``poll_interval``, so no loop here ever spins.
"""

from __future__ import annotations

import time

import httpx

from sylphx._core.errors import ValidationError
from sylphx._core.limits import MAX_WAIT
from sylphx._core.views import Aggregate, RunView

__all__ = ["MAX_WAIT", "WaitLoop", "refuses_wait", "wait_params", "wait_timeout"]

LONG_POLL_SECONDS = 20.0  # what one request of a wait loop asks for
MIN_WAIT = 0.05  # less time than this left: a plain GET


def wait_params(wait: float) -> dict[str, str]:
    """Query parameters of a long-poll (``wait`` is checked locally, as the server would)."""
    if not 0 < wait <= MAX_WAIT:  # also refuses NaN
        rule = f"must be a number of seconds, 0 < wait <= {MAX_WAIT:g} (got {wait!r})"
        fix = f"give e.g. wait=30; to wait longer than {MAX_WAIT:g}s, call wait()"
        raise ValidationError(
            f"wait: {rule}. Fix: {fix}", details=[{"field": "wait", "rule": rule, "fix": fix}]
        )
    return {"wait": repr(float(wait))}


def wait_timeout(timeout: float, wait: float) -> httpx.Timeout:
    """A long-poll may be silent for ``wait`` seconds before the usual response time."""
    return httpx.Timeout(timeout, read=timeout + wait)


def refuses_wait(exc: ValidationError) -> bool:
    """Whether a 422 is a server refusing the ``wait`` parameter itself."""
    fields = {str(d.get("field")) for d in exc.details}
    return bool(fields & {"wait", "query.wait"}) or exc.message.startswith("wait")


class WaitLoop:
    """The schedule of one ``wait()``: how long each request waits, when to pause, when to
    give up (``timeout`` None: never)."""

    def __init__(self, run_id: str, timeout: float | None, poll_interval: float) -> None:
        self.run_id = run_id
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.asked: float | None = None
        self.started = 0.0

    def next_wait(self) -> float | None:
        """The ``wait`` of the next request (None: a plain GET, almost out of time)."""
        left = LONG_POLL_SECONDS if self.deadline is None else self.deadline - time.monotonic()
        self.asked = min(LONG_POLL_SECONDS, left) if left >= MIN_WAIT else None
        self.started = time.monotonic()
        return self.asked

    def result(self, view: RunView) -> Aggregate | None:
        """The aggregate once ``view`` is terminal; None to go on; TimeoutError when out of
        time (the run keeps going)."""
        if view.status.terminal:
            return view.aggregate
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeoutError(
                f"run {self.run_id} is still {view.status} after {self.timeout:g}s"
                f" ({view.aggregate.succeeded}/{view.aggregate.total} shards succeeded)"
            )
        return None

    def pause(self) -> float:
        """Seconds to sleep before the next request: none after a long-poll that waited;
        ``poll_interval`` (never past the deadline) after a plain GET or an early answer."""
        now = time.monotonic()
        if self.asked is not None and now - self.started >= self.asked / 2:
            return 0.0
        pause = self.poll_interval
        if self.deadline is not None:
            pause = min(pause, self.deadline - now)
        return max(0.0, pause)
