"""SSRF guard: a tenant-supplied mail host must not point at our own network."""

from __future__ import annotations

import ipaddress
import socket

from mailsync.errors import ConnectFailed, ValidationFailed


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
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


def resolve_checked(host: str, port: int, allow_private: bool) -> list[str]:
    """Resolve ``host`` and refuse it if any address is not public (unless allowed).

    Checked at connect time, not only when saved, because DNS can change after saving.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectFailed(f"Mail host '{host}' could not be resolved") from exc
    addresses = sorted({info[4][0] for info in infos})
    if not allow_private:
        blocked = [a for a in addresses if not is_public_address(a)]
        if blocked:
            raise ConnectFailed(
                f"Mail host '{host}' resolves to a non-public address, which this deployment does not allow"
            )
    return addresses
