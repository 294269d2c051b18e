"""Named contexts and where a connection goes.

A context is a control plane URL with, optionally, its API key, kept under a name in
``config.json`` in the user's config directory (``platformdirs.user_config_dir("sylphx")``,
or ``$SYLPHX_CONFIG_DIR``, an absolute path), written atomically with mode 0600 and read
only when it and its directory are this user's alone (see ``credentials.read_private``).
One of them may be current.
:func:`resolve` picks the URL: the one given (``--url``, ``create_client(url)``), else
``$SYLPHX_URL``, else the current context's, else the embedded control plane
(``local``: always there, never stored).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sylphx._core.errors import SylphxError, ValidationError

from .credentials import load_token, read_private, write_private
from .retrying import RetryPolicy
from .transport import UDS_BASE_URL, ClientConfig

__all__ = [
    "LOCAL",
    "Context",
    "Contexts",
    "Endpoint",
    "config_file",
    "connect",
    "resolve",
    "stored_token",
]

CONFIG_DIR_ENV = "SYLPHX_CONFIG_DIR"
LOCAL = "local"  # the embedded control plane's context: always there, takes no URL
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def config_dir() -> Path:
    """``$SYLPHX_CONFIG_DIR`` (an absolute path, else ValidationError), else the user's
    config directory for sylphx."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_absolute():
            fix = f"give an absolute path, e.g. {CONFIG_DIR_ENV}=$HOME/.config/sylphx"
            raise _invalid(
                CONFIG_DIR_ENV,
                "must be an absolute path",
                fix,
                f"{CONFIG_DIR_ENV}={override!r} is not an absolute path (the API keys kept"
                f" there would follow the working directory). Fix: {fix}",
            )
        return path
    import platformdirs

    return Path(platformdirs.user_config_dir("sylphx"))


def config_file() -> Path:
    """Where the contexts are kept."""
    return config_dir() / "config.json"


def _invalid(field_name: str, rule: str, fix: str, message: str) -> ValidationError:
    return ValidationError(message, details=[{"field": field_name, "rule": rule, "fix": fix}])


def check_url(url: str, origin: str = "url") -> str:
    """``url`` without a trailing slash, or ValidationError when it is not http(s):// or
    unix:// (``origin`` names where it came from)."""
    if url.startswith(("http://", "https://")) or (url.startswith("unix://") and url[7:]):
        return url.rstrip("/")
    fix = "e.g. http://127.0.0.1:8080 or unix:///path/to.sock"
    raise _invalid(
        "url",
        "must be http(s):// or unix://",
        fix,
        f"{origin}: {url!r} is not an http(s) or unix:// URL. Fix: {fix}",
    )


def check_name(name: str) -> str:
    """``name`` if it can name a context, else ValidationError."""
    if _NAME.fullmatch(name):
        return name
    fix = "use letters, digits, '.', '_' and '-' (up to 63), e.g. prod"
    raise _invalid("name", "not a valid context name", fix, f"{name!r}: {fix}")


def _parse(name: str, stored: Any) -> Context:
    """A context as ``config.json`` keeps it, or ValueError saying what is wrong with it."""
    url = stored.get("url") if isinstance(stored, dict) else None
    if not isinstance(url, str):
        raise ValueError("it has no url")
    token = stored.get("token") or None
    if token is not None and not isinstance(token, str):
        raise ValueError("its token is not a string")
    try:
        return Context(name, check_url(url), token)
    except SylphxError:
        raise ValueError(f"its url {url!r} is not an http(s) or unix:// URL") from None


def _broken(path: Path, name: str, why: str) -> ValidationError:
    """The error of a context in ``path`` that cannot be used."""
    fix = f"correct or delete context {name!r} in {path} (`sylphx context set` writes valid ones)"
    return _invalid(
        "config", "a broken context", fix, f"{path}: context {name!r}: {why}. Fix: {fix}"
    )


@dataclass(frozen=True)
class Context:
    """A named control plane: its URL and the API key stored for it, if any."""

    name: str
    url: str
    token: str | None = None


@dataclass
class Contexts:
    """The contexts of ``config.json`` and the name of the current one."""

    current: str | None = None
    items: dict[str, Context] = field(default_factory=dict)

    @classmethod
    def load(cls, *, strict: bool = True) -> Contexts:
        """The stored contexts (none when the file does not exist). A file that cannot be
        read as contexts, or a context in it that is broken (say, an ``ftp://`` URL), raises
        ValidationError naming the file (and the context); with ``strict=False`` such a file
        counts as empty and such a context as absent. A file or directory that others could
        have written or read is refused either way."""
        path = config_file()
        text = read_private(path, CONFIG_DIR_ENV)
        if text is None:
            return cls()
        try:
            data = json.loads(text)
            current = data.get("current")
            stored = dict(data["contexts"])
        except (KeyError, TypeError, ValueError, AttributeError):
            if not strict:
                return cls()
            fix = f"correct or delete {path}"
            raise _invalid(
                "config", "not a sylphx config file", fix, f"cannot read {path}. Fix: {fix}"
            ) from None
        items: dict[str, Context] = {}
        for name, c in stored.items():
            try:
                items[str(name)] = _parse(str(name), c)
            except ValueError as exc:
                if strict:
                    raise _broken(path, str(name), str(exc)) from None
        return cls(current if isinstance(current, str) else None, items)

    def save(self) -> Path:
        """Write them back (atomically, mode 0600: they hold API keys)."""
        data: dict[str, Any] = {
            "current": self.current,
            "contexts": {
                c.name: {"url": c.url, **({"token": c.token} if c.token else {})}
                for c in self.items.values()
            },
        }
        return write_private(config_file(), data, CONFIG_DIR_ENV)

    def get(self, name: str) -> Context:
        """The context ``name``, or ValidationError listing the known ones."""
        if name in self.items:
            return self.items[name]
        known = ", ".join([LOCAL, *sorted(self.items)])
        fix = f"pick one of {known}, or add it with `sylphx context set {name} --url URL`"
        raise _invalid("context", "no such context", fix, f"context {name!r} not found. Fix: {fix}")

    def active(self) -> Context | None:
        """The current context (None: the embedded control plane)."""
        if self.current is None or self.current == LOCAL:
            return None
        if self.current not in self.items:
            fix = "pick one with `sylphx context use NAME` (`local`: the embedded control plane)"
            raise _invalid(
                "context",
                "the current context is not defined",
                fix,
                f"the current context {self.current!r} is not in {config_file()}. Fix: {fix}",
            )
        return self.items[self.current]


@dataclass(frozen=True)
class Endpoint:
    """Where a connection goes: ``url`` (None: the embedded control plane), where that
    came from (``origin``: ``--url``, ``SYLPHX_URL``, ``context 'prod'``...), the context's
    name and the key it stores, if the URL came from one."""

    url: str | None
    origin: str
    context: str | None = None
    token: str | None = None

    def unreachable_fix(self) -> str:
        """What to do when nothing answers at ``url``."""
        start = "start `sylphx server` there"
        if (self.url or "").startswith("unix://"):
            start = "start it with `sylphx server --uds PATH`"
        if self.context is not None:
            return (
                f"{start}, point context {self.context} elsewhere (`sylphx context set"
                f" {self.context} --url URL`), or switch context (`sylphx context use NAME`;"
                f" `{LOCAL}`: the embedded control plane)"
            )
        if self.origin == "SYLPHX_URL":
            return f"{start} or correct SYLPHX_URL; unset it to use the embedded control plane"
        return f"{start} or correct {self.origin}"


def resolve(url: str | None = None, *, origin: str = "the url passed to create_client") -> Endpoint:
    """The endpoint for ``url`` (named ``origin`` in errors): it, else ``$SYLPHX_URL``,
    else the current context, else the embedded control plane."""
    if url:
        return Endpoint(check_url(url, origin), origin)
    env = os.environ.get("SYLPHX_URL")
    if env:
        return Endpoint(check_url(env, "SYLPHX_URL"), "SYLPHX_URL")
    current = Contexts.load().active()
    if current is None:
        return Endpoint(None, "the embedded default")
    return Endpoint(current.url, f"context {current.name!r}", current.name, current.token)


def stored_token(url: str | None) -> str | None:
    """The key stored for ``url``: a context's with that URL (the current one first), else
    the one ``sylphx login`` kept per URL; for the embedded control plane, its own key."""
    if url is not None:
        contexts = Contexts.load(strict=False)
        ranked = sorted(contexts.items.values(), key=lambda c: c.name != contexts.current)
        for ctx in ranked:
            if ctx.url == url.rstrip("/") and ctx.token:
                return ctx.token
    return load_token(url)


def connect(
    endpoint: Endpoint,
    *,
    token: str | None = None,
    timeout: float = 30.0,
    retry: RetryPolicy | None = None,
    socket: Path | None = None,
) -> ClientConfig:
    """``create_client`` for an endpoint already resolved (the CLI's: its errors name
    ``--url``): the key is ``token``, else ``$SYLPHX_TOKEN``, else the one stored for it.
    For the embedded control plane, ``socket`` is its socket when known: the config then
    goes there and never starts it, not even after a refused connection (without
    ``socket``, it is started when needed)."""
    token = token or os.environ.get("SYLPHX_TOKEN") or endpoint.token
    if endpoint.url is None:
        from sylphx._settings import home_dir

        from .embedded import ensure_local_server

        home = home_dir()
        if socket is not None:
            return ClientConfig(
                UDS_BASE_URL, uds=str(socket), timeout=timeout, token=token or stored_token(None),
                retry=retry, unreachable_fix="start it: any `sylphx` command does",
            )  # fmt: skip
        sock = ensure_local_server(home)
        token = token or stored_token(None)  # its key exists once it has started
        return ClientConfig(
            UDS_BASE_URL, uds=str(sock), timeout=timeout, embedded_home=home, token=token,
            retry=retry,
        )  # fmt: skip
    token = token or stored_token(endpoint.url)
    fix = endpoint.unreachable_fix()
    if endpoint.url.startswith("unix://"):
        return ClientConfig(
            UDS_BASE_URL, uds=endpoint.url[len("unix://") :], timeout=timeout, token=token,
            retry=retry, unreachable_fix=fix,
        )  # fmt: skip
    return ClientConfig(
        endpoint.url, timeout=timeout, token=token, retry=retry, unreachable_fix=fix
    )
