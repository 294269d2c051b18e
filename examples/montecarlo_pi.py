"""One shard of a distributed Monte-Carlo estimate of pi.

Run under ``sylphx run --parallelism N -- python examples/montecarlo_pi.py``: every shard reads
``SYLPHX_SHARD_INDEX`` / ``SYLPHX_SHARD_COUNT``, draws points uniformly in the unit square from
its own deterministic random stream, counts those inside the quarter circle and writes
``$OUT_DIR/part-{index}.json`` = ``{"shard", "count", "inside", "samples", ...}`` atomically.
``examples/merge_pi.py`` combines the parts.

The per-shard stream is ``SeedSequence(PI_SEED).spawn(...)[index]`` (built directly via
``spawn_key=(index,)``), so it depends only on the base seed and the shard index: a retried
attempt reproduces exactly the same part, and streams of different shards never overlap.

Optional env: ``OUT_DIR`` (default ``./out/pi``), ``PI_SAMPLES`` per shard (default 2,000,000),
``PI_SEED`` (default 20240601), ``PI_CHUNK`` points per batch (default 250,000).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Shards may get a fraction of a vCPU (nano = 0.1): keep BLAS from spawning a thread per core.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

DEFAULT_SAMPLES = 2_000_000
DEFAULT_SEED = 20240601
DEFAULT_CHUNK = 250_000


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SystemExit(f"{name} must be >= {minimum}, got {value}")
    return value


def shard_position() -> tuple[int, int]:
    """Return ``(index, count)`` from the sylphx env (a lone run is shard 0 of 1)."""
    index = _env_int("SYLPHX_SHARD_INDEX", 0)
    count = _env_int("SYLPHX_SHARD_COUNT", 1, minimum=1)
    if index >= count:
        raise SystemExit(f"SYLPHX_SHARD_INDEX={index} out of range for SYLPHX_SHARD_COUNT={count}")
    return index, count


def shard_rng(base_seed: int, index: int) -> np.random.Generator:
    """Independent generator for ``index``; equal to ``SeedSequence(base).spawn(n)[index]``."""
    return np.random.default_rng(np.random.SeedSequence(base_seed, spawn_key=(index,)))


def count_inside(rng: np.random.Generator, samples: int, chunk: int, label: str) -> int:
    """Count uniform points of the unit square with ``x^2 + y^2 <= 1``, in bounded chunks."""
    inside = 0
    done = 0
    next_report = 0.25
    while done < samples:
        n = min(chunk, samples - done)
        xy = rng.random((n, 2))
        inside += int(np.count_nonzero(np.einsum("ij,ij->i", xy, xy) <= 1.0))
        done += n
        if done / samples >= next_report:
            print(f"{label}: {done:,}/{samples:,} samples", file=sys.stderr, flush=True)
            while next_report <= done / samples:
                next_report += 0.25
    return inside


def write_part(out_dir: Path, index: int, payload: dict[str, object]) -> Path:
    """Write ``part-{index}.json`` atomically: temp file in the same dir, fsync, os.replace."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"part-{index}.json"
    fd, tmp_name = tempfile.mkstemp(prefix=f".part-{index}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return final


def main() -> int:
    index, count = shard_position()
    attempt = _env_int("SYLPHX_SHARD_ATTEMPT", 1, minimum=1)
    samples = _env_int("PI_SAMPLES", DEFAULT_SAMPLES, minimum=1)
    seed = _env_int("PI_SEED", DEFAULT_SEED)
    chunk = _env_int("PI_CHUNK", DEFAULT_CHUNK, minimum=1)
    out_dir = Path(os.environ.get("OUT_DIR") or "./out/pi").resolve()
    label = f"shard {index}/{count}"
    run_id = os.environ.get("SYLPHX_RUN_ID", "local")

    print(
        f"{label}: run={run_id} attempt={attempt} sampling {samples:,} points (seed={seed})",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    inside = count_inside(shard_rng(seed, index), samples, chunk, label)
    elapsed = time.perf_counter() - started

    part = write_part(
        out_dir,
        index,
        {
            "shard": index,
            "count": count,
            "inside": inside,
            "samples": samples,
            "seed": seed,
            "attempt": attempt,
            "run_id": run_id,
        },
    )
    print(
        f"{label}: inside={inside} samples={samples} pi~{4.0 * inside / samples:.6f} "
        f"in {elapsed:.2f}s -> {part}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
