"""Generate the synchronous SDK from the async one (as httpcore does), or check it is current.

    python tools/unasync_sdk.py          # write src/sylphx/_client/calls.py, runs.py, resources.py
    python tools/unasync_sdk.py --check  # exit 1 if they differ from what would be written

The async files are the source; ``unasync`` drops ``async``/``await`` and renames the
async names to their sync twins (below); ``ruff check --fix`` and ``ruff format`` then
give the result the house style (e.g. ``yield from`` where the async code loops).
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import unasync

SRC = Path(__file__).resolve().parents[1] / "src" / "sylphx" / "_client"
FILES = {
    "async_calls.py": "calls.py",
    "async_runs.py": "runs.py",
    "async_resources.py": "resources.py",
}
RENAMES = {
    "async_calls": "calls",
    "async_runs": "runs",
    "async_resources": "resources",
    "io_async": "io_sync",
    "AsyncRun": "Run",
    "AsyncRunsClient": "RunsClient",
    "AsyncVolumesClient": "VolumesClient",
    "AsyncUsageClient": "UsageClient",
    "AsyncSecretsClient": "SecretsClient",
    "async_http": "http",
    "aclose": "close",
    "aread": "read",
    "aiter_lines": "iter_lines",
    "aiter_bytes": "iter_bytes",
}
HEADER = "# Generated from {source} by tools/unasync_sdk.py (make sdk): edit that file, not this.\n"


def generate() -> dict[str, str]:
    """File name -> the text the sync SDK's file should have."""
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "_async"), Path(tmp, "_sync")
        src.mkdir()
        for name in FILES:
            shutil.copy(SRC / name, src / name)
        rule = unasync.Rule(f"{src}/", f"{dst}/", additional_replacements=RENAMES)
        unasync.unasync_files([str(src / name) for name in FILES], rules=[rule])
        for name, target in FILES.items():
            path = dst / name
            path.write_text(HEADER.format(source=name) + path.read_text())
            for fix in (["check", "--fix", "--unsafe-fixes"], ["format"]):  # the house style
                subprocess.run(
                    [sys.executable, "-m", "ruff", *fix, "--quiet", str(path)],
                    check=True,
                    cwd=SRC.parents[2],
                )
            out[target] = path.read_text()
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = 0
    for target, text in generate().items():
        path = SRC / target
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if check:
            stale += 1
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(path), "generated", lineterm=""
            )
            print("\n".join(list(diff)[:40]))
            print(f"{path} is not what tools/unasync_sdk.py generates: run `make sdk`")
        else:
            path.write_text(text)
            print(f"wrote {path}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
