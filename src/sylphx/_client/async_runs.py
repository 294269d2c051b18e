"""The SDK over the HTTP API: runs (volumes, usage and secrets: ``async_resources.py``).

These two files are the one implementation. They are written async (``AsyncRunsClient``,
``AsyncRun``...); the synchronous SDK (``RunsClient``, ``Run``...: ``runs.py`` and
``resources.py`` beside them) is generated from them by ``tools/unasync_sdk.py``
(``make sdk``; ``make lint`` checks it is current), as httpcore does. Edit these, never
the generated ones.

Requests go through ``async_calls``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Literal

from sylphx._core.errors import ValidationError
from sylphx._core.failure import FailureRule, RetryBackoff
from sylphx._core.indexes import compress
from sylphx._core.machines import MachineName
from sylphx._core.merge import MergeSpec
from sylphx._core.retry import RetryRequest
from sylphx._core.spec import AdmissionFallback, CompletionMode, RunSpec
from sylphx._core.states import RunState
from sylphx._core.views import (
    Aggregate,
    LogChunk,
    LogLine,
    Logs,
    Quote,
    RunList,
    RunView,
    ShardView,
)

from .async_calls import _records, _request, _run_path, _stream
from .io_async import sleep
from .transport import (
    ClientConfig,
    LogStream,
    VolumeMountLike,
    build_spec,
    check,
    create_client,
    json_body,
    list_params,
    log_params,
    parse_json,
    parse_list,
    parse_model,
    spec_fields,
)
from .waiting import WaitLoop, refuses_wait, wait_params, wait_timeout

__all__ = ["AsyncRun", "AsyncRunsClient", "ClientConfig", "create_client"]


class AsyncRun:
    """A handle on one submitted run; every method asks the control plane afresh."""

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
        """Fetch the current RunView. With ``wait`` (seconds, 0 < wait <= 60) it is a
        long-poll: answered as soon as the run is terminal, or after ``wait`` seconds with
        the view then (a server without long-polls answers at once)."""
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
        ``poll_interval`` paces plain polling of a server without long-polls. A restart
        of the control plane meanwhile is ridden through (see :class:`RetryPolicy`).
        Raises TimeoutError if ``timeout`` seconds pass first (the run keeps going).
        """
        loop = WaitLoop(self.id, timeout, poll_interval)
        while True:
            done = loop.result(await self.refresh(wait=loop.next_wait()))
            if done is not None:
                return done
            await sleep(loop.pause())

    async def shards(self) -> list[ShardView]:
        """Every shard with its status, attempts, exit code and history."""
        body = json_body(await _request(self._config, "GET", _run_path(self.id, "/shards")))
        return parse_list(ShardView, body, "shard")

    async def logs(self, shard: int | Literal["merge"], attempt: int | None = None) -> Logs:
        """The captured stdout and stderr of one shard, or with ``"merge"`` of the merge
        step (its latest attempt by default)."""
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
        shard: int | Literal["merge"],
        stream: LogStream = "stdout",
        follow: bool = True,
        attempt: int | None = None,
    ) -> AsyncIterator[str]:
        """One shard's output line by line (without newlines); with ``follow``, until
        the shard ends."""
        params = log_params(shard, stream, follow, attempt)
        return _stream(self._config, self.id, params, follow, lines=True)

    def stream_log_bytes(
        self,
        shard: int | Literal["merge"],
        stream: LogStream = "stdout",
        follow: bool = True,
        attempt: int | None = None,
    ) -> AsyncIterator[bytes]:
        """One shard's raw output as it arrives."""
        params = log_params(shard, stream, follow, attempt)
        return _stream(self._config, self.id, params, follow, lines=False)

    async def stream_all_logs(
        self,
        stream: LogStream = "stdout",
        follow: bool = True,
        indices: str | Iterable[int] | None = None,
        failed: bool = False,
    ) -> AsyncIterator[LogLine]:
        """Every shard's output line by line, interleaved as the lines come, in one
        response: each a :class:`LogLine` (shard index, attempt, line, when the server
        read it). With ``follow``, until every shard has ended (moving on to retries).
        ``indices`` (``"0-3,7"`` or a list): those shards only. ``failed``: only shards
        that ended failed or timed_out, each whole once it ended (following, also the
        ones that end so later)."""
        params = log_params(0, stream, follow, None)  # checks the stream
        del params["shard"]
        params["all"] = "true"
        if indices is not None:
            params["indices"] = indices if isinstance(indices, str) else compress(indices)
        if failed:
            params["failed"] = "true"
        async for record in _records(self._config, self.id, params, follow):
            for line in parse_json(LogChunk, record, "log record").lines():
                yield line

    async def cancel(self) -> RunView:
        """Ask the control plane to cancel the run (it ends within seconds; see
        :meth:`wait`)."""
        self._view = await AsyncRunsClient.cancel(self._config, self.id)
        return self._view

    async def retry(self, indices: str | Iterable[int] | None = None) -> RunView:
        """Run the unsuccessful indices of this ended run again, in the same run
        (``indices``: ``"2,5,7-9"`` or a list; default every index that ended failed,
        timed_out or cancelled). The run is queued again; :meth:`wait` for its new end.
        ConflictError while it runs or for an index that succeeded."""
        self._view = await AsyncRunsClient.retry(self._config, self.id, indices)
        return self._view

    async def delete(self) -> None:
        """Delete this ended run, its shards and logs (its usage stays on record)."""
        await AsyncRunsClient.delete(self._config, self.id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, status={self._view.status.value!r})"


class AsyncRunsClient:
    """Submit and inspect runs. Mirrors the TypeScript SDK: ``RunsClient.runDistributed``."""

    @staticmethod
    async def submit(config: ClientConfig, spec: RunSpec) -> AsyncRun:
        """Submit an already validated spec. The request carries a fresh idempotency key,
        so repeating it (a connection lost before the answer) never starts a second run."""
        key = {"Idempotency-Key": uuid.uuid4().hex}
        response = await _request(
            config, "POST", "/v1/runs", json=spec.to_wire(), headers=key, idempotent=True
        )
        return AsyncRun(config, parse_model(RunView, json_body(response), "run"))

    @staticmethod
    async def run_distributed(
        config: ClientConfig,
        *,
        command: Sequence[str] | None = None,
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
        max_failed_indexes: int | None = None,
        failure_policy: Sequence[Mapping[str, Any] | FailureRule] | None = None,
        retry_backoff: Mapping[str, Any] | RetryBackoff | None = None,
        merge: Mapping[str, Any] | MergeSpec | None = None,
        max_compute_seconds: float | None = None,
    ) -> AsyncRun:
        """Fan ``command`` out to ``parallelism`` indexed shards and return the handle.

        The spec is validated locally first (same errors as the server). With no
        ``image``, the command runs on the host in ``working_dir`` (default: cwd); with
        one, ``command`` replaces its CMD, or may be omitted to run that CMD.
        ``failure_policy`` rules and ``retry_backoff`` take the wire's camelCase keys
        (``{"onExitCodes": {"operator": "In", "values": [42]}, "action": "FailIndex"}``)
        or snake_case ones, and so does ``merge``, the step run once every shard ended
        (``{"command": ["python", "merge.py"], "when": "always"}``; its log:
        ``run.logs("merge")``).
        """
        fields = spec_fields(
            image=image, command=command, parallelism=parallelism, machine=machine,
            gang_scheduling=gang_scheduling, backoff_limit_per_index=backoff_limit_per_index,
            completion_mode=completion_mode, volume_mounts=volume_mounts,
            timeout_seconds=timeout_seconds, env=env, working_dir=working_dir,
            secrets=secrets, network=network,
            admission_timeout_seconds=admission_timeout_seconds,
            admission_fallback=admission_fallback, max_failed_indexes=max_failed_indexes,
            failure_policy=failure_policy, retry_backoff=retry_backoff, merge=merge,
            max_compute_seconds=max_compute_seconds,
        )  # fmt: skip
        return await AsyncRunsClient.submit(config, build_spec(fields))

    @staticmethod
    async def quote(config: ClientConfig, **fields: Any) -> Quote:
        """What a run of ``fields`` (``run_distributed``'s keywords) would cost and whether
        it would start now, from every check a submit makes; nothing is stored or
        reserved (``POST /v1/runs?dryRun=true``). A run that would be refused answers
        ``verdict == "refused"`` with the error a submit would raise (``quote.error``)."""
        spec = build_spec(spec_fields(**({"image": None} | fields)))
        response = await _request(
            config, "POST", "/v1/runs", json=spec.to_wire(), params={"dryRun": "true"},
            idempotent=True,
        )  # fmt: skip
        return parse_model(Quote, json_body(response), "quote")

    @staticmethod
    async def run(
        config: ClientConfig,
        *,
        command: Sequence[str] | None = None,
        image: str | None = None,
        machine: MachineName | None = None,
        volume_mounts: Iterable[VolumeMountLike] | None = None,
        timeout_seconds: int | None = None,
        env: Mapping[str, str] | None = None,
        working_dir: str | None = None,
    ) -> AsyncRun:
        """Start a single-shard run (the N=1 case of :meth:`run_distributed`; ``command``
        may be omitted with an ``image``, to run its CMD)."""
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
        path = _run_path(run_id, "/cancel")
        body = json_body(await _request(config, "POST", path, idempotent=True))
        return parse_model(RunView, body, "run")

    @staticmethod
    async def retry(
        config: ClientConfig, run_id: str, indices: str | Iterable[int] | None = None
    ) -> RunView:
        """Reopen an ended run for ``indices`` (default: every failed, timed_out or
        cancelled one). The request carries a fresh idempotency key: sent twice (a
        connection lost before the answer), it reopens the run once."""
        if indices is not None and not isinstance(indices, str):
            indices = compress(indices)
        body = RetryRequest(indices=indices).model_dump(by_alias=True, exclude_none=True)
        key = {"Idempotency-Key": uuid.uuid4().hex}
        path = _run_path(run_id, "/retry")
        response = await _request(config, "POST", path, json=body, headers=key, idempotent=True)
        return parse_model(RunView, json_body(response), "run")

    @staticmethod
    async def delete(config: ClientConfig, run_id: str) -> None:
        """Delete an ended run with its shards and logs; its usage stays on record
        (ConflictError while it has not ended: cancel it first)."""
        check(await _request(config, "DELETE", _run_path(run_id)))
