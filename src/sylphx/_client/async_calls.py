"""How the SDK sends a request (``async_runs``, ``async_resources``): :func:`_request`
repeats it as :class:`RetryPolicy` says (a restart of the control plane is ridden through
by reads, long-polls, cancels and keyed submits) and restarts the embedded control plane
when it is gone; :func:`_stream` opens a log stream the same way (:func:`_records`: an
NDJSON one, record by record). ``calls.py`` is generated from this file (``make sdk``)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from .io_async import run_blocking
from .transport import ClientConfig, as_sylphx, check, is_retryable_connect, stream_timeout

_RETRIED_STATUSES = (429, 503)  # raised inside the retry loop; every other status returns


async def _recover(config: ClientConfig, exc: Exception) -> None:
    """After a refused connection to the embedded control plane, start it again."""
    if config.embedded_home is not None and is_retryable_connect(exc):
        from .embedded import ensure_local_server

        await run_blocking(functools.partial(ensure_local_server, config.embedded_home))


async def _request(
    config: ClientConfig,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: Mapping[str, str | int] | None = None,
    timeout: httpx.Timeout | None = None,
    headers: Mapping[str, str] | None = None,
    idempotent: bool | None = None,
) -> httpx.Response:
    """Send one request, repeated as ``config.retry`` says (GET: idempotent)."""
    safe = method == "GET" if idempotent is None else idempotent
    async for attempt in config.retry.context(idempotent=safe):
        with attempt:
            try:
                response = await config.async_http().request(
                    method,
                    path,
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=timeout or config.timeout,
                )
            except httpx.HTTPError as exc:
                await _recover(config, exc)
                raise as_sylphx(config, exc) from exc
            if response.status_code in _RETRIED_STATUSES:
                check(response)  # the retry policy decides on the typed error
            return response
    raise AssertionError("unreachable")  # the retry context raises when it gives up


async def _stream(
    config: ClientConfig, run_id: str, params: dict[str, str | int], follow: bool, lines: bool
) -> AsyncIterator[Any]:
    """A log's chunks as they come. Opening the stream is repeated as a read is; a stream
    cut once it has started is not (its chunks would repeat): that raises."""
    path = f"/v1/runs/{quote(run_id, safe='')}/logs"
    client = config.async_http()
    request = client.build_request(
        "GET", path, params=params, timeout=stream_timeout(config, follow)
    )
    response: httpx.Response | None = None
    async for attempt in config.retry.context(idempotent=True):
        with attempt:
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                await _recover(config, exc)
                raise as_sylphx(config, exc) from exc
            if not response.is_success:
                await response.aread()
                await response.aclose()
                check(response)
    assert response is not None
    try:
        if lines:  # text lines, cut at "\n" only (a "\r\n" ending dropped too)
            async for line in _cut(response.aiter_bytes()):
                yield line.removesuffix(b"\r").decode(errors="replace")
        else:
            async for chunk in response.aiter_bytes():
                yield chunk
    except httpx.HTTPError as exc:
        raise as_sylphx(config, exc) from exc
    finally:
        await response.aclose()


async def _cut(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The lines of a byte stream without their ``\n``, cut there only -- never at the
    other separators ``str.splitlines`` (and httpx's ``aiter_lines``) knows: U+2028,
    U+0085, a lone ``\r``... which a shard's output or a JSON string may hold. A last
    line without ``\n`` comes at the end."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        end = buffer.rfind(b"\n")
        if end < 0:
            continue
        for line in bytes(buffer[:end]).split(b"\n"):
            yield line
        del buffer[: end + 1]
    if buffer:
        yield bytes(buffer)


async def _records(
    config: ClientConfig, run_id: str, params: dict[str, str | int], follow: bool
) -> AsyncIterator[bytes]:
    """An NDJSON log stream's records as they come (see :func:`_stream`), cut at ``\n``
    only: a record is never cut at another line separator (U+2028, U+0085, ``\r``...)."""
    async for record in _cut(_stream(config, run_id, params, follow, lines=False)):
        if record:
            yield record


def _run_path(run_id: str, suffix: str = "") -> str:
    return f"/v1/runs/{quote(run_id, safe='')}{suffix}"
