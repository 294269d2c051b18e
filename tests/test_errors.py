"""Errors round-trip: every sylphx error the API can answer with comes back out of the SDK
as the same class, with its message, details and fields (issue #18, item 1)."""

from __future__ import annotations

import httpx
import pytest

import sylphx
from sylphx._client.transport import check
from sylphx._core.errors import ERRORS_BY_CODE, IllegalTransition, QuotaExceeded, SylphxError
from sylphx._server.http.edge import error_response


def _sample(cls: type[SylphxError]) -> SylphxError:
    if cls is IllegalTransition:
        return IllegalTransition("shard", "wrk_x/3", "pending", "succeeded")
    if cls is QuotaExceeded:
        return QuotaExceeded("over the plan", details=[{"field": "parallelism"}], retry_after=7)
    return cls(f"a {cls.__name__}", details=[{"field": "f", "rule": "r", "fix": "x"}])


def _subclasses(cls: type[SylphxError]) -> list[type[SylphxError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out


def test_every_error_class_is_registered_under_its_own_code() -> None:
    classes = _subclasses(SylphxError)
    assert {cls.code for cls in classes} == set(ERRORS_BY_CODE)
    assert all(ERRORS_BY_CODE[cls.code] is cls for cls in classes)
    public = {name for name in sylphx.__all__ if isinstance(getattr(sylphx, name), type)}
    exported = {cls.__name__ for cls in classes} & public
    assert exported >= {"QuotaExceeded", "Unauthorized", "IllegalTransition", "NotFound"}


@pytest.mark.parametrize("cls", _subclasses(SylphxError), ids=lambda c: c.__name__)
def test_an_error_goes_through_the_api_edge_and_back_out_of_the_sdk(
    cls: type[SylphxError],
) -> None:
    sent = _sample(cls)
    answer = error_response(sent)  # what the API puts on the wire
    response = httpx.Response(
        answer.status_code,
        headers=dict(answer.headers),
        content=answer.body,
        request=httpx.Request("GET", "http://sylphx.test/v1/runs"),
    )
    assert response.status_code == cls.status_code
    with pytest.raises(SylphxError) as caught:
        check(response)  # what the SDK raises for it
    got = caught.value
    assert type(got) is cls
    assert (got.message, got.details) == (sent.message, sent.details)
    for name in cls.fields:
        assert getattr(got, name) == getattr(sent, name), name


def test_retry_after_comes_from_the_header_when_the_body_lacks_it() -> None:
    response = httpx.Response(
        429,
        headers={"Retry-After": "12"},
        json={"error": "quota_exceeded", "message": "busy"},
        request=httpx.Request("POST", "http://sylphx.test/v1/runs"),
    )
    with pytest.raises(QuotaExceeded) as caught:
        check(response)
    assert caught.value.retry_after == 12
