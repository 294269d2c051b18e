"""Tables: runs, shards, attempts, volumes. The Alembic migrations mirror these.

Runs, shards and attempts carry a ``version`` counter (SQLAlchemy's ``version_id_col``):
every UPDATE is a compare-and-set, ``... WHERE id = :id AND version = :seen``, and a
row changed by someone else since it was read raises ``StaleDataError`` instead of
being overwritten (the reconciler's pass or the API call is then rolled back and retried).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class OrgRow(Base):
    """A tenant: owns runs, volumes, keys and usage; limits come from its plan."""

    __tablename__ = "orgs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    plan: Mapped[str] = mapped_column(String(20))
    concurrent_shards: Mapped[int | None] = mapped_column(Integer)  # overrides the plan's
    monthly_credit_seconds: Mapped[float | None] = mapped_column(Float)  # overrides the plan's
    image_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # see image_policy.py
    # new runs are refused (402) once its billable compute-seconds this month reach it (0014)
    monthly_limit_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKeyRow(Base):
    """An API key; only its SHA-256 is stored (keys are 256-bit random)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, for people to tell apart
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_org_idempotency_key", "org_id", "idempotency_key", unique=True),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    parallelism: Mapped[int] = mapped_column(Integer)
    machine: Mapped[str] = mapped_column(String(16))
    gang: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    message: Mapped[str | None] = mapped_column(Text)
    # what changed its course (an admission deadline): kept in the message until it ends
    course: Mapped[str | None] = mapped_column(Text)  # migration 0012
    queue_position: Mapped[int | None] = mapped_column(Integer)  # 1 = next; None unless queued
    idempotency_key: Mapped[str | None] = mapped_column(String(255))  # see migration 0011
    # retries of the ended run (POST /v1/runs/{id}/retry), the last one's time and key
    reopened: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # 0013
    reopened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reopen_key: Mapped[str | None] = mapped_column(String(255))
    # why it is being stopped as failed (failurePolicy FailRun, maxFailedIndexes): 0013
    fail_reason: Mapped[str | None] = mapped_column(Text)
    # each image reference's digest, found at admission: what the shards run (0017)
    image_digests: Mapped[dict[str, str] | None] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    __mapper_args__ = {"version_id_col": version}

    shards: Mapped[list[ShardRow]] = relationship(
        back_populates="run", order_by="ShardRow.index", cascade="all, delete-orphan"
    )


class ShardRow(Base):
    __tablename__ = "shards"
    __table_args__ = (UniqueConstraint("run_id", "index", name="uq_shards_run_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # attempts that used retry budget
    preemptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    # retryBackoff: not started again before this; failures an Ignore rule retried (0013)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ignored: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    __mapper_args__ = {"version_id_col": version}

    run: Mapped[RunRow] = relationship(back_populates="shards")
    history: Mapped[list[AttemptRow]] = relationship(
        back_populates="shard", order_by="AttemptRow.number", cascade="all, delete-orphan"
    )


class AttemptRow(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("shard_id", "number", name="uq_attempts_shard_number"),
        Index("ix_attempts_state", "state"),
        Index("ix_attempts_handle", "handle"),  # exits are settled by handle
        # usage.attempt_id outlives a deleted run: an id is never handed out twice (0015)
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shard_id: Mapped[int] = mapped_column(ForeignKey("shards.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(String(40), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1-based; SYLPHX_SHARD_ATTEMPT
    state: Mapped[str] = mapped_column(String(16))
    handle: Mapped[str | None] = mapped_column(String(200))  # executor's id for the process
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    stop_reason: Mapped[str | None] = mapped_column(String(16))  # a StopCause
    stop_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    killed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stdout_path: Mapped[str | None] = mapped_column(Text)
    stderr_path: Mapped[str | None] = mapped_column(Text)
    # streams whose output went past the log cap: "stdout", "stderr", "stdout,stderr"
    log_truncated: Mapped[str | None] = mapped_column(String(32))
    # made before secrets were masked at capture (migration 0008): masked when served
    legacy_log: Mapped[bool] = mapped_column(Boolean, server_default=false())
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    __mapper_args__ = {"version_id_col": version}

    shard: Mapped[ShardRow] = relationship(back_populates="history")


class VolumeRow(Base):
    __tablename__ = "volumes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsageRow(Base):
    """Metered compute of one ended attempt: wall seconds x machine units. One per attempt."""

    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_org_ended", "org_id", "ended_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # no foreign key: usage is billing history and outlives a deleted run (migration 0009)
    attempt_id: Mapped[int] = mapped_column(Integer, unique=True)
    org_id: Mapped[str] = mapped_column(String(40))
    run_id: Mapped[str] = mapped_column(String(40), index=True)
    machine: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime())
    wall_seconds: Mapped[float] = mapped_column(Float)
    units: Mapped[float] = mapped_column(Float)
    compute_seconds: Mapped[float] = mapped_column(Float)
    # False: a window the platform preempted (or whose node it lost): kept, not billed (0014)
    billed: Mapped[bool] = mapped_column(Boolean, server_default=true())


class UsageDayRow(Base):
    """Usage summed by UTC day, run and machine tier, kept with the usage rows (migration
    0010): a usage report reads its window's whole days here and only its partial days
    from ``usage``."""

    __tablename__ = "usage_days"

    org_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # "YYYY-MM-DD", UTC
    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    machine: Mapped[str] = mapped_column(String(16), primary_key=True)
    wall_seconds: Mapped[float] = mapped_column(Float)
    compute_seconds: Mapped[float] = mapped_column(Float)  # billed
    unbilled_seconds: Mapped[float] = mapped_column(Float, server_default="0")  # 0014


class SecretRow(Base):
    """A named secret of an org, encrypted at rest; only runs that name it receive it."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_secrets_org_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SignOutRow(Base):
    """A dashboard session signed out before its cookie expires (migration 0016): its
    nonce, kept until then so that a copy of the cookie is no session in any worker."""

    __tablename__ = "ui_sign_outs"
    __table_args__ = (Index("ix_ui_sign_outs_expires_at", "expires_at"),)

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
