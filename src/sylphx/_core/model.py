"""The base of every spec model: camelCase on the wire, snake_case in Python, unknown
fields refused, immutable once validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

__all__ = ["WireModel"]


class WireModel(BaseModel):
    """A part of the run spec (see :mod:`.spec`)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )
