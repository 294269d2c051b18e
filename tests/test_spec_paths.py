"""Paths a run names: spelled one way only (the spec model)."""

from __future__ import annotations

import pytest

from sylphx import ValidationError
from sylphx._spec import RunSpec

CMD = {"command": ["true"]}


# -- the spec model: lexical rules only (shared by API, SDK and CLI) -------------------


@pytest.mark.parametrize(
    ("spelled", "stored"),
    [
        ("//cache", "/cache"),
        ("///data//out/", "/data/out"),
        ("/./cache/.", "/cache"),
        ("/x/etc", "/x/etc"),
    ],
)
def test_mount_paths_are_stored_normalised(spelled: str, stored: str) -> None:
    spec = RunSpec.parse({**CMD, "volumeMounts": [{"volumeId": "v", "mountPath": spelled}]})
    wire = spec.to_wire()
    assert wire["volumeMounts"][0]["mountPath"] == stored
    assert RunSpec.parse(wire).to_wire() == wire


@pytest.mark.parametrize(
    ("spelled", "words"),
    [
        ("//etc", "system path"),
        ("//proc", "system path"),
        ("///etc/x", "system path"),
        ("/./etc", "system path"),
        ("//", "system path"),
        ("/x/../etc", "'..'"),
        ("/cache/..", "'..'"),
        ("cache", "absolute path"),
        ("/ca\0che", "NUL"),
    ],
)
def test_mount_paths_that_break_a_rule(spelled: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        RunSpec.parse({**CMD, "volumeMounts": [{"volumeId": "v", "mountPath": spelled}]})
    (detail,) = err.value.details
    assert detail["field"] == "volumeMounts[0].mountPath"
    assert words in detail["rule"] and detail["fix"]


def test_one_mount_path_spelled_two_ways_is_used_twice() -> None:
    mounts = [{"volumeId": "a", "mountPath": "/c"}, {"volumeId": "b", "mountPath": "//c/"}]
    with pytest.raises(ValidationError, match="mountPath /c is used twice"):
        RunSpec.parse({**CMD, "volumeMounts": mounts})


@pytest.mark.parametrize(
    ("spelled", "stored"),
    [("//w/./job/", "/w/job"), ("/", "/"), ("///", "/"), ("/w/job", "/w/job")],
)
def test_working_dir_is_stored_normalised(spelled: str, stored: str) -> None:
    assert RunSpec.parse({**CMD, "workingDir": spelled}).working_dir == stored


@pytest.mark.parametrize(
    ("spelled", "words"),
    [("/w/../etc", "'..'"), ("..", "absolute path"), ("w/job", "absolute path"), ("/w\0", "NUL")],
)
def test_working_dirs_that_break_a_rule(spelled: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        RunSpec.parse({**CMD, "workingDir": spelled})
    (detail,) = err.value.details
    assert detail["field"] == "workingDir"
    assert words in detail["rule"] and detail["fix"]
