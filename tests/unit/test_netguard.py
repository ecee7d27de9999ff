"""SSRF guard: IPv6 forms that embed a private IPv4 address, and errors that do not reveal DNS."""

from __future__ import annotations

import socket

import pytest

from mailsync.errors import ConnectFailed
from mailsync.netguard import is_public_address, resolve_checked


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::127.0.0.1",  # IPv4-compatible (deprecated, still routed by some stacks)
        "::a9fe:a9fe",  # IPv4-compatible instance metadata 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 well-known prefix -> 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 -> 10.0.0.1
        "64:ff9b:1::808:808",  # local-use NAT64: never public, whatever it embeds
        "2002:7f00:1::1",  # 6to4 -> 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 -> 169.254.169.254
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, client 192.0.2.45 (TEST-NET)
        "::",
        "::1",
    ],
)
def test_ipv6_forms_embedding_a_private_ipv4_are_not_public(address: str) -> None:
    assert is_public_address(address) is False


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111"])
def test_ipv6_forms_embedding_a_public_ipv4_stay_usable(address: str) -> None:
    # DNS64 in an IPv6-only VPC answers 64:ff9b::/96 for every IPv4-only mail server.
    assert is_public_address(address) is True


def _answer(addresses: dict[str, str]):
    def fake(host: str, port: object, *args: object, **kwargs: object) -> list[tuple]:
        if host not in addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        family = socket.AF_INET6 if ":" in addresses[host] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (addresses[host], port))]

    return fake


def test_unknown_and_private_names_get_the_same_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        socket, "getaddrinfo", _answer({"db.internal.example": "10.0.0.5", "mail.example.com": "93.184.216.34"})
    )
    with pytest.raises(ConnectFailed) as private:
        resolve_checked("db.internal.example", 993, allow_private=False)
    with pytest.raises(ConnectFailed) as unknown:
        resolve_checked("nothing.internal.example", 993, allow_private=False)
    texts = [err.value.message.replace(name, "<host>") for err, name in ((private, "db"), (unknown, "nothing"))]
    assert texts[0] == texts[1], "the answer must not tell whether an internal name exists"
    assert "not allowed" in texts[0]
    assert "resolve" not in texts[0].split(":")[0]


def test_one_private_address_among_public_ones_refuses_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(host: str, port: object, *args: object, **kwargs: object) -> list[tuple]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("64:ff9b::a9fe:a9fe", port, 0, 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(ConnectFailed, match="not allowed"):
        resolve_checked("mail.example.com", 993, allow_private=False)


def test_checked_addresses_come_back_in_resolver_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _answer({"mail.example.com": "93.184.216.34"}))
    assert resolve_checked("mail.example.com", 993, allow_private=False) == ["93.184.216.34"]
