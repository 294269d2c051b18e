"""Shared plumbing of the sync and async SDK: connection config, specs, responses.

Nothing here performs I/O on its own except :class:`ClientConfig`'s lazily created
HTTP clients: one ``httpx.Client``, and one ``httpx.AsyncClient`` per event loop (an async
client's connections belong to the loop that opened them).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pydantic

from sylphx._core.errors import (
    QuotaExceeded,
    ServerUnavailable,
    SylphxError,
    TransportError,
    ValidationError,
    error_from_body,
)
from sylphx._core.failure import FailureRule, RetryBackoff
from sylphx._core.merge import MergeSpec
from sylphx._core.spec import RunSpec, VolumeMount

from .retrying import RetryPolicy

__all__ = ["ClientConfig", "LogStream", "create_client"]

LogStream = Literal["stdout", "stderr"]
UDS_BASE_URL = "http://sylphx"
VolumeMountLike = VolumeMount | Mapping[str, Any]
M = TypeVar("M", bound=pydantic.BaseModel)


class ClientConfig:
    """Where the control plane is and how to talk to it; share one per process.

    Build it with :func:`create_client`. Its HTTP clients are created on first use and
    kept (connections are reused); call :meth:`close` (and :meth:`aclose` in each event
    loop that used it) when done. ``retry`` says when a request is repeated.
    """

    __slots__ = (
        "_async",
        "_embedded_home",
        "_fix",
        "_http",
        "_lock",
        "_timeout",
        "_token",
        "_uds",
        "_url",
        "retry",
    )

    def __init__(
        self,
        base_url: str,
        *,
        uds: str | None = None,
        timeout: float = 30.0,
        embedded_home: Path | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        unreachable_fix: str | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._fix = unreachable_fix
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._async = weakref.WeakKeyDictionary()
        self._token = token
        self._url = base_url.rstrip("/")
        self._uds = uds
        self._timeout = timeout
        self._embedded_home = embedded_home
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """The HTTP base URL (``http://sylphx`` when talking over a Unix socket)."""
        return self._url

    @property
    def uds(self) -> str | None:
        """The Unix socket path, or None for TCP."""
        return self._uds

    @property
    def timeout(self) -> float:
        """Per-request timeout in seconds (log streams with follow have no read timeout)."""
        return self._timeout

    @property
    def embedded_home(self) -> Path | None:
        """SYLPHX_HOME of the embedded control plane this config uses, if any."""
        return self._embedded_home

    @property
    def unreachable_fix(self) -> str | None:
        """What to do when nothing answers (names where the URL came from), if known."""
        return self._fix

    @property
    def headers(self) -> dict[str, str]:
        """Headers sent with every request (the API key, when there is one)."""
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    @property
    def description(self) -> str:
        """Human text naming the endpoint, for error messages."""
        if self._uds:
            return f"{self._url} (unix socket {self._uds})"
        return self._url

    def http(self) -> httpx.Client:
        """The shared synchronous client, created on first use."""
        with self._lock:
            if self._http is None or self._http.is_closed:
                transport = httpx.HTTPTransport(uds=self._uds) if self._uds else None
                self._http = httpx.Client(
                    base_url=self._url,
                    transport=transport,
                    timeout=self._timeout,
                    headers=self.headers,
                )
            return self._http

    def async_http(self) -> httpx.AsyncClient:
        """The async client of the running event loop, created on first use there."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.get(loop)
            if client is None or client.is_closed:
                transport = httpx.AsyncHTTPTransport(uds=self._uds) if self._uds else None
                client = httpx.AsyncClient(
                    base_url=self._url,
                    transport=transport,
                    timeout=self._timeout,
                    headers=self.headers,
                )
                self._async[loop] = client
            return client

    def close(self) -> None:
        """Close the shared synchronous client (it is re-created if used again)."""
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    async def aclose(self) -> None:
        """Close the running event loop's async client (re-created if used again)."""
        with self._lock:
            client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def __enter__(self) -> ClientConfig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ClientConfig({self.description!r})"


def create_client(
    url: str | None = None,
    *,
    token: str | None = None,
    timeout: float = 30.0,
    retry: RetryPolicy | None = None,
) -> ClientConfig:
    """Connect to a control plane.

    ``url`` (``unix:///path/to.sock`` selects a Unix socket) defaults to ``$SYLPHX_URL``,
    then the current context's URL (``sylphx context use NAME``). With none of them, the
    embedded local control plane for ``$SYLPHX_HOME`` is used, started on demand and shared
    between terminals. ``token`` (the API key) defaults to ``$SYLPHX_TOKEN``, then the key
    stored for the URL (by ``sylphx login`` or in a context); the embedded control plane's
    own key is used automatically. ``retry``: when requests are repeated (default: reads
    and long-polls ride through a restart of the control plane for up to 60 s;
    ``RetryPolicy(wait_for_quota=600)`` makes submits wait out 429s).
    """
    from .contexts import connect, resolve

    return connect(resolve(url), token=token, timeout=timeout, retry=retry)


# -- errors ------------------------------------------------------------------


def unavailable(config: ClientConfig, exc: Exception) -> ServerUnavailable:
    """A ServerUnavailable naming the endpoint, the cause and what to do."""
    if config.embedded_home is not None:
        fix = f"check {config.embedded_home / 'server.log'}, or run `sylphx local stop` and retry"
    elif config.unreachable_fix is not None:
        fix = config.unreachable_fix
    elif config.uds:
        fix = "start it with `sylphx server --uds PATH`, or correct the URL"
    else:
        fix = "start `sylphx server` there, or correct the URL"
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        what = f"no response within {config.timeout:g}s"
    else:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ServerUnavailable(
        f"cannot reach the sylphx control plane at {config.description} ({what}). Fix: {fix}"
    )


def check(response: httpx.Response) -> None:
    """Raise the typed sylphx error for a non-2xx response (its body must be read)."""
    if response.is_success:
        return
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    err = error_from_body(response.status_code, body)
    if isinstance(err, QuotaExceeded) and response.headers.get("retry-after", "").isdigit():
        err.retry_after = int(response.headers["retry-after"])
    raise err


def json_body(response: httpx.Response) -> Any:
    """The JSON body of a successful response, or TransportError."""
    check(response)
    try:
        return response.json()
    except ValueError:
        raise TransportError(
            f"{response.request.method} {response.request.url.path}: expected JSON,"
            f" got {response.headers.get('content-type')!r}: {response.text[:200]!r}"
        ) from None


def parse_model(model: type[M], data: Any, what: str) -> M:
    """Validate a response body into a view model, wrapping schema mismatches."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:  # server/SDK version skew
        raise TransportError(f"unexpected {what} from the server: {exc}") from None


def parse_json(model: type[M], data: bytes, what: str) -> M:
    """Validate JSON text (e.g. a record of an NDJSON stream) into a view model: text that
    is not JSON or not the model is a TransportError."""
    try:
        return model.model_validate_json(data)
    except pydantic.ValidationError as exc:  # cut, garbled, or server/SDK version skew
        raise TransportError(f"unexpected {what} from the server: {exc}") from None


def parse_list(model: type[M], data: Any, what: str) -> list[M]:
    """Validate a JSON list response item by item."""
    if not isinstance(data, list):
        raise TransportError(f"expected a JSON list of {what}s, got {type(data).__name__}")
    return [parse_model(model, item, what) for item in data]


# -- requests ----------------------------------------------------------------


def _mount(m: VolumeMountLike) -> VolumeMountLike:
    return m if isinstance(m, VolumeMount) else dict(m)


def build_spec(fields: Mapping[str, Any]) -> RunSpec:
    """Validate SDK keyword arguments into a spec, as the server will.

    Keys that are None are left to the spec's defaults. With no image and no
    working directory, the command runs in the caller's current directory.
    """
    data = {k: v for k, v in fields.items() if v is not None}
    if isinstance(data.get("command"), str):
        raise ValidationError(
            "command: must be an argv list, not a string. Fix: e.g. ['python', 'train.py']",
            details=[
                {
                    "field": "command",
                    "rule": "must be an argv list",
                    "fix": "e.g. ['python', 'train.py']",
                }
            ],
        )
    if "command" in data:
        data["command"] = list(data["command"])
    mounts = data.pop("volume_mounts", None)
    if mounts is not None:
        data["volume_mounts"] = [_mount(m) for m in mounts]
    if data.get("image") is None and "working_dir" not in data and "workingDir" not in data:
        data["working_dir"] = os.getcwd()
    return RunSpec.parse(data)


def spec_fields(
    *,
    image: str | None,
    command: Sequence[str] | None,
    parallelism: int | None = None,
    machine: str | None = None,
    gang_scheduling: bool | None = None,
    backoff_limit_per_index: int | None = None,
    completion_mode: str | None = None,
    volume_mounts: Iterable[VolumeMountLike] | None = None,
    timeout_seconds: int | None = None,
    env: Mapping[str, str] | None = None,
    working_dir: str | None = None,
    secrets: Sequence[str] | None = None,
    network: bool | None = None,
    admission_timeout_seconds: int | None = None,
    admission_fallback: str | None = None,
    max_failed_indexes: int | None = None,
    failure_policy: Sequence[Mapping[str, Any] | FailureRule] | None = None,
    retry_backoff: Mapping[str, Any] | RetryBackoff | None = None,
    merge: Mapping[str, Any] | MergeSpec | None = None,
    max_compute_seconds: float | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``run``/``run_distributed`` as a spec dict (iterables
    made lists, mappings dicts; None: the spec's default)."""
    fields = dict(locals())
    for name, make in (("secrets", list), ("failure_policy", list), ("volume_mounts", list)):
        fields[name] = None if fields[name] is None else make(fields[name])
    fields["env"] = None if env is None else dict(env)
    return fields


def list_params(status: str | None, limit: int, cursor: str | None) -> dict[str, str | int]:
    """Query parameters of ``GET /v1/runs``."""
    params: dict[str, str | int] = {"limit": limit}
    if status is not None:
        params["status"] = str(status)
    if cursor is not None:
        params["cursor"] = cursor
    return params


def log_params(
    shard: int | Literal["merge"], stream: str, follow: bool, attempt: int | None
) -> dict[str, str | int]:
    """Query parameters of ``GET /v1/runs/{id}/logs`` (stream is checked locally);
    ``shard="merge"``: the merge step's log."""
    if stream not in ("stdout", "stderr"):
        raise ValidationError(
            f"stream: must be 'stdout' or 'stderr' (got {stream!r}). Fix: pick one",
            details=[{"field": "stream", "rule": "must be stdout or stderr", "fix": "pick one"}],
        )
    where: dict[str, str | int] = {"merge": "true"} if shard == "merge" else {"shard": shard}
    params: dict[str, str | int] = {
        **where,
        "stream": stream,
        "follow": "true" if follow else "false",
    }
    if attempt is not None:
        params["attempt"] = attempt
    return params


def stream_timeout(config: ClientConfig, follow: bool) -> httpx.Timeout:
    """Followed log streams may be silent for long; only connecting is bounded."""
    return httpx.Timeout(config.timeout, read=None if follow else config.timeout)


def is_retryable_connect(exc: Exception) -> bool:
    """The request never reached a server, so retrying it is safe."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def as_sylphx(config: ClientConfig, exc: httpx.HTTPError) -> SylphxError:
    """Map an httpx failure to a sylphx error."""
    if isinstance(exc, httpx.TransportError):
        return unavailable(config, exc)
    return TransportError(f"HTTP failure talking to {config.description}: {exc}")
