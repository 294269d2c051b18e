"""One fold of a walk-forward training job: the product page's ``python train.py``.

Run under ``sylphx run --parallelism N -- python examples/train.py`` (``make ray-demo`` runs
it with N = 9 on a two-node Ray cluster). Shard ``i`` of ``N`` trains a ridge regression on
a synthetic daily series up to the start of fold ``i`` and scores it on fold ``i`` (the next
``FOLD_DAYS`` days), so every shard picks its own slice from ``SYLPHX_SHARD_INDEX`` /
``SYLPHX_SHARD_COUNT`` and no coordinator is needed. The series depends only on
``TRAIN_SEED``, so a retried attempt computes exactly the same score.

If ``CACHE_DIR`` (default ``/cache``, the page's volume mount) exists, the shard writes
``scores-{index}.json`` there atomically: the merge convention for per-shard outputs.

``TRAIN_EPOCHS`` (default 5) refits on bootstrap resamples, ``TRAIN_EPOCH_SECONDS`` apart
(default 1.0): the stand-in for real training, spent mostly waiting so that nine ``large``
shards at once stay light on a 2-core host.

``TRAIN_FLAKY_SHARDS=3,7`` makes those shards fail their first attempt on purpose (exit 75,
"the data feed dropped"), to show per-index retries (``--backoff-limit-per-index``); the
next attempt (``SYLPHX_SHARD_ATTEMPT`` = 2) succeeds.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

# A shard gets its tier's vCPUs (large: 2): keep BLAS to one thread per shard.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

FEATURES = 16
WARMUP_DAYS = 1_000  # history every fold trains on at least
FOLD_DAYS = 250  # one trading year per fold
RIDGE = 1.0
EXIT_FLAKY = 75  # EX_TEMPFAIL: a transient failure worth a retry


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def series(days: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Daily features and next-day returns with a weak, slowly drifting linear signal."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((days, FEATURES))
    drift = np.cumsum(rng.standard_normal((days, FEATURES)) * 0.002, axis=0)
    beta = rng.standard_normal(FEATURES) * 0.05 + drift
    y = np.einsum("ij,ij->i", x, beta) + rng.standard_normal(days) * 0.5
    return x, y


def fit_ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    gram = x.T @ x + RIDGE * np.eye(x.shape[1])
    return np.linalg.solve(gram, x.T @ y)


def write_atomically(path: Path, payload: dict[str, object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh)
    os.replace(tmp, path)


def main() -> int:
    shard = _env_int("SYLPHX_SHARD_INDEX", 0)
    count = _env_int("SYLPHX_SHARD_COUNT", 1)
    attempt = _env_int("SYLPHX_SHARD_ATTEMPT", 1)
    seed = _env_int("TRAIN_SEED", 20240601)
    flaky = {int(s) for s in os.environ.get("TRAIN_FLAKY_SHARDS", "").split(",") if s.strip()}
    started = time.perf_counter()
    print(
        f"fold {shard} of {count}: attempt {attempt}, machine"
        f" {os.environ.get('SYLPHX_MACHINE', '?')}, run {os.environ.get('SYLPHX_RUN_ID', '?')}",
        flush=True,
    )

    x, y = series(WARMUP_DAYS + count * FOLD_DAYS, seed)
    cut = WARMUP_DAYS + shard * FOLD_DAYS
    print(f"train days [0, {cut}), test days [{cut}, {cut + FOLD_DAYS})", flush=True)
    if shard in flaky and attempt == 1:
        print("the data feed dropped mid-fold (on purpose: TRAIN_FLAKY_SHARDS)", file=sys.stderr)
        return EXIT_FLAKY

    epochs = _env_int("TRAIN_EPOCHS", 5)
    pause = float(os.environ.get("TRAIN_EPOCH_SECONDS", "1.0"))
    rng = np.random.default_rng((seed, shard))  # per fold, the same on every attempt
    fits = []
    for epoch in range(1, epochs + 1):
        sample = rng.integers(0, cut, size=cut)
        fits.append(fit_ridge(x[sample], y[sample]))
        print(f"epoch {epoch}/{epochs}: |beta| {np.linalg.norm(fits[-1]):.4f}", flush=True)
        time.sleep(pause)
    beta = np.mean(fits, axis=0) if fits else fit_ridge(x[:cut], y[:cut])
    pred = x[cut : cut + FOLD_DAYS] @ beta
    actual = y[cut : cut + FOLD_DAYS]
    mse = float(np.mean((pred - actual) ** 2))
    r2 = 1.0 - mse / float(np.var(actual))
    hit = float(np.mean(np.sign(pred) == np.sign(actual)))
    took = time.perf_counter() - started
    print(f"fold {shard}: r2 {r2:+.4f}  mse {mse:.4f}  hit rate {hit:.1%}  ({took:.2f} s)")

    cache = Path(os.environ.get("CACHE_DIR", "/cache"))
    if cache.is_dir():
        out = cache / f"scores-{shard}.json"
        write_atomically(out, {"fold": shard, "r2": r2, "mse": mse, "hit": hit})
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
