"""``sylphx context list|use|set|delete``: named control planes (see ``_client.contexts``).

The URL a command uses: ``--url``, else ``SYLPHX_URL``, else the current context's, else
the embedded control plane (the context ``local``, always there).
"""

from __future__ import annotations

import os
from typing import Any

import click

from sylphx._client.contexts import LOCAL, Context, Contexts, check_name, check_url, config_file
from sylphx._settings import home_dir

from .common import Group, echo_json


def _wire(ctx: Context | None, current: bool) -> dict[str, Any]:
    """A context as ``--json`` prints it (never its key)."""
    if ctx is None:
        return {"name": LOCAL, "url": None, "hasToken": False, "current": current}
    return {"name": ctx.name, "url": ctx.url, "hasToken": bool(ctx.token), "current": current}


def _overridden() -> None:
    if os.environ.get("SYLPHX_URL"):
        click.echo("note: SYLPHX_URL is set and takes precedence over the context", err=True)


def _not_local(name: str, verb: str) -> str:
    if check_name(name) == LOCAL:
        raise click.UsageError(
            f"cannot {verb} {LOCAL}: it is the embedded control plane, always there."
            f" Fix: pick another name (`sylphx context use {LOCAL}` switches to it)"
        )
    return name


@click.group(cls=Group)
def context() -> None:
    """Named control planes: which one `sylphx` talks to by default.

    A command uses --url, else SYLPHX_URL, else the current context, else the embedded
    control plane (the context `local`). Contexts live in config.json in the user's
    config directory (SYLPHX_CONFIG_DIR overrides it), mode 0600.

    \b
    Examples:
      sylphx context set prod --url https://sylphx.example
      sylphx context use prod && sylphx login       # the key goes into the context
      sylphx context list
      sylphx context use local                      # back to the embedded one
      sylphx context delete prod
    """


@context.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the contexts as JSON.")
def context_list(as_json: bool) -> None:
    """Every context, its URL and whether a key is stored; * marks the current one.

    \b
    Examples:
      sylphx context list
      sylphx context list --json | jq -r '.contexts[] | select(.current) | .name'
    """
    contexts = Contexts.load()
    current = contexts.current if contexts.current in contexts.items else LOCAL
    items = [_wire(None, current == LOCAL)]
    items += [_wire(c, c.name == current) for _, c in sorted(contexts.items.items())]
    if as_json:
        echo_json({"current": current, "configFile": str(config_file()), "contexts": items})
        return
    width = max(len(str(i["name"])) for i in items)
    for item in items:
        mark = "*" if item["current"] else " "
        url = item["url"] or f"embedded (SYLPHX_HOME {home_dir()})"
        key = "  (key stored)" if item["hasToken"] else ""
        click.echo(f"{mark} {item['name']!s:<{width}}  {url}{key}")
    _overridden()


@context.command("use")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the context as JSON.")
def context_use(name: str, as_json: bool) -> None:
    """Make NAME the current context (`local`: the embedded control plane).

    \b
    Examples:
      sylphx context use prod
      sylphx context use local
    """
    contexts = Contexts.load()
    chosen = None if check_name(name) == LOCAL else contexts.get(name)
    contexts.current = None if chosen is None else chosen.name
    contexts.save()
    if as_json:
        echo_json(_wire(chosen, True))
    else:
        where = chosen.url if chosen else "the embedded control plane"
        click.echo(f"using context {name} ({where})")
    _overridden()


@context.command("set")
@click.argument("name")
@click.option("--url", help="The control plane's URL (http(s):// or unix://); needed if new.")
@click.option("--token", help="Its API key (or run `sylphx login --context NAME` to be prompted).")
@click.option("--use", "make_current", is_flag=True, help="Also make it the current context.")
@click.option("--json", "as_json", is_flag=True, help="Print the context as JSON.")
def context_set(
    name: str, url: str | None, token: str | None, make_current: bool, as_json: bool
) -> None:
    """Create or change context NAME. A new URL drops the key stored for the old one.

    \b
    Examples:
      sylphx context set prod --url https://sylphx.example --use
      sylphx context set ci --url http://10.0.0.5:8080 --token "$SYLPHX_CI_KEY"
      sylphx context set prod --url unix:///run/sylphx.sock
    """
    _not_local(name, "set")
    contexts = Contexts.load()
    old = contexts.items.get(name)
    if old is None and url is None:
        raise click.UsageError(f"context {name!r} is new: give its URL with --url URL")
    new_url = check_url(url, "--url") if url is not None else old.url if old else ""
    kept = old.token if old is not None and old.url == new_url else None
    contexts.items[name] = ctx = Context(name, new_url, token or kept)
    if make_current:
        contexts.current = name
    path = contexts.save()
    if as_json:
        echo_json(_wire(ctx, contexts.current == name))
        return
    verb = "created" if old is None else "updated"
    key = "with a key" if ctx.token else "no key stored"
    click.echo(f"{verb} context {name}: {new_url} ({key}) in {path}")
    if old is not None and old.token and not ctx.token:
        click.echo(f"note: a new URL drops the old key; run `sylphx login --context {name}`")
    if make_current:
        _overridden()


@context.command("delete")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help='Print {"deleted": NAME}.')
def context_delete(name: str, as_json: bool) -> None:
    """Delete context NAME and its stored key (if current, `local` becomes current).

    \b
    Examples:
      sylphx context delete staging
    """
    _not_local(name, "delete")
    contexts = Contexts.load()
    contexts.get(name)
    del contexts.items[name]
    was_current = contexts.current == name
    if was_current:
        contexts.current = None
    contexts.save()
    if as_json:
        echo_json({"deleted": name, "current": contexts.current or LOCAL})
        return
    click.echo(f"deleted context {name}" + (f"; now using {LOCAL}" if was_current else ""))
