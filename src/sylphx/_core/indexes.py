"""Compressed index sets, as Kubernetes writes them: ``0-3,7,9-10``."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ValidationError

_FIX = 'give a compressed index set such as "0-3,7"'


def compress(indexes: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 7]`` -> ``"0-3,7"``."""
    parts: list[str] = []
    ordered = sorted(set(indexes))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


class OutOfRange(ValueError):
    """An index set naming an index at or past its bound."""

    def __init__(self, index: int) -> None:
        super().__init__(f"index {index} is out of range")
        self.index = index


def expand(text: str, below: int | None = None) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``; raises ValueError on malformed input, and
    :class:`OutOfRange` for an index >= ``below`` (checked before a range is expanded)."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        start, end = int(lo), int(hi) if sep else int(lo)
        if start < 0 or end < start:
            raise ValueError(f"bad index range {part!r}")
        if below is not None and end >= below:
            raise OutOfRange(end)
        out.update(range(start, end + 1))
    return sorted(out)


def of_run(text: str, parallelism: int, run: str) -> list[int]:
    """The indices ``text`` names of a run of ``parallelism`` shards (``run`` names it in
    the message, e.g. ``"run wrk_..."``), or the 422 (field ``indices``) for an index it
    does not have, for text that is not an index set, and for one that names none."""
    try:
        out = expand(text, below=parallelism)
    except OutOfRange as exc:
        fix = f"name indices from 0 to {parallelism - 1}"
        raise ValidationError(
            f"indices: index {exc.index} does not exist: {run} has {parallelism} shards"
            f" (0-{parallelism - 1}). Fix: {fix}.",
            details=[{"field": "indices", "rule": f"index {exc.index} does not exist", "fix": fix}],
        ) from None
    except ValueError:
        out = []
    if not out:
        raise ValidationError(
            f"indices: {text[:60]!r} is not an index set. Fix: {_FIX}.",
            details=[{"field": "indices", "rule": "not an index set", "fix": _FIX}],
        )
    return out
