"""A volume mount of the run spec: where a volume appears in every shard."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from . import limits
from .limits import Text, rule
from .model import WireModel as _Model
from .paths import SYSTEM_PATHS, PathRuleError, is_within, normalise

__all__ = ["VolumeMount", "check_mounts"]


class VolumeMount(_Model):
    """A volume mounted read-write into every shard at ``mount_path``."""

    volume_id: Annotated[Text, Field(max_length=limits.MAX_ID_BYTES)]
    mount_path: Text

    @field_validator("volume_id")
    @classmethod
    def _volume_id(cls, v: str) -> str:
        if not v.strip():
            raise rule(
                "volumeId", "must not be empty", "give the id of a volume (sylphx volumes list)"
            )
        return v

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, v: str) -> str:
        fix = "use an absolute path of your own, e.g. /cache or /data/out"
        try:
            norm = normalise(v)
        except PathRuleError as exc:
            raise rule("mountPath", str(exc), fix) from None
        if norm == "/" or any(is_within(norm, p) for p in SYSTEM_PATHS):
            got = limits.shown(v)
            raise rule("mountPath", f"must not be mounted over a system path (got {got})", fix)
        limits.check_path(norm, "mountPath", fix)
        return norm


def check_mounts(mounts: list[VolumeMount]) -> None:
    """Raise the rule a run's ``volumeMounts`` break: too many, a path used twice."""
    if len(mounts) > limits.MAX_VOLUME_MOUNTS:
        raise rule(
            "volumeMounts",
            f"has {len(mounts)} mounts; a run may have {limits.MAX_VOLUME_MOUNTS}",
            "mount one volume and use folders inside it",
        )
    seen: set[str] = set()
    for mount in mounts:
        if mount.mount_path in seen:
            raise rule(
                "volumeMounts",
                f"mountPath {mount.mount_path} is used twice",
                "give every mount its own path",
            )
        seen.add(mount.mount_path)
