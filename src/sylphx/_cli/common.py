"""Shared CLI plumbing: the connection, error reporting and exit codes."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import click

from sylphx._client.transport import ClientConfig, create_client
from sylphx._core.errors import SylphxError, Unschedulable, ValidationError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class State:
    """Per-invocation state: the ``--url`` option and the lazily opened connection."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self._config: ClientConfig | None = None

    def config(self) -> ClientConfig:
        """Connect on first use (starting the embedded control plane if needed)."""
        if self._config is None:
            self._config = create_client(self.url)
        return self._config

    def close(self) -> None:
        if self._config is not None:
            self._config.close()


def state() -> State:
    """The State of the running command."""
    return click.get_current_context().find_object(State) or State(None)


def exit_code(exc: SylphxError) -> int:
    """2 for requests that can never succeed as written (422), 1 for everything else."""
    return EXIT_USAGE if isinstance(exc, ValidationError | Unschedulable) else EXIT_FAILED


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


class Group(click.Group):
    """A click group that turns sylphx errors into a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SylphxError as exc:
            report(exc)
