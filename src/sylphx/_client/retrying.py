"""When the SDK repeats a request, and how: bounded exponential backoff with jitter
(stamina), shared by the sync and async clients.

- A request that never reached a server (connection refused or timed out while
  connecting) is repeated whatever its method: a control plane restarting is away for
  a few seconds, and nothing was done.
- Idempotent requests (reads, long-polls, cancels, submits carrying an idempotency key)
  are also repeated after a 503 (the store or server is unavailable) or a connection
  lost mid-answer.
- A 429 is repeated only with ``wait_for_quota``, after the ``Retry-After`` it names.
- Nothing else is: a 4xx is the caller's to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import stamina

from sylphx._core.errors import QuotaExceeded, ServerUnavailable, StoreUnavailable

if TYPE_CHECKING:  # what retry_context returns: iterable both sync and async
    from stamina._core import _RetryContextIterator

__all__ = ["RetryPolicy"]

DEFAULT_ATTEMPTS = 10
DEFAULT_TIMEOUT = 60.0  # seconds: more than a control plane takes to restart


@dataclass(frozen=True)
class RetryPolicy:
    """How long the SDK keeps trying: at most ``attempts`` tries within ``timeout``
    seconds (waits of 0.1 s doubling up to 5 s, with up to 1 s of jitter);
    ``wait_for_quota``: seconds a submit may keep waiting out 429s (None: raise at once).
    ``RetryPolicy(attempts=1)`` never repeats a request."""

    attempts: int = DEFAULT_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT
    wait_for_quota: float | None = None

    def context(self, *, idempotent: bool) -> _RetryContextIterator:
        """The ``for attempt in ...: with attempt:`` iterator of one request."""
        quota = self.wait_for_quota or 0.0
        return stamina.retry_context(
            on=self._hook(idempotent),
            attempts=None if quota else self.attempts,
            timeout=max(self.timeout, quota),
            wait_initial=0.1,
            wait_max=5.0,
            wait_jitter=1.0,
        )

    def _hook(self, idempotent: bool) -> Callable[[Exception], bool | float]:
        def retry(exc: Exception) -> bool | float:
            if isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout):
                return True  # never reached a server
            if isinstance(exc, QuotaExceeded):
                if self.wait_for_quota is None:
                    return False
                return float(exc.retry_after) if exc.retry_after else True
            return idempotent and isinstance(exc, ServerUnavailable | StoreUnavailable)

        return retry
