"""The asyncio SDK: the same surface as :mod:`sylphx._client` with ``async def``.

Each call opens its own ``httpx.AsyncClient`` so handles are safe to use from
any event loop.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from ._errors import ValidationError
from ._machines import MachineName
from ._spec import AdmissionFallback, CompletionMode, RunSpec
from ._states import RunState
from ._transport import (
    ClientConfig,
    LogStream,
    VolumeMountLike,
    as_sylphx,
    build_spec,
    check,
    is_retryable_connect,
    json_body,
    list_params,
    log_params,
    parse_list,
    parse_model,
    spec_fields,
    stream_timeout,
)
from ._views import Aggregate, Logs, RunList, RunView, ShardView, VolumeView
from ._waiting import WaitLoop, refuses_wait, wait_params, wait_timeout

__all__ = ["AsyncRun", "AsyncRunsClient", "AsyncVolumesClient"]


async def _recover(config: ClientConfig, exc: Exception) -> bool:
    """After a refused connection, restart the embedded server; True if worth retrying."""
    if config.embedded_home is None or not is_retryable_connect(exc):
        return False
    from ._embedded import ensure_local_server

    home = config.embedded_home
    await anyio.to_thread.run_sync(lambda: ensure_local_server(home))
    return True


async def _request(
    config: ClientConfig,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: Mapping[str, str | int] | None = None,
    timeout: httpx.Timeout | None = None,
) -> httpx.Response:
    for attempt in (1, 2):
        try:
            async with config.async_http() as client:
                return await client.request(
                    method, path, json=json, params=params, timeout=timeout or config.timeout
                )
        except httpx.HTTPError as exc:
            if attempt == 1 and await _recover(config, exc):
                continue
            raise as_sylphx(config, exc) from exc
    raise AssertionError("unreachable")


async def _stream(
    config: ClientConfig, run_id: str, params: dict[str, str | int], follow: bool, lines: bool
) -> AsyncIterator[Any]:
    path = f"/v1/runs/{quote(run_id, safe='')}/logs"
    for attempt in (1, 2):
        started = False
        try:
            async with (
                config.async_http() as client,
                client.stream(
                    "GET", path, params=params, timeout=stream_timeout(config, follow)
                ) as response,
            ):
                started = True
                if not response.is_success:
                    await response.aread()
                    check(response)
                chunks = response.aiter_lines() if lines else response.aiter_bytes()
                async for chunk in chunks:
                    yield chunk
            return
        except httpx.HTTPError as exc:
            if attempt == 1 and not started and await _recover(config, exc):
                continue
            raise as_sylphx(config, exc) from exc


def _run_path(run_id: str, suffix: str = "") -> str:
    return f"/v1/runs/{quote(run_id, safe='')}{suffix}"


class AsyncRun:
    """An async handle on one submitted run."""

    def __init__(self, config: ClientConfig, view: RunView) -> None:
        self._config = config
        self._view = view
        self._long_poll = True  # until the server refuses ``wait``

    @property
    def id(self) -> str:
        """The run id, e.g. ``wrk_01jd3x8q2m7k4f9a``."""
        return self._view.id

    @property
    def view(self) -> RunView:
        """The RunView last fetched (see :meth:`refresh`)."""
        return self._view

    @property
    def status(self) -> RunState:
        """The status as of the last fetch."""
        return self._view.status

    async def refresh(self, wait: float | None = None) -> RunView:
        """Fetch the current RunView; with ``wait`` a long-poll (see :meth:`Run.refresh`)."""
        params = None if wait is None else wait_params(wait)
        timeout = None if wait is None else wait_timeout(self._config.timeout, wait)
        if not self._long_poll:
            params = timeout = None
        path = _run_path(self.id)
        try:
            got = json_body(
                await _request(self._config, "GET", path, params=params, timeout=timeout)
            )
        except ValidationError as exc:
            if params is None or not refuses_wait(exc):
                raise
            self._long_poll = False  # an older server: plain GETs from now on
            return await self.refresh()
        self._view = parse_model(RunView, got, "run")
        return self._view

    async def wait(self, timeout: float | None = None, poll_interval: float = 0.5) -> Aggregate:
        """Wait until the run is terminal and return its aggregate.

        Each request is a long-poll the server answers as soon as the run ends;
        ``poll_interval`` paces plain polling of a server without long-polls.
        Raises TimeoutError if ``timeout`` seconds pass first (the run keeps going).
        """
        loop = WaitLoop(self.id, timeout, poll_interval)
        while True:
            done = loop.result(await self.refresh(wait=loop.next_wait()))
            if done is not None:
                return done
            await anyio.sleep(loop.pause())

    async def shards(self) -> list[ShardView]:
        """Every shard with its status, attempts, exit code and history."""
        body = json_body(await _request(self._config, "GET", _run_path(self.id, "/shards")))
        return parse_list(ShardView, body, "shard")

    async def logs(self, shard: int, attempt: int | None = None) -> Logs:
        """The captured stdout and stderr of one shard (its latest attempt by default)."""
        out: dict[str, str] = {}
        for stream in ("stdout", "stderr"):
            chunks = [
                chunk
                async for chunk in self.stream_log_bytes(
                    shard, stream, follow=False, attempt=attempt
                )
            ]
            out[stream] = b"".join(chunks).decode(errors="replace")
        return Logs(stdout=out["stdout"], stderr=out["stderr"])

    def stream_logs(
        self,
        shard: int,
        stream: LogStream = "stdout",
        follow: bool = True,
        attempt: int | None = None,
    ) -> AsyncIterator[str]:
        """Async-iterate one shard's output line by line (without newlines); with
        ``follow``, until the shard ends."""
        params = log_params(shard, stream, follow, attempt)
        return _stream(self._config, self.id, params, follow, lines=True)

    def stream_log_bytes(
        self,
        shard: int,
        stream: LogStream = "stdout",
        follow: bool = True,
        attempt: int | None = None,
    ) -> AsyncIterator[bytes]:
        """Async-iterate one shard's raw output as it arrives."""
        params = log_params(shard, stream, follow, attempt)
        return _stream(self._config, self.id, params, follow, lines=False)

    async def cancel(self) -> RunView:
        """Ask the control plane to cancel the run (asynchronous; see :meth:`wait`)."""
        self._view = await AsyncRunsClient.cancel(self._config, self.id)
        return self._view

    async def delete(self) -> None:
        """Delete this ended run, its shards and logs (its usage stays on record)."""
        await AsyncRunsClient.delete(self._config, self.id)

    def __repr__(self) -> str:
        return f"AsyncRun({self.id!r}, status={self._view.status.value!r})"


class AsyncRunsClient:
    """Async twin of :class:`sylphx.RunsClient`."""

    @staticmethod
    async def submit(config: ClientConfig, spec: RunSpec) -> AsyncRun:
        """Submit an already validated spec."""
        response = await _request(config, "POST", "/v1/runs", json=spec.to_wire())
        return AsyncRun(config, parse_model(RunView, json_body(response), "run"))

    @staticmethod
    async def run_distributed(
        config: ClientConfig,
        *,
        command: Sequence[str],
        image: str | None = None,
        parallelism: int | None = None,
        machine: MachineName | None = None,
        gang_scheduling: bool | None = None,
        backoff_limit_per_index: int | None = None,
        completion_mode: CompletionMode | None = None,
        volume_mounts: Iterable[VolumeMountLike] | None = None,
        timeout_seconds: int | None = None,
        env: Mapping[str, str] | None = None,
        working_dir: str | None = None,
        secrets: Sequence[str] | None = None,
        network: bool | None = None,
        admission_timeout_seconds: int | None = None,
        admission_fallback: AdmissionFallback | None = None,
    ) -> AsyncRun:
        """Fan ``command`` out to ``parallelism`` indexed shards and return the handle.

        The spec is validated locally first (same errors as the server). With no
        ``image``, the command runs on the host in ``working_dir`` (default: cwd).
        """
        fields = spec_fields(
            image=image, command=command, parallelism=parallelism, machine=machine,
            gang_scheduling=gang_scheduling, backoff_limit_per_index=backoff_limit_per_index,
            completion_mode=completion_mode, volume_mounts=volume_mounts,
            timeout_seconds=timeout_seconds, env=env, working_dir=working_dir,
            secrets=secrets, network=network,
            admission_timeout_seconds=admission_timeout_seconds,
            admission_fallback=admission_fallback,
        )  # fmt: skip
        return await AsyncRunsClient.submit(config, build_spec(fields))

    @staticmethod
    async def run(
        config: ClientConfig,
        *,
        command: Sequence[str],
        image: str | None = None,
        machine: MachineName | None = None,
        volume_mounts: Iterable[VolumeMountLike] | None = None,
        timeout_seconds: int | None = None,
        env: Mapping[str, str] | None = None,
        working_dir: str | None = None,
    ) -> AsyncRun:
        """Start a single-shard run (the N=1 case of :meth:`run_distributed`)."""
        fields = spec_fields(
            image=image, command=command, machine=machine, volume_mounts=volume_mounts,
            timeout_seconds=timeout_seconds, env=env, working_dir=working_dir,
        )  # fmt: skip
        return await AsyncRunsClient.submit(config, build_spec(fields))

    @staticmethod
    async def get(config: ClientConfig, run_id: str) -> AsyncRun:
        """A handle on an existing run (raises NotFound for unknown ids)."""
        body = json_body(await _request(config, "GET", _run_path(run_id)))
        return AsyncRun(config, parse_model(RunView, body, "run"))

    @staticmethod
    async def list(
        config: ClientConfig,
        status: RunState | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunList:
        """One page of runs, newest first; pass ``next_cursor`` as ``cursor`` for more."""
        params = list_params(None if status is None else str(status), limit, cursor)
        body = json_body(await _request(config, "GET", "/v1/runs", params=params))
        return parse_model(RunList, body, "run list")

    @staticmethod
    async def cancel(config: ClientConfig, run_id: str) -> RunView:
        """Request cancellation; the run becomes ``cancelled`` within seconds."""
        body = json_body(await _request(config, "POST", _run_path(run_id, "/cancel")))
        return parse_model(RunView, body, "run")

    @staticmethod
    async def delete(config: ClientConfig, run_id: str) -> None:
        """Delete an ended run with its shards and logs; its usage stays on record
        (ConflictError while it has not ended: cancel it first)."""
        check(await _request(config, "DELETE", _run_path(run_id)))


class AsyncVolumesClient:
    """Async twin of :class:`sylphx.VolumesClient`."""

    @staticmethod
    async def create(config: ClientConfig, name: str | None = None) -> VolumeView:
        """Create a volume; mount it with ``volume_mounts=[{"volume_id": v.id, ...}]``."""
        body = json_body(await _request(config, "POST", "/v1/volumes", json={"name": name}))
        return parse_model(VolumeView, body, "volume")

    @staticmethod
    async def list(config: ClientConfig) -> builtins.list[VolumeView]:
        """Every volume."""
        body = json_body(await _request(config, "GET", "/v1/volumes"))
        return parse_list(VolumeView, body, "volume")

    @staticmethod
    async def delete(config: ClientConfig, volume_id: str) -> None:
        """Delete a volume (ConflictError while a live run mounts it)."""
        check(await _request(config, "DELETE", f"/v1/volumes/{quote(volume_id, safe='')}"))
