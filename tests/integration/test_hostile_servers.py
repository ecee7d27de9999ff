"""Budgets against hostile mail servers (issue 9, findings 6, 7 and 8).

Scripted servers (tests/fixtures/hostile_server.py) flood, trickle, announce a 4 GB literal, or
speak another protocol; each test shows the connection layer stops within its budget, with memory
measured by tracemalloc (what Python allocates, not RSS, so other tests' leftovers do not count).
"""

from __future__ import annotations

import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from mailsync.config import Settings
from mailsync.errors import MailboxError, ProtocolMismatch, ServerMisbehaving
from mailsync.mailbox.base import ServerParams
from mailsync.mailbox.check import open_mailbox_check
from mailsync.mailbox.connection import open_imap
from mailsync.mailbox.transport import DEADLINE_MESSAGE
from tests.fixtures.hostile_server import HostileServer, Peer, Script, greets, http_server, imap_server, pop3_server

MB = 1024 * 1024
# The promise: worker memory stays within the message cap plus 64 MB.
HEADROOM = 64 * MB
# What an unbudgeted client would swallow before these servers give up and end the response,
# so that the old code fails the memory assertion instead of hanging the test run.
FLOOD_LIMIT = 300 * MB


def settings(**overrides: object) -> Settings:
    return Settings(allow_private_hosts=True, allow_insecure=True, **overrides)


def params(server: HostileServer, protocol: str = "imap") -> ServerParams:
    return ServerParams(
        host=server.host, port=server.port, username="victim", password="pw", security="none", protocol=protocol
    )


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    result: list[int] = []
    tracemalloc.start()
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def measured[T](action: Callable[[], T]) -> tuple[BaseException | None, int]:
    with peak_memory() as peak:
        try:
            action()
            error: BaseException | None = None
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever came out
            error = exc
    return error, peak[0]


def fetch_all(server: HostileServer, config: Settings, deadline: float | None = None) -> None:
    with open_imap(params(server), config, deadline=deadline) as session:
        session.client.select_folder("INBOX")
        session.client.fetch([1], ["BODY.PEEK[]"])


def flood_then_finish(first: bytes, chunk: bytes) -> Callable[[Peer, bytes, bytes], None]:
    def handler(peer: Peer, tag: bytes, args: bytes) -> None:
        if peer.send(first) and peer.flood(chunk, FLOOD_LIMIT):
            peer.send(b")\r\n" + tag + b" OK done\r\n")

    return handler


def test_endless_untagged_fetch_lines_stop_at_the_response_budget() -> None:
    config = settings(max_message_bytes=1 * MB)
    line = b"* 1 FETCH (UID 1 FLAGS (\\Seen) X-GARBAGE " + b"x" * 60_000 + b")\r\n"
    script = imap_server({b"FETCH": flood_then_finish(b"", line)})
    with HostileServer(script) as server:
        error, peak = measured(lambda: fetch_all(server, config))
    assert isinstance(error, ServerMisbehaving), error
    assert "in answer to one command" in error.message
    assert peak < config.max_message_bytes + HEADROOM, f"peak {peak / MB:.0f} MB"


def test_untagged_responses_per_command_are_counted() -> None:
    config = settings(max_untagged_per_command=1000)
    script = imap_server({b"FETCH": flood_then_finish(b"", b"* 1 FETCH (FLAGS (\\Seen))\r\n")})
    with (
        HostileServer(script) as server,
        pytest.raises(ServerMisbehaving, match="more than 1000 responses to one command"),
    ):
        fetch_all(server, config)


def test_a_4gb_literal_is_refused_without_reading_it() -> None:
    config = settings()
    script = imap_server({b"FETCH": flood_then_finish(b"* 1 FETCH (UID 1 BODY[] {4000000000}\r\n", b"x" * 65536)})
    with HostileServer(script) as server:
        error, peak = measured(lambda: fetch_all(server, config))
    assert isinstance(error, ServerMisbehaving), error
    assert "4000000000 bytes in one piece" in error.message
    assert peak < HEADROOM, f"peak {peak / MB:.0f} MB: the literal was read"


def test_a_line_longer_than_the_cap_is_refused() -> None:
    config = settings(max_line_bytes=64 * 1024)
    script = imap_server({b"FETCH": flood_then_finish(b"* 1 FETCH (FLAGS (", b"\\Seen " * 10_000)})
    with HostileServer(script) as server, pytest.raises(ServerMisbehaving, match="line longer than 65536 bytes"):
        fetch_all(server, config)


def test_endless_list_stops_at_max_folders() -> None:
    config = settings(max_folders=50)

    def endless_list(peer: Peer, tag: bytes, args: bytes) -> None:
        # 200,000 folders: enough to show the old code listing them all instead of stopping.
        if peer.flood(b'* LIST () "/" "Folder"\r\n', 200_000 * 24):
            peer.send(tag + b" OK done\r\n")

    with HostileServer(imap_server({b"LIST": endless_list})) as server:
        started = time.monotonic()
        with (
            open_imap(params(server), config) as session,
            pytest.raises(ServerMisbehaving, match="listed more than 50 folders"),
        ):
            session.list_folders()
    assert time.monotonic() - started < 5


def test_a_trickling_server_is_cut_off_at_the_deadline() -> None:
    # A per-read timeout of 20 s never fires against one byte every 0.2 s; only the deadline does.
    config = settings(imap_timeout_seconds=20)

    def trickle(peer: Peer, tag: bytes, args: bytes) -> None:
        peer.trickle(b"* 1 FETCH (FLAGS (\\Seen)) " + b"x" * 10_000 + b"\r\n", 0.2)

    with HostileServer(imap_server({b"FETCH": trickle})) as server:
        started = time.monotonic()
        with pytest.raises(ServerMisbehaving) as err:
            fetch_all(server, config, deadline=started + 2)
        elapsed = time.monotonic() - started
    assert err.value.message == DEADLINE_MESSAGE
    # At the 2 s deadline, far from the 20 s read timeout, with room for a loaded machine.
    assert 1.5 < elapsed < 10, elapsed


def test_without_a_deadline_an_interactive_check_is_still_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsync.mailbox import transport

    monkeypatch.setattr(transport, "INTERACTIVE_BUDGET_SECONDS", 1.5)

    def trickle(peer: Peer, tag: bytes, args: bytes) -> None:
        peer.trickle(b"* CAPABILITY IMAP4rev1 " + b"X" * 10_000 + b"\r\n", 0.2)

    with HostileServer(imap_server({b"CAPABILITY": trickle})) as server:
        started = time.monotonic()
        with pytest.raises(ServerMisbehaving, match="time budget"):
            open_mailbox_check(params(server), settings())
    # Cut at the 1.5 s budget, not at the default 20 s one; the room is for a loaded machine.
    assert time.monotonic() - started < 10


def test_pop3_endless_capa_stops_at_the_response_budget() -> None:
    config = settings(max_pop3_response_bytes=1 * MB)

    def endless_capa(peer: Peer) -> None:
        if peer.send(b"+OK capabilities follow\r\n") and peer.flood(b"X-" + b"y" * 996 + b"\r\n", FLOOD_LIMIT):
            peer.send(b".\r\n")

    with HostileServer(pop3_server(endless_capa)) as server:
        error, peak = measured(lambda: open_mailbox_check(params(server, "pop3"), config))
    assert isinstance(error, ServerMisbehaving), error
    assert "in one POP3 response" in error.message
    assert peak < HEADROOM, f"peak {peak / MB:.0f} MB"


@pytest.mark.parametrize(
    ("script", "protocol", "speaks"),
    [
        (greets(b"220 mx.example.com ESMTP Postfix (Debian/GNU)"), "imap", "SMTP"),
        (greets(b"+OK Dovecot ready."), "imap", "POP3"),
        (http_server(), "imap", "HTTP"),
        (imap_server(), "pop3", "IMAP"),
        (greets(b"220 mx.example.com ESMTP"), "pop3", "SMTP"),
        (http_server(), "pop3", "HTTP"),
    ],
    ids=["smtp-on-imap", "pop3-on-imap", "http-on-imap", "imap-on-pop3", "smtp-on-pop3", "http-on-pop3"],
)
def test_the_wrong_kind_of_server_is_named(script: Script, protocol: str, speaks: str) -> None:
    # HTTP servers wait for a request: one short read timeout, then a probe line makes them talk.
    config = settings(imap_timeout_seconds=0.5)
    with HostileServer(script) as server, pytest.raises(ProtocolMismatch) as err:
        open_mailbox_check(params(server, protocol), config)
    expected = "IMAP" if protocol == "imap" else "POP3"
    assert err.value.message == f"Port {server.port} speaks {speaks}, not {expected}"
    assert err.value.status == 502


def test_protocol_mismatch_through_the_api(api, aws, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "true")
    monkeypatch.setenv("MAILSYNC_ALLOW_INSECURE", "true")
    get_settings.cache_clear()
    with HostileServer(greets(b"220 mx.example.com ESMTP Postfix")) as server:
        body = {
            "host": server.host,
            "port": server.port,
            "username": "jürgen@example.com",
            "password": "Passwört-2026",
            "security": "none",
        }
        assert api("PUT", "/v1/users/me/mail-settings", body).status == 201
        tested = api("POST", "/v1/users/me/mail-settings/test")
    assert tested.status == 502, tested.body
    assert tested.body["error"]["code"] == "protocol_mismatch"
    assert tested.body["error"]["message"] == f"Port {server.port} speaks SMTP, not IMAP"
    saved = api("GET", "/v1/users/me/mail-settings").body
    assert (saved["status"], saved["last_error"]) == ("protocol_mismatch", tested.body["error"]["message"])


def test_dns_rebinding_cannot_steer_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name answers a public address to the check and loopback afterwards: nothing may reach loopback."""
    real_getaddrinfo = socket.getaddrinfo
    answers: list[str] = []

    def rebinding(host: object, port: object, *args: object, **kwargs: object) -> list[tuple]:
        if host != "mail.rebind.example":
            return real_getaddrinfo(host, port, *args, **kwargs)  # type: ignore[arg-type]
        address = "93.184.216.34" if not answers else "127.0.0.1"
        answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    config = Settings(allow_private_hosts=False, allow_insecure=True, imap_timeout_seconds=1)
    with HostileServer(imap_server()) as loopback:
        rebound = ServerParams(
            host="mail.rebind.example", port=loopback.port, username="u", password="p", security="none"
        )
        with pytest.raises(MailboxError) as err, open_imap(rebound, config):
            pass
        assert loopback.connections == 0, "the connection followed the second DNS answer"
    assert answers == ["93.184.216.34"], "the host name must be resolved exactly once"
    assert err.value.code in ("connect_failed", "timeout")


def test_bytes_sent_before_tls_are_not_read_as_if_they_came_over_tls() -> None:
    """STARTTLS response injection: anything buffered when the socket changes is refused."""
    from mailsync.mailbox.transport import Budget, BudgetedReader

    plain_client, plain_server = socket.socketpair()
    tls_client, tls_server = socket.socketpair()
    current = [plain_client]
    budget = Budget.from_settings(settings(), time.monotonic() + 5)
    reader = BudgetedReader(lambda: current[0], budget)
    try:
        plain_server.sendall(b"a1 OK Begin TLS now\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n")
        assert reader.readline(1000) == b"a1 OK Begin TLS now\r\n"
        current[0] = tls_client  # what imaplib does after STARTTLS
        tls_server.sendall(b"* CAPABILITY IMAP4rev1\r\n")
        with pytest.raises(ServerMisbehaving, match="before TLS started"):
            reader.readline(1000)
    finally:
        for sock in (plain_client, plain_server, tls_client, tls_server):
            sock.close()


def test_a_tls_port_reached_in_the_clear_says_so() -> None:
    # A TLS server waits for the ClientHello and answers anything else with a TLS alert record.
    def tls_only(peer: Peer) -> None:
        if peer.read(1) is not None:
            peer.send(b"\x15\x03\x03\x00\x02\x02\x46")

    with HostileServer(tls_only) as server, pytest.raises(ProtocolMismatch) as err:
        open_mailbox_check(params(server), settings(imap_timeout_seconds=0.5))
    assert err.value.message == f"Port {server.port} expects TLS from the first byte: choose security 'ssl'"


def test_a_message_under_the_cap_is_read_whole_within_the_memory_promise() -> None:
    config = settings(max_message_bytes=8 * MB)
    body = b"x" * (6 * MB)

    def big_message(peer: Peer, tag: bytes, args: bytes) -> None:
        peer.send(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(body) + body + b")\r\n" + tag + b" OK done\r\n")

    def fetch() -> dict:
        with open_imap(params(server), config) as session:
            session.client.select_folder("INBOX")
            return session.client.fetch([1], ["BODY.PEEK[]"])

    with HostileServer(imap_server({b"FETCH": big_message})) as server, peak_memory() as peak:
        fetched = fetch()
    assert fetched[1][b"BODY[]"] == body
    # The server thread's own copy of the body is traced too.
    assert peak[0] < config.max_message_bytes + HEADROOM


def test_tls_verifies_the_host_name_not_the_checked_address(mail_user, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection goes to the checked IP, but the certificate must still match the name.

    Dovecot's test certificate is valid for 127.0.0.1 and "localhost": a name that resolves to
    127.0.0.1 but is not in the certificate must fail, which it would not if the IP were verified.
    """
    from mailsync.errors import TlsFailed

    real_getaddrinfo = socket.getaddrinfo

    def resolver(host: object, port: object, *args: object, **kwargs: object) -> list[tuple]:
        if host == "mail.other-name.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real_getaddrinfo(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    config = Settings(allow_private_hosts=True, extra_ca_file=str(mail_user.ca_file))

    def check(host: str) -> None:
        secured = ServerParams(
            host=host,
            port=mail_user.imaps_port,
            username=mail_user.username,
            password=mail_user.password,
            security="ssl",
        )
        open_mailbox_check(secured, config)

    check("localhost")
    with pytest.raises(TlsFailed, match="certificate"):
        check("mail.other-name.example")


def test_folder_names_that_are_not_modified_utf7_are_listed_as_sent() -> None:
    def listing(peer: Peer, tag: bytes, args: bytes) -> None:
        peer.send(
            b'* LIST () "/" INBOX\r\n'
            b'* LIST () "/" "R&D"\r\n'  # a raw "&" (should be "&-")
            b'* LIST () "/" "Entw&APw-rfe"\r\n'  # proper modified UTF-7
            b'* LIST () "/" "Gel\xc3\xb6scht"\r\n' + tag + b" OK done\r\n"  # raw UTF-8
        )

    with HostileServer(imap_server({b"LIST": listing})) as server, open_imap(params(server), settings()) as session:
        names = [folder.name for folder in session.list_folders()]
        assert session.client.folder_encode is True, "the client's own encoding setting is restored"
    assert names == ["INBOX", "R&D", "Entwürfe", "Gelöscht"]
