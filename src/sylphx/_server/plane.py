"""The control plane's parts wired together: store, executor, reconciler."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from .._settings import Settings
from .controller.reconciler import Reconciler
from .executors import Executor, LocalExecutor
from .lease import Lease
from .lock import HomeLock
from .store import make_engine, migrate, session_factory

log = logging.getLogger("sylphx")


class ControlPlane:
    """Owns the engine, the executor and the reconciler thread for one SYLPHX_HOME."""

    def __init__(
        self, settings: Settings, executor: Executor | None = None, *, shared: bool = False
    ) -> None:
        """``shared``: one of several API processes of this home (``--workers``); they
        skip the home lock and take turns at reconciling through the lease."""
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.lock = HomeLock(settings.home) if not shared else None
        self.draining = False  # set on SIGTERM: no new runs, shards keep running
        self.engine = make_engine(settings.database_url)
        self.sessions = session_factory(self.engine)
        self.executor: Executor = executor or LocalExecutor(
            settings.local_cpus, settings.local_memory, settings.home / "state"
        )
        self.reconciler = Reconciler(
            self.sessions, self.executor, settings, lease=Lease(self.engine, settings.home)
        )

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def start(self) -> None:
        """Take the home lock, migrate the store and start reconciling."""
        if self.lock is not None:
            self.lock.acquire()
        try:
            migrate(self.engine)
            self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
            self.settings.volumes_dir.mkdir(parents=True, exist_ok=True)
            self.reconciler.start()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise
        log.info(
            "control plane started (home %s, executor %s, capacity %s)",
            self.settings.home,
            self.executor.name,
            self.executor.capacity().text(),
        )

    def stop(self) -> None:
        """Stop reconciling; running shards are left alone (a restart re-adopts them)."""
        self.draining = True
        self.reconciler.stop()
        self.executor.close()
        self.engine.dispose()
        if self.lock is not None:
            self.lock.release()
