"""Fixtures: a real control plane (uvicorn on loopback, real processes) on a real store.

``SYLPHX_TEST_STORE=sqlite`` (default) or ``postgresql`` picks the store for every server the
tests start; PostgreSQL is one throwaway server per session with a fresh database per home.

What keeps the loop fast without testing less:

- a new home's store starts as a copy of one migrated once per session (SQLite: a file
  copy; PostgreSQL: ``CREATE DATABASE ... TEMPLATE``); the control plane still runs its
  migrations on start, which find the store at head (``test_store`` migrates from empty);
- ``make_server`` stops its control planes in the background: the next test starts while
  the last one's uvicorn tick and executor watcher wind down; every one is joined (and must
  have stopped) before the session ends;
- ``shared_server`` is one control plane per module, and ``tenant`` a fresh org on it, for
  tests whose requests are refused or whose runs end before the test does.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import make_url, select

# Keep every Ray address on loopback: with this, Ray resolves "127.0.0.1" to itself instead
# of the host's external interface (set before anything imports ray).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from sylphx._server import UVICORN_OPTIONS, ControlPlane, create_app
from sylphx._server.store import ApiKeyRow
from sylphx._server.tenancy import orgs
from sylphx._settings import Settings

pytest_plugins = ["oci"]  # the busybox OCI image fixtures

TEST_STORE = os.environ.get("SYLPHX_TEST_STORE", "sqlite")
if TEST_STORE not in ("sqlite", "postgresql"):
    raise RuntimeError(f"SYLPHX_TEST_STORE={TEST_STORE!r}: use sqlite or postgresql")
_pg: Any = None  # the session's PgServer (postgresql runs only)
_db_by_home: dict[Path, str] = {}
_template: Path | None = None  # see _template_home
_templates: list[Path] = []  # other template folders, removed at the end of the session


def database_url_for(home: Path) -> str:
    """The store of ``home`` for this test session: SQLite in it, or its own PG database."""
    if TEST_STORE == "sqlite":
        return f"sqlite:///{home / 'sylphx.db'}"
    home = home.resolve()
    if home not in _db_by_home:
        _db_by_home[home] = pg_server().create_database()
    return _db_by_home[home]


def _template_home() -> Path:
    """A home whose store was migrated to head once for this session (created on first use)."""
    global _template
    if _template is None:
        from sylphx._server.store import make_engine, migrate

        home = Path(tempfile.mkdtemp(prefix="sylphx-template-"))
        engine = make_engine(database_url_for(home))
        try:
            migrate(engine)
        finally:
            engine.dispose()
        _template = home
    return _template


def migrated_sqlite(db: Path) -> str:
    """A SQLite store at ``db`` (whatever the session's store), created at the newest
    migration (a copy of the session's template) when it does not exist yet; its URL."""
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_sqlite_template(), db)
    return f"sqlite:///{db}"


@functools.cache
def _sqlite_template() -> Path:
    if TEST_STORE == "sqlite":
        return _template_home() / "sylphx.db"
    from sylphx._server.store import make_engine, migrate

    db = Path(tempfile.mkdtemp(prefix="sylphx-template-")) / "sylphx.db"
    _templates.append(db.parent)
    engine = make_engine(f"sqlite:///{db}")
    try:
        migrate(engine)
    finally:
        engine.dispose()
    return db


def migrated_store_for(home: Path) -> str:
    """The store of ``home`` like :func:`database_url_for`, but created already at the newest
    migration (a copy of the session's template) when it does not exist yet."""
    if TEST_STORE == "sqlite":
        migrated_sqlite(home / "sylphx.db")
        return database_url_for(home)
    template = _template_home()
    home = home.resolve()
    if home not in _db_by_home:
        template_db = make_url(database_url_for(template)).database
        _db_by_home[home] = pg_server().create_database(template=template_db)
    return _db_by_home[home]


def pg_server() -> Any:
    global _pg
    if _pg is None:
        from pgserver import PgServer

        _pg = PgServer()
        _pg.start()
    return _pg


# Modules whose tests each take seconds (a real server killed and restarted, tmpfs disks,
# Ray, the fuzzer, many sandboxed shards): `make check` skips them (-m "not slow"),
# `make test` runs everything on both stores.
SLOW_MODULES = {
    "test_act_after_commit",
    "test_admin_cli",
    "test_api_fuzz",
    "test_bulkheads",
    "test_cgroups",
    "test_cli",
    "test_durability",
    "test_envelope",
    "test_escapes",
    "test_faults",
    "test_fulldisk",
    "test_health",
    "test_images",
    "test_images_run",
    "test_longpoll",
    "test_parity",
    "test_parity_faults",
    "test_parity_restart",
    "test_quotas",
    "test_ray",
    "test_ray_envelope",
    "test_ray_remote",
    "test_ray_restart",
    "test_retry_faults",
    "test_sdk_resilience",
    "test_server_startup",
    "test_supervisor",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With ``-m "not slow"`` (make check) the slow modules are not even imported (Ray,
    schemathesis): every test in them would be deselected anyway."""
    if config.getoption("markexpr") == "not slow" and collection_path.stem in SLOW_MODULES:
        return True
    return None


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Wait for the control planes stopping in the background, then drop the stores."""
    try:
        _join_stopping()
    finally:
        if _pg is not None:
            _pg.destroy()
        for folder in [*_templates, *([_template] if _template else [])]:
            shutil.rmtree(folder, ignore_errors=True)


def pytest_report_header() -> str:
    return f"sylphx store: {TEST_STORE}"


TERMINAL = {"succeeded", "partial", "failed", "cancelled", "timed_out"}


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for the tests' HTTP clients: each new one would load the CA bundle
    again (~30 ms), though they only talk plain HTTP on loopback."""
    return ssl.create_default_context()


@dataclass
class Server:
    """A running control plane, an org on it, and an HTTP client holding that org's key."""

    url: str
    http: httpx.Client
    settings: Settings
    plane: ControlPlane
    token: str

    def new_org(self, name: str, plan: str = "enterprise", **limits: Any) -> str:
        """Create another org with a key; returns the key."""
        with self.plane.sessions.begin() as s:
            orgs.create_org(s, name, plan=plan, now=ControlPlane.now(), **limits)
            return orgs.create_key(s, name, name="test", now=ControlPlane.now())[1]

    @property
    def org_id(self) -> str:
        """The id of the org this server's ``http`` client acts as."""
        with self.plane.reads() as s:
            key = select(ApiKeyRow.org_id).where(ApiKeyRow.hash == orgs.hash_key(self.token))
            org_id = s.scalar(key)
        assert org_id is not None
        return str(org_id)

    def volume(self) -> tuple[str, Path]:
        """A new volume: its id and its directory on this host (shards write there)."""
        vol = self.http.post("/v1/volumes", json={"name": "test"}).json()
        return vol["id"], self.settings.volumes_dir / vol["id"]

    def client(self, token: str) -> httpx.Client:
        """An HTTP client authenticated as ``token``."""
        return httpx.Client(
            base_url=self.url,
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
            verify=_tls(),
        )

    def submit(self, **spec: Any) -> dict[str, Any]:
        r = self.http.post("/v1/runs", json=spec)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def get(self, run_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/runs/{run_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def shards(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.http.get(f"/v1/runs/{run_id}/shards").json())

    def wait(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(run_id)
            if run["status"] in TERMINAL:
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} not terminal after {timeout}s: {self.get(run_id)}")

    def wait_for(self, pred: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError("condition not met in time")


class _Running:
    """One control plane served by uvicorn on a thread; stopped now or in the background."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket):
        self.server, self.thread, self.sock = server, thread, sock

    def begin_stop(self) -> None:
        """Ask uvicorn to exit: it shuts the app down, which stops the plane."""
        self.server.should_exit = True

    def join(self) -> None:
        self.thread.join(timeout=15)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError("a test control plane did not stop within 15 s")


_stopping: list[_Running] = []  # control planes make_server stops in the background


def _join_stopping(*, finished_only: bool = False) -> None:
    """Join the control planes stopping in the background (only those done, if asked)."""
    for running in list(_stopping):
        if finished_only and running.thread.is_alive():
            continue
        _stopping.remove(running)
        running.join()


def _serve(home: Path, **overrides: Any) -> tuple[Server, _Running]:
    params: dict[str, Any] = dict(
        home=home,
        local_cpus=2.0,
        local_memory=8 << 30,
        # A cancel right after a shard started may find no process of it yet to SIGTERM
        # (its sandbox still starting): it is then killed after this grace.
        kill_grace_seconds=0.5,
        reconcile_interval=0.1,
    )
    params.update(overrides)
    if "database_url" not in params:
        params["database_url"] = migrated_store_for(home)
    settings = Settings(**params)
    plane = ControlPlane(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(plane), **UVICORN_OPTIONS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    with plane.sessions.begin() as s:
        if s.get(orgs.OrgRow, "org_test") is None:
            orgs.create_org(s, "test", plan="enterprise", now=plane.now(), org_id="org_test")
        token = orgs.create_key(s, "org_test", name="tests", now=plane.now())[1]
    http = httpx.Client(
        base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}, verify=_tls()
    )
    return Server(url, http, settings, plane, token), _Running(server, thread, sock)


def start_server(home: Path, **overrides: Any) -> tuple[Server, Callable[[], None]]:
    """A control plane on ``home`` (settings as ``Settings`` keywords) and a function that
    stops it and returns once it has (so the same home can be started again)."""
    server, running = _serve(home, **overrides)

    def stop() -> None:
        server.http.close()
        running.begin_stop()
        running.join()

    return server, stop


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start control planes with chosen settings (capacity, grace...); all stopped after
    the test, in the background (see the module's docstring)."""
    started: list[tuple[Server, _Running]] = []
    _join_stopping(finished_only=True)

    def make(**overrides: Any) -> Server:
        server, running = _serve(tmp_path / f"home{len(started)}", **overrides)
        started.append((server, running))
        return server

    yield make
    for server, running in reversed(started):
        server.http.close()
        running.begin_stop()
        _stopping.append(running)


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    """A control plane with 2 vCPU / 8 GiB of local capacity."""
    return make_server()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One control plane (2 vCPU / 8 GiB) for all of a module's tests that ask for it: for
    requests that are refused, or runs that end before their test does. Use ``tenant``
    for an org of the test's own."""
    server, running = _serve(tmp_path_factory.mktemp("shared") / "home")
    yield server
    server.http.close()
    running.begin_stop()
    _stopping.append(running)


@pytest.fixture
def tenant(shared_server: Server) -> Iterator[Server]:
    """The module's shared control plane as seen by a new org of this test's own: its runs,
    volumes, secrets and usage start empty (capacity and the home are shared)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    token = shared_server.new_org(name)
    http = shared_server.client(token)
    yield replace(shared_server, http=http, token=token)
    http.close()


def pids_of_run(run_id: str) -> list[int]:
    """Host pids of every process whose environment names ``run_id`` (sandboxed shards
    see other pids inside their own pid namespace)."""
    needle = f"SYLPHX_RUN_ID={run_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A clean SYLPHX_HOME, no SYLPHX_URL and no contexts (SYLPHX_CONFIG_DIR), for
    embedded-default tests; the embedded control plane started under it is stopped
    afterwards."""
    from sylphx._client.embedded import stop_local_server

    home = tmp_path / "embedded-home"
    for key in list(os.environ):
        if key.startswith("SYLPHX_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SYLPHX_HOME", str(home))
    monkeypatch.setenv("SYLPHX_CONFIG_DIR", str(tmp_path / "config"))  # no current context
    if TEST_STORE == "postgresql":
        monkeypatch.setenv("SYLPHX_DATABASE_URL", database_url_for(home))
    yield home
    stop_local_server(home)


# -- Ray: one loopback cluster of 3 nodes per test session ---------------------------------
RAY_NODE = dict(num_cpus=2, memory=4 << 30, object_store_memory=80 << 20)
"""Fake logical resources per test node (the machine has 2 real cores): 2 vCPU / 4 GiB."""


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A real Ray cluster of 3 nodes (head + 2 workers) on 127.0.0.1, shared by the session;
    this process is its driver. Tests that remove nodes add their own extra node first."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args=dict(
            RAY_NODE, node_ip_address="127.0.0.1", include_dashboard=False, num_gpus=0
        ),
    )
    for _ in range(2):
        cluster.add_node(**RAY_NODE, node_ip_address="127.0.0.1", num_gpus=0)
    cluster.wait_for_nodes()
    ray.init(
        address=cluster.address,
        namespace="sylphx",
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield cluster
    finally:
        _join_stopping()  # Ray control planes stopping in the background still use the driver
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def ray_server(make_server: Callable[..., Server], ray_cluster: Any) -> Server:
    """A control plane whose executor is the session's Ray cluster."""
    return make_server(executor="ray", ray_address=ray_cluster.address)
