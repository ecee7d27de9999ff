"""Login outcomes (issue 9, findings 5 and 6): only a NO to LOGIN/AUTHENTICATE is a wrong password;
BYE, [UNAVAILABLE], throttling, drops and stalls are transient; non-ASCII credentials log in."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.dovecot import DovecotServer, MailUser
from mailsync.config import Settings
from mailsync.errors import AuthFailed, MailboxError, ServerBusy
from mailsync.mailbox.base import ServerParams
from mailsync.mailbox.check import open_mailbox_check
from mailsync.mailbox.connection import open_imap
from tests.fixtures.hostile_server import HostileServer, Peer, greets, imap_server

USER = "jürgen@example.com"
PASSWORD = "Passwört-2026"


def plain(server: HostileServer) -> ServerParams:
    return ServerParams(host=server.host, port=server.port, username="victim", password="pw", security="none")


def log_in(params: ServerParams, config: Settings) -> None:
    with open_imap(params, config):
        pass


def login_answer(answer: bytes):
    def handler(peer: Peer, tag: bytes, args: bytes) -> None:
        peer.send(answer.replace(b"{tag}", tag))

    return handler


def dropped(peer: Peer, tag: bytes, args: bytes) -> None:
    peer.sock.close()


def stalled(peer: Peer, tag: bytes, args: bytes) -> None:
    peer.wait_until_closed()


TRANSIENT = {
    "bye-at-greeting": greets(b"* BYE Too many connections from your IP"),
    "bye-at-login": imap_server({b"LOGIN": login_answer(b"* BYE Too many simultaneous logins\r\n")}),
    "no-unavailable": imap_server(
        {b"LOGIN": login_answer(b"{tag} NO [UNAVAILABLE] Backend temporarily unavailable\r\n")}
    ),
    "no-limit": imap_server({b"LOGIN": login_answer(b"{tag} NO [LIMIT] Rate limit hit, try later\r\n")}),
    "alert-throttle": imap_server(
        {b"LOGIN": login_answer(b"{tag} NO [ALERT] Too many simultaneous connections. (Failure)\r\n")}
    ),
    "dropped": imap_server({b"LOGIN": dropped}),
    "stalled": imap_server({b"LOGIN": stalled}),
}

WRONG_CREDENTIALS = {
    "authenticationfailed": b"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n",
    "bare-no": b"{tag} NO LOGIN failed.\r\n",
    "alert-not-throttling": b"{tag} NO [ALERT] Please log in via your web browser\r\n",
}


@pytest.mark.parametrize("name", TRANSIENT)
def test_transient_trouble_at_login_is_not_a_wrong_password(name: str) -> None:
    config = Settings(allow_private_hosts=True, allow_insecure=True, imap_timeout_seconds=1)
    with HostileServer(TRANSIENT[name]) as server, pytest.raises(MailboxError) as err:
        log_in(plain(server), config)
    assert isinstance(err.value, ServerBusy), err.value
    assert err.value.code == "server_busy"
    assert "check user name and password" not in err.value.message


@pytest.mark.parametrize("name", WRONG_CREDENTIALS)
def test_a_no_to_login_is_a_wrong_password(name: str) -> None:
    config = Settings(allow_private_hosts=True, allow_insecure=True)
    script = imap_server({b"LOGIN": login_answer(WRONG_CREDENTIALS[name])})
    with HostileServer(script) as server, pytest.raises(AuthFailed):
        log_in(plain(server), config)


def test_throttled_login_keeps_the_account_scheduled(api, aws, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "true")
    monkeypatch.setenv("MAILSYNC_ALLOW_INSECURE", "true")
    get_settings.cache_clear()
    script = imap_server({b"LOGIN": login_answer(b"{tag} NO [UNAVAILABLE] Try again in a minute\r\n")})
    with HostileServer(script) as server:
        body = {"host": server.host, "port": server.port, "username": "u", "password": "pw", "security": "none"}
        assert api("PUT", "/v1/users/me/mail-settings", body).status == 201
        tested = api("POST", "/v1/users/me/mail-settings/test")
    assert tested.body["error"]["code"] == "server_busy", tested.body
    assert tested.status == 503
    # Not auth_failed: that status takes the account off the schedule until the user re-saves.
    assert api("GET", "/v1/users/me/mail-settings").body["status"] == "server_busy"


# -- non-ASCII credentials against a real Dovecot ---------------------------------


class _Utf8Dovecot(DovecotServer):
    """Dovecot accepting any user name characters (its default allows only ASCII)."""

    def _render_config(self, cert_file: Path, key_file: Path) -> str:
        return super()._render_config(cert_file, key_file) + "auth_username_chars =\n"

    def add_utf8_user(self, username: str, password: str) -> MailUser:
        # The launcher's name check keeps to ASCII for its own user files; this user is the point here.
        self._users[username] = password
        self._write_users()
        return self.user(username)


@pytest.fixture(scope="module")
def utf8_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailUser]:
    server = _Utf8Dovecot(Path(tmp_path_factory.mktemp("dovecot-utf8")))
    server.start()
    try:
        yield server.add_utf8_user(USER, PASSWORD)
    finally:
        server.stop()


def _hiding_auth_plain(user: MailUser):
    """A relay to Dovecot's plain IMAP port that hides AUTH=PLAIN from its capabilities.

    Dovecot cannot drop the PLAIN mechanism (its LOGIN command uses it inside), so this is how a
    server without AUTH=PLAIN is had while Dovecot itself still parses the LOGIN literals.
    """

    def relay(peer: Peer) -> None:
        upstream = socket.create_connection((user.host, user.imap_port), timeout=10)

        def downstream() -> None:
            # Ends when either side closes (the upstream socket may be closed under it).
            with contextlib.suppress(OSError):
                while chunk := upstream.recv(65536):
                    if not peer.send(chunk.replace(b" AUTH=PLAIN", b"")):
                        return

        thread = threading.Thread(target=downstream, daemon=True)
        thread.start()
        try:
            with contextlib.suppress(OSError):
                while chunk := peer.sock.recv(65536):
                    upstream.sendall(chunk)
        finally:
            upstream.close()
            thread.join(timeout=5)

    return relay


def _params(user: MailUser, protocol: str, security: str, password: str = PASSWORD) -> ServerParams:
    ports = {
        ("imap", "ssl"): user.imaps_port,
        ("imap", "starttls"): user.imap_port,
        ("imap", "none"): user.imap_port,
        ("pop3", "ssl"): user.pop3s_port,
        ("pop3", "starttls"): user.pop3_port,
    }
    return ServerParams(
        host=user.host,
        port=ports[(protocol, security)],
        username=user.username,
        password=password,
        security=security,
        protocol=protocol,
    )


def _settings(user: MailUser) -> Settings:
    return Settings(allow_private_hosts=True, allow_insecure=True, extra_ca_file=str(user.ca_file))


@pytest.mark.parametrize(
    ("protocol", "security"), [("imap", "ssl"), ("imap", "starttls"), ("pop3", "ssl"), ("pop3", "starttls")]
)
def test_non_ascii_user_name_and_password_log_in(utf8_user: MailUser, protocol: str, security: str) -> None:
    check = open_mailbox_check(_params(utf8_user, protocol, security), _settings(utf8_user))
    assert check.protocol == protocol


def test_non_ascii_login_uses_literals_without_auth_plain(utf8_user: MailUser) -> None:
    with HostileServer(_hiding_auth_plain(utf8_user)) as relay:
        params = ServerParams(
            host=relay.host, port=relay.port, username=USER, password=PASSWORD, security="none", protocol="imap"
        )
        with open_imap(params, _settings(utf8_user)) as session:
            assert not session.has_capability("AUTH=PLAIN")
            assert session.list_folders()


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_non_ascii_wrong_password_is_still_a_wrong_password(utf8_user: MailUser, protocol: str) -> None:
    with pytest.raises(AuthFailed):
        open_mailbox_check(_params(utf8_user, protocol, "ssl", password="Passwört-2025"), _settings(utf8_user))


def test_non_ascii_credentials_through_the_api(api, aws, utf8_user: MailUser, monkeypatch) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "true")
    monkeypatch.setenv("MAILSYNC_EXTRA_CA_FILE", str(utf8_user.ca_file))
    get_settings.cache_clear()
    body = {"host": utf8_user.host, "port": utf8_user.imaps_port, "username": USER, "password": PASSWORD}
    assert api("PUT", "/v1/users/me/mail-settings", body).status == 201
    tested = api("POST", "/v1/users/me/mail-settings/test")
    assert tested.status == 200, tested.body
    assert api("GET", "/v1/users/me/mail-settings").body["status"] == "ok"


# -- LOGINDISABLED without a usable AUTH mechanism ------------------------------------


def _logins_recorded(seen: list[bytes]) -> dict:
    def record(name: bytes):
        def handler(peer: Peer, tag: bytes, args: bytes) -> None:
            seen.append(name + b" " + args)
            peer.send(tag + b" NO [PRIVACYREQUIRED] Plaintext authentication disallowed\r\n")

        return handler

    capability = b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=GSSAPI\r\n"
    return {
        b"CAPABILITY": lambda peer, tag, args: peer.send(capability + tag + b" OK done\r\n"),
        b"LOGIN": record(b"LOGIN"),
        b"AUTHENTICATE": record(b"AUTHENTICATE"),
    }


@pytest.mark.parametrize("password", ["pw", "pässwort"])
def test_login_disabled_sends_no_credentials_and_is_not_a_wrong_password(password: str) -> None:
    from mailsync.errors import TlsFailed

    config = Settings(allow_private_hosts=True, allow_insecure=True)
    seen: list[bytes] = []
    greeting = b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=GSSAPI] ready"
    with HostileServer(imap_server(_logins_recorded(seen), greeting=greeting)) as server:
        params = ServerParams(host=server.host, port=server.port, username="victim", password=password, security="none")
        with pytest.raises(TlsFailed) as err:
            log_in(params, config)
    assert seen == [], "credentials were sent to a server that disabled LOGIN"
    assert "use security 'ssl' or 'starttls'" in err.value.message
    assert err.value.code == "tls_failed"
