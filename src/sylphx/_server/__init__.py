"""The control plane: HTTP API, reconciler, store and executors (server side only)."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .http import create_app
    from .plane import ControlPlane

__all__ = ["UVICORN_OPTIONS", "ControlPlane", "create_app", "metrics_dir", "serve", "shared_app"]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
GRACEFUL_SECONDS = 5  # open requests (e.g. log follows) get this long after SIGTERM
# An idle keep-alive connection is closed after this long. It must outlast the clients'
# own pools (the SDKs drop an idle connection after 5 s, Node's fetch after 4 s): at
# equal times a client can send on the connection the moment the server closes it, and
# the request fails with "Server disconnected without sending a response" (uvicorn's
# default is 5 s, as httpx's).
KEEP_ALIVE_SECONDS = 30
UVICORN_OPTIONS: dict[str, Any] = {
    "log_level": "warning",
    "timeout_graceful_shutdown": GRACEFUL_SECONDS,
    "timeout_keep_alive": KEEP_ALIVE_SECONDS,
}
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's: see http/metrics.py


def __getattr__(name: str) -> Any:
    """Load the API and plane on first use: Ray workers import ``executors`` only."""
    if name == "create_app":
        from .http import create_app

        return create_app
    if name == "ControlPlane":
        from .plane import ControlPlane

        return ControlPlane
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Objects allocated (less those freed) before a young collection, and how many of each
# generation's collections make one of the next (CPython's default: 700, 10, 10).
GC_THRESHOLDS = (20_000, 50, 50)


def freeze_startup_heap() -> None:
    """Exempt what start-up built (modules, app, settings) from garbage collection, and
    collect the rest less often.

    A full (oldest-generation) collection walks every tracked object in the process;
    about 100k of them are imported code, classes and the app, which live until exit.
    A reconciler pass over thousands of shards allocates enough to trigger one or two
    full collections per pass, so walking the start-up heap each time was ~40% of a pass
    at 10,000 shards (bench/p5_scale.py --steady). And at CPython's default thresholds a
    busy control plane ran ~1,900 collections for 3,000 single-shard runs, ~4% of its
    CPU, each walking objects a request or a pass was about to drop anyway; at
    :data:`GC_THRESHOLDS` it runs a few dozen (docs/adr/0011). Call once, after start-up
    imports."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def shared_app() -> FastAPI:
    """The app of one of several API worker processes sharing a home (``--workers``)."""
    from sylphx._settings import Settings

    from .http import create_app
    from .plane import ControlPlane

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    app = create_app(ControlPlane(Settings.from_env(), shared=True))
    freeze_startup_heap()
    return app


def metrics_dir(home: Path, workers: int) -> Path | None:
    """Where the API processes keep their metrics: with ``workers`` > 1 a fresh directory
    of this server's (``home/metrics/PID``; those of servers no longer running removed),
    exported as PROMETHEUS_MULTIPROC_DIR for the workers to inherit, so that a scrape of
    any of them sums them all. One process keeps its metrics in memory (None; a
    PROMETHEUS_MULTIPROC_DIR from the environment is dropped). Call it before
    prometheus-client is imported: it picks its mode once, on import."""
    if workers <= 1:
        os.environ.pop(MULTIPROC_ENV, None)
        return None
    root = home / "metrics"
    if root.is_dir():
        for old in root.iterdir():
            if not (old.name.isdigit() and _alive(int(old.name))):
                shutil.rmtree(old, ignore_errors=True)
    path = root / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def serve(
    host: str | None = None, port: int | None = None, uds: str | None = None, workers: int = 1
) -> None:
    """Run the control plane (API + reconciler) until SIGTERM/SIGINT.

    Settings come from ``SYLPHX_*`` variables. With ``uds`` the API listens on a
    Unix socket (the embedded default); otherwise on ``host:port``. On SIGTERM it
    refuses new runs (503), finishes open requests and exits; shards keep running
    and the next start re-adopts them. ``workers`` > 1 runs that many API processes
    on one port; they share the store and take turns reconciling through the lease.
    """
    import uvicorn

    from sylphx._settings import Settings

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = Settings.from_env()
    where: dict[str, Any] = (
        {"uds": uds} if uds is not None else {"host": host or "127.0.0.1", "port": port or 8080}
    )
    settings.home.mkdir(parents=True, exist_ok=True)
    metrics_dir(settings.home, workers)  # before prometheus-client is imported (by .http)
    settings.pid_file.write_text(str(os.getpid()))
    if uds is not None:
        Path(uds).unlink(missing_ok=True)
    # uvicorn re-raises SIGTERM after its graceful shutdown: make that a clean exit 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if workers > 1:
            uvicorn.run(
                "sylphx._server:shared_app", factory=True, workers=workers,
                **UVICORN_OPTIONS, **where,
            )  # fmt: skip
            return
        from .http import create_app  # (the workers import their own: see shared_app)
        from .plane import ControlPlane

        plane = ControlPlane(settings)

        class DrainingServer(uvicorn.Server):
            """Marks the plane draining the moment SIGTERM arrives (new runs get 503)."""

            def handle_exit(self, sig: int, frame: Any) -> None:
                plane.draining = True
                plane.run_waiters.close()  # long-polls answer now instead of holding the exit
                super().handle_exit(sig, frame)

        config = uvicorn.Config(
            create_app(plane, embedded=uds is not None), **UVICORN_OPTIONS, **where
        )
        config.load()  # imports the protocol modules now, so the freeze covers them too
        freeze_startup_heap()
        DrainingServer(config).run()
    finally:
        if settings.pid_file.read_text().strip() == str(os.getpid()):
            settings.pid_file.unlink(missing_ok=True)
        if workers > 1:  # the workers have exited: their metrics go with them
            shutil.rmtree(settings.home / "metrics" / str(os.getpid()), ignore_errors=True)
