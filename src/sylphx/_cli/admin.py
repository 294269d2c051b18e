"""``sylphx server``, ``sylphx admin``, ``sylphx local status|stop``, ``sylphx volumes ...``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click

from sylphx._client.embedded import local_server_status, stop_local_server
from sylphx._client.resources import VolumesClient

from . import render
from .common import Group, echo_json, state

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


@click.command()
@click.option("--host", help=f"Interface to listen on [default: {DEFAULT_HOST}, without --uds].")
@click.option("--port", type=int, help=f"TCP port [default: {DEFAULT_PORT}, without --uds].")
@click.option("--uds", type=click.Path(dir_okay=False), help="Listen on this Unix socket.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="API processes on one port; one of them reconciles at a time.",
)
def server(host: str | None, port: int | None, uds: str | None, workers: int) -> None:
    """Run the control plane in the foreground (settings from SYLPHX_* env)."""
    if uds is None:
        host = host or DEFAULT_HOST
        port = port or DEFAULT_PORT
    module = importlib.import_module("sylphx._server")  # heavy: only for this command
    serve: Callable[[str | None, int | None, str | None, int], None] = module.serve
    serve(host, port, uds, workers)


@click.command("migrate")
def admin_migrate() -> None:
    """Apply the store's migrations up to the newest (idempotent; the server does it too)."""
    from sylphx._server.store import make_engine, migrate, revision
    from sylphx._settings import Settings

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        click.echo(f"store at revision {revision(engine)} ({engine.url.render_as_string()})")
    finally:
        engine.dispose()


@click.group(cls=Group)
def local() -> None:
    """The embedded control plane for SYLPHX_HOME (started on demand, shared)."""


@local.command("status")
@click.option("--json", "as_json", is_flag=True)
def local_status(as_json: bool) -> None:
    """Show whether the embedded control plane is running."""
    st = local_server_status()
    if as_json:
        echo_json(
            {
                "home": str(st.home), "socket": str(st.socket), "log": str(st.log),
                "pid": st.pid, "healthy": st.healthy, "running": st.running,
            }
        )  # fmt: skip
        return
    if st.healthy:
        state_text = "running"
    elif st.pid is not None:
        state_text = (
            f"held by pid {st.pid}, which does not answer on the socket (still starting,"
            " stuck, or a TCP `sylphx server`: see the log)"
        )
    else:
        state_text = "stopped"
    click.echo(f"{state_text}")
    click.echo(f"  home    {st.home}")
    click.echo(f"  socket  {st.socket}")
    click.echo(f"  pid     {st.pid if st.pid is not None else '-'}")
    click.echo(f"  log     {st.log}")


@local.command("stop")
def local_stop() -> None:
    """Stop the embedded control plane (SIGTERM, up to 10 s)."""
    st = local_server_status()
    if stop_local_server(st.home):
        click.echo(f"stopped (pid {st.pid})")
    else:
        click.echo(f"not running (SYLPHX_HOME={st.home})")


@click.group(cls=Group)
def volumes() -> None:
    """ReadWriteMany volumes that runs mount with --volume ID:/path.

    \b
    Examples:
      VOL=$(sylphx volumes create --name cache)
      sylphx run -n 9 --opportunistic --volume "$VOL:/cache" -- python fill.py
      sylphx volumes list --json
      sylphx volumes delete "$VOL"
    """


@volumes.command("create")
@click.option("--name", help="A label for the volume.")
@click.option("--json", "as_json", is_flag=True, help="Print the volume as JSON.")
def volume_create(name: str | None, as_json: bool) -> None:
    """Create a volume and print its id.

    \b
    Examples:
      VOL=$(sylphx volumes create --name cache)
      sylphx volumes create --name data --json
    """
    vol = VolumesClient.create(state().config(), name)
    if as_json:
        echo_json(vol.to_wire())
    else:
        click.echo(vol.id)


@volumes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the volumes as JSON.")
def volume_list(as_json: bool) -> None:
    """List volumes."""
    vols = VolumesClient.list(state().config())
    if as_json:
        echo_json([v.to_wire() for v in vols])
    elif not vols:
        click.echo("no volumes", err=True)
    else:
        click.echo("\n".join(render.volumes_table(vols)))


@volumes.command("delete")
@click.argument("volume_id")
@click.option("--json", "as_json", is_flag=True, help='Print {"deleted": VOLUME_ID}.')
def volume_delete(volume_id: str, as_json: bool) -> None:
    """Delete a volume (refused while a live run mounts it: exit 1)."""
    VolumesClient.delete(state().config(), volume_id)
    if as_json:
        echo_json({"deleted": volume_id})
    else:
        click.echo(f"deleted {volume_id}")
