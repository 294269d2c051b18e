"""Generate the TypeScript SDK's wire types from the API's OpenAPI document, or check them.

    python tools/openapi_ts.py          # write sdk/typescript/src/wire.ts
    python tools/openapi_ts.py --check  # exit 1 if it differs from what would be written
    python tools/openapi_ts.py --dump F # only write the OpenAPI document (JSON) to F

The document is the app's own (``create_app(...).openapi()``, what ``GET /openapi.json``
serves), built in-process on a throwaway home with the stub executor: nothing listens and
nothing runs. ``openapi-typescript``, pinned in sdk/typescript/package.json (a
devDependency: ``npm ci`` there first, which ``make lint`` does), turns it into
``wire.ts``. ``make lint`` runs ``--check``, so the TypeScript SDK's types cannot drift
from the server's models.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sdk" / "typescript"
WIRE = PACKAGE / "src" / "wire.ts"
GENERATOR = PACKAGE / "node_modules" / ".bin" / "openapi-typescript"


def document() -> dict[str, Any]:
    """The API's OpenAPI document, from an app built on a throwaway home."""
    from sylphx._server import ControlPlane, create_app
    from sylphx._server.executors.stub import StubExecutor
    from sylphx._settings import Settings

    with tempfile.TemporaryDirectory(prefix="sylphx-openapi-") as tmp:
        home = Path(tmp)
        settings = Settings(home=home, database_url=f"sqlite:///{home / 'sylphx.db'}")
        plane = ControlPlane(settings, StubExecutor())
        try:
            doc: dict[str, Any] = create_app(plane).openapi()
        finally:
            plane.engine.dispose()
    return doc


def generate(doc: dict[str, Any]) -> str:
    """``wire.ts`` for ``doc``, as the pinned openapi-typescript writes it."""
    if not GENERATOR.exists():
        sys.exit(
            f"{GENERATOR.relative_to(ROOT)} is missing: run `npm ci` in"
            f" {PACKAGE.relative_to(ROOT)} (make lint does)"
        )
    npx = shutil.which("npx")
    if npx is None:
        sys.exit("npx (npm) is not on PATH: install Node.js >= 18 with npm (make system-deps)")
    with tempfile.TemporaryDirectory(prefix="sylphx-openapi-ts-") as tmp:
        source, target = Path(tmp) / "openapi.json", Path(tmp) / "wire.ts"
        source.write_text(json.dumps(doc, indent=2, sort_keys=False))
        subprocess.run(
            [npx, "--no-install", "openapi-typescript", str(source), "-o", str(target)],
            cwd=PACKAGE,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return target.read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when wire.ts is stale")
    parser.add_argument("--dump", type=Path, metavar="FILE", help="write the document only")
    args = parser.parse_args(argv)
    doc = document()
    if args.dump is not None:
        args.dump.write_text(json.dumps(doc, indent=2) + "\n")
        return 0
    wanted = generate(doc)
    if not args.check:
        WIRE.write_text(wanted)
        print(f"wrote {WIRE.relative_to(ROOT)}")
        return 0
    current = WIRE.read_text() if WIRE.exists() else ""
    if current == wanted:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        wanted.splitlines(keepends=True),
        str(WIRE.relative_to(ROOT)),
        "generated from the app's OpenAPI document",
    )
    sys.stdout.writelines(diff)
    print(
        f"\n{WIRE.relative_to(ROOT)} is stale: the API's models changed."
        " Run `make ts-wire` (python tools/openapi_ts.py) and commit it.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
