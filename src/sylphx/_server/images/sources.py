"""Which registry repositories are known to hold a digest the cache holds.

``name@sha256:D`` is served from the shared cache only once ``name``'s registry said it
holds ``D`` (see :mod:`.store`): one empty file per digest and repository,
``<root>/<hex>.<the repository's sha256, 32 hex>``. Asking is one look-up of a name,
however many repositories tenants had recorded for the digest (one file listing them, a
line each, could be grown until every submit naming the digest read megabytes of it:
found by an attack review). Files of that older form are not read: such a repository is
asked once more, then recorded anew.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["Sources"]


class Sources:
    """The repositories that vouched for each digest, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, repository: str, digest: str) -> Path:
        key = hashlib.sha256(repository.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return self.root / f"{digest.partition(':')[2]}.{key}"

    def vouched(self, repository: str, digest: str) -> bool:
        """Whether ``repository`` is known to hold ``digest``."""
        return self._path(repository, digest).exists()

    def record(self, repository: str, digest: str) -> None:
        """Note that ``repository`` holds ``digest``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._path(repository, digest).touch()
