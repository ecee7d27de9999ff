"""TLS session resumption against real Dovecot: in its high-performance login mode (long-lived
login processes, as big providers run their servers) the next IMAP or POP3 connection, implicit
TLS or STARTTLS/STLS, resumes the previous one's session; a session is offered to its own host,
port and context only; a failed verification caches nothing; a sync through the worker runs on a
resumed session; and Dovecot's default mode (a fresh login process, and ticket key, per
connection: nothing resumes) still works."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.dovecot import DovecotServer, MailUser
from mailsync.config import Settings
from mailsync.errors import TlsFailed
from mailsync.mailbox.base import ServerParams
from mailsync.mailbox.connection import ImapConnection, open_imap
from mailsync.mailbox.pop import Pop3Connection, open_pop3
from mailsync.mailbox.transport import TlsSessionStats, clear_tls_sessions, tls_session_cache_stats
from tests.conftest import ApiCall
from tests.integration.pop3_support import deliver, pop_account
from tests.integration.sync_support import connect_account, message


@pytest.fixture(scope="module")
def reuse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotServer]:
    with DovecotServer(tmp_path_factory.mktemp("dovecot-login-reuse"), login_reuse=True) as server:
        yield server


@pytest.fixture
def reuse_user(reuse_server: DovecotServer) -> MailUser:
    return reuse_server.add_user()


@pytest.fixture(autouse=True)
def no_sessions() -> Iterator[None]:
    """Each test starts with full handshakes."""
    clear_tls_sessions()
    yield
    clear_tls_sessions()


def config(user: MailUser, ca_file: Path | None = None) -> Settings:
    return Settings(allow_private_hosts=True, extra_ca_file=str(ca_file or user.ca_file))


PORTS = {
    ("imap", "ssl"): "imaps_port",
    ("imap", "starttls"): "imap_port",
    ("pop3", "ssl"): "pop3s_port",
    ("pop3", "starttls"): "pop3_port",
}


def params(user: MailUser, protocol: str = "imap", security: str = "ssl", host: str | None = None) -> ServerParams:
    return ServerParams(
        host=host or user.host,
        port=getattr(user, PORTS[protocol, security]),
        username=user.username,
        password=user.password,
        security=security,
        protocol=protocol,
    )


def imap_resumed(session: ImapConnection) -> bool:
    return session.client.socket().session_reused


def since(before: TlsSessionStats) -> TlsSessionStats:
    """The cache's counters since ``before`` (entries: as now)."""
    now = tls_session_cache_stats()
    return TlsSessionStats(
        entries=now.entries,
        offered=now.offered - before.offered,
        resumed=now.resumed - before.resumed,
        kept=now.kept - before.kept,
        expired=now.expired - before.expired,
        evicted=now.evicted - before.evicted,
    )


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_the_next_imap_connection_resumes_the_session_as_soon_as_the_first_has_read(
    reuse_user: MailUser, security: str
) -> None:
    server = params(reuse_user, "imap", security)
    with open_imap(server, config(reuse_user)) as first:
        assert not imap_resumed(first)
        # The first connection is still open: its session was kept after its first read (the
        # TLS 1.3 ticket comes after the handshake), not only when it ends.
        with open_imap(server, config(reuse_user)) as second:
            assert imap_resumed(second)
            assert "INBOX" in second.list_folder_names()
    with open_imap(server, config(reuse_user)) as third:
        assert imap_resumed(third)
        assert third.status(["INBOX"])["INBOX"].messages == 0


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_the_next_pop3_connection_resumes_the_session(reuse_user: MailUser, security: str) -> None:
    deliver(reuse_user, "over a resumed session")
    server = params(reuse_user, "pop3", security)
    with open_pop3(server, config(reuse_user)) as first:
        assert not first.tls_resumed
    for _ in range(2):
        with open_pop3(server, config(reuse_user)) as pop:
            assert pop.tls_resumed
            assert len(pop.listing()) == 1


def test_a_session_is_offered_to_its_own_host_port_and_context_only(reuse_user: MailUser, tmp_path: Path) -> None:
    with open_imap(params(reuse_user), config(reuse_user)):
        pass
    before = tls_session_cache_stats()
    assert before.entries == 1

    # The same server under another port, another host name (the certificate names both
    # 127.0.0.1 and localhost) and another context (an extra CA file elsewhere: a new context).
    with open_pop3(params(reuse_user, "pop3"), config(reuse_user)) as pop:
        assert not pop.tls_resumed
    with open_imap(params(reuse_user, host="localhost"), config(reuse_user)) as by_name:
        assert not imap_resumed(by_name)
    other_ca = tmp_path / "same-ca-other-file.pem"
    shutil.copyfile(reuse_user.ca_file, other_ca)
    with open_imap(params(reuse_user), config(reuse_user, other_ca)) as other_context:
        assert not imap_resumed(other_context)

    assert since(before).offered == 0
    # Each of them then has a session of its own.
    assert tls_session_cache_stats().entries == 4


def test_a_connection_that_fails_verification_keeps_no_session_and_the_cached_one_is_not_offered(
    reuse_user: MailUser, mail_user: MailUser
) -> None:
    with open_imap(params(reuse_user), config(reuse_user)):
        pass
    before = tls_session_cache_stats()
    # Another server's CA: this context cannot verify the reuse server's certificate.
    untrusting = config(reuse_user, mail_user.ca_file)
    for _ in range(2):
        with pytest.raises(TlsFailed, match="could not be verified"), open_imap(params(reuse_user), untrusting):
            pass
    changes = since(before)
    assert (changes.offered, changes.kept, changes.entries) == (0, 0, 1)
    with open_imap(params(reuse_user), config(reuse_user)) as trusted:
        assert imap_resumed(trusted)


def test_without_resumption_on_the_server_every_connection_still_works(mail_user: MailUser) -> None:
    """Dovecot's default login mode issues tickets it never accepts: each connection is a full
    handshake; once a server turned an offer down it is offered no session (an offer turned down
    costs more CPU than none)."""
    before = tls_session_cache_stats()
    for security in ("ssl", "starttls"):
        for _ in range(3):
            with open_imap(params(mail_user, "imap", security), config(mail_user)) as session:
                assert not imap_resumed(session)
                assert "INBOX" in session.list_folder_names()
            with open_pop3(params(mail_user, "pop3", security), config(mail_user)) as pop:
                assert isinstance(pop, Pop3Connection) and not pop.tls_resumed
                assert pop.listing() == []
    changes = since(before)
    # Three connections to each server (IMAPS, IMAP, POP3S, POP3): the second is offered the
    # first one's session and turns it down; the third is offered none.
    assert (changes.offered, changes.resumed) == (4, 0)
    assert tls_session_cache_stats().entries == 0


@pytest.fixture
def reuse_env(monkeypatch: pytest.MonkeyPatch, aws: dict[str, str], reuse_server: DovecotServer) -> DovecotServer:
    """The worker's settings for the reuse server: loopback allowed, its CA trusted."""
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "true")
    monkeypatch.setenv("MAILSYNC_EXTRA_CA_FILE", str(reuse_server.ca_file))
    monkeypatch.setenv("MAILSYNC_IMAP_TIMEOUT_SECONDS", "10")
    get_settings.cache_clear()
    return reuse_server


def test_an_imap_sync_through_the_worker_runs_on_a_resumed_session(
    api: ApiCall, reuse_env: DovecotServer, reuse_user: MailUser
) -> None:
    with reuse_user.client() as imap:
        imap.append("INBOX", message("before"))
    account = connect_account(api, reuse_user)
    assert account.sync().status == "synced"
    with reuse_user.client() as imap:
        imap.append("INBOX", message("after"))
    before = tls_session_cache_stats()

    result = account.sync()

    assert result.status == "synced", result
    changes = since(before)
    assert changes.offered >= 1 and changes.resumed == changes.offered
    assert sorted(account.synced()) == ["after", "before"]


def test_a_pop3_sync_through_the_worker_runs_on_a_resumed_session(
    api: ApiCall, reuse_env: DovecotServer, reuse_user: MailUser
) -> None:
    deliver(reuse_user, "before")
    account = pop_account(api, reuse_user)
    assert account.sync().status == "synced"
    deliver(reuse_user, "after")
    before = tls_session_cache_stats()

    result = account.sync()

    assert result.status == "synced", result
    changes = since(before)
    assert changes.offered >= 1 and changes.resumed == changes.offered
    assert sorted(m["subject"] for m in account.messages()) == ["after", "before"]


def test_a_server_that_pads_its_certificate_chain_gets_no_session_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached session holds the chain the server sent: a server padding it (any host a user may
    enter) must not make the per-process cache grow by hundreds of KB a session."""
    from devstack import dovecot as harness

    real = harness._write_tls_material

    def padded(directory: Path) -> tuple[Path, Path, Path]:
        ca_file, cert_file, key_file = real(directory)
        # The leaf, then its CA 40 times (~40 KB): still a chain that verifies.
        cert_file.write_bytes(cert_file.read_bytes() + ca_file.read_bytes() * 40)
        return ca_file, cert_file, key_file

    monkeypatch.setattr(harness, "_write_tls_material", padded)
    with DovecotServer(tmp_path / "padded", login_reuse=True) as server:
        user = server.add_user()
        before = tls_session_cache_stats()
        for _ in range(2):
            with open_imap(params(user), config(user)) as session:
                assert not imap_resumed(session)
                assert "INBOX" in session.list_folder_names()
        assert since(before).kept == 0
        assert tls_session_cache_stats().entries == 0
