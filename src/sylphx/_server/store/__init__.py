"""Persistence: SQLAlchemy tables, engine set-up and Alembic migrations."""

from .db import (
    lost_race,
    make_engine,
    migrate,
    read_session_factory,
    revision,
    session_factory,
)
from .schema import (
    ApiKeyRow,
    AttemptRow,
    Base,
    OrgRow,
    RunRow,
    SecretRow,
    ShardRow,
    UsageRow,
    VolumeRow,
)

__all__ = [
    "ApiKeyRow",
    "AttemptRow",
    "Base",
    "OrgRow",
    "RunRow",
    "SecretRow",
    "ShardRow",
    "UsageRow",
    "VolumeRow",
    "lost_race",
    "make_engine",
    "migrate",
    "read_session_factory",
    "revision",
    "session_factory",
]
