"""Server start-up: the start-up heap is frozen out of garbage collection, once, after the
app is built (both for one process and for each ``--workers`` API process), and the
collector's thresholds raised."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

import sylphx._server as server_module
from conftest import database_url_for
from sylphx._server import freeze_startup_heap


@pytest.fixture
def unfreeze() -> Iterator[None]:
    """Give frozen objects back to the collector after the test, at the thresholds it
    had (both are the process's)."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.fixture
def server_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("SYLPHX_HOME", str(home))
    monkeypatch.setenv("SYLPHX_DATABASE_URL", database_url_for(home))
    monkeypatch.setenv("SYLPHX_SANDBOX", "off")
    monkeypatch.setenv("SYLPHX_UNENFORCED_TIERS", "1")
    return home


def _close(app: Any) -> None:
    plane = app.state.plane
    plane.executor.close()
    plane.engine.dispose()


def test_freeze_startup_heap_moves_live_objects_out_of_collection(unfreeze: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    freeze_startup_heap()
    assert gc.get_freeze_count() > 10_000  # at least the imported modules and classes
    assert gc.get_threshold() == server_module.GC_THRESHOLDS  # and the rest collected less


def test_serve_freezes_after_building_the_app(
    server_env: Path, monkeypatch: pytest.MonkeyPatch, unfreeze: None
) -> None:
    order: list[str] = []
    apps: list[Any] = []

    def fake_run(self: uvicorn.Server, *_: Any) -> None:
        assert self.config.loaded  # the app and protocol modules were loaded before freezing
        order.append("run")
        apps.append(self.config.loaded_app)

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setattr(server_module, "freeze_startup_heap", lambda: order.append("freeze"))
    monkeypatch.setattr(server_module.signal, "signal", lambda *_: None)  # keep pytest's
    server_module.serve(host="127.0.0.1", port=1)
    assert order == ["freeze", "run"]
    _close(apps[0].app)


def test_each_api_worker_freezes_its_app(
    server_env: Path, monkeypatch: pytest.MonkeyPatch, unfreeze: None
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(server_module, "freeze_startup_heap", lambda: calls.append("freeze"))
    app = server_module.shared_app()
    assert calls == ["freeze"]
    _close(app)
