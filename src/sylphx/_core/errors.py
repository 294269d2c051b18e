"""One exception tree for sylphx, shared by the server, the SDK and the CLI.

Each class names its HTTP status once; the API edge maps errors to responses
with it and the SDK maps responses back to the same classes.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ConflictError",
    "ExecutorError",
    "IllegalTransition",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "ServerUnavailable",
    "SpendLimitReached",
    "StorageFull",
    "StoreUnavailable",
    "SylphxError",
    "TransportError",
    "Unauthorized",
    "Unschedulable",
    "ValidationError",
    "shown",
]


ERRORS_BY_CODE: dict[str, type[SylphxError]] = {}  # filled as each class is defined


def shown(value: object, width: int = 60) -> str:
    """``value`` as an error message quotes it: escaped, and cut short when long. (Here,
    not in :mod:`.limits`, so code that only quotes -- the path rules a Ray node imports --
    does not load pydantic: ~60 ms of CPU for every new Ray worker.)"""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 5]}...{text[-1]}"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class SylphxError(Exception):
    """Base of every sylphx error; carries a human message and structured details.

    Each subclass that sets its own ``code`` registers itself (:data:`ERRORS_BY_CODE`),
    so the SDK rebuilds exactly the class the API raised; ``fields`` names the extra
    attributes a class carries in its body (camelCase on the wire)."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            if cls.code in ERRORS_BY_CODE:
                raise TypeError(f"error code {cls.code!r} is taken by {ERRORS_BY_CODE[cls.code]}")
            ERRORS_BY_CODE[cls.code] = cls

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[dict[str, Any]] = details or []

    def to_body(self) -> dict[str, Any]:
        """The JSON error body the API returns for this error."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        for name in self.fields:
            value = getattr(self, name, None)
            if value is not None:
                body[_camel(name)] = value
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> SylphxError:
        """The error an API error body describes (see :meth:`to_body`)."""
        err = cls.__new__(cls)
        details = body.get("details")
        SylphxError.__init__(
            err, body["message"], details=details if isinstance(details, list) else None
        )
        for name in cls.fields:
            setattr(err, name, body.get(_camel(name)))
        return err


ERRORS_BY_CODE[SylphxError.code] = SylphxError


class ValidationError(SylphxError):
    """A run spec or request field breaks a rule; ``details`` name field, rule and fix."""

    status_code = 422
    code = "validation_error"


class Unschedulable(SylphxError):
    """The run can never fit this executor (a gang larger than the whole cluster, say)."""

    status_code = 422
    code = "unschedulable"


class Unauthorized(SylphxError):
    """No API key, or one that is unknown or revoked (HTTP 401)."""

    status_code = 401
    code = "unauthorized"


class QuotaExceeded(SylphxError):
    """A plan budget would be exceeded (HTTP 429): per-job parallelism or org concurrent
    shards; or a followed log stream past the ones open at once (per org, per API
    process). ``details`` name the limit, the usage, the request and the ways out;
    ``retry_after`` is set when waiting helps."""

    status_code = 429
    code = "quota_exceeded"
    fields = ("retry_after",)
    retry_after: int | None = None

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class SpendLimitReached(SylphxError):
    """The org's billable compute-seconds this month reached its monthly spend limit
    (HTTP 402): new runs are refused until the month ends or an operator raises it;
    running runs finish. ``details`` name the limit, the usage and the ways out."""

    status_code = 402
    code = "spend_limit_reached"


class NotFound(SylphxError):
    """The run, shard or volume does not exist (or is not visible to the caller)."""

    status_code = 404
    code = "not_found"


class MethodNotAllowed(SylphxError):
    """The endpoint exists but does not take the request's HTTP method (HTTP 405)."""

    status_code = 405
    code = "method_not_allowed"


class PayloadTooLarge(SylphxError):
    """The request body is larger than the API accepts (HTTP 413); nothing was read."""

    status_code = 413
    code = "payload_too_large"


class ConflictError(SylphxError):
    """The request conflicts with the object's current state (e.g. deleting a volume in use)."""

    status_code = 409
    code = "conflict"


class IllegalTransition(SylphxError):
    """A status change that the shard/run state machine does not allow."""

    status_code = 409
    code = "illegal_transition"
    fields = ("kind", "ident", "current", "target")

    def __init__(self, kind: str, ident: str, current: str, target: str) -> None:
        super().__init__(f"{kind} {ident}: illegal transition {current} -> {target}")
        self.kind, self.ident, self.current, self.target = kind, ident, current, target


class ExecutorError(SylphxError):
    """The executor could not do what was asked (launch, signal, capacity probe)."""

    status_code = 503
    code = "executor_error"


class ServerUnavailable(SylphxError):
    """The control plane could not be reached or started."""

    status_code = 503
    code = "server_unavailable"


class StoreUnavailable(SylphxError):
    """The database cannot be reached or used right now; the control plane reconnects."""

    status_code = 503
    code = "store_unavailable"


class StorageFull(SylphxError):
    """A disk the control plane writes to (logs, state) is full; nothing was stored."""

    status_code = 503
    code = "storage_full"


class TransportError(SylphxError):
    """A response the SDK could not understand (not JSON, unexpected status)."""

    status_code = 502
    code = "transport_error"


def error_from_body(status: int, body: Any) -> SylphxError:
    """Rebuild the typed error from an API error body (used by the SDK)."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return ERRORS_BY_CODE.get(str(body.get("error")), SylphxError).from_body(body)
    return TransportError(f"HTTP {status}: {str(body)[:500]}")
