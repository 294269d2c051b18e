"""Which registries the control plane may contact for a tenant.

An image reference names a host the control plane (root, on the host's network) then
connects to, to read a manifest and pull layers: an ``image`` of
``127.0.0.1:5432/x:1`` made it connect to the host's own PostgreSQL, and skopeo's answer
(connection refused, EOF, not TLS) told the tenant what listens there -- a port scanner
of the host and its network, which the shards' own envelope closes
(``--disable-host-loopback``; found by an attack review). So a registry whose name is, or
resolves to, an address of the host, its private networks or a special range (loopback,
RFC 1918 and unique-local, link-local with the cloud metadata service, unspecified,
multicast, reserved) is refused before anything is sent, unless the operator lists it in
``SYLPHX_PRIVATE_REGISTRIES`` (an in-house registry). A name that does not resolve is left
to skopeo, which reports the registry unreachable.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection

from .refs import image_error

__all__ = ["check_reachable", "host_of"]


def host_of(registry: str) -> str:
    """The host of a registry name: ``[::1]:5000`` -> ``::1``, ``reg.io:5000`` -> ``reg.io``."""
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    if registry.count(":") > 1:  # an IPv6 address without brackets (and so no port)
        return registry
    host, _, port = registry.rpartition(":")
    return host if host and port.isdigit() else registry


def check_reachable(registry: str, allowed: Collection[str]) -> None:
    """Raise a ValidationError on ``image`` when ``registry`` is private (see the module)
    and not one of ``allowed``."""
    if registry in allowed or host_of(registry) in allowed:
        return
    try:
        found = socket.getaddrinfo(host_of(registry), None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):  # no such name: skopeo says it is unreachable
        return
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if not address.is_global or address.is_multicast:
            raise image_error(
                f"registry {registry} is at {address}, a private or special address: the"
                " control plane contacts only public registries for a run",
                "private_registry",
                "use an image from a public registry or a local OCI layout or archive, or"
                " ask the operator to allow that registry (SYLPHX_PRIVATE_REGISTRIES)",
            )
