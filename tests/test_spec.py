"""Every configuration-reference rule, valid and invalid, through the model and the API."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Server
from sylphx._core.errors import ValidationError
from sylphx._core.spec import RunSpec

CMD = {"command": ["python", "train.py"]}

# (spec, expected effective values)
VALID: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {},
        {
            "parallelism": 1,
            "completionMode": "Indexed",
            "gangScheduling": True,
            "backoffLimitPerIndex": None,
            "machine": "standard",
            "timeoutSeconds": 3600,
            "volumeMounts": [],
            "env": {},
            "image": None,
        },
    ),
    ({"parallelism": 9}, {"gangScheduling": True, "completionMode": "Indexed"}),
    ({"parallelism": 256}, {"parallelism": 256}),
    ({"parallelism": 9, "gangScheduling": False}, {"backoffLimitPerIndex": 3}),
    (
        {"parallelism": 9, "gangScheduling": False, "backoffLimitPerIndex": 0},
        {"backoffLimitPerIndex": 0},
    ),
    (
        {"parallelism": 9, "gangScheduling": False, "backoffLimitPerIndex": 50},
        {"backoffLimitPerIndex": 50},
    ),
    ({"parallelism": 2, "completionMode": "NonIndexed"}, {"completionMode": "NonIndexed"}),
    ({"gangScheduling": False}, {"gangScheduling": False, "backoffLimitPerIndex": None}),
    *[
        ({"machine": m}, {"machine": m})
        for m in ("nano", "micro", "small", "standard", "large", "xlarge", "2xlarge", "mem-2xlarge")
    ],
    ({"machine": "gpu-small"}, {"machine": "gpu-small"}),  # reserved: refused at admission
    ({"timeoutSeconds": 1}, {"timeoutSeconds": 1}),
    ({"timeoutSeconds": 86400}, {"timeoutSeconds": 86400}),
    (
        {"volumeMounts": [{"volumeId": "vol_1", "mountPath": "/cache/"}]},
        {"volumeMounts": [{"volumeId": "vol_1", "mountPath": "/cache"}]},
    ),
    ({"env": {"FOLD": "3", "_X1": ""}}, {"env": {"FOLD": "3", "_X1": ""}}),
    ({"image": "ghcr.io/acme/trainer:sha-abc123"}, {"image": "ghcr.io/acme/trainer:sha-abc123"}),
]

# (spec, field named, words the message must contain)
INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"parallelism": 0}, "parallelism", "between 1 and 256"),
    ({"parallelism": 257}, "parallelism", "between 1 and 256"),
    ({"parallelism": "many"}, "parallelism", "whole number"),
    ({"parallelism": 2.5}, "parallelism", "whole number"),
    ({"completionMode": "indexed"}, "completionMode", "'Indexed' or 'NonIndexed'"),
    ({"gangScheduling": "sometimes"}, "gangScheduling", "true or false"),
    (
        {"parallelism": 9, "backoffLimitPerIndex": 3},
        "backoffLimitPerIndex",
        "requires gangScheduling: false (opportunistic runs only)",
    ),
    (
        {"parallelism": 9, "gangScheduling": True, "backoffLimitPerIndex": 3},
        "backoffLimitPerIndex",
        "requires gangScheduling: false",
    ),
    (
        {"gangScheduling": False, "backoffLimitPerIndex": 3},
        "backoffLimitPerIndex",
        "requires parallelism > 1",
    ),
    (
        {"parallelism": 9, "gangScheduling": False, "backoffLimitPerIndex": 51},
        "backoffLimitPerIndex",
        "between 0 and 50",
    ),
    (
        {"parallelism": 9, "gangScheduling": False, "backoffLimitPerIndex": -1},
        "backoffLimitPerIndex",
        "between 0 and 50",
    ),
    ({"machine": "huge"}, "machine", "must be one of"),
    ({"timeoutSeconds": 0}, "timeoutSeconds", "between 1 and 86400"),
    ({"timeoutSeconds": 86401}, "timeoutSeconds", "between 1 and 86400"),
    (
        {"volumeMounts": [{"volumeId": "v", "mountPath": "cache"}]},
        "volumeMounts[0].mountPath",
        "absolute path",
    ),
    (
        {"volumeMounts": [{"volumeId": "v", "mountPath": "/a/../etc"}]},
        "volumeMounts[0].mountPath",
        "'..'",
    ),
    (
        {"volumeMounts": [{"volumeId": "v", "mountPath": "/proc/x"}]},
        "volumeMounts[0].mountPath",
        "system path",
    ),
    (
        {"volumeMounts": [{"volumeId": "", "mountPath": "/c"}]},
        "volumeMounts[0].volumeId",
        "must not be empty",
    ),
    (
        {
            "volumeMounts": [
                {"volumeId": "a", "mountPath": "/c"},
                {"volumeId": "b", "mountPath": "/c"},
            ]
        },
        "volumeMounts",
        "used twice",
    ),
    (
        {"volumeMounts": [{"volumeID": "a", "mountPath": "/c"}]},
        "volumeMounts[0].volumeID",
        "did you mean 'volumeId'",
    ),
    ({"env": {"SYLPHX_SHARD_INDEX": "1"}}, "env", "reserved"),
    ({"env": {"1BAD": "x"}}, "env", "not a valid variable name"),
    ({"paralelism": 3}, "paralelism", "did you mean 'parallelism'"),
    ({"command": []}, "command", "non-empty argv list"),
    ({"command": "python train.py"}, "command", "must be a list"),
    ({"workingDir": "relative/dir"}, "workingDir", "absolute path"),
]


@pytest.mark.parametrize(("spec", "expected"), VALID)
def test_valid_specs_fill_defaults(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    wire = RunSpec.parse({**CMD, **spec}).to_wire()
    assert {k: wire[k] for k in expected} == expected
    assert RunSpec.parse(wire).to_wire() == wire  # stored specs re-validate unchanged


@pytest.mark.parametrize(("spec", "field", "words"), INVALID)
def test_invalid_specs_name_field_rule_and_fix(
    spec: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as err:
        RunSpec.parse({**CMD, **spec})
    detail = err.value.details[0]
    assert detail["field"] == field
    assert words in detail["rule"] + " " + detail["fix"]
    assert detail["fix"]
    assert err.value.message.startswith(f"{field}: ")


def test_missing_command_is_named() -> None:
    with pytest.raises(ValidationError, match=r"command: is required. Fix: give the argv"):
        RunSpec.parse({"parallelism": 2})


def test_python_spelling_is_accepted() -> None:
    spec = RunSpec.parse(
        {
            "command": ["x"],
            "parallelism": 9,
            "gang_scheduling": False,
            "backoff_limit_per_index": 12,
            "timeout_seconds": 7200,
            "volume_mounts": [{"volume_id": "v", "mount_path": "/cache"}],
        }
    )
    assert spec.to_wire()["backoffLimitPerIndex"] == 12


@pytest.mark.parametrize(("spec", "field", "words"), INVALID)
def test_api_refuses_invalid_specs_with_422(
    tenant: Server, spec: dict[str, Any], field: str, words: str
) -> None:
    r = tenant.http.post("/v1/runs", json={**CMD, **spec})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "validation_error"
    assert body["details"][0]["field"] == field
    assert words in body["details"][0]["rule"] + " " + body["details"][0]["fix"]


def test_api_refuses_bad_json_and_images(tenant: Server) -> None:
    r = tenant.http.post(
        "/v1/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "not valid JSON" in r.json()["message"]
    r = tenant.http.post("/v1/runs", json={**CMD, "image": "ghcr.io/acme/trainer:1"})
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "image"
    assert tenant.http.get("/v1/runs").json()["items"] == []
