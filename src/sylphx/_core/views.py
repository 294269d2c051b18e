"""Wire models of what the API returns: runs, aggregates, shards, attempts, volumes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .spec import RunSpec
from .states import AttemptState, RunState, ShardState

__all__ = [
    "Aggregate",
    "AttemptView",
    "ErrorBody",
    "ErrorDetail",
    "FailureGroup",
    "Health",
    "LogChunk",
    "LogLine",
    "Logs",
    "OrgView",
    "Quote",
    "Readiness",
    "RunList",
    "RunView",
    "SecretView",
    "ShardView",
    "UsageReport",
    "VolumeView",
]


class _View(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_wire(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True)


class Aggregate(_View):
    """The rolled-up status of a run and its shard counts."""

    status: RunState
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    running: int = 0
    pending: int = 0
    total: int = 0

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class AttemptView(_View):
    """One try at running one shard."""

    attempt: int
    status: AttemptState
    exit_code: int | None = None
    reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    # streams whose output went past SYLPHX_MAX_LOG_BYTES: the rest was dropped and the
    # log ends with a "[sylphx: log truncated ...]" line
    log_truncated: list[str] = Field(default_factory=list)


class ShardView(_View):
    """One shard: its index, status, attempts and last exit code."""

    index: int
    status: ShardState
    attempts: int = 0
    preemptions: int = 0  # attempts stopped by the scheduler; never use retry budget
    exit_code: int | None = None
    reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: float | None = None
    retry_at: datetime | None = None  # pending in its retryBackoff: not started before then
    log_truncated: list[str] = Field(default_factory=list)  # of its latest attempt's logs
    history: list[AttemptView] = Field(default_factory=list)


class FailureGroup(_View):
    """Failed indices of a run that failed the same way: the same reason, exit code and
    last stderr line once numbers, hex, paths and ids are normalised."""

    reason: str  # the kind of failure: Error, OOMKilled, DeadlineExceeded, LaunchError, ...
    exit_code: int | None = None
    line: str = ""  # the normalised last non-empty stderr line ("" when there was none)
    count: int
    indices: str  # a compressed set, e.g. "0-3,7"
    sample: str = ""  # that line as one of them printed it


class RunView(_View):
    """A run: its id, effective spec and aggregate status."""

    id: str
    status: RunState
    spec: RunSpec
    aggregate: Aggregate
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    cancel_requested: bool = False
    message: str | None = None  # why it is queued, or why it ended as it did
    compute_seconds: float = 0.0  # metered so far: sum over attempts of wall x machine units
    queue_position: int | None = None  # 1 = next to be admitted; None unless waiting
    reopened: int = 0  # times a retry reopened it (POST /v1/runs/{id}/retry)
    # each image reference of the spec and the digest admitted for it: what its shards run
    # (a tag moved since, or a layout rewritten, does not change it)
    image_digests: dict[str, str] = Field(default_factory=dict)
    # the merge step (spec ``merge``), as a shard with index -1: ``pending`` until every
    # shard ended and ``when`` held (``skipped`` when it did not); not in the aggregate
    merge: ShardView | None = None
    # the failed indices grouped by how they failed (GET /v1/runs/{id} only; empty in lists)
    failure_groups: list[FailureGroup] = Field(default_factory=list)


class Quote(_View):
    """What a run would cost and whether it would start (``POST /v1/runs?dryRun=true``):
    every admission check run, nothing stored or reserved. Compute-seconds are standard
    (wall x shards x machine units)."""

    verdict: Literal["startsNow", "wouldQueue", "refused"]
    reason: str  # why it would queue, or why it is refused; what starts when it starts
    error: ErrorBody | None = None  # the refusal a submit would get (its code and details)
    spec: RunSpec
    # parallelism x timeoutSeconds x units (and the merge step's): every shard for its
    # whole timeout, once; at most the spend cap and the cap's overshoot
    ceiling_compute_seconds: float
    # the same for every attempt an index may make (retry budget, Ignore rules): the most
    # it can bill (preempted windows are not billed)
    retries_ceiling_compute_seconds: float
    # the org's median shard duration over its recent runs of the same command and tier
    expected_compute_seconds: float | None = None
    median_shard_seconds: float | None = None
    based_on_runs: int = 0
    monthly_credit_seconds: float
    credit_remaining_seconds: float  # of this month's credit
    billable_ceiling_seconds: float  # the ceiling's part past the remaining credit
    billable_expected_seconds: float | None = None


class RunList(_View):
    """One page of runs, newest first; pass ``next_cursor`` back for the next page."""

    items: list[RunView]
    next_cursor: str | None = None


class VolumeView(_View):
    """A ReadWriteMany volume that runs mount with ``volumeMounts``."""

    id: str
    name: str | None = None
    created_at: datetime


class Logs(_View):
    """Captured output of one shard attempt."""

    stdout: str
    stderr: str


class LogLine(_View):
    """One line of a shard's log (without its newline), as ``Run.stream_all_logs`` yields
    it: the shard's index, the attempt that wrote it, and when the control plane read it
    (UTC, to the millisecond)."""

    shard: int
    attempt: int
    line: str
    ts: datetime


class LogChunk(_View):
    """One record of the all-shard log stream (``GET /v1/runs/{id}/logs?all=true``: one
    JSON object per line): whole lines of one attempt of one shard, read at ``ts``. Only
    the last record of an attempt may end without a newline (its log did), or a piece of
    a line longer than 256 KiB."""

    shard: int
    attempt: int
    data: str
    ts: datetime

    def lines(self) -> list[LogLine]:
        """``data`` cut at its newlines (a last line without one is a line too)."""
        parts = self.data.split("\n")
        if parts[-1] == "":
            parts.pop()
        return [
            LogLine(shard=self.shard, attempt=self.attempt, line=part, ts=self.ts) for part in parts
        ]


class UsageByRun(_View):
    run_id: str
    compute_seconds: float  # billed
    unbilled_seconds: float = 0.0  # windows the platform preempted: recorded, not billed


class UsageByMachine(_View):
    machine: str
    wall_seconds: float
    compute_seconds: float


class UsageReport(_View):
    """Metered compute of an org over ``[from, to)``: standard compute-seconds, the monthly
    credits applied first, and what remains billable."""

    org: str
    plan: str
    from_: datetime = Field(alias="from")
    to: datetime
    compute_seconds: float
    credits_applied: float
    billable_seconds: float
    monthly_credit_seconds: float
    # windows the platform preempted (or whose node it lost): recorded, not billed
    unbilled_seconds: float = 0.0
    monthly_limit_seconds: float | None = None  # new runs refused (402) once billable reach it
    by_run: list[UsageByRun] = Field(default_factory=list)
    by_machine: list[UsageByMachine] = Field(default_factory=list)


class OrgView(_View):
    """The caller's org and its effective limits."""

    id: str
    name: str
    plan: str
    max_parallelism: int
    concurrent_shards: int
    shards_in_use: int
    monthly_credit_seconds: float
    monthly_limit_seconds: float | None = None  # new runs refused (402) once billable reach it
    billable_seconds_this_month: float = 0.0


class SecretView(_View):
    """A secret's name and times; its value is never returned."""

    name: str
    created_at: datetime
    updated_at: datetime


class ErrorDetail(BaseModel):
    """One broken rule: the field (or, for /readyz, the check) it is about, the rule, and
    the fix. Quota errors add ``limit``, ``max``, ``current`` and ``requested``."""

    model_config = ConfigDict(extra="allow")

    field: str
    rule: str
    fix: str


class ErrorBody(BaseModel):
    """The body of every error the API answers with, whatever its status."""

    error: str = Field(
        description="a stable code: validation_error, unschedulable, unauthorized, not_found,"
        " method_not_allowed, conflict, payload_too_large, quota_exceeded, store_unavailable,"
        " storage_full, server_unavailable, executor_error, ..."
    )
    message: str = Field(description="what went wrong and, after 'Fix:', what to do")
    details: list[ErrorDetail] = Field(default_factory=list)


class Health(_View):
    """Liveness (``GET /healthz``): the process and its event loop answer."""

    ok: Literal[True] = True
    executor: str
    capacity: str


class Readiness(_View):
    """Readiness (``GET /readyz``): this process can serve; a 503 names what it lacks."""

    ok: Literal[True] = True
    store: str = Field(description="the store's kind: sqlite or postgresql")
    lease: Literal["holder", "standby"] = Field(
        description="holder: this process reconciles; standby: another process does"
    )
    lease_holder: str = Field(description="which process holds the reconciler lease")
    log_disk_free_bytes: int


Quote.model_rebuild()  # ErrorBody is defined after it
