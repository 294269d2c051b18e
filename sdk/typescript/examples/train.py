"""The shard of examples/train-distributed.ts: the product page's train.py, runnable.

Each shard picks its fold from SYLPHX_SHARD_INDEX / SYLPHX_SHARD_COUNT (no coordinator)
and writes its scores into the shared volume mounted at /cache. Folds 2 and 5 fail on
purpose (their slice holds a symbol without data) on every attempt, so the example shows
a partial aggregate, the failure count and a failed shard's logs.
"""

import json
import os
import sys

BROKEN_FOLDS = {2, 5}  # deliberate failures: the example's point is the drill-down

shard = int(os.environ["SYLPHX_SHARD_INDEX"])  # 0 .. N-1
count = int(os.environ["SYLPHX_SHARD_COUNT"])  # N


def load_universe() -> list[str]:
    return [f"SYM{i:03d}" for i in range(90)]


def train_and_write(symbols: list[str], out: str) -> None:
    if shard in BROKEN_FOLDS:
        print(f"fold {shard}: loading {len(symbols)} symbols", flush=True)
        print(f"fold {shard}: no price history for {symbols[0]}; cannot train", file=sys.stderr)
        sys.exit(1)
    scores = {symbol: (sum(map(ord, symbol)) % 97) / 97 for symbol in symbols}
    with open(out, "w") as fh:
        json.dump(scores, fh)
    print(f"fold {shard}: trained on {len(symbols)} symbols -> {out}")


symbols = load_universe()
my_symbols = symbols[shard::count]  # every Nth symbol, offset by shard
train_and_write(my_symbols, out=f"/cache/scores-{shard}.json")
