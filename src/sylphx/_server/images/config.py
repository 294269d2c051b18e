"""What of an image's OCI config decides how a shard runs (Env, WorkingDir, Entrypoint,
Cmd), read from a tenant's config blob, which may hold JSON of any shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sylphx._core.errors import ValidationError

__all__ = ["ImageConfig"]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's OCI config that decide how a shard runs."""

    env: dict[str, str]
    working_dir: str | None
    entrypoint: list[str]
    cmd: list[str]

    @classmethod
    def from_oci(cls, blob: dict[str, Any]) -> ImageConfig:
        """From an OCI (or Docker) image config blob: its ``config`` section."""
        section = blob.get("config") or {}
        if not isinstance(section, dict):  # a tenant's JSON: any shape at all
            section = {}

        def strings(key: str) -> list[str]:
            value = section.get(key) or []
            return [str(a) for a in value] if isinstance(value, list) else []

        env: dict[str, str] = {}
        for item in strings("Env"):
            key, _, value = item.partition("=")
            env[key] = value
        working_dir = section.get("WorkingDir")
        return cls(
            env=env,
            working_dir=str(working_dir) if working_dir else None,
            entrypoint=strings("Entrypoint"),
            cmd=strings("Cmd"),
        )

    def argv(self, command: list[str] | None) -> list[str]:
        """Docker semantics: ENTRYPOINT + (command if given else CMD).

        An empty ``command`` counts as not given. ValidationError naming ``command``
        when the result is empty.
        """
        argv = [*self.entrypoint, *(command if command else self.cmd)]
        if not argv:
            fix = "give a command, or use an image with an ENTRYPOINT or CMD"
            raise ValidationError(
                f"command: the image has no ENTRYPOINT or CMD and no command was given. Fix: {fix}",
                details=[{"field": "command", "rule": "required_without_image_cmd", "fix": fix}],
            )
        return argv
