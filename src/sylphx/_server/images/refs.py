"""Image references and OCI metadata: parse what the user wrote, read index/manifest/config.

Pure parsing; no subprocesses. :mod:`sylphx._server.images.store` runs the tools.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sylphx._core.errors import ValidationError

from .platforms import host_platform, host_text
from .reader import as_reader, members, open_regular, open_tar

Kind = Literal["oci", "oci-archive", "docker-archive", "docker"]

INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
# A digest, as every path the store and a layout make of one needs it: one read from a
# tenant's own layout (index.json, a manifest) could be "../../..", a path out of the
# cache (the store then locked, listed and removed beside it, as root).
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")  # (not "$": it takes a trailing newline)


MAX_JSON = 4 << 20  # an index, a manifest or a config: far less in practice


def image_error(message: str, rule: str, fix: str) -> ValidationError:
    """A ValidationError on the ``image`` field: ``message. Fix: fix``."""
    return ValidationError(
        f"image: {message}. Fix: {fix}",
        details=[{"field": "image", "rule": rule, "fix": fix}],
    )


@dataclass(frozen=True)
class Source:
    """A parsed reference: the transport, the path (or registry name) and the tag."""

    kind: Kind
    location: str  # a filesystem path, or a registry reference without "docker://"
    tag: str | None = None

    def skopeo(self, tag: str | None = None) -> str:
        """This source as a skopeo transport string (``tag`` overrides our own)."""
        if self.kind == "docker":
            return f"docker://{self.location}"
        tag = tag if tag is not None else self.tag
        return f"{self.kind}:{self.location}" + (f":{tag}" if tag else "")

    @property
    def registry(self) -> str:
        """The registry host of a registry reference (Docker's rule for the first part)."""
        first = self.location.split("/", 1)[0]
        if "/" in self.location and ("." in first or ":" in first or first == "localhost"):
            return first
        return "docker.io"


def check_tar(path: Path) -> None:
    """Refuse ``path`` unless it is an uncompressed tar archive holding ``manifest.json``
    (a `docker save` tarball): skopeo inflates a compressed one wherever it likes."""
    if "manifest.json" not in _tar_names(path, stop_at_oci=False):
        raise image_error(
            f"{path} holds no manifest.json (not a `docker save` tarball)",
            "archive_format",
            "give a `docker save` tarball, not compressed",
        )


def _tar_names(path: Path, *, stop_at_oci: bool) -> set[str]:
    """The top-level member names of the uncompressed tar at ``path`` (read as the
    reader); with ``stop_at_oci``, only until both of an OCI archive's are seen, else all
    of them (skopeo reads a docker archive whole: none may be sparse, see .reader)."""
    names: set[str] = set()
    try:
        with open_regular(path)[0] as fh, open_tar(fh) as tar:
            for member in members(tar):
                name = member.name.removeprefix("./")
                if "/" not in name:
                    names.add(name)
                if stop_at_oci and "index.json" in names and "oci-layout" in names:
                    break

    except (OSError, tarfile.TarError) as exc:
        raise image_error(
            f"{path} is not a readable, uncompressed tar archive ({exc})",
            "archive_unreadable",
            "give an OCI archive or a `docker save` tarball, not compressed",
        ) from None
    return names


def _tar_kind(path: Path) -> Kind:
    """oci-archive if the tarball holds index.json (preferred), docker-archive for manifest.json."""
    names = _tar_names(path, stop_at_oci=True)
    if "index.json" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    raise image_error(
        f"{path} holds neither index.json (OCI archive) nor manifest.json (docker save)",
        "archive_format",
        "give an OCI archive (`skopeo copy … oci-archive:…`) or a `docker save` tarball",
    )


def _plain_path(ref: str) -> Source:
    path, tag = Path(ref), None
    if not path.exists() and ":" in ref:
        head, _, tail = ref.rpartition(":")
        if Path(head).exists() and "/" not in tail:
            path, tag = Path(head), tail
    if path.is_dir():
        return Source("oci", str(path.resolve()), tag)
    if path.is_file():
        return Source(_tar_kind(path), str(path.resolve()), tag)
    raise image_error(
        f"no image at {ref} (the path does not exist)",
        "path_missing",
        "give an existing OCI layout directory or archive, or a registry reference",
    )


def parse_ref(ref: str) -> Source:
    """Parse an image reference; ValidationError on ``image`` when it cannot be used. A
    path is looked at as the reader (see :mod:`.reader`)."""
    with as_reader():
        try:
            return _parse(ref.strip())
        except OSError:  # a folder on the way the reader may not enter
            raise image_error(
                f"no image at {ref} that the shards' user can read",
                "path_missing",
                "give an image the shards' user can read (chmod o+r, and o+x on its"
                " folders), or a registry reference",
            ) from None


def _parse(ref: str) -> Source:
    if not ref:
        raise image_error("is empty", "required", "give an image reference or path")
    for kind in ("oci-archive", "docker-archive", "oci"):
        if ref.startswith(f"{kind}:"):
            # docker-archive keeps everything after the path (`name:tag` or `@N`) for skopeo.
            path, sep, tag_part = ref[len(kind) + 1 :].partition(":")
            tag = tag_part if sep and tag_part else None
            p = Path(path)
            if not p.is_absolute():
                p = p.resolve()
            wanted = p.is_dir() if kind == "oci" else p.is_file()
            if not wanted:
                what = "OCI layout directory" if kind == "oci" else "archive file"
                raise image_error(
                    f"no {what} at {p}",
                    "path_missing",
                    f"give the path of an existing {what} ({kind}:/path[:tag])",
                )
            return Source(kind, str(p), tag)
    if ref.startswith(("/", "./", "../")):
        return _plain_path(ref)
    location = ref.removeprefix("docker://")
    if not location or any(c.isspace() for c in location) or location.startswith("/"):
        raise image_error(
            f"{ref!r} is not an image reference",
            "format",
            "write a registry reference (ghcr.io/acme/trainer:tag) or an absolute path",
        )
    return Source("docker", location)


def repository_of(location: str) -> str:
    """A registry reference's ``host/name``, without its ``:tag`` and ``@digest``."""
    name = location.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def _select(index: dict[str, Any], tag: str | None, where: str) -> dict[str, Any]:
    """The index entry for ``tag`` (no tag: the only entry, else ``latest``)."""
    manifests: list[dict[str, Any]] = list(index.get("manifests") or [])
    tags = [str(m.get("annotations", {}).get(REF_NAME)) for m in manifests]
    if tag is None and len(manifests) == 1:
        return manifests[0]
    wanted = tag or "latest"
    for entry, name in zip(manifests, tags, strict=True):
        if name == wanted:
            return entry
    known = ", ".join(t for t in tags if t != "None") or "none"
    raise image_error(
        f"tag {wanted!r} not found in {where} (tags: {known})",
        "tag_missing",
        "name one of the tags after the path (oci:/path:TAG)",
    )


# A Docker schema 2 manifest's media types, as OCI names the same bytes
_DOCKER, _OCI = "application/vnd.docker.", "application/vnd.oci.image."
_AS_OCI = {
    f"{_DOCKER}container.image.v1+json": f"{_OCI}config.v1+json",
    f"{_DOCKER}image.rootfs.diff.tar": f"{_OCI}layer.v1.tar",
    f"{_DOCKER}image.rootfs.diff.tar.gzip": f"{_OCI}layer.v1.tar+gzip",
    f"{_DOCKER}image.rootfs.foreign.diff.tar": f"{_OCI}layer.nondistributable.v1.tar",
    f"{_DOCKER}image.rootfs.foreign.diff.tar.gzip": f"{_OCI}layer.nondistributable.v1.tar+gzip",
}


def canonical_manifest(manifest: dict[str, Any]) -> bytes:
    """The image manifest umoci unpacks: only what was checked here, an OCI manifest of
    the config and layers (their digests, sizes and media types, a Docker one's in OCI's
    names). Never the bytes it came as: Go reads JSON keys without regard to case, the
    last one winning, so a ``"Layers"`` after ``"layers"`` was unpacked by umoci and never
    measured here (found by a review)."""

    def descriptor(d: dict[str, Any]) -> dict[str, Any]:
        kind = d.get("mediaType")
        named = {"mediaType": _AS_OCI.get(kind, kind)} if isinstance(kind, str) else {}
        return {**named, "digest": d["digest"], "size": d["size"]}

    canonical = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(manifest["config"]),
        "layers": [descriptor(d) for d in manifest.get("layers") or []],
    }
    return json.dumps(canonical, separators=(",", ":")).encode()


class Layout:
    """Read-only access to an OCI layout: a directory, or the members of an OCI archive."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        """The file ``name`` of the layout: a regular file (or an archive's member) of
        at most ``limit`` bytes (a FIFO or /dev/zero there would hang or fill the
        control plane, which reads it as root)."""
        base = Path(self.source.location)
        data: bytes | None = None
        try:
            if self.source.kind == "oci":
                fh, size = open_regular(name, under=base)
                with fh:  # no more than it says: a file of /proc says 0
                    data = fh.read(min(size, limit + 1))
            else:
                with open_regular(base)[0] as fh, open_tar(fh) as tar:
                    for member in members(tar):
                        if member.name.removeprefix("./") == name and member.isfile():
                            found = tar.extractfile(member)
                            data = found.read(limit + 1) if found is not None else None
                            break
        except (OSError, tarfile.TarError):
            pass
        if data is None:
            raise image_error(
                f"{name} is missing from the OCI layout at {base}",
                "layout_broken",
                "give a complete OCI layout (index.json and blobs/)",
            )
        if len(data) > limit:
            raise image_error(
                f"{name} in the OCI layout at {base} is over {limit} bytes",
                "layout_broken",
                "give a valid OCI layout",
            )
        return data

    def json(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads(self.read(name))
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise image_error(
                f"{name} in {self.source.location} is not a JSON object",
                "layout_broken",
                "give a valid OCI layout",
            )
        return data

    def blob(self, digest: str) -> dict[str, Any]:
        return self.json("blobs/" + self.digest(digest).replace(":", "/", 1))

    def entry(self) -> dict[str, Any]:
        """The index entry the source's tag names (a manifest or a nested index), its
        digest checked (see :data:`DIGEST`)."""
        entry = _select(self.json("index.json"), self.source.tag, self.source.location)
        self.digest(entry.get("digest"))
        return entry

    def digest(self, value: object) -> str:
        """``value`` if it is a sha256 digest; else the layout is refused."""
        if not isinstance(value, str) or not DIGEST.match(value):
            raise image_error(
                f"the OCI layout at {self.source.location} names a digest that is not"
                f" sha256:<64 hex digits> ({str(value)[:80]!r})",
                "layout_broken",
                "give a valid OCI layout (skopeo copy or umoci write one)",
            )
        return value

    def manifest(self) -> dict[str, Any]:
        """The image manifest for this machine, following a multi-platform index."""
        entry = self.entry()
        for _ in range(4):
            if entry.get("mediaType") not in INDEX_TYPES:
                return self.blob(str(entry["digest"]))
            nested = self.blob(str(entry["digest"])).get("manifests") or []
            found = host_platform(list(nested))
            if found is None:
                raise image_error(
                    f"{self.source.location} has no image for {host_text()}",
                    "platform_missing",
                    "build the image for this machine's platform",
                )
            entry = found
        raise image_error("nested indexes too deep", "layout_broken", "give a valid layout")

    def config_blob(self) -> dict[str, Any]:
        return self.blob(str(self.manifest()["config"]["digest"]))


def skopeo_error(ref: str, registry: str | None, why: str, detail: str) -> ValidationError:
    """What a failed skopeo on ``ref`` means for the user (``registry``: None for a file)."""
    if registry is None:
        return image_error(
            f"cannot read {ref!r}: skopeo {why} ({detail})",
            "unreadable",
            "check that the file is a complete OCI archive or `docker save` tarball",
        )
    lowered = detail.lower()
    if "manifest unknown" in lowered or ("not found" in lowered and "no such host" not in lowered):
        return image_error(
            f"{ref!r} was not found in registry {registry} ({detail})",
            "not_found",
            "check the repository and tag, or use a local OCI layout/archive",
        )
    return image_error(
        f"cannot pull {ref!r}: registry {registry} is unreachable (network or registry"
        f" down; skopeo {why}: {detail})",
        "registry_unreachable",
        "check the network and the registry name, or use a local OCI layout or archive"
        " instead (oci:/path:tag, oci-archive:/path.tar, docker-archive:/path.tar)",
    )
