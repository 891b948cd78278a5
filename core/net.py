"""The caller's IP address behind trusted proxies, and which addresses count as the platform's own network.

Client address
    ``client_ip`` takes the direct peer (``REMOTE_ADDR`` of a WSGI/Django ``META``, ``client`` of an ASGI scope).
    Only when that peer is in ``settings.TRUSTED_PROXIES`` it reads ``X-Forwarded-For`` (every such header, in order)
    from the right: each trusted proxy appended the address it saw, so the right-most address that is not itself a
    trusted proxy is the client. Anything left of it was written by the client and is never believed. A garbled
    entry where the client should be gives None (an IP allow-list then refuses the call), and so does a trusted
    proxy that sends no ``X-Forwarded-For`` at all: its own address is not the client's, and an allow-list that
    contains the proxy's network would otherwise let anyone through it. A client without an allow-list is not
    affected (None passes where any address would). With no trusted proxies (the default) the header is ignored
    altogether, so a client cannot spoof its way past an allow-list.

Internal addresses
    ``address_is_internal`` says whether an address is loopback, private, link-local, site-local, multicast,
    reserved, unspecified or shared (carrier-grade NAT), for IPv4 and IPv6, IPv4-mapped / 6to4 / Teredo / NAT64 IPv6
    forms included.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_networks_cache: tuple[tuple[str, ...], tuple[IPNetwork, ...]] | None = None


def trusted_proxies() -> tuple[IPNetwork, ...]:
    """``settings.TRUSTED_PROXIES`` parsed (re-read when the setting changes, e.g. in tests)."""
    global _networks_cache
    raw = tuple(getattr(settings, "TRUSTED_PROXIES", ()) or ())
    cached = _networks_cache
    if cached is None or cached[0] != raw:
        cached = _networks_cache = (raw, tuple(ipaddress.ip_network(n, strict=False) for n in raw))
    return cached[1]


def parse_ip(value: str | None) -> IPAddress | None:
    """An address as proxies write it (``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:443``)."""
    if not value:
        return None
    text = value.strip().strip('"')
    if text.startswith("["):  # [v6]:port (RFC 7239 style)
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # no zone ids
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:1.2.3.4 is 1.2.3.4, as allow-lists are written
    return address


def _is_trusted(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def _peer_and_forwarded(meta_or_scope: Mapping) -> tuple[str | None, list[str]]:
    if "type" in meta_or_scope and "headers" in meta_or_scope:  # an ASGI scope
        client = meta_or_scope.get("client")
        forwarded = [
            value.decode("latin-1") for name, value in meta_or_scope.get("headers", ()) if name == b"x-forwarded-for"
        ]
        return (client[0] if client else None), forwarded
    forwarded = meta_or_scope.get("HTTP_X_FORWARDED_FOR")
    return meta_or_scope.get("REMOTE_ADDR"), [forwarded] if forwarded else []


def client_ip(meta_or_scope: Mapping) -> str | None:
    """The caller's address: the direct peer, or behind trusted proxies the right-most untrusted forwarded one
    (None when a trusted proxy forwards none, or a garbled one: see the module's docstring)."""
    peer_text, forwarded = _peer_and_forwarded(meta_or_scope)
    networks = trusted_proxies()
    peer = parse_ip(peer_text)
    if peer is None:
        return peer_text or None
    if not networks or not _is_trusted(peer, networks):
        return str(peer)
    hops = [entry for header in forwarded for entry in header.split(",") if entry.strip()]
    if not hops:
        return None  # a trusted proxy that names no client: who is behind it is unknown
    candidate = peer
    for entry in reversed(hops):
        address = parse_ip(entry)
        if address is None:
            return None  # written by the client (a proxy writes addresses): nothing to believe
        candidate = address
        if not _is_trusted(address, networks):
            return str(address)
    return str(candidate)  # every hop is a trusted proxy: the left-most is the origin


def address_is_internal(address: IPAddress) -> bool:
    """Whether an address belongs to a network a callback must never reach (see the module's docstring)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and address_is_internal(embedded):
            return True
        if address in _NAT64:  # 64:ff9b::/96 carries an IPv4 address in its last 32 bits
            return address_is_internal(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)  # fec0::/10: Python calls it global
        or any(address in network for network in _ALSO_INTERNAL if network.version == address.version)
    )


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ALSO_INTERNAL = (
    ipaddress.ip_network("100.64.0.0/10"),  # shared address space (carrier-grade NAT): is_global is False, but say so
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("fc00::/7"),
    ipaddress.ip_network("fe80::/10"),
)
