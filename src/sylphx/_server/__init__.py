"""The control plane: HTTP API, reconciler, store and executors (server side only)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import create_app
    from .plane import ControlPlane

__all__ = ["ControlPlane", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    """Load the API and plane on first use: Ray workers import ``executors`` only."""
    if name == "create_app":
        from .api import create_app

        return create_app
    if name == "ControlPlane":
        from .plane import ControlPlane

        return ControlPlane
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve(host: str | None = None, port: int | None = None, uds: str | None = None) -> None:
    """Run the control plane (API + reconciler) until SIGTERM/SIGINT.

    Settings come from ``SYLPHX_*`` variables. With ``uds`` the API listens on a
    Unix socket (the embedded default); otherwise on ``host:port``.
    """
    import uvicorn

    from .._settings import Settings
    from .api import create_app
    from .plane import ControlPlane

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    plane = ControlPlane(settings)
    app = create_app(plane)
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.pid_file.write_text(str(os.getpid()))
    try:
        if uds is not None:
            Path(uds).unlink(missing_ok=True)
            uvicorn.run(app, uds=uds, log_level="warning")
        else:
            uvicorn.run(app, host=host or "127.0.0.1", port=port or 8080, log_level="warning")
    finally:
        if settings.pid_file.read_text().strip() == str(os.getpid()):
            settings.pid_file.unlink(missing_ok=True)
