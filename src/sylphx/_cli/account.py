"""``sylphx login|logout|whoami|usage``: the caller's key, org and metered compute."""

from __future__ import annotations

import os
from datetime import datetime

import click

from sylphx._client.contexts import LOCAL, Context, Contexts, Endpoint, check_name, connect
from sylphx._client.credentials import credentials_file, forget_token, save_token
from sylphx._client.resources import UsageClient

from .common import echo_json, state


def _login_endpoint(context_name: str | None) -> Endpoint:
    """Where ``login`` checks the key: context NAME (its URL, or --url / SYLPHX_URL for a
    new one), else --url, SYLPHX_URL or the current context."""
    st = state()
    if context_name is None:
        endpoint = st.endpoint()
        if endpoint.url is None:
            raise click.UsageError(
                "the embedded control plane uses its own key and needs no login. Fix: give"
                " the control plane's URL (sylphx --url URL login), or log in to a context"
                " (sylphx context set NAME --url URL; sylphx login --context NAME)"
            )
        return endpoint
    if check_name(context_name) == LOCAL:
        raise click.UsageError(f"context {LOCAL} is the embedded control plane: it needs no login")
    known = Contexts.load().items.get(context_name)
    given = st.url or os.environ.get("SYLPHX_URL") or None
    if known is not None:
        if st.url and st.url.rstrip("/") != known.url:
            raise click.UsageError(
                f"context {context_name} is {known.url}, not {st.url}. Fix: drop --url, or"
                f" re-point it first (sylphx context set {context_name} --url {st.url})"
            )
        return Endpoint(known.url, f"context {context_name!r}", context_name)
    if given is None:
        raise click.UsageError(
            f"context {context_name!r} does not exist yet. Fix: give its URL"
            f" (sylphx --url URL login --context {context_name})"
        )
    return Endpoint(st.endpoint().url, "--url" if st.url else "SYLPHX_URL", context_name)


@click.command()
@click.option(
    "--context",
    "context_name",
    metavar="NAME",
    help="Store the key in this context (a new one gets --url / SYLPHX_URL).",
)
@click.option("--token", prompt="API key", hide_input=True, help="The API key (prompted).")
@click.option("--json", "as_json", is_flag=True, help="Print the org and where the key went.")
def login(context_name: str | None, token: str, as_json: bool) -> None:
    """Check an API key against a control plane and remember it.

    The key goes into the context (--context NAME, or the current one when the URL came
    from it); for a URL given with --url or SYLPHX_URL, into $SYLPHX_HOME/credentials.json.

    \b
    Examples:
      sylphx --url https://sylphx.example login              # key prompted
      sylphx --url https://sylphx.example login --context prod
      sylphx context use prod && sylphx login
    """
    token = token.strip()
    if not token:  # never fall back to SYLPHX_TOKEN or a stored key: check the one given
        raise click.UsageError(
            "--token is empty. Fix: give the API key (--token KEY), or leave --token out"
            " to be prompted for it"
        )
    endpoint = _login_endpoint(context_name)
    assert endpoint.url is not None
    config = connect(endpoint, token=token)
    try:
        org = UsageClient.org(config)
    finally:
        config.close()
    if endpoint.context is not None:
        contexts = Contexts.load()
        contexts.items[endpoint.context] = Context(endpoint.context, endpoint.url, token)
        path = contexts.save()
    else:
        path = save_token(endpoint.url, token)
    if as_json:
        echo_json(
            {
                "url": endpoint.url, "context": endpoint.context, "stored": str(path),
                "org": org.to_wire(),
            }
        )  # fmt: skip
        return
    where = f" (context {endpoint.context})" if endpoint.context else ""
    click.echo(
        f"logged in to {endpoint.url}{where} as org {org.name} ({org.plan}); key stored in {path}"
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was forgotten as JSON.")
def logout(as_json: bool) -> None:
    """Forget the stored API key of the current URL or context.

    Every context with that URL loses its key (the context itself stays), and so does
    the URL's entry in $SYLPHX_HOME/credentials.json. SYLPHX_TOKEN is not touched.

    \b
    Examples:
      sylphx logout                         # the current context
      sylphx --url https://sylphx.example logout --json
    """
    endpoint = state().endpoint()
    forgotten: list[str] = []
    if endpoint.url is not None:
        contexts = Contexts.load()
        for ctx in list(contexts.items.values()):
            if ctx.url == endpoint.url and ctx.token:
                contexts.items[ctx.name] = Context(ctx.name, ctx.url)
                forgotten.append(f"context {ctx.name}")
        if forgotten:
            contexts.save()
        if forget_token(endpoint.url):
            forgotten.append(str(credentials_file()))
    if as_json:
        echo_json({"url": endpoint.url, "context": endpoint.context, "forgotten": forgotten})
    elif endpoint.url is None:
        click.echo("the embedded control plane uses its own key; there is nothing to forget")
    elif forgotten:
        click.echo(f"forgot the key for {endpoint.url} ({', '.join(forgotten)})")
    else:
        click.echo(f"no key was stored for {endpoint.url}")
    if os.environ.get("SYLPHX_TOKEN") and not as_json:
        click.echo("note: SYLPHX_TOKEN is still set in this environment", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the endpoint and org as JSON.")
def whoami(as_json: bool) -> None:
    """Which control plane this talks to, and as which org.

    \b
    Examples:
      sylphx whoami
      sylphx --url http://127.0.0.1:8080 whoami --json
    """
    st = state()
    endpoint = st.endpoint()
    config = st.config()
    org = UsageClient.org(config)
    url = endpoint.url or f"unix://{config.uds}"
    context = endpoint.context or (LOCAL if endpoint.url is None else None)
    if as_json:
        echo_json({"url": url, "origin": endpoint.origin, "context": context, "org": org.to_wire()})
        return
    home = f"; SYLPHX_HOME {config.embedded_home}" if config.embedded_home else ""
    click.echo(f"url      {url}  ({endpoint.origin}{home})")
    click.echo(f"org      {org.name} ({org.id})")
    click.echo(
        f"plan     {org.plan}: {org.max_parallelism} shard(s) per job, {org.shards_in_use} of"
        f" {org.concurrent_shards} concurrent shards in use"
    )


@click.command()
@click.option("--from", "from_", type=click.DateTime(), help="Start (UTC) [default: month start].")
@click.option("--to", type=click.DateTime(), help="End (UTC) [default: now].")
@click.option("--json", "as_json", is_flag=True, help="Print the usage report as JSON.")
def usage(from_: datetime | None, to: datetime | None, as_json: bool) -> None:
    """Compute-seconds by run and machine tier, credits applied, billable seconds.

    \b
    Examples:
      sylphx usage                                   # this month so far
      sylphx usage --from 2026-11-01 --to 2026-12-01
      sylphx usage --json | jq .billableSeconds
    """
    rep = UsageClient.report(state().config(), from_, to)
    if as_json:
        echo_json(rep.to_wire())
        return
    click.echo(f"org {rep.org} ({rep.plan})  {rep.from_:%Y-%m-%d %H:%M} .. {rep.to:%Y-%m-%d %H:%M}")
    click.echo(f"compute-seconds   {rep.compute_seconds:,.1f}")
    click.echo(
        f"credits applied   {rep.credits_applied:,.1f}"
        f"   (monthly credit {rep.monthly_credit_seconds:,.0f})"
    )
    click.echo(f"billable seconds  {rep.billable_seconds:,.1f}")
    if rep.unbilled_seconds:
        click.echo(f"preempted, unbilled {rep.unbilled_seconds:,.1f}")
    if rep.monthly_limit_seconds is not None:
        click.echo(f"monthly limit     {rep.monthly_limit_seconds:,.0f} billable compute-seconds")
    if rep.by_machine:
        click.echo("\nMACHINE      WALL-SECONDS  COMPUTE-SECONDS")
        for m in rep.by_machine:
            click.echo(f"{m.machine:<12} {m.wall_seconds:>12,.1f}  {m.compute_seconds:>15,.1f}")
    if rep.by_run:
        click.echo("\nRUN                   COMPUTE-SECONDS")
        for r in rep.by_run:
            click.echo(f"{r.run_id:<21} {r.compute_seconds:>15,.1f}")
