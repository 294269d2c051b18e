"""The body of ``POST /v1/runs/{id}/retry``: which indices of an ended run to run again."""

from __future__ import annotations

from typing import Annotated

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from .indexes import OutOfRange, expand
from .limits import Text, rule
from .spec import MAX_PARALLELISM
from .validation import validation_error

__all__ = ["RetryRequest"]

_FIX = 'give a compressed index set such as "2,5,7-9", or omit indices to retry every failed one'


class RetryRequest(BaseModel):
    """``indices``: a compressed index set (``"2,5,7-9"``); None: every index that ended
    failed, timed_out or cancelled."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    indices: Annotated[Text, Field(max_length=4096)] | None = None

    @field_validator("indices")
    @classmethod
    def _indices(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            chosen = expand(v, below=MAX_PARALLELISM)
        except OutOfRange as exc:
            raise rule(
                "indices",
                f"names index {exc.index}; a run has at most {MAX_PARALLELISM} shards (0-"
                f"{MAX_PARALLELISM - 1})",
                _FIX,
            ) from None
        except ValueError:
            raise rule("indices", f"{v[:60]!r} is not an index set", _FIX) from None
        if not chosen:
            raise rule("indices", "names no index", _FIX)
        return v

    @property
    def chosen(self) -> list[int] | None:
        """The indices named, sorted (None: the failed ones)."""
        return None if self.indices is None else expand(self.indices)

    @classmethod
    def parse(cls, data: object) -> RetryRequest:
        """Validate wire JSON; raises :class:`sylphx.ValidationError` naming the field."""
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise validation_error(exc, cls) from None
