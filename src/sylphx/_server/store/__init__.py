"""Persistence: SQLAlchemy tables, engine set-up and Alembic migrations."""

from .db import make_engine, migrate, revision, session_factory
from .schema import AttemptRow, Base, RunRow, ShardRow, VolumeRow

__all__ = [
    "AttemptRow",
    "Base",
    "RunRow",
    "ShardRow",
    "VolumeRow",
    "make_engine",
    "migrate",
    "revision",
    "session_factory",
]
