"""Merge the per-shard outputs of ``examples/montecarlo_pi.py`` into one estimate of pi.

Usage: ``python examples/merge_pi.py [OUT_DIR] [--shards N]``, or as the merge step of the
run of ``montecarlo_pi.py``: ``sylphx run ... --merge-command 'python merge_pi.py /out' ...``

Reads every ``part-{index}.json`` in ``OUT_DIR`` (default ``$OUT_DIR`` or ``./out/pi``),
verifies that each shard index ``0..N-1`` is present exactly once (``N`` from ``--shards``,
else from the run's manifest when it runs as the run's merge step (``SYLPHX_MANIFEST``),
otherwise from the parts' ``count`` field), then prints the merged estimate, its error
against ``math.pi`` and the total number of samples. Exits non-zero if any part is missing,
duplicated, malformed or inconsistent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PART_RE = re.compile(r"^part-(\d+)\.json$")


@dataclass(frozen=True)
class Part:
    """One shard's contribution."""

    path: Path
    shard: int
    inside: int
    samples: int
    count: int | None


class MergeError(Exception):
    """The set of parts does not form one complete run."""


def _as_int(value: object, field: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MergeError(f"{path.name}: field {field!r} must be an integer, got {value!r}")
    return value


def load_part(path: Path, file_index: int) -> Part:
    """Parse and sanity-check one part file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MergeError(f"{path.name}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise MergeError(f"{path.name}: expected a JSON object")
    for key in ("shard", "inside", "samples"):
        if key not in data:
            raise MergeError(f"{path.name}: missing field {key!r}")
    shard = _as_int(data["shard"], "shard", path)
    inside = _as_int(data["inside"], "inside", path)
    samples = _as_int(data["samples"], "samples", path)
    count = _as_int(data["count"], "count", path) if "count" in data else None
    if shard != file_index:
        raise MergeError(f"{path.name}: file name says shard {file_index}, content says {shard}")
    if samples <= 0 or not 0 <= inside <= samples:
        raise MergeError(f"{path.name}: implausible inside={inside} samples={samples}")
    return Part(path=path, shard=shard, inside=inside, samples=samples, count=count)


def load_parts(out_dir: Path) -> list[Part]:
    """Load every ``part-*.json`` in ``out_dir`` (temp files from in-flight writes are ignored)."""
    if not out_dir.is_dir():
        raise MergeError(f"{out_dir}: not a directory")
    parts: list[Part] = []
    for path in sorted(out_dir.iterdir()):
        match = PART_RE.match(path.name)
        if match and path.is_file():
            parts.append(load_part(path, int(match.group(1))))
    if not parts:
        raise MergeError(f"{out_dir}: no part-*.json files")
    return parts


def check_complete(parts: list[Part], shards: int | None) -> int:
    """Return N after verifying that indexes ``0..N-1`` each appear exactly once."""
    declared = {p.count for p in parts if p.count is not None}
    if len(declared) > 1:
        raise MergeError(f"parts disagree on the shard count: {sorted(declared)}")
    if shards is None:
        shards = declared.pop() if declared else max(p.shard for p in parts) + 1
    elif declared and declared != {shards}:
        raise MergeError(f"--shards {shards} but the parts were written for {declared.pop()}")

    seen: dict[int, Path] = {}
    for part in parts:
        if part.shard in seen:
            raise MergeError(
                f"shard {part.shard} present twice: {seen[part.shard].name}, {part.path.name}"
            )
        seen[part.shard] = part.path
    missing = sorted(set(range(shards)) - seen.keys())
    extra = sorted(seen.keys() - set(range(shards)))
    if missing or extra:
        raise MergeError(f"expected shards 0..{shards - 1}: missing={missing} unexpected={extra}")
    return shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        default=Path(os.environ.get("OUT_DIR") or "./out/pi"),
        help="directory holding part-{index}.json (default: $OUT_DIR or ./out/pi)",
    )
    parser.add_argument("--shards", type=int, default=None, help="expected shard count N")
    args = parser.parse_args(argv)
    if args.shards is not None and args.shards < 1:
        parser.error("--shards must be >= 1")

    manifest = os.environ.get("SYLPHX_MANIFEST")  # set for a run's merge step
    if manifest:
        with open(manifest, encoding="utf-8") as fh:
            run = json.load(fh)
        print(f"manifest:      {len(run['succeededIndices'])}/{run['shardCount']} shards succeeded")
        if args.shards is None:
            args.shards = run["shardCount"]
    try:
        parts = load_parts(args.out_dir)
        shards = check_complete(parts, args.shards)
    except MergeError as exc:
        print(f"merge_pi: {exc}", file=sys.stderr)
        return 1

    inside = sum(p.inside for p in parts)
    samples = sum(p.samples for p in parts)
    ratio = inside / samples
    estimate = 4.0 * ratio
    stderr = 4.0 * math.sqrt(ratio * (1.0 - ratio) / samples)
    print(f"shards:        {shards} (all present)")
    print(f"total samples: {samples:,}")
    print(f"inside:        {inside:,}")
    print(f"pi estimate:   {estimate:.8f}  (+/- {stderr:.1e} std. error)")
    print(f"error:         {estimate - math.pi:+.3e} vs math.pi = {math.pi:.8f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
