"""The dashboard's sign-in: a session cookie signed with a key of this home, and the
CSRF tokens of its forms.

Signing in checks an API key as the API does (its hash against the store, through the
same short-lived cache) and sets ``sylphx_ui``: the org, the key's id (never its hash), a
random nonce and an expiry, HMAC-SHA256-signed with ``ui-session.key`` (see
:mod:`.session_key`; every API worker of the home shares it). The cookie is HttpOnly,
SameSite=Strict, Path=/ui, Secure over https. Each request checks the signature, the
expiry, that the key is still live (revoking the key ends its sessions within the key
cache's TTL) and that the session was not signed out (its nonce is kept in the store
until it would have expired, so a copied cookie dies with it in every worker).

Every POST carries a synchronizer token, an HMAC of the session's nonce (the sign-in
form's: of a nonce in a short-lived cookie of its own), compared in constant time; a
POST whose ``Origin`` is not this host is refused too."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request, Response

from sylphx._core.errors import Unauthorized
from sylphx._server.runs.account import AccountService

from . import session_key

__all__ = [
    "COOKIE",
    "LOGIN_COOKIE",
    "SESSION_SECONDS",
    "Session",
    "Signer",
    "clear",
    "csrf_ok",
    "key_of",
    "key_org",
    "same_origin",
]

COOKIE = "sylphx_ui"
LOGIN_COOKIE = "sylphx_ui_login"
SESSION_SECONDS = 12 * 3600
LOGIN_SECONDS = 3600


@dataclass(frozen=True)
class Session:
    """A signed-in browser: its org, the id of the key it signed in with, its nonce."""

    org_id: str
    key_id: str
    nonce: str
    expires: int
    csrf: str


def _same(given: str, expected: str) -> bool:
    """``given`` (from the request: any text) equals ``expected``, in constant time."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and checks the session cookie and the CSRF tokens with the home's key."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = session_key.load(self._home)
        return self._key

    def mac(self, purpose: str, value: str) -> str:
        """HMAC-SHA256 of ``value`` for one ``purpose`` (a token of one use is no other's)."""
        return hmac.new(self.key, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()

    # -- the session ---------------------------------------------------------------------
    def issue(self, response: Response, request: Request, org_id: str, key_id: str) -> None:
        """Set a new session cookie on ``response``."""
        payload = {
            "o": org_id,
            "k": key_id,
            "n": secrets.token_urlsafe(16),
            "e": int(time.time()) + SESSION_SECONDS,
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        value = f"{body}.{self.mac('session', body)}"
        _set(response, request, COOKIE, value, SESSION_SECONDS)

    def session(self, request: Request) -> Session | None:
        """The request's session when its cookie is signed by this home and not expired
        (the key is checked by :func:`key_org`)."""
        value = request.cookies.get(COOKIE, "")
        body, _, mac = value.partition(".")
        if not body or not _same(mac, self.mac("session", body)):
            return None
        try:
            data = json.loads(_unb64(body))
            org_id, key_id, nonce, expires = data["o"], data["k"], data["n"], int(data["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires <= time.time() or not all(isinstance(v, str) for v in (org_id, key_id, nonce)):
            return None
        return Session(org_id, key_id, nonce, expires, self.mac("csrf", nonce))

    # -- the sign-in form's token --------------------------------------------------------
    def login_token(self, request: Request) -> tuple[str, str]:
        """The sign-in form's nonce (kept in a cookie of its own) and its CSRF token."""
        nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
        return nonce, self.mac("login", nonce)

    def remember_login(self, response: Response, request: Request, nonce: str) -> None:
        """Set the sign-in form's nonce cookie on ``response``."""
        _set(response, request, LOGIN_COOKIE, nonce, LOGIN_SECONDS)

    def login_ok(self, request: Request, token: str) -> bool:
        """The sign-in form was this browser's, served by this home."""
        nonce = request.cookies.get(LOGIN_COOKIE)
        return bool(nonce) and _same(token, self.mac("login", nonce or ""))


def csrf_ok(request: Request, session: Session, token: str) -> bool:
    """The form's token is its session's, and the request did not come from another
    origin (browsers send ``Origin`` with every POST)."""
    return same_origin(request) and _same(token, session.csrf)


def same_origin(request: Request) -> bool:
    """The request did not come from another site: its ``Sec-Fetch-Site`` (when the
    browser sends one) says same-origin, and its ``Origin`` (when there is one) names this
    host. ``Origin: null`` is what Chromium sends for a form under Referrer-Policy
    no-referrer; the CSRF token is the check that always holds."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _set(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear(response: Response) -> None:
    """Drop the session cookie (signing out)."""
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")


async def key_org(account: AccountService, key_id: str) -> str:
    """The org of the live key with this id, through the same cache as the API's lookups;
    Unauthorized for an unknown or revoked key."""
    return await account.org_of_key_id(key_id)


async def key_of(account: AccountService, key: str) -> tuple[str, str]:
    """The id and org of the live key typed into the sign-in form (Unauthorized when it is
    empty, unknown or revoked)."""
    if not key.strip():
        raise Unauthorized("no API key given")
    return await account.key_of_hash(AccountService.hash_of(key.strip()))
