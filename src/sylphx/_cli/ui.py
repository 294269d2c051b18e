"""``sylphx ui``: where the web dashboard of the current control plane is, and for one a
browser cannot reach -- the embedded default, or any ``unix://`` URL: a Unix socket --
a loopback TCP relay to it for as long as the command runs.

The relay copies bytes both ways between each TCP connection and a new connection to the
socket (asyncio streams, nothing parsed): the dashboard's answers, its cookies and its
CSRF checks are the control plane's own. It listens on a loopback address only: other
users of this machine can connect to the port, as to any local server, but nothing past
the sign-in page (and the health checks) answers them without an API key."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import webbrowser
from pathlib import Path

import click

from sylphx._client.contexts import Endpoint
from sylphx._client.embedded import ensure_local_server
from sylphx._settings import home_dir

from .common import state

__all__ = ["ui"]

DEFAULT_HOST = "127.0.0.1"
CHUNK = 64 * 1024


def loopback(host: str) -> str:
    """``host`` if it is a loopback address (``localhost`` is 127.0.0.1), else a usage
    error: the relay hands the control plane to whoever reaches the port."""
    address = DEFAULT_HOST if host == "localhost" else host
    try:
        if ipaddress.ip_address(address).is_loopback:
            return address
    except ValueError:
        pass
    raise click.BadParameter(
        f"{host!r} is not a loopback address: the relay would let other machines reach"
        " the control plane. Fix: use 127.0.0.1 or ::1 (or `sylphx server --host` to"
        " serve the control plane itself on a network)",
        param_hint="'--host'",
    )


@click.command()
@click.option("--open", "open_", is_flag=True, help="Open the dashboard in a web browser.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="The relay's TCP port (a control plane on a Unix socket) [default: a free one].",
)
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="The relay's address: a loopback one only.",
)
def ui(open_: bool, port: int, host: str) -> None:
    """The web dashboard's URL; a loopback relay to a control plane on a socket.

    Prints the dashboard's URL for the current context (--open: opens it too).

    \b
    A control plane at an http(s) URL: that URL + /ui.
    The embedded default (or a unix:// URL) listens on a Unix socket, which a browser
    cannot reach: this starts it if needed and relays a loopback TCP port to it until
    Ctrl-C. Sign in with the key in $SYLPHX_HOME/local-token.

    \b
    Examples:
      sylphx ui --open
      sylphx ui --port 8765        # then http://127.0.0.1:8765/ui
      sylphx --url https://sylphx.example.com ui
    """
    host = loopback(host)
    endpoint = state().endpoint()
    if endpoint.url is not None and not endpoint.url.startswith("unix://"):
        url = f"{endpoint.url}/ui"
        click.echo(url)
        if open_:
            webbrowser.open(url)
        return
    socket, sign_in = _socket(endpoint)
    with contextlib.suppress(KeyboardInterrupt):  # (a second Ctrl-C while stopping)
        asyncio.run(_relay(host, port, socket, sign_in, open_, endpoint.url is None))
    click.echo("relay stopped", err=True)


def _socket(endpoint: Endpoint) -> tuple[Path, str]:
    """The socket to relay to (the embedded control plane started if needed), and what to
    sign in with."""
    if endpoint.url is not None:
        return Path(endpoint.url[len("unix://") :]), "an API key of that control plane"
    home = home_dir()
    socket = ensure_local_server(home)
    return socket, f"the key in {home / 'local-token'}"


async def _relay(
    host: str, port: int, socket: Path, sign_in: str, open_: bool, embedded: bool
) -> None:
    """Serve the relay until Ctrl-C or SIGTERM."""
    loop = asyncio.get_running_loop()

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(socket))
        except OSError:
            if not embedded:
                raise
            # stopped meanwhile (`sylphx local stop`): started again, as any command does
            await loop.run_in_executor(None, ensure_local_server, home_dir())
            return await asyncio.open_unix_connection(str(socket))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await connect()
        except Exception:  # the control plane is away: drop the browser's connection
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (up_writer, writer):
                w.close()

    server = await asyncio.start_server(serve, host, port)
    bound = server.sockets[0].getsockname()
    where = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{where}:{bound[1]}/ui"
    click.echo(url)
    click.echo(f"Relaying to {socket}. Sign in with {sign_in}. Ctrl-C stops.", err=True)
    if open_:
        await loop.run_in_executor(None, webbrowser.open, url)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF, then half-close ``writer``."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
