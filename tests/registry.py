"""Test helper: a read-only container registry on loopback, over HTTPS.

It speaks the part of the OCI distribution API a pull uses (``GET``/``HEAD`` of
``/v2/``, ``/v2/<name>/manifests/<tag or digest>`` and ``/v2/<name>/blobs/<digest>``) and
serves what it was given: manifests by digest (and tags naming them), blobs by digest.
Its certificate (``ca``, made by openssl for 127.0.0.1) is one skopeo trusts when
``SSL_CERT_FILE`` names it (Go reads the system's roots from there), so skopeo talks to it
as to any registry, with no flag of its own.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _sha(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class Registry:
    """Start with :meth:`start`, end with :meth:`stop`; ``host`` is ``127.0.0.1:PORT``."""

    def __init__(self, home: Path) -> None:
        self.manifests: dict[str, bytes] = {}
        self.tags: dict[str, str] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self.ca, key = home / "registry-ca.pem", home / "registry-key.pem"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(key), "-out", str(self.ca), "-subj", "/CN=127.0.0.1"),
                *("-addext", "subjectAltName=IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
        )
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self.ca, key)
        self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)

    def add_manifest(self, raw: bytes, tag: str | None = None) -> str:
        digest = _sha(raw)
        self.manifests[digest] = raw
        if tag is not None:
            self.tags[tag] = digest
        return digest

    def add_layout(self, layout: Path, tag: str) -> str:
        """Serve an OCI layout's image ``tag``: its manifest and every blob of the layout."""
        for blob in (layout / "blobs" / "sha256").iterdir():
            self.blobs["sha256:" + blob.name] = blob.read_bytes()
        index = json.loads((layout / "index.json").read_text())
        for entry in index["manifests"]:
            if entry["annotations"]["org.opencontainers.image.ref.name"] == tag:
                return self.add_manifest(self.blobs[entry["digest"]], tag)
        raise KeyError(tag)

    def start(self) -> Registry:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(registry: Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            registry.requests.append(f"{self.command} {self.path}")
            found = self._find()
            if found is None:
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                if body:
                    self.wfile.write(b"{}")
                return
            data, kind, digest = found
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            if digest:
                self.send_header("Docker-Content-Digest", digest)
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _find(self) -> tuple[bytes, str, str] | None:
            return _find(registry, self.path.split("?", 1)[0])

    return Handler


def _find(registry: Registry, path: str) -> tuple[bytes, str, str] | None:
    """What ``path`` names: its bytes, content type and digest."""
    if path in ("/v2/", "/v2"):
        return b"{}", "application/json", ""
    head, _, ref = path.rpartition("/")
    if head.endswith("/manifests"):
        digest = registry.tags.get(ref, ref)
        raw = registry.manifests.get(digest)
        if raw is None:
            return None
        kind = json.loads(raw).get("mediaType") or "application/vnd.oci.image.manifest.v1+json"
        return raw, kind, digest
    if head.endswith("/blobs") and ref in registry.blobs:
        return registry.blobs[ref], "application/octet-stream", ref
    return None
