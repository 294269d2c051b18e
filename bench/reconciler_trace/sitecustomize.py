"""Per-pass timings of the reconciler, for benchmarks (no change to sylphx itself).

Put this directory on the server's PYTHONPATH and set SYLPHX_BENCH_TRACE=FILE: Python
imports ``sitecustomize`` at start-up, which wraps the reconciler's steps (and the local
executor's) and appends one JSON line per pass to FILE:

- ``total``: the whole ``tick`` (store load, policies, launches, commit, signals);
  ``cpu``: the reconciler thread's CPU time in it (less sensitive to other load);
  ``oncpu`` / ``runq``: the kernel's count of the same thread's time on a CPU and time
  runnable but waiting for one (``/proc/thread-self/schedstat``): ``total`` minus both
  is time blocked (the GIL, I/O, a lock);
- ``collect`` / ``stop_live`` / ``expire`` / ``admit`` (including ``decide``, the
  ``launch`` calls and the executor's ``flush``) / ``roll_up``: the steps of the pass;
- ``poll``: the executor's ``poll`` (exit files read for every tracked attempt);
- ``commit``: Session.commit of the pass (ORM flush + COMMIT);
- ``sql`` / ``sql_n``: time in, and number of, SQL statements executed by the pass
  (``sql_select_n``, ``sql_insert_n``, ...: by verb; an executemany counts once);
- ``gc``: time in cyclic garbage collection during the pass (any thread; ``gc_cpu``: the
  CPU time of the thread that collected), and by
  generation (``gc0``, ``gc1``, ``gc2``, their ``_n`` counts and ``_collected`` objects);
- counts: ``runs`` active, ``shards`` loaded with them, ``live`` shards, ``exits``
  collected, ``launch_n`` attempts launched.

The rest of ``total`` (``load``, computed by the reader) is the store read at the top of the
pass -- the SELECT of the active runs with their shards and attempts and building those
ORM objects -- plus validating every run's spec.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

_PATH = os.environ.get("SYLPHX_BENCH_TRACE")


def _schedstat() -> tuple[float, float] | None:
    """This thread's seconds on a CPU and waiting in a runqueue (None without schedstats)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            ran, waited = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    return int(ran) / 1e9, int(waited) / 1e9


def _install(path: str) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    from sylphx._server.controller import deadlines, launching, reconciler, rollup, scheduling
    from sylphx._server.executors.local.executor import LocalExecutor

    out = open(path, "a", buffering=1)  # noqa: SIM115 - for the life of the process
    state: dict[str, Any] = {"cur": None, "tid": None}
    lock = threading.Lock()

    def current() -> defaultdict[str, float] | None:
        if state["tid"] != threading.get_ident():
            return None
        cur: defaultdict[str, float] | None = state["cur"]
        return cur

    def timed(owner: Any, name: str, key: str, count: Callable[..., float] | None = None) -> None:
        orig = getattr(owner, name, None)
        if orig is None:  # renamed since: trace the rest rather than nothing
            print(f"sitecustomize: no {getattr(owner, '__name__', owner)}.{name} to time")
            return

        @functools.wraps(orig)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cur = current()
            if cur is None:
                return orig(*args, **kwargs)
            if count is not None:
                cur_count = count(*args, **kwargs)
                for k, v in cur_count.items() if isinstance(cur_count, dict) else ():
                    cur[k] += v
            start = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                cur[key] += time.perf_counter() - start
                cur[f"{key}_n"] += 1

        setattr(owner, name, wrapper)

    def admit_counts(
        _self: Any, _s: Any, runs: list[Any], counts: dict[str, Any], *_: Any
    ) -> dict[str, float]:
        shards = sum(sum(c.values()) for c in counts.values())
        live = sum(c["starting"] + c["running"] for c in counts.values())
        return {"runs": len(runs), "shards": shards, "live": live}

    def focus_counts(_self: Any, _s: Any, runs: list[Any], *_: Any) -> dict[str, float]:
        return {"active_runs": len(runs)}

    def collect_counts(_self: Any, _s: Any, exits: list[Any], *_: Any) -> dict[str, float]:
        return {"exits": len(exits)}

    timed(reconciler.Reconciler, "_collect", "collect", collect_counts)
    timed(reconciler.Reconciler, "_focus", "focus", focus_counts)
    timed(deadlines, "stop_live", "stop_live")
    timed(reconciler.Reconciler, "_admit", "admit", admit_counts)
    timed(launching.RunLaunch, "start", "launch")
    timed(rollup, "roll_up", "roll_up")
    timed(scheduling, "decide", "decide")
    timed(scheduling, "expire_admission", "expire")
    timed(LocalExecutor, "poll", "poll")
    timed(LocalExecutor, "flush", "flush")
    if os.environ.get("SYLPHX_EXECUTOR") == "ray":
        from sylphx._server.executors.ray.executor import RayExecutor

        timed(RayExecutor, "poll", "poll")
        timed(RayExecutor, "flush", "flush")

    tick = reconciler.Reconciler.tick

    @functools.wraps(tick)
    def traced_tick(self: Any) -> None:
        cur: defaultdict[str, float] = defaultdict(float)
        state["cur"], state["tid"] = cur, threading.get_ident()
        start, cpu, sched = time.perf_counter(), time.thread_time(), _schedstat()
        try:
            tick(self)
        finally:
            cur["total"] = time.perf_counter() - start
            cur["cpu"] = time.thread_time() - cpu
            if sched is not None and (after := _schedstat()) is not None:
                cur["oncpu"], cur["runq"] = after[0] - sched[0], after[1] - sched[1]
            state["cur"] = None
            cur["t"] = time.time()
            with lock:
                out.write(json.dumps(cur) + "\n")

    reconciler.Reconciler.tick = traced_tick  # type: ignore[method-assign]

    commit_start: dict[int, float] = {}

    @event.listens_for(Session, "before_commit")
    def _before_commit(session: Session) -> None:
        if current() is not None:
            commit_start[threading.get_ident()] = time.perf_counter()

    @event.listens_for(Session, "after_commit")
    def _after_commit(session: Session) -> None:
        cur = current()
        started = commit_start.pop(threading.get_ident(), None)
        if cur is not None and started is not None:
            cur["commit"] += time.perf_counter() - started

    @event.listens_for(Engine, "before_cursor_execute")
    def _before_sql(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if current() is not None:
            conn.info["bench_sql_start"] = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def _after_sql(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        cur = current()
        started = conn.info.pop("bench_sql_start", None)
        if cur is not None and started is not None:
            cur["sql"] += time.perf_counter() - started
            cur["sql_n"] += 1
            cur[f"sql_{statement.split(None, 1)[0].lower()}_n"] += 1

    gc_start: list[float] = [0.0, 0.0]

    def _gc(phase: str, info: dict[str, Any]) -> None:
        cur: defaultdict[str, float] | None = state["cur"]
        if phase == "start":
            gc_start[:] = time.perf_counter(), time.thread_time()
        elif cur is not None:
            took = time.perf_counter() - gc_start[0]
            cur["gc"] += took
            cur["gc_cpu"] += time.thread_time() - gc_start[1]
            cur[f"gc{info['generation']}"] += took
            cur[f"gc{info['generation']}_n"] += 1
            cur[f"gc{info['generation']}_collected"] += info["collected"]

    gc.callbacks.append(_gc)

    # Experiments (not sylphx behaviour): SYLPHX_BENCH_GC_FREEZE=1 moves everything alive at
    # the first pass (imports, app, settings) out of the collector's reach (gc.freeze);
    # SYLPHX_BENCH_GC_THRESHOLD=A,B,C sets gc.set_threshold(A, B, C).
    if os.environ.get("SYLPHX_BENCH_GC_THRESHOLD"):
        a, b, c = (int(x) for x in os.environ["SYLPHX_BENCH_GC_THRESHOLD"].split(","))
        gc.set_threshold(a, b, c)
    if os.environ.get("SYLPHX_BENCH_GC_FREEZE") == "1":
        frozen = [False]
        inner = reconciler.Reconciler.tick

        @functools.wraps(inner)
        def freezing_tick(self: Any) -> None:
            if not frozen[0]:
                frozen[0] = True
                gc.collect()
                gc.freeze()
            inner(self)

        reconciler.Reconciler.tick = freezing_tick  # type: ignore[method-assign]


def _install_marks(path: str) -> None:
    """SYLPHX_BENCH_MARKS=FILE: one line ``NAME UNIX_TIME`` per step of a launch's way
    through the control plane, for P2's phase breakdown (``bench/p2_gang.py --trace``):
    ``submit_start``/``_end`` (``Storing.batch``: a batch of submits in its write
    transaction, the committer's),
    ``commit:THREAD`` (every commit) and ``launch_start``/``_end`` (a run's launches:
    attempts, requests, rows). The hand-off's end is the first shard's pid file."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from sylphx._server.controller import launching
    from sylphx._server.runs.storing import Storing

    out = open(path, "a", buffering=1)  # noqa: SIM115 - for the life of the process
    lock = threading.Lock()

    def mark(name: str) -> None:
        with lock:
            out.write(f"{name} {time.time():.6f}\n")

    def marked(owner: Any, name: str, key: str) -> None:
        orig = getattr(owner, name)

        @functools.wraps(orig)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark(f"{key}_start")
            try:
                return orig(*args, **kwargs)
            finally:
                mark(f"{key}_end")

        setattr(owner, name, wrapper)

    marked(Storing, "batch", "submit")
    marked(launching.RunLaunch, "start", "launch")

    @event.listens_for(Session, "after_commit")
    def _after_commit(session: Session) -> None:
        mark(f"commit:{threading.current_thread().name}")


if _PATH:
    _install(_PATH)
if os.environ.get("SYLPHX_BENCH_MARKS"):
    _install_marks(os.environ["SYLPHX_BENCH_MARKS"])
