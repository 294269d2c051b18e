"""Process helpers for executors: does the program exist, and which processes descend."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def check_program(
    program: str, path: str, workdir: Path | None, *, root: Path | None = None
) -> None:
    """Fail the launch (exit 127, LaunchError) when the program does not exist, as a shell
    would, instead of starting a sandbox that can only fail. ``root``: an image's rootfs
    (its symlinks may point anywhere inside it, so existence is all that is checked)."""
    if root is not None:
        dirs = [""] if "/" in program else path.split(":")
        rel = program.lstrip("/")
        found = any(os.path.lexists(root / d.lstrip("/") / rel) for d in dirs)
    elif "/" in program:
        target = Path(program) if program.startswith("/") else (workdir or Path("/")) / program
        found = os.access(target, os.X_OK) and target.is_file()
    else:
        found = shutil.which(program, path=path) is not None
    if not found:
        raise FileNotFoundError(2, "No such file or directory (or not executable)", program)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


PRIVATE = Path("/tmp")  # each shard gets its own empty /tmp


def visible_host_paths(program: str, path: str, workdir: Path | None) -> tuple[Path, ...]:
    """Host directories a sandboxed shard must still see, read-only, although they lie under
    the private ``/tmp``: its working directory, and the toolchains it runs -- a PATH entry's
    parent (a virtualenv's root: ``bin`` and ``lib``) or an absolute program's."""
    wanted: list[Path] = [workdir] if workdir else []
    bins = [Path(p) for p in path.split(":") if p]
    if program.startswith("/"):
        bins.append(Path(program).parent)
    for directory in bins:
        if directory.is_relative_to(PRIVATE) and directory.is_dir():
            root = directory.parent if directory.name == "bin" else directory
            if root != PRIVATE:
                wanted.append(root)
    return tuple(dict.fromkeys(wanted))
