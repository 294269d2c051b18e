"""The control plane's parts wired together: store, executor, reconciler."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from .._errors import ExecutorError
from .._settings import Settings
from .controller.reconciler import Reconciler
from .executors import Executor, LocalExecutor
from .lock import HomeLock
from .store import make_engine, migrate, session_factory

log = logging.getLogger("sylphx")


def make_executor(settings: Settings) -> Executor:
    """The executor ``SYLPHX_EXECUTOR`` names (Ray is imported only when chosen)."""
    if settings.executor == "ray":
        try:
            from .executors.ray_executor import RayExecutor
        except ImportError as exc:
            raise ExecutorError(
                f"SYLPHX_EXECUTOR=ray needs Ray ({exc}). Fix: pip install 'sylphx[ray]'."
            ) from exc
        return RayExecutor(
            settings.ray_address,
            gang_strategy=settings.ray_gang_strategy,
            workdir_root=settings.home / "work",
        )
    return LocalExecutor(settings.local_cpus, settings.local_memory)


class ControlPlane:
    """Owns the engine, the executor and the reconciler thread for one SYLPHX_HOME."""

    def __init__(self, settings: Settings, executor: Executor | None = None) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.lock = HomeLock(settings.home)
        self.engine = make_engine(settings.database_url)
        self.sessions = session_factory(self.engine)
        self.executor: Executor = executor or make_executor(settings)
        self.reconciler = Reconciler(self.sessions, self.executor, settings)

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def start(self) -> None:
        """Take the home lock, migrate the store and start reconciling."""
        self.lock.acquire()
        try:
            migrate(self.engine)
            self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
            self.settings.volumes_dir.mkdir(parents=True, exist_ok=True)
            self.reconciler.start()
        except BaseException:
            self.lock.release()
            raise
        log.info(
            "control plane started (home %s, executor %s, capacity %s)",
            self.settings.home,
            self.executor.name,
            self.executor.capacity().text(),
        )

    def stop(self) -> None:
        """Stop reconciling; running shards are left alone."""
        self.reconciler.stop()
        self.executor.close()
        self.engine.dispose()
        self.lock.release()
