"""Ray settings from SYLPHX_* variables, and the errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sylphx._core.errors import ValidationError
from sylphx._settings import Settings


def test_ray_settings_from_env(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "SYLPHX_HOME": str(tmp_path),
            "SYLPHX_EXECUTOR": "ray",
            "SYLPHX_RAY_ADDRESS": "10.0.0.5:6379",
            "SYLPHX_RAY_GANG_STRATEGY": "strict_spread",
            "SYLPHX_RAY_VOLUME_ROOT": str(tmp_path / "nfs"),
        }
    )
    assert (s.executor, s.ray_address, s.ray_gang_strategy) == (
        "ray",
        "10.0.0.5:6379",
        "STRICT_SPREAD",
    )
    assert s.volumes_dir == tmp_path / "nfs"
    local = Settings.from_env({"SYLPHX_HOME": str(tmp_path)})
    assert (local.executor, local.ray_address, local.volumes_dir) == (
        "local",
        None,
        tmp_path / "volumes",
    )


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SYLPHX_EXECUTOR": "k8s"}, "use 'local' or 'ray'"),
        ({"SYLPHX_RAY_GANG_STRATEGY": "RANDOM"}, "use SPREAD, PACK, STRICT_SPREAD or STRICT_PACK"),
    ],
)
def test_bad_ray_settings_name_the_fix(tmp_path: Path, env: dict[str, str], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Settings.from_env({"SYLPHX_HOME": str(tmp_path), **env})
