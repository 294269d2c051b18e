"""Image admission: what "image scanning" means here, done honestly.

Per org: allowed sources (reference prefixes), digest pinning on or off, and a deny
list of manifest digests; plus an operator-wide scanner command
(``SYLPHX_IMAGE_SCANNER``) run as ``CMD REF DIGEST ROOTFS`` whose non-zero exit
refuses the image with its output. A refused image is a 422 at submit.
"""

from __future__ import annotations

import functools
import shlex
import subprocess
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from sylphx._core.errors import ValidationError

from .refs import DIGEST, parse_ref, repository_of
from .store import ImageStore

SCANNER_TIMEOUT_SECONDS = 300


class ImagePolicy(BaseModel):
    """An org's image admission policy (empty: any image)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    allowed_sources: list[str] = Field(default_factory=list)  # e.g. "ghcr.io/acme/", "oci:/srv/"
    require_digest: bool = False
    deny_digests: list[str] = Field(default_factory=list)


def refuse(rule: str, fix: str, field: str = "image") -> ValidationError:
    """A 422 naming ``field`` (``image``, ``merge.image``), the rule it breaks and the fix."""
    return ValidationError(
        f"{field}: {rule}. Fix: {fix}.", details=[{"field": field, "rule": rule, "fix": fix}]
    )


def _check_source(ref: str, rules: ImagePolicy, field: str) -> None:
    if rules.allowed_sources and not any(ref.startswith(p) for p in rules.allowed_sources):
        raise refuse(
            f"{ref} is not from a source this org allows ({', '.join(rules.allowed_sources)})",
            "use an image from an allowed source, or ask an operator to allow it",
            field,
        )


def pinned_here(ref: str, store: ImageStore) -> str | None:
    """The digest ``ref`` pins, when this host alone answers for it: a registry reference
    pinned by digest, unpacked here, whose repository was checked to hold it (when it was
    pulled, or first confirmed). Nothing is asked of a registry or of DNS, and no tenant's
    file is read. None: resolving ``ref`` needs the registry (or a tenant's files)."""
    if ref.strip().startswith(("oci:", "oci-archive:", "docker-archive:", "/", ".")):
        return None
    try:
        source = parse_ref(ref)
    except ValidationError:
        return None
    digest = source.location.rpartition("@")[2] if "@" in source.location else ""
    if source.kind != "docker" or not DIGEST.match(digest):
        return None
    if not store.sources.vouched(repository_of(source.location), digest):
        return None
    return digest if store.cached(digest) else None


def recheck(ref: str, digest: str, policy: dict[str, Any] | None) -> None:
    """An image admitted before (a run retried), against the org's policy as it is now:
    its source still allowed, its digest not denied since."""
    rules = ImagePolicy.model_validate(policy or {})
    _check_source(ref, rules, "image")
    if digest in rules.deny_digests:
        raise refuse(f"{ref} ({digest}) is on this org's deny list", "use another image")


def admit(
    ref: str,
    policy: dict[str, Any] | None,
    store: ImageStore,
    scanner: str | None,
    field: str = "image",
    *,
    pinned: str | None = None,
) -> str:
    """Resolve ``ref`` (so it exists and is cached) and apply the policy and the scanner;
    returns the digest admitted (the one the run's shards are to run). ``pinned``: its
    digest as :func:`pinned_here` found it, taken as it is while still cached and no
    scanner is to read the unpacked image (else ``ref`` is resolved as any other)."""
    no = functools.partial(refuse, field=field)
    rules = ImagePolicy.model_validate(policy or {})
    _check_source(ref, rules, field)
    if rules.require_digest and "@sha256:" not in ref:
        raise no(
            f"{ref} is not pinned by digest, and this org requires digest pinning",
            "refer to the image as NAME@sha256:<digest>",
        )
    if pinned is not None and not scanner and store.cached(pinned):  # (GC may take it)
        digest, rootfs = pinned, ""
    else:
        image = store.resolve(ref)
        digest, rootfs = image.digest, str(image.rootfs)
    if digest in rules.deny_digests:
        raise no(f"{ref} ({digest}) is on this org's deny list", "use another image")
    if scanner:
        argv = [*shlex.split(scanner), ref, digest, rootfs]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=SCANNER_TIMEOUT_SECONDS
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise no(
                f"the image scanner could not run ({exc})",
                "check SYLPHX_IMAGE_SCANNER on the server",
            ) from None
        if done.returncode != 0:
            said = (done.stdout + done.stderr).strip()[-2000:] or f"exit {done.returncode}"
            raise no(
                f"refused by the image scanner: {said}",
                "fix what the scanner reports, or use another image",
            )
    return digest
