"""Lexical rules for the paths a run spec names: ``workingDir`` and volume ``mountPath``s.

No filesystem access here: the spec model is shared by the API, the SDK and the CLI, and
a run with an ``image`` names paths of the image's filesystem, not the host's. What the
host's filesystem says (symlinks, existence, paths hidden from shards) is checked by the
server at submit (``_server/runs/hostpaths.py``).
"""

from __future__ import annotations

from .errors import shown

__all__ = ["MANIFEST_PATH", "SYSTEM_PATHS", "PathRuleError", "is_within", "normalise"]

# where a sandboxed merge step finds its manifest (SYLPHX_MANIFEST): in its own /tmp, a
# tmpfs the sandbox makes, so no entry of an image's root decides where the mount point is
MANIFEST_PATH = "/tmp/.sylphx/manifest.json"

# Paths a volume may not be mounted over: the shard's own system directories.
SYSTEM_PATHS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var",
)


class PathRuleError(ValueError):
    """The rule a path breaks (its text is the rule, e.g. "must not contain '..'")."""


def normalise(path: str) -> str:
    """``path`` spelled one way only: separators collapsed (any number of leading slashes
    too, which ``posixpath.normpath`` keeps when there are exactly two), ``.`` components
    and a trailing slash removed: ``//etc/./x/`` -> ``/etc/x``.

    Raises :class:`PathRuleError` for a path that is not absolute, holds a NUL byte or a
    ``..`` component (what ``..`` means depends on the symlinks on the way, so it is
    refused rather than guessed)."""
    if "\0" in path:
        raise PathRuleError("must not contain NUL bytes")
    if not path.startswith("/"):
        raise PathRuleError(f"must be an absolute path (got {shown(path)})")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise PathRuleError(f"must not contain '..' (got {shown(path)})")
    return "/" + "/".join(parts)


def is_within(path: str, root: str) -> bool:
    """True when normalised absolute ``path`` is ``root`` or lies under it."""
    return path == root or root == "/" or path.startswith(root + "/")
