"""A folder name the server sends raw, not in modified UTF-7 ("R&D" rather than "R&-D").

No server installed here lists such a name (Dovecot, Cyrus and Courier all encode "&" as
"&-"; Courier also refuses a raw "R&D" in commands), so a small proxy in front of a real Dovecot
plays a server that does: it shows Dovecot's "R&-D" as "R&D", takes "R&D" for it, and refuses
"R&-D", which such a server would not know. Everything else is Dovecot's own answer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from devstack.dovecot import DovecotServer, MailUser
from tests.conftest import ApiCall, Caller
from tests.integration.sync_support import Account, days_ago, message

RAW = "R&D"
LINE_BUDGET = 1024 * 1024  # a proxied line longer than this ends the connection


def _to_client(line: bytes) -> bytes:
    return line.replace(b"R&-D", b"R&D")


def _to_server(line: bytes) -> bytes:
    # The encoded spelling names no folder on this server; the raw one is the folder.
    return line.replace(b"R&-D", b"R&-D-is-not-known-here").replace(b"R&D", b"R&-D")


class RawNameProxy:
    """Forwards IMAP line by line between a client and Dovecot's plain-text port, rewriting names."""

    def __init__(self, upstream_port: int, *, raw: bool = True) -> None:
        self.upstream_port = upstream_port
        self.raw = raw
        self.sent_by_client: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> RawNameProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            self._sockets += [client, server]
            keep: Callable[[bytes], bytes] = bytes
            self._spawn(self._pump, client, server, _to_server if self.raw else keep, True)
            self._spawn(self._pump, server, client, _to_client if self.raw else keep, False)

    def _pump(self, src: socket.socket, dst: socket.socket, rewrite: Callable[[bytes], bytes], log: bool) -> None:
        buffer = b""
        try:
            while chunk := src.recv(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\r\n")
                if len(buffer) > LINE_BUDGET:
                    return
                for line in lines:
                    if log:
                        self.sent_by_client.append(line)
                    dst.sendall(rewrite(line) + b"\r\n")
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@pytest.fixture(params=["dovecot", "dovecot_basic", "dovecot-encoded"])
def raw_server(request: pytest.FixtureRequest, local_mail_env, monkeypatch) -> Iterator[tuple[MailUser, RawNameProxy]]:
    """A fresh Dovecot user with a folder "R&D" (Dovecot: "R&-D"), behind the proxy.

    "dovecot" answers the sync's STATUS with one LIST-STATUS; "dovecot_basic" has no LIST-STATUS,
    so each folder gets its own STATUS; "dovecot-encoded" passes everything unchanged: the same
    display name "R&D" must then go to the server as "R&-D", as RFC 3501 says.
    """
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_ALLOW_INSECURE", "true")
    get_settings.cache_clear()
    server: DovecotServer = request.getfixturevalue(request.param.removesuffix("-encoded"))
    user = server.add_user()
    with user.client() as imap:
        imap.imap.create_folder(RAW)  # imapclient sends it as "R&-D"
    with RawNameProxy(user.imap_port, raw=not request.param.endswith("-encoded")) as proxy:
        yield user, proxy


def connect(api: ApiCall, user: MailUser, proxy: RawNameProxy) -> Account:
    caller = Caller("alice", "acme", "user")
    body = {
        "host": "127.0.0.1",
        "port": proxy.port,
        "username": user.username,
        "password": user.password,
        "security": "none",
        "protocol": "imap",
    }
    saved = api("PUT", "/v1/users/me/mail-settings", body, caller=caller)
    assert saved.status == 201, saved.body
    listed = api("GET", "/v1/users/me/server-folders", caller=caller)
    assert listed.status == 200, listed.body
    assert RAW in [f["name"] for f in listed.body["folders"]], listed.body
    mapped = api("PUT", "/v1/users/me/folder-map", {"inbox": "INBOX", "archive": RAW}, caller=caller)
    assert mapped.status == 200, mapped.body
    return Account(api, user, caller)


def test_a_mapped_raw_ampersand_folder_syncs(api: ApiCall, raw_server: tuple[MailUser, RawNameProxy]) -> None:
    user, proxy = raw_server
    with user.client() as imap:
        filed = imap.append(RAW, message("filed in R&D", days=1), internal_date=days_ago(1))
        imap.append(RAW, message("also filed", days=2), internal_date=days_ago(2))
        imap.append("INBOX", message("in the inbox", days=1), internal_date=days_ago(1))
    account = connect(api, user, proxy)

    result = account.sync()
    assert result.status == "synced", result
    assert not result.outcome.folder_errors, result.outcome.folder_errors
    synced = account.synced()
    assert {s: (m["folder"], m["server_folder"]) for s, m in synced.items()} == {
        "filed in R&D": ("archive", RAW),
        "also filed": ("archive", RAW),
        "in the inbox": ("inbox", "INBOX"),
    }

    with user.client() as imap:  # another mail program deletes one and files one more
        imap.expunge(RAW, filed)
        imap.append(RAW, message("filed later", days=0.5), internal_date=days_ago(0.5))
    result = account.sync()
    assert result.status == "synced", result
    after = account.by_subject()
    assert (after["filed in R&D"]["state"], after["filed in R&D"]["detach_reason"]) == ("detached", "removed")
    assert (after["filed later"]["state"], after["filed later"]["server_folder"]) == ("synced", RAW)
    assert after["also filed"]["state"] == "synced"

    # The CRM files a message into it: the writer spells the folder as the server does too.
    moved = api("PATCH", f"/v1/messages/{after['in the inbox']['id']}", {"folder": "archive"}, caller=account.caller)
    assert moved.status == 200, moved.body
    assert account.sync(reason="push").status == "synced"
    filed_by_crm = account.by_subject()["in the inbox"]
    assert (filed_by_crm["server_folder"], filed_by_crm["sync_state"]) == (RAW, "synced"), filed_by_crm

    # The name went to the server exactly as the server sent it: raw to the raw server, only
    # ever encoded to the one that encodes.
    sent, other = (b'"R&D"', b"R&-D") if proxy.raw else (b'"R&-D"', b'"R&D"')
    assert not [line for line in proxy.sent_by_client if other in line]
    assert [line for line in proxy.sent_by_client if sent in line]
