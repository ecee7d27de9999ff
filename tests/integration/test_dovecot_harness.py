"""The Dovecot harness itself: if these fail, every integration test is suspect."""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import poplib
import secrets
import ssl

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from devstack.dovecot import (
    SPECIAL_USE_FOLDERS,
    DovecotServer,
    MailboxClient,
    MailUser,
    make_message,
    seed_sample_mailbox,
)

SYNC_EXTENSIONS = {"MOVE", "CONDSTORE", "QRESYNC", "LIST-STATUS", "UIDPLUS"}


@pytest.fixture(params=["full", "basic"])
def server_and_user(request: pytest.FixtureRequest) -> tuple[DovecotServer, MailUser]:
    """Each flavour with a fresh user, for behaviour that must hold on both."""
    server: DovecotServer = request.getfixturevalue("dovecot" if request.param == "full" else "dovecot_basic")
    return server, server.add_user()


@pytest.fixture
def any_user(server_and_user: tuple[DovecotServer, MailUser]) -> MailUser:
    return server_and_user[1]


def _message_id(client: MailboxClient, folder: str, uid: int) -> str:
    return str(email.message_from_bytes(client.fetch_raw(folder, uid))["Message-ID"])


# -- TLS and authentication ---------------------------------------------------


def test_implicit_tls_login_verifies_against_the_harness_ca(mail_user: MailUser) -> None:
    with mail_user.client("ssl") as client:
        sock = client.imap.socket()
        assert isinstance(sock, ssl.SSLSocket)
        san = sock.getpeercert()["subjectAltName"]
        assert ("IP Address", "127.0.0.1") in san
        assert client.uids("INBOX") == []


def test_starttls_login_upgrades_the_plain_port(mail_user: MailUser) -> None:
    with mail_user.client("starttls") as client:
        assert isinstance(client.imap.socket(), ssl.SSLSocket)
        assert client.imap.socket().getpeername()[1] == mail_user.imap_port
        assert client.uids("INBOX") == []


def test_plaintext_login_is_allowed_without_tls(mail_user: MailUser) -> None:
    # Kept possible on purpose so that a `security: none` account can be tested.
    with mail_user.client("none") as client:
        assert not isinstance(client.imap.socket(), ssl.SSLSocket)
        assert client.uids("INBOX") == []


def test_certificate_is_refused_without_the_harness_ca_on_imaps(mail_user: MailUser) -> None:
    system_trust_only = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(mail_user.host, mail_user.imaps_port, ssl=True, ssl_context=system_trust_only, timeout=10)


def test_certificate_is_refused_without_the_harness_ca_on_starttls(mail_user: MailUser) -> None:
    imap = IMAPClient(mail_user.host, mail_user.imap_port, ssl=False, timeout=10)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            imap.starttls(ssl.create_default_context())
    finally:
        # The failed handshake already closed the socket.
        with contextlib.suppress(OSError):
            imap.shutdown()


def test_wrong_password_is_rejected(mail_user: MailUser) -> None:
    with pytest.raises(LoginError):
        mail_user.client(password=mail_user.password + "x")
    # The same user with the right password still gets in, so the rejection
    # above was about the password.
    mail_user.client().close()


def test_user_added_at_runtime_can_log_in(dovecot: DovecotServer) -> None:
    name, password = f"late-{secrets.token_hex(4)}", 's3cret "pass" word'
    with pytest.raises(LoginError):
        MailboxClient(dovecot.host, dovecot.imaps_port, name, password, ca_file=dovecot.ca_file)
    user = dovecot.add_user(name, password)
    with user.client() as client:
        assert "INBOX" in client.folders()


def test_set_password_invalidates_the_old_password(dovecot: DovecotServer, mail_user: MailUser) -> None:
    updated = dovecot.set_password(mail_user.username, "brand-new-password")
    with pytest.raises(LoginError):
        mail_user.client()
    with updated.client() as client:
        assert client.uids("INBOX") == []


# -- capabilities ------------------------------------------------------------


def test_full_flavour_advertises_sync_extensions(mail_user: MailUser) -> None:
    with mail_user.client() as client:
        assert client.capabilities() >= SYNC_EXTENSIONS | {"SPECIAL-USE"}


def test_basic_flavour_hides_sync_extensions(mail_user_basic: MailUser) -> None:
    user = mail_user_basic
    imap = IMAPClient(user.host, user.imap_port, ssl=False, timeout=10)
    try:
        before_tls = {c.decode() for c in imap.capabilities()}
        assert "STARTTLS" in before_tls
        assert not before_tls & SYNC_EXTENSIONS
        imap.starttls(ssl.create_default_context(cafile=str(user.ca_file)))
        imap.login(user.username, user.password)
        after_login = {c.decode() for c in imap.capabilities()}
    finally:
        imap.shutdown()
    assert not after_login & SYNC_EXTENSIONS
    assert after_login >= {"IMAP4REV1", "IDLE", "NAMESPACE", "SPECIAL-USE", "ENABLE", "LITERAL+"}


# -- folders -----------------------------------------------------------------


def test_default_folders_with_special_use_and_non_ascii_name(any_user: MailUser) -> None:
    with any_user.client() as client:
        folders = client.folders()
        subscribed = client.subscribed()
        client.imap.folder_encode = False
        raw_names = {name for _flags, _delim, name in client.imap.list_folders()}
    assert set(folders) == {"INBOX", *SPECIAL_USE_FOLDERS}
    for name, special_use in SPECIAL_USE_FOLDERS.items():
        if special_use is None:
            assert not folders[name] & {"\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive"}
        else:
            assert special_use in folders[name]
    assert set(SPECIAL_USE_FOLDERS) <= subscribed
    # On the wire the name is modified UTF-7; the decoded form is what we check above.
    assert b"Entw&APw-rfe" in raw_names


def test_create_folder_with_non_ascii_name(any_user: MailUser) -> None:
    with any_user.client() as client:
        client.create_folder("Bewerbungen/Köln 2024")
        uid = client.append("Bewerbungen/Köln 2024", make_message(subject="Lebenslauf"))
        assert client.uids("Bewerbungen/Köln 2024") == [uid]
        assert "Bewerbungen/Köln 2024" in client.subscribed()


# -- messages ----------------------------------------------------------------


def test_append_preserves_internal_date(any_user: MailUser) -> None:
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).replace(microsecond=0)
    with any_user.client() as client:
        first = client.append("INBOX", make_message(date=when), internal_date=when)
        second = client.append("INBOX", make_message())
        assert client.uids("INBOX") == [first, second]
        assert second > first
        assert client.internal_date("INBOX", first) == when


def test_flags_can_be_added_removed_and_replaced(any_user: MailUser) -> None:
    with any_user.client() as client:
        uid = client.append("INBOX", make_message(), flags=["\\Seen"])
        assert client.flags("INBOX", uid) == {"\\Seen"}
        client.add_flags("INBOX", uid, ["\\Flagged", "$Shortlisted"])
        assert client.flags("INBOX", uid) == {"\\Seen", "\\Flagged", "$Shortlisted"}
        client.remove_flags("INBOX", uid, ["\\Seen"])
        assert client.flags("INBOX", uid) == {"\\Flagged", "$Shortlisted"}
        client.set_flags("INBOX", [uid], ["\\Answered"])
        assert client.flags("INBOX", uid) == {"\\Answered"}


def test_move_between_folders(any_user: MailUser) -> None:
    with any_user.client() as client:
        moving = client.append("INBOX", make_message(message_id="<moving@mailsync.test>"))
        # A message already marked \Deleted must survive the basic flavour's
        # COPY + EXPUNGE fallback.
        bystander = client.append("INBOX", make_message(), flags=["\\Deleted"])
        client.move("INBOX", [moving], "Archive")
        assert client.uids("INBOX") == [bystander]
        [archived] = client.uids("Archive")
        assert _message_id(client, "Archive", archived) == "<moving@mailsync.test>"


def test_expunge_removes_only_the_given_messages(any_user: MailUser) -> None:
    with any_user.client() as client:
        doomed = client.append("Trash", make_message())
        kept = client.append("Trash", make_message())
        flagged_deleted = client.append("Trash", make_message(), flags=["\\Deleted"])
        client.expunge("Trash", [doomed])
        assert client.uids("Trash") == [kept, flagged_deleted]


def test_fresh_users_do_not_share_mailboxes(dovecot: DovecotServer) -> None:
    first, second = dovecot.add_user(), dovecot.add_user()
    assert first.username != second.username
    with first.client() as client:
        client.append("INBOX", make_message())
    with second.client() as client:
        assert client.uids("INBOX") == []


def test_reset_uidvalidity_changes_it(server_and_user: tuple[DovecotServer, MailUser]) -> None:
    server, any_user = server_and_user
    with any_user.client() as client:
        client.append("Entwürfe", make_message())
        before = client.uidvalidity("Entwürfe")
    returned = server.reset_uidvalidity(any_user.username, "Entwürfe")
    with any_user.client() as client:
        after = client.uidvalidity("Entwürfe")
        assert len(client.uids("Entwürfe")) == 1
    assert after == returned
    assert after != before


def test_make_message_can_omit_message_id_and_encodes_non_ascii() -> None:
    raw = make_message(subject="Grüße", message_id=None, extra_headers={"X-Mailsync": "1"})
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert "Message-ID" not in parsed
    assert parsed["Subject"] == "Grüße"
    assert parsed["X-Mailsync"] == "1"
    assert raw.isascii()
    assert b"\r\n" in raw
    assert "Message-ID" in email.message_from_bytes(make_message())


def test_seed_sample_mailbox(mail_user: MailUser) -> None:
    with mail_user.client() as client:
        added = seed_sample_mailbox(client)
        assert {folder: len(uids) for folder, uids in added.items()} == {"INBOX": 2, "Sent": 1, "Entwürfe": 1}
        assert client.uids("Entwürfe") == added["Entwürfe"]


# -- POP3 --------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["ssl", "starttls"])
def test_pop3_login(mail_user: MailUser, tls: str) -> None:
    with mail_user.client() as client:
        client.append("INBOX", make_message(subject="Via POP3"))
    conn = mail_user.pop3(tls)  # type: ignore[arg-type]
    try:
        assert isinstance(conn.sock, ssl.SSLSocket)
        count, _size = conn.stat()
        assert count == 1
        _resp, lines, _octets = conn.retr(1)
        assert b"Subject: Via POP3" in lines
    finally:
        conn.quit()


def test_pop3_wrong_password_is_rejected(mail_user: MailUser) -> None:
    conn = poplib.POP3_SSL(
        mail_user.host,
        mail_user.pop3s_port,
        context=ssl.create_default_context(cafile=str(mail_user.ca_file)),
        timeout=10,
    )
    try:
        conn.user(mail_user.username)
        with pytest.raises(poplib.error_proto):
            conn.pass_(mail_user.password + "x")
    finally:
        conn.close()
