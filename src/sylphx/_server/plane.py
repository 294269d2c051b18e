"""The composition root: the control plane's parts (store, executor, reconciler, caches)
built and wired together for one home, and the services the HTTP edge calls built over
them (:class:`~.runs.facade.RunService`, :class:`~.runs.volumes.VolumeService`,
:class:`~.runs.account.SecretService`, :class:`~.runs.account.AccountService`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from sylphx._core.errors import ExecutorError
from sylphx._server.controller.reconciler import Reconciler
from sylphx._server.executors.envelope import egress
from sylphx._server.executors.envelope.sandbox import Policy
from sylphx._server.executors.local.cgroups import Cgroups
from sylphx._server.images.store import ImageStore
from sylphx._server.infra.lease import Lease
from sylphx._server.infra.lock import HomeLock
from sylphx._server.runs.account import AccountService, SecretService
from sylphx._server.runs.facade import RunService
from sylphx._server.runs.longpoll import RunWaiters, ended_among
from sylphx._server.runs.pins import pinned_images
from sylphx._server.runs.readcache import KeyCache, SharedReads, TerminalViews
from sylphx._server.runs.streams import LogStreams
from sylphx._server.runs.volumes import VolumeService
from sylphx._server.tenancy.secrets import load_cipher
from sylphx._settings import Settings

from .executors import Executor, LocalExecutor
from .store import make_engine, migrate, read_session_factory, session_factory

log = logging.getLogger("sylphx")


def make_executor(settings: Settings, images: ImageStore) -> Executor:
    """The executor ``SYLPHX_EXECUTOR`` names (Ray is imported only when chosen)."""
    if settings.executor == "ray":
        try:
            from sylphx._server.executors.ray.executor import RayExecutor
        except ImportError as exc:
            raise ExecutorError(
                f"SYLPHX_EXECUTOR=ray needs Ray ({exc}). Fix: pip install 'sylphx[ray]'."
            ) from exc
        if not settings.sandbox:
            log.warning("SYLPHX_SANDBOX=off: Ray shards run unsandboxed on their nodes")
        return RayExecutor(
            settings.ray_address,
            home=settings.home,  # names the home's hub: a restart re-adopts its shards
            gang_strategy=settings.ray_gang_strategy,
            sandbox=settings.sandbox,
            enforce_tiers=not settings.unenforced_tiers,
            max_log_bytes=settings.max_log_bytes,
            policy=shard_policy(settings),
            image_cache=str(settings.ray_image_cache),
            private_registries=settings.private_registries,
            image_max_unpacked=settings.image_max_unpacked_bytes,
        )
    return _local_executor(settings, images)


def close_home(settings: Settings) -> None:
    """Keep the home's private parts the control plane's alone: on a shared machine, every
    local user could read the store (runs' specs and env), every tenant's logs and
    volumes, and the image cache (a home made 0755 by the umask). The home may be passed
    through (an unsandboxed shard's work folder is in it) but not listed; the logs, the
    images and the state are 0700, the volumes' root and the work folder 0711 (each volume
    is 0700, its shards' alone: see envelope.shard.own_volumes), a SQLite store 0600 (its
    WAL and shared memory take its mode), the lock files 0600 (infra.private). A folder
    set outside the home (SYLPHX_LOGS_DIR, SYLPHX_VOLUME_ROOT) is the operator's: a
    warning if it is open, never a chmod (it may be shared, or on NFS)."""
    os.chmod(settings.home, 0o711)
    modes = [(settings.logs_dir, 0o700), (settings.home / "images", 0o700)]
    modes += [(settings.home / "state", 0o700), (settings.volumes_dir, 0o711)]
    modes += [(settings.home / "work", 0o711)]
    for folder, mode in modes:
        folder.mkdir(parents=True, exist_ok=True)
        if not folder.resolve().is_relative_to(settings.home.resolve()):
            if folder.stat().st_mode & 0o077 & ~mode:  # the operator's: said, not changed
                log.warning("%s is open to other users (mode %o): close it to %o", folder,
                            folder.stat().st_mode & 0o777, mode)  # fmt: skip
            continue
        os.chmod(folder, mode)
    if settings.database_url.startswith("sqlite:///"):
        db = Path(settings.database_url.removeprefix("sqlite:///"))
        for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.chmod(path, 0o600)


class ControlPlane:
    """Owns the engine, the executor and the reconciler thread for one SYLPHX_HOME, and
    builds the services over them: ``runs``, ``volumes``, ``secrets``, ``account``. The
    HTTP edge calls those services; it does not reach into the parts."""

    def __init__(
        self, settings: Settings, executor: Executor | None = None, *, shared: bool = False
    ) -> None:
        """``shared``: one of several API processes of this home (``--workers``); they
        skip the home lock and take turns at reconciling through the lease."""
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        close_home(settings)
        self.lock = HomeLock(settings.home) if not shared else None
        self.draining = False  # set on SIGTERM: no new runs, shards keep running
        self.engine = make_engine(settings.database_url)
        self.sessions = session_factory(self.engine)  # writers (BEGIN IMMEDIATE on SQLite)
        self.reads = read_session_factory(self.engine)  # readers
        self.images = ImageStore(
            settings.home / "images",
            private_registries=settings.private_registries,
            max_unpacked=settings.image_max_unpacked_bytes,
            in_use=functools.partial(pinned_images, self.reads),  # kept by eviction
            reader=(settings.shard_uid, settings.shard_gid),  # a tenant's files: theirs
            confine=(
                functools.partial(
                    egress.run_confined,
                    hide=settings.hidden_paths(),
                    user=(settings.egress_uid, settings.egress_gid),
                )
                if egress.confinable()
                else None
            ),
        )
        self.executor: Executor = executor or make_executor(settings, self.images)
        self.cipher = load_cipher(settings.secrets_key, settings.secrets_key_file)
        self.keys = KeyCache(settings.auth_cache_seconds)  # API key hash -> org id
        self.terminal_views = TerminalViews()  # run id -> JSON of runs that cannot change
        # SQLite reads are CPU work under this process's GIL: two at a time keep both cores
        # busy without threads fighting over it; PostgreSQL reads mostly wait on the network.
        self.run_reads = SharedReads(slots=2 if self.engine.dialect.name == "sqlite" else 8)
        self.reconciler = Reconciler(
            self.sessions,
            self.executor,
            settings,
            cipher=self.cipher,
            lease=Lease(self.engine, settings.home),
        )
        # long-polls of GET /v1/runs/{id}?wait=: released by this process's reconciler
        # passes, or (another process reconciling) by a fallback check of the store
        self.run_waiters = RunWaiters(
            functools.partial(ended_among, self.engine),
            reconcile_interval=settings.reconcile_interval,
        )
        self.reconciler.on_pass = self.run_waiters.passed
        self.runs = RunService(
            sessions=self.sessions,
            reads=self.reads,
            engine=self.engine,
            executor=self.executor,
            images=self.images,
            settings=settings,
            cipher=self.cipher,
            wake=self.reconciler.wake,
            now=self.now,
            draining=self.is_draining,
            terminal_views=self.terminal_views,
            shared_reads=self.run_reads,
            waiters=self.run_waiters,
            log_disk=self.reconciler.log_disk,  # as its passes last read it
            # followed log streams: at most so many per org and in this process
            log_streams=LogStreams(settings.max_log_streams_per_org, settings.max_log_streams),
        )
        self.volumes = VolumeService(
            sessions=self.sessions, reads=self.reads, root=settings.volumes_dir, now=self.now
        )
        self.secrets = SecretService(
            sessions=self.sessions, reads=self.reads, cipher=self.cipher, now=self.now
        )
        self.account = AccountService(reads=self.reads, keys=self.keys, now=self.now)

    @staticmethod
    def now() -> datetime:
        """The clock every service of the plane is given (UTC)."""
        return datetime.now(UTC)

    def is_draining(self) -> bool:
        """Whether SIGTERM arrived (``draining`` is set): no new runs, shards keep running."""
        return self.draining

    def start(self) -> None:
        """Take the home lock, migrate the store and start reconciling."""
        if self.lock is not None:
            self.lock.acquire()
        try:
            migrate(self.engine)
            close_home(self.settings)  # the store exists by now
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

    def bootstrap_local(self) -> None:
        """Embedded default: make sure the ``local`` org and its key file exist."""
        from sylphx._server.tenancy.orgs import bootstrap_local

        with self.sessions.begin() as s:
            bootstrap_local(s, self.settings.local_token_file, self.now())

    def stop(self) -> None:
        """Stop reconciling; running shards are left alone (a restart re-adopts them)."""
        self.draining = True
        self.run_waiters.close()
        self.runs.group_commit.close()  # queued submits stored and answered first
        self.reconciler.stop()
        self.executor.close()
        self.engine.dispose()
        if self.lock is not None:
            self.lock.release()


def shard_policy(settings: Settings) -> Policy:
    """The envelope every shard gets on any executor, from the operator's settings."""
    return Policy(
        hide=settings.hidden_paths(),
        network="host" if settings.shard_network == "host" else "slirp4netns",
        uid=settings.shard_uid,
        gid=settings.shard_gid,
        egress=(settings.egress_uid, settings.egress_gid),
    )


def _local_executor(settings: Settings, images: ImageStore) -> LocalExecutor:
    """The local executor with the envelope the settings ask for; fails loudly when the
    sandbox or cgroups cannot be used unless the operator opted out."""
    cgroups = None
    if not settings.unenforced_tiers:
        cgroups = Cgroups()
        cgroups.check()
    else:
        log.warning("SYLPHX_UNENFORCED_TIERS=1: machine tiers are NOT enforced (no cgroups)")
    if not settings.sandbox:
        log.warning("SYLPHX_SANDBOX=off: shards run unsandboxed on the host")
    return LocalExecutor(
        settings.local_cpus,
        settings.local_memory,
        settings.home / "state",
        sandbox=settings.sandbox,
        cgroups=cgroups,
        policy=shard_policy(settings),
        scratch=settings.home / "work",
        images=images,
        max_log_bytes=settings.max_log_bytes,
    )
