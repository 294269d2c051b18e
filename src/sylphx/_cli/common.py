"""Shared CLI plumbing: the connection, error reporting and the one exit-code table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from sylphx._client.contexts import Endpoint, connect, resolve
from sylphx._client.transport import ClientConfig
from sylphx._core.errors import (
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    ServerUnavailable,
    SpendLimitReached,
    StorageFull,
    StoreUnavailable,
    SylphxError,
    TransportError,
    Unauthorized,
    Unschedulable,
    ValidationError,
    error_from_body,
)
from sylphx._core.views import Quote

# The exit codes of every command (README "### CLI", `sylphx --help`).
EXIT_OK = 0  # done; for a followed run: it succeeded
EXIT_FAILED = 1  # the run did not succeed, or the request failed otherwise (e.g. a 409)
EXIT_USAGE = 2  # usage or spec error: fix the command line (422, 404, a 429 that never clears)
EXIT_QUOTA = 3  # over a budget that frees later: the org's concurrent shards, spend limit
EXIT_AUTH = 4  # no key, or an unknown or revoked one (401/403)
EXIT_UNAVAILABLE = 5  # the control plane cannot be reached or is unavailable (503)
EXIT_INTERRUPTED = 130  # Ctrl-C while following

EXIT_CODES_HELP = """\b
Exit codes:
  0  ok (a followed run succeeded)
  1  the run did not succeed (or the request failed otherwise, e.g. a conflict)
  2  usage or spec error: a broken rule, an unknown id (run, volume, secret),
     a run that can never be admitted as written (over the plan's per-job ceiling)
  3  quota: over a budget that frees later (org concurrent shards, monthly spend limit)
  4  authentication: no API key, or an unknown or revoked one (401/403)
  5  the control plane is unreachable or unavailable (connection refused, 503)"""

_USAGE = (ValidationError, Unschedulable, NotFound, PayloadTooLarge)
_UNAVAILABLE = (ServerUnavailable, StoreUnavailable, StorageFull, TransportError)


def _waiting_helps(exc: QuotaExceeded) -> bool:
    """The server sends ``Retry-After`` only when waiting helps: a run within the org's
    concurrent budget (a quote's error carries the details without it)."""
    if exc.retry_after is not None:
        return True
    return any(
        d.get("limit") == "orgConcurrentShards"
        and isinstance(d.get("requested"), int)
        and isinstance(d.get("max"), int)
        and d["requested"] <= d["max"]
        for d in exc.details
        if isinstance(d, dict)
    )


def exit_code(exc: SylphxError) -> int:
    """The exit code of an API or SDK error, by the table above.

    A 429 is a usage error when waiting cannot help (the plan's per-job ceiling, or a run
    larger than the org's whole concurrent budget, never clears as written), a quota
    error when it can (see :func:`_waiting_helps`)."""
    if isinstance(exc, QuotaExceeded):
        return EXIT_QUOTA if _waiting_helps(exc) else EXIT_USAGE
    if isinstance(exc, SpendLimitReached):
        return EXIT_QUOTA
    if isinstance(exc, _USAGE):
        return EXIT_USAGE
    if isinstance(exc, Unauthorized) or exc.status_code in (401, 403):
        return EXIT_AUTH
    if isinstance(exc, _UNAVAILABLE) or exc.status_code == 503:
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


def quote_exit_code(quote: Quote) -> int:
    """``run --dry-run``: 0 unless the run would be refused, then the refusal's code."""
    if quote.verdict != "refused":
        return EXIT_OK
    if quote.error is None:
        return EXIT_FAILED
    return exit_code(error_from_body(422, quote.error.model_dump(by_alias=True)))


class State:
    """Per-invocation state: the ``--url`` option and the lazily opened connection."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self._config: ClientConfig | None = None

    def endpoint(self) -> Endpoint:
        """Where this invocation connects: --url, else SYLPHX_URL, else the current
        context, else the embedded control plane."""
        return resolve(self.url, origin="--url")

    def config(self) -> ClientConfig:
        """Connect on first use (starting the embedded control plane if needed)."""
        if self._config is None:
            self._config = connect(self.endpoint())
        return self._config

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self._config is not None:
            self._config.close()


def state() -> State:
    """The State of the running command."""
    return click.get_current_context().find_object(State) or State(None)


def report(exc: SylphxError) -> NoReturn:
    """Print an API or SDK error to stderr and exit with its code."""
    rules = [d for d in exc.details if isinstance(d, dict) and d.get("rule")]
    if len(rules) > 1:
        click.echo(f"error: {len(rules)} problems:", err=True)
        for d in rules:
            fix = str(d.get("fix") or "")
            click.echo(
                f"  {d.get('field', '?')}: {d['rule']}." + (f" Fix: {fix}" if fix else ""), err=True
            )
    else:
        click.echo(f"error: {exc.message}", err=True)
    raise SystemExit(exit_code(exc))


def echo_json(data: Any) -> None:
    """Print JSON for scripts (``--json``)."""
    click.echo(json.dumps(data, indent=2, sort_keys=False))


class Choice(click.Choice):  # type: ignore[type-arg]  # generic from click 8.2 on
    """A ``click.Choice`` whose refusal lists the choices and says what to do (``note``:
    what else to know, e.g. why a value the API knows is not offered)."""

    def __init__(self, choices: Sequence[str], note: str = "") -> None:
        super().__init__(list(choices))
        self.note = note

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            listed = ", ".join(map(str, self.choices))
            self.fail(f"{value!r} is not one of {listed}. Fix: pick one{self.note}", param, ctx)


class Group(click.Group):
    """A click group that turns sylphx errors into a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SylphxError as exc:
            report(exc)
