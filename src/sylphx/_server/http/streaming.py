"""Streamed answers that let go of what they hold as soon as the response ends."""

from __future__ import annotations

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["ClosingStream"]


class ClosingStream(StreamingResponse):
    """A streamed log whose body is closed as soon as the response ends, however it ends
    (its client gone included): a followed log frees its stream slot then, not whenever
    the body would be collected. The API's logs and the dashboard's both use it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
