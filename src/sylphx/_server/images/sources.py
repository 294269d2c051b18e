"""Which registry repositories are known to hold a digest the cache holds.

``name@sha256:D`` is served from the shared cache only once ``name``'s registry said it
holds ``D`` (see :mod:`.store`): one file per digest, ``<root>/<hex>``, a repository per
line (a reference has no whitespace), appended by whole short writes.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["Sources"]


class Sources:
    """The repositories that vouched for each digest, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        return self.root / digest.partition(":")[2]

    def vouched(self, repository: str, digest: str) -> bool:
        """Whether ``repository`` is known to hold ``digest``."""
        try:
            return repository in self._path(digest).read_text().splitlines()
        except OSError:
            return False

    def record(self, repository: str, digest: str) -> None:
        """Note that ``repository`` holds ``digest`` (one short O_APPEND write: whole)."""
        if self.vouched(repository, digest):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self._path(digest), "a") as fh:
            fh.write(repository + "\n")
