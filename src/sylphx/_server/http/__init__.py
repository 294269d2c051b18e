"""The HTTP edge: FastAPI routers per resource (runs, volumes, secrets, account) over the
server's services, with errors mapped to HTTP once (:mod:`.edge`)."""

from .app import create_app

__all__ = ["create_app"]
