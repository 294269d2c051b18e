"""The P3 baseline: FastAPI hello endpoints served by uvicorn with the settings ``sylphx
server`` uses (uvicorn's default loop and HTTP implementations, log level warning, the same
graceful-shutdown timeout, ``--workers``), so only the endpoint differs.

``/hello`` is the canonical ``async def`` hello; ``/hello-sync`` is a plain ``def`` like the
sylphx endpoints, which FastAPI runs in its thread pool.

    python bench/hello_app.py PORT [WORKERS]
"""

from __future__ import annotations

import sys

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/hello-sync")
def hello_sync() -> dict[str, str]:
    return {"hello": "world"}


if __name__ == "__main__":
    import uvicorn

    from sylphx._server import UVICORN_OPTIONS

    uvicorn.run(
        "hello_app:app",
        host="127.0.0.1",
        port=int(sys.argv[1]),
        workers=int(sys.argv[2]) if len(sys.argv) > 2 else 1,
        **UVICORN_OPTIONS,
    )
