"""SSRF guard: a tenant-supplied mail host must not point at our own network.

The host is resolved once; every address is checked; the adapters then connect to exactly those
checked addresses (``mailbox/transport.py``), so a DNS answer that changes between the check and
the connect (DNS rebinding) cannot steer the connection anywhere else.
"""

from __future__ import annotations

import ipaddress
import socket

from mailsync.errors import ConnectFailed, ValidationFailed

# IPv6 ranges that carry an IPv4 address inside; the embedded address decides.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Local-use NAT64 (RFC 8215) translates into whatever network the operator chose: never public.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# IPv4-compatible addresses (RFC 4291, deprecated): some stacks still route ::a.b.c.d to a.b.c.d.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    if ip.ipv4_mapped:
        return [ip.ipv4_mapped]
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour:
        return [ip.sixtofour]
    if ip.teredo:
        return list(ip.teredo)
    return []


def is_public_address(address: str) -> bool:
    """True only for a globally routable unicast address, looking through IPv6 forms that embed
    an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL or (ip in _IPV4_COMPATIBLE and int(ip) <= 1):
            return False
        embedded = _embedded_ipv4(ip)
        if embedded:
            return all(v4.is_global and not v4.is_multicast for v4 in embedded)
    return ip.is_global and not ip.is_multicast


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def check_host_literal(host: str, allow_private: bool) -> None:
    """Refuse at save time a host that is itself a non-public IP address (422 on `host`)."""
    literal = _literal_ip(host)
    if literal and not allow_private and not is_public_address(literal):
        raise ValidationFailed(
            "Mail host is a private, loopback or link-local address, which this deployment does not allow",
            field="host",
        )
    if host.lower() in {"localhost", "localhost.localdomain"} and not allow_private:
        raise ValidationFailed("Mail host 'localhost' is not allowed in this deployment", field="host")


def refused_host_message(host: str) -> str:
    # One text for "does not resolve" and "resolves to a private address", so that the answer
    # never tells a caller which internal names exist.
    return (
        f"Mail host '{host}' is not allowed or cannot be reached: this deployment does not allow hosts "
        "that are unknown or have a non-public address"
    )


def resolve_checked(host: str, port: int, allow_private: bool) -> list[str]:
    """Resolve ``host`` once and refuse it if any address is not public (unless allowed).

    Returns the addresses in resolver order; connect to these, never to ``host`` again.
    Checked at connect time, not only when saved, because DNS can change after saving.
    """
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        if allow_private:
            raise ConnectFailed(f"Mail host '{host}' could not be resolved") from exc
        raise ConnectFailed(refused_host_message(host)) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses or (not allow_private and not all(is_public_address(a) for a in addresses)):
        raise ConnectFailed(refused_host_message(host))
    return addresses
