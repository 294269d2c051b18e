"""The host ids a root control plane gives shards and a registry's skopeo, from SYLPHX_*
variables, and the errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sylphx._core.errors import ValidationError
from sylphx._settings import Settings


def test_shards_and_registries_get_ids_of_their_own(tmp_path: Path) -> None:
    s = Settings.from_env({"SYLPHX_HOME": str(tmp_path)})
    assert (s.shard_uid, s.shard_gid, s.egress_uid, s.egress_gid) == (64000, 64000, 64001, 64001)
    s = Settings.from_env({"SYLPHX_HOME": str(tmp_path), "SYLPHX_EGRESS_UID": "70000"})
    assert (s.egress_uid, s.egress_gid) == (70000, 64001)


@pytest.mark.parametrize(
    ("env", "field", "words"),
    [
        ({"SYLPHX_EGRESS_UID": "0"}, "SYLPHX_EGRESS_UID", "unprivileged numeric id"),
        ({"SYLPHX_EGRESS_GID": "x"}, "SYLPHX_EGRESS_GID", "unprivileged numeric id"),
        ({"SYLPHX_EGRESS_UID": "64000"}, "SYLPHX_EGRESS_UID", "other than SYLPHX_SHARD_UID"),
        (
            {"SYLPHX_SHARD_GID": "5000", "SYLPHX_EGRESS_GID": "5000"},
            "SYLPHX_EGRESS_GID",
            "other than SYLPHX_SHARD_GID",
        ),
        ({"SYLPHX_SHARD_UID": "-1"}, "SYLPHX_SHARD_UID", "unprivileged numeric id"),
    ],
)
def test_bad_ids_name_the_field_and_the_fix(
    tmp_path: Path, env: dict[str, str], field: str, words: str
) -> None:
    with pytest.raises(ValidationError, match=words) as refused:
        Settings.from_env({"SYLPHX_HOME": str(tmp_path), **env})
    assert refused.value.details[0]["field"] == field
