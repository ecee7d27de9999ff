"""Throwaway Dovecot servers for the integration tests and ``make demo``.

Everything a server needs (config, TLS material, user file, mail store,
runtime sockets, log) lives under one base directory, so several servers can
run side by side and nothing touches /etc/dovecot or the system's Dovecot.
Two things may live outside it when needed, both removed by ``stop()``: the
mail store when running as root below directories the unprivileged mail user
cannot enter (see ``DovecotServer.mail_dir``), and the runtime directory when
base_dir is too long for Unix socket paths.

Run ``python -m devstack.dovecot`` for an interactive server with a seeded
sample mailbox.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import email.policy
import email.utils
import enum
import grp
import ipaddress
import json
import os
import poplib
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from imapclient import IMAPClient

__all__ = [
    "AUTO",
    "BASIC_CAPABILITIES",
    "DEFAULT_BINARY",
    "SPECIAL_USE_FOLDERS",
    "DovecotError",
    "DovecotServer",
    "Flavour",
    "MailUser",
    "MailboxClient",
    "TlsMode",
    "make_message",
    "seed_sample_mailbox",
    "stop_process_group",
]

DEFAULT_BINARY = Path("/usr/sbin/dovecot")
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

Flavour = Literal["full", "basic"]
TlsMode = Literal["ssl", "starttls", "none"]
Flag = str | bytes

# Folder name -> SPECIAL-USE attribute (None = plain folder). Every user gets
# all of them, created and subscribed on first login.
SPECIAL_USE_FOLDERS: dict[str, str | None] = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
    "Entwürfe": None,
}

# The "basic" flavour imitates an older/minimal server: no CONDSTORE, QRESYNC,
# MOVE, LIST-STATUS or UIDPLUS, so clients must take their fallback paths.
# Dovecot appends STARTTLS/AUTH=... itself before login, so they are not here.
BASIC_CAPABILITIES = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ NAMESPACE SPECIAL-USE"

# Free ports are found by binding port 0 and closing again, so another process
# can grab one before Dovecot binds it; a fresh set of ports is then tried.
_BIND_ATTEMPTS = 3
# Unix socket paths are limited to 108 bytes; Dovecot's longest socket name
# under base_dir is about 30 characters.
_MAX_RUNTIME_DIR_LEN = 70
_PORT_NAMES = ("imap", "imaps", "pop3", "pop3s")


class DovecotError(RuntimeError):
    """Dovecot could not be started or driven."""


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


class _Auto(enum.Enum):
    AUTO = "auto"


AUTO = _Auto.AUTO
"""Default for ``make_message(message_id=...)``: generate a fresh Message-ID."""


def _aware(value: dt.datetime) -> dt.datetime:
    # Naive datetimes are read as UTC rather than local time so results do not
    # depend on the TZ of the machine running the tests.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def make_message(
    subject: str = "Test message",
    sender: str = "Alice Example <alice@example.com>",
    to: str = "Bob Example <bob@example.com>",
    date: dt.datetime | None = None,
    body: str = "Hello from the Mailsync test suite.\n",
    message_id: str | _Auto | None = AUTO,
    extra_headers: Mapping[str, str] | None = None,
) -> bytes:
    """Build an RFC 822 message (CRLF line endings) ready for APPEND.

    ``message_id=None`` omits the header (some real mail lacks it); the
    default generates a unique one. Non-ASCII subjects/bodies are encoded.
    """
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(_aware(date or dt.datetime.now(dt.UTC)))
    if message_id is AUTO:
        msg["Message-ID"] = email.utils.make_msgid(domain="mailsync.test")
    elif message_id is not None:
        msg["Message-ID"] = message_id
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()


# --------------------------------------------------------------------------
# IMAP client helpers
# --------------------------------------------------------------------------


def _flag_bytes(flags: Iterable[Flag]) -> list[bytes]:
    return [f.encode() if isinstance(f, str) else f for f in flags]


def _uid_list(uids: int | Iterable[int]) -> list[int]:
    return [uids] if isinstance(uids, int) else list(uids)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)


class MailboxClient:
    """A logged-in IMAP connection with helpers for arranging test data.

    ``imap`` is the underlying ``IMAPClient`` for anything not wrapped here.
    The helpers only use what the server advertises, so on the "basic" flavour
    they take the same fallback paths a well-behaved client would.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        tls: TlsMode = "ssl",
        ca_file: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.imap = IMAPClient(
            host,
            port=port,
            ssl=tls == "ssl",
            ssl_context=context if tls == "ssl" else None,
            timeout=timeout,
        )
        try:
            if tls == "starttls":
                self.imap.starttls(context)
            self.imap.login(username, password)
        except BaseException:
            self.imap.shutdown()
            raise
        # Aware datetimes avoid guessing which timezone INTERNALDATE was in.
        self.imap.normalise_times = False
        self._selected: str | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Log out, tolerating a connection the server already dropped."""
        try:
            self.imap.logout()
        except (OSError, IMAPClient.Error):
            self.imap.shutdown()

    def capabilities(self) -> set[str]:
        """Capabilities as advertised after login, upper-case strings."""
        return {_text(c).upper() for c in self.imap.capabilities()}

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities()

    def _select(self, folder: str) -> None:
        self.imap.select_folder(folder)
        self._selected = folder

    def folders(self) -> dict[str, set[str]]:
        """All folders (decoded from modified UTF-7) with their LIST attributes."""
        return {_text(name): {_text(f) for f in flags} for flags, _delim, name in self.imap.list_folders()}

    def subscribed(self) -> set[str]:
        return {_text(name) for _flags, _delim, name in self.imap.list_sub_folders()}

    def create_folder(self, name: str, *, subscribe: bool = True) -> None:
        """Create ``name`` (any Unicode; encoded to modified UTF-7 on the wire)."""
        self.imap.create_folder(name)
        if subscribe:
            self.imap.subscribe_folder(name)

    def uidvalidity(self, folder: str) -> int:
        return int(self.imap.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])

    def append(
        self,
        folder: str,
        raw: bytes,
        flags: Iterable[Flag] = (),
        internal_date: dt.datetime | None = None,
    ) -> int:
        """APPEND ``raw`` and return its UID, with or without UIDPLUS."""
        uidplus = self.has("UIDPLUS")
        uidnext = 0
        if not uidplus:
            # SELECT reports UIDNEXT; the new message will get at least that.
            uidnext = int(self.imap.select_folder(folder)[b"UIDNEXT"])
            self._selected = folder
        msg_time = _aware(internal_date) if internal_date is not None else None
        response = self.imap.append(folder, raw, flags=_flag_bytes(flags), msg_time=msg_time)
        if uidplus:
            match = _APPENDUID.search(response)
            if match is None:
                raise DovecotError(f"UIDPLUS advertised but no APPENDUID in {response!r}")
            return int(match.group(2))
        # Without UIDPLUS the new message is the lowest UID >= the UIDNEXT seen
        # before APPEND; nothing else writes to a test user's mailbox.
        self._select(folder)
        found = [u for u in self.imap.search(["UID", f"{uidnext}:*"]) if u >= uidnext]
        if not found:
            raise DovecotError(f"appended message not found in {folder!r}")
        return min(found)

    def uids(self, folder: str) -> list[int]:
        self._select(folder)
        return sorted(self.imap.search(["ALL"]))

    def flags(self, folder: str, uid: int) -> set[str]:
        """Stored flags of one message, without the per-session \\Recent."""
        self._select(folder)
        data = self.imap.get_flags([uid])
        if uid not in data:
            raise KeyError(f"UID {uid} not in {folder!r}")
        # \Recent depends on which session saw the message first, so it
        # would make assertions flaky; nobody can set or clear it anyway.
        return {_text(f) for f in data[uid]} - {"\\Recent"}

    def internal_date(self, folder: str, uid: int) -> dt.datetime:
        self._select(folder)
        data = self.imap.fetch([uid], [b"INTERNALDATE"])
        if uid not in data:
            raise KeyError(f"UID {uid} not in {folder!r}")
        value: dt.datetime = data[uid][b"INTERNALDATE"]
        return value

    def fetch_raw(self, folder: str, uid: int) -> bytes:
        """The full message, without setting \\Seen."""
        self._select(folder)
        data = self.imap.fetch([uid], [b"BODY.PEEK[]"])
        if uid not in data:
            raise KeyError(f"UID {uid} not in {folder!r}")
        raw: bytes = data[uid][b"BODY[]"]
        return raw

    def add_flags(self, folder: str, uids: int | Iterable[int], flags: Iterable[Flag]) -> None:
        self._select(folder)
        self.imap.add_flags(_uid_list(uids), _flag_bytes(flags), silent=True)

    def remove_flags(self, folder: str, uids: int | Iterable[int], flags: Iterable[Flag]) -> None:
        self._select(folder)
        self.imap.remove_flags(_uid_list(uids), _flag_bytes(flags), silent=True)

    def set_flags(self, folder: str, uids: int | Iterable[int], flags: Iterable[Flag]) -> None:
        self._select(folder)
        self.imap.set_flags(_uid_list(uids), _flag_bytes(flags), silent=True)

    def move(self, folder: str, uids: int | Iterable[int], dest: str) -> None:
        """MOVE if advertised, else COPY + \\Deleted + expunge (RFC 6851 fallback)."""
        uid_list = _uid_list(uids)
        self._select(folder)
        if self.has("MOVE"):
            self.imap.move(uid_list, dest)
            return
        self.imap.copy(uid_list, dest)
        self.expunge(folder, uid_list)

    def expunge(self, folder: str, uids: int | Iterable[int]) -> None:
        """Remove exactly ``uids``; other \\Deleted messages survive."""
        uid_list = _uid_list(uids)
        self._select(folder)
        self.imap.add_flags(uid_list, [b"\\Deleted"], silent=True)
        if self.has("UIDPLUS"):
            self.imap.uid_expunge(uid_list)
            return
        # Plain EXPUNGE would take every \Deleted message with it, so hide the
        # flag on bystanders for the duration.
        targets = set(uid_list)
        bystanders = [u for u in self.imap.search(["DELETED"]) if u not in targets]
        if bystanders:
            self.imap.remove_flags(bystanders, [b"\\Deleted"], silent=True)
        try:
            self.imap.expunge()
        finally:
            if bystanders:
                self.imap.add_flags(bystanders, [b"\\Deleted"], silent=True)


# --------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MailUser:
    """Credentials and endpoints of one mailbox on a running server."""

    username: str
    password: str
    host: str
    imap_port: int
    imaps_port: int
    pop3_port: int
    pop3s_port: int
    ca_file: Path

    def client(self, tls: TlsMode = "ssl", *, password: str | None = None) -> MailboxClient:
        """A logged-in IMAP connection (``ssl`` = implicit TLS on imaps)."""
        port = self.imaps_port if tls == "ssl" else self.imap_port
        return MailboxClient(
            self.host,
            port,
            self.username,
            self.password if password is None else password,
            tls=tls,
            ca_file=self.ca_file,
        )

    def pop3(self, tls: TlsMode = "ssl", *, timeout: float = 10.0) -> poplib.POP3:
        """A logged-in POP3 connection; the caller must ``quit()`` it."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn: poplib.POP3
        if tls == "ssl":
            conn = poplib.POP3_SSL(self.host, self.pop3s_port, timeout=timeout, context=context)
        else:
            conn = poplib.POP3(self.host, self.pop3_port, timeout=timeout)
        try:
            if tls == "starttls":
                conn.stls(context)
            conn.user(self.username)
            conn.pass_(self.password)
        except BaseException:
            conn.close()
            raise
        return conn


# --------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------


def _write_tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """Create a private CA and a server certificate for 127.0.0.1/localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    # Backdated so a slightly skewed clock (CI VMs) does not make it "not yet valid".
    not_before = now - dt.timedelta(days=1)
    not_after = now + dt.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mailsync test"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Mailsync test CA {secrets.token_hex(4)}"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # The CA key is deliberately never written: nothing may sign with it later.
    return ca_file, cert_file, key_file


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _can_search(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether ``uid`` may traverse ``path`` and all of its ancestors."""
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


@dataclass(frozen=True)
class _Identity:
    """Unix accounts the Dovecot processes run as."""

    mail_uid: int
    mail_gid: int
    internal_user: str
    internal_group: str
    login_user: str
    as_root: bool
    supplementary_gids: set[int] = field(default_factory=set)


def _reachable_tmp(uid: int, gids: set[int]) -> Path:
    """A temp directory the mail user can reach (TMPDIR might not be)."""
    # Only a parent for mkdtemp(), which creates a private directory in it.
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"):  # noqa: S108
        path = Path(candidate)
        if path.is_dir() and _can_search(path, uid, gids):
            return path
    raise DovecotError(f"no temp directory that uid {uid} can enter for the mail store")


def _identity() -> _Identity:
    if os.geteuid() != 0:
        # Unprivileged Dovecot cannot switch users, so every process (login,
        # internal and mail) must be us.
        me = pwd.getpwuid(os.geteuid())
        return _Identity(
            mail_uid=me.pw_uid,
            mail_gid=me.pw_gid,
            internal_user=me.pw_name,
            internal_group=grp.getgrgid(me.pw_gid).gr_name,
            login_user=me.pw_name,
            as_root=False,
        )

    def account(*names: str) -> pwd.struct_passwd:
        for name in names:
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise DovecotError(f"none of the users {names} exist; install dovecot-core")

    # Dovecot refuses to access mail as root, so the mail processes use
    # "nobody": it exists everywhere and owns nothing else we care about.
    # The package's own accounts run the internal and login processes.
    mail = account("nobody")
    internal = account("dovecot", "nobody")
    login = account("dovenull", internal.pw_name)
    return _Identity(
        mail_uid=mail.pw_uid,
        mail_gid=mail.pw_gid,
        internal_user=internal.pw_name,
        internal_group=grp.getgrgid(internal.pw_gid).gr_name,
        login_user=login.pw_name,
        as_root=True,
        supplementary_gids=set(os.getgrouplist(mail.pw_name, mail.pw_gid)),
    )


def _check_username(username: str) -> None:
    # The name becomes part of a dict key and a mail directory path.
    if not re.fullmatch(r"[A-Za-z0-9._@+-]+", username) or username.startswith("."):
        raise ValueError(f"unusable as a Dovecot user name: {username!r}")


def _check_password(password: str) -> None:
    # The user file is line-based; control characters would corrupt it.
    if not password or any(ord(c) < 0x20 or c == "\x7f" for c in password):
        raise ValueError("password must be non-empty without control characters")


class DovecotServer:
    """A private Dovecot instance on 127.0.0.1 with IMAP(S) and POP3(S).

    ``flavour="full"`` keeps Dovecot's own capability list; ``"basic"``
    hides CONDSTORE, QRESYNC, MOVE, LIST-STATUS and UIDPLUS (Dovecot still
    accepts those commands; they are just not advertised).
    """

    def __init__(
        self,
        base_dir: Path,
        flavour: Flavour = "full",
        users: Mapping[str, str] | None = None,
        *,
        binary: Path = DEFAULT_BINARY,
        ports: Mapping[str, int] | None = None,
        oauth2_introspection_url: str | None = None,
        login_reuse: bool = False,
    ) -> None:
        if flavour not in ("full", "basic"):
            raise ValueError(f"unknown flavour {flavour!r}")
        unknown = set(ports or {}) - set(_PORT_NAMES)
        if unknown:
            raise ValueError(f"unknown port names {sorted(unknown)}; use {_PORT_NAMES}")
        self.base_dir = Path(base_dir).resolve()
        self.flavour: Flavour = flavour
        self.binary = Path(binary)
        self.host = HOST
        self._fixed_ports = dict(ports or {})
        # Also accept OAuth2 access tokens (XOAUTH2, OAUTHBEARER), validated by RFC 7662
        # introspection at this URL (an authorization server the test runs).
        self.oauth2_introspection_url = oauth2_introspection_url
        # Dovecot's "high-performance" login mode, as big providers run it: long-lived login
        # processes serve many connections, so a TLS session ticket one connection got is
        # accepted by the next. The default (a fresh login process per connection, each with its
        # own ticket key) issues tickets it never accepts.
        self.login_reuse = login_reuse
        self._users: dict[str, str] = dict(users or {})
        for username, password in self._users.items():
            _check_username(username)
            _check_password(password)
        self._identity = _identity()
        self._process: subprocess.Popen[bytes] | None = None
        self._scratch_dirs: list[Path] = []

        self.config_file = self.base_dir / "dovecot.conf"
        self.log_file = self.base_dir / "dovecot.log"
        self.users_file = self.base_dir / "users.dict"
        self.mail_dir = self.base_dir / "mail"
        self.run_dir = self.base_dir / "run"
        self.ca_file = self.base_dir / "tls" / "ca.pem"
        self.ports: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def imap_port(self) -> int:
        return self.ports["imap"]

    @property
    def imaps_port(self) -> int:
        return self.ports["imaps"]

    @property
    def pop3_port(self) -> int:
        return self.ports["pop3"]

    @property
    def pop3s_port(self) -> int:
        return self.ports["pop3s"]

    def start(self) -> Self:
        """Write the configuration, start Dovecot and wait until it greets.

        Every start generates a new CA and an empty mail store; accounts
        registered so far are kept.
        """
        if self.running:
            return self
        if not self.binary.exists():
            raise DovecotError(f"{self.binary} not found; `make test` installs dovecot-imapd and dovecot-pop3d")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            # Leave nothing running or lingering in /tmp; the log stays.
            self.stop()
            raise
        return self

    def _oauth2_passdb(self) -> str:
        if not self.oauth2_introspection_url:
            return ""
        conf = self.base_dir / "dovecot-oauth2.conf.ext"
        conf.write_text(
            "introspection_mode = post\n"
            f"introspection_url = {self.oauth2_introspection_url}\n"
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
        )
        return f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {conf}\n}}\n"

    def _start(self) -> None:
        self._prepare_dirs()
        ca_file, cert_file, key_file = _write_tls_material(self.base_dir / "tls")
        self.ca_file = ca_file
        self._write_users()
        (self.base_dir / "auth-dict.conf").write_text(
            f"uri = file:{self.users_file}\n"
            "default_pass_scheme = PLAIN\n"
            "iterate_disable = yes\n"
            "key passdb {\n  key = passdb/%u\n  format = json\n}\n"
            "passdb_objects = passdb\n"
        )
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            self.ports = {name: self._fixed_ports.get(name) or _free_port() for name in _PORT_NAMES}
            self.config_file.write_text(self._render_config(cert_file, key_file))
            try:
                self._launch()
                return
            except _PortTaken:
                if self._fixed_ports or attempt == _BIND_ATTEMPTS:
                    raise DovecotError(f"ports {self.ports} in use\n{self.log_tail()}") from None

    def stop(self) -> None:
        """Stop Dovecot and every process it spawned; idempotent."""
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process)
        for scratch in self._scratch_dirs:
            shutil.rmtree(scratch, ignore_errors=True)
        self._scratch_dirs.clear()

    def _prepare_dirs(self) -> None:
        ident = self._identity
        run_dir = self.base_dir / "run"
        if len(str(run_dir)) > _MAX_RUNTIME_DIR_LEN:
            run_dir = Path(tempfile.mkdtemp(prefix="dovecot-run-"))
            self._scratch_dirs.append(run_dir)
        run_dir.mkdir(exist_ok=True)
        self.run_dir = run_dir

        mail_dir = self.base_dir / "mail"
        mail_dir.mkdir(exist_ok=True)
        if ident.as_root:
            gids = {ident.mail_gid, *ident.supplementary_gids}
            if not _can_search(mail_dir.parent, ident.mail_uid, gids):
                # pytest's tmp dirs (and mkdtemp) are 0700 root, which the mail
                # user cannot enter; keep the store where it can rather than
                # loosening directories we do not own.
                mail_dir.rmdir()
                mail_dir = Path(tempfile.mkdtemp(prefix="dovecot-mail-", dir=_reachable_tmp(ident.mail_uid, gids)))
                self._scratch_dirs.append(mail_dir)
                (self.base_dir / "mail-location.txt").write_text(f"{mail_dir}\n")
            os.chown(mail_dir, ident.mail_uid, ident.mail_gid)
        self.mail_dir = mail_dir
        (self.base_dir / "state").mkdir(exist_ok=True)

    def _launch(self) -> None:
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        log = self.log_file.open("ab")
        try:
            # A process group of its own lets stop() reach every child, and
            # keeps Ctrl-C in a terminal from racing our orderly shutdown.
            self._process = subprocess.Popen(
                [str(self.binary), "-F", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        pending = set(_PORT_NAMES)
        while pending:
            if self._process.poll() is not None:
                self._process = None
                text = self.log_file.read_bytes()[log_offset:]
                if b"Address already in use" in text:
                    raise _PortTaken
                raise DovecotError(f"dovecot exited during startup\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DovecotError(f"dovecot not ready on {sorted(pending)} after {START_TIMEOUT}s\n{self.log_tail()}")
            pending = {name for name in pending if not self._greets(name)}
            if pending:
                # Readiness polling inside the launcher, not test synchronisation.
                time.sleep(0.05)

    def _greets(self, name: str) -> bool:
        """Whether the listener completes TLS (if any) and sends its greeting.

        Login processes hold the greeting back until the auth service is up,
        so a greeting means logins will work, not merely that the port is open.
        """
        expected = b"* OK" if name.startswith("imap") else b"+OK"
        try:
            with socket.create_connection((self.host, self.ports[name]), timeout=2) as raw:
                if name.endswith("s"):
                    context = ssl.create_default_context(cafile=str(self.ca_file))
                    with context.wrap_socket(raw, server_hostname=self.host) as tls:
                        return tls.recv(64).startswith(expected)
                return raw.recv(64).startswith(expected)
        except OSError:
            return False

    def wait(self, timeout: float | None = None) -> int:
        """Block until Dovecot exits (e.g. for a foreground demo); its exit code."""
        if self._process is None:
            raise DovecotError("server not started")
        return self._process.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no dovecot log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- configuration -----------------------------------------------------

    def _render_config(self, cert_file: Path, key_file: Path) -> str:
        ident = self._identity
        mailboxes = "\n".join(
            f'  mailbox "{name}" {{\n    auto = subscribe\n' + (f"    special_use = {use}\n" if use else "") + "  }"
            for name, use in SPECIAL_USE_FOLDERS.items()
        )
        if ident.as_root:
            # base_dir may sit below 0700 root-owned directories (pytest's tmp
            # dirs do), which the "dovecot" user cannot enter to read the
            # user file.
            services = "service auth {\n  user = root\n}"
        else:
            # chroot() needs root; without this the login processes die.
            services = "\n".join(f"service {svc} {{\n  chroot =\n}}" for svc in ("anvil", "imap-login", "pop3-login"))
        capability = f"imap_capability = {BASIC_CAPABILITIES}" if self.flavour == "basic" else ""
        login_mode = "  service_count = 0\n  process_min_avail = 1\n" if self.login_reuse else ""
        p = self.ports
        return f"""\
# Generated by devstack/dovecot.py for a throwaway test server; do not edit.
protocols = imap pop3
listen = {HOST}
base_dir = {self.run_dir}
state_dir = {self.base_dir / "state"}
instance_name = mailsync-{secrets.token_hex(4)}
log_path = {self.log_file}
info_log_path = {self.log_file}
auth_verbose = yes

default_internal_user = {ident.internal_user}
default_internal_group = {ident.internal_group}
default_login_user = {ident.login_user}
first_valid_uid = {ident.mail_uid}
first_valid_gid = {ident.mail_gid}

ssl = yes
ssl_cert = <{cert_file}
ssl_key = <{key_file}
# Plaintext auth stays possible so a `security: none` account can be tested.
disable_plaintext_auth = no
auth_mechanisms = plain login{" xoauth2 oauthbearer" if self.oauth2_introspection_url else ""}
# Tests try wrong passwords on purpose; the default 2 s failure delay would
# make each of them slow (the nodelay passdb below covers it too).
auth_failure_delay = 0
# Many tests (and the sync code) open several connections per user at once.
mail_max_userip_connections = 200

# Sets "nodelay" without authenticating anyone (noauthenticate makes the
# result "continue with the next passdb"). Fields of a passdb that *fails* are
# discarded, so this must come first. nodelay skips Dovecot's failure delay
# and the per-IP penalty (up to 15 s) that would otherwise slow down every
# login from 127.0.0.1 after a test tried a wrong password.
passdb {{
  driver = static
  args = nopassword=yes noauthenticate=yes nodelay=yes
}}
# A file dict rather than passwd-file: passwd-file is re-read at most once
# per second, so set_password() could race the next login. The file dict is
# re-read whenever the file is atomically replaced.
{self._oauth2_passdb()}passdb {{
  driver = dict
  args = {self.base_dir / "auth-dict.conf"}
}}
userdb {{
  driver = static
  args = uid={ident.mail_uid} gid={ident.mail_gid} home={self.mail_dir}/%u allow_all_users=yes
}}
# UTF-8 keeps non-ASCII folder names readable on disk; IMAP still uses
# modified UTF-7 on the wire.
mail_location = maildir:~/Maildir:UTF-8

namespace inbox {{
  inbox = yes
  separator = /
{mailboxes}
}}

{capability}

service imap-login {{
{login_mode}  inet_listener imap {{
    address = {HOST}
    port = {p["imap"]}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {p["imaps"]}
    ssl = yes
  }}
}}
service pop3-login {{
{login_mode}  inet_listener pop3 {{
    address = {HOST}
    port = {p["pop3"]}
  }}
  inet_listener pop3s {{
    address = {HOST}
    port = {p["pop3s"]}
    ssl = yes
  }}
}}
{services}
"""

    # -- users -------------------------------------------------------------

    def _write_users(self) -> None:
        # Dovecot's auth dict prefixes keys with "shared/"; values are the
        # passdb fields as JSON. File dict lines are tab-escaped, which JSON
        # never needs since it escapes control characters itself.
        lines = []
        for username, password in self._users.items():
            lines.append(f"shared/passdb/{username}\n")
            lines.append(json.dumps({"password": f"{{PLAIN}}{password}"}) + "\n")
        tmp = self.users_file.with_name(self.users_file.name + ".tmp")
        tmp.write_text("".join(lines))
        tmp.chmod(0o600)
        # The auth process notices a new inode on its next lookup, so an
        # atomic replace makes the change visible to the very next login.
        tmp.replace(self.users_file)

    def user(self, username: str) -> MailUser:
        """The ``MailUser`` for an existing account."""
        if not self.ports:
            raise DovecotError("server not started")
        return MailUser(
            username=username,
            password=self._users[username],
            host=self.host,
            imap_port=self.imap_port,
            imaps_port=self.imaps_port,
            pop3_port=self.pop3_port,
            pop3s_port=self.pop3s_port,
            ca_file=self.ca_file,
        )

    def add_user(self, username: str | None = None, password: str | None = None) -> MailUser:
        """Create an account (random name/password by default) and return it."""
        username = username or f"user-{secrets.token_hex(5)}"
        password = password or secrets.token_urlsafe(12)
        if not self.running:
            raise DovecotError("start() the server first, or pass users= to the constructor")
        if username in self._users:
            raise ValueError(f"user {username!r} already exists")
        _check_username(username)
        _check_password(password)
        self._users[username] = password
        self._write_users()
        return self.user(username)

    def set_password(self, username: str, new_password: str) -> MailUser:
        """Change a password; the old one stops working immediately."""
        if username not in self._users:
            raise KeyError(username)
        _check_password(new_password)
        self._users[username] = new_password
        self._write_users()
        return self.user(username)

    # -- mailbox surgery ----------------------------------------------------

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm`` against this instance and return its stdout."""
        doveadm = self.binary.with_name("doveadm")
        if not doveadm.exists():
            doveadm = Path(shutil.which("doveadm") or "/usr/bin/doveadm")
        result = subprocess.run(
            [str(doveadm), "-c", str(self.config_file), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise DovecotError(f"doveadm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def uidvalidity(self, username: str, folder: str) -> int:
        out = self.doveadm("-f", "flow", "mailbox", "status", "-u", username, "uidvalidity", folder)
        match = re.search(r"uidvalidity=(\d+)", out)
        if match is None:
            raise DovecotError(f"unexpected doveadm output: {out!r}")
        return int(match.group(1))

    def reset_uidvalidity(self, username: str, folder: str) -> int:
        """Give ``folder`` a new UIDVALIDITY, as after a server-side rebuild.

        Returns the new value. Message UIDs stay as they were; what changes is
        that clients must no longer trust them. A session that has the folder
        selected at that moment is disconnected by Dovecot ("IMAP session state
        is inconsistent, please relogin").
        """
        old = self.uidvalidity(username, folder)
        # Seconds since the epoch is what Dovecot itself uses for new
        # mailboxes; never go backwards so the value is plainly different.
        new = max(old + 1, int(time.time()))
        self.doveadm("mailbox", "update", "-u", username, "--uid-validity", str(new), folder)
        actual = self.uidvalidity(username, folder)
        if actual == old:
            raise DovecotError(f"UIDVALIDITY of {username}/{folder} did not change ({old})")
        return actual


class _PortTaken(Exception):
    pass


def stop_process_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the process group the server was started in; SIGKILL what is left after a while."""
    try:
        pgid = os.getpgid(process.pid)
    except ProcessLookupError:
        process.wait()
        return
    # SIGTERM to the whole group rather than the master alone: an orderly
    # master shutdown waits for its children and costs about 2 s per server.
    # The price is harmless "Killed with signal 15" warnings in the log.
    # SIGKILL then catches anything wedged.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait()


# --------------------------------------------------------------------------
# Demo
# --------------------------------------------------------------------------


def seed_sample_mailbox(client: MailboxClient) -> dict[str, list[int]]:
    """Put a small, varied mailbox in place; returns folder -> UIDs added."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    samples: list[tuple[str, bytes, tuple[str, ...], dt.datetime]] = [
        (
            "INBOX",
            make_message(
                subject="Welcome to Mailsync",
                sender="Mailsync Team <team@mailsync.test>",
                body="This mailbox lives on a throwaway Dovecot.\n",
                date=now - dt.timedelta(hours=2),
            ),
            (),
            now - dt.timedelta(hours=2),
        ),
        (
            "INBOX",
            make_message(
                subject="Quarterly report",
                sender="Carol <carol@example.com>",
                body="Numbers attached in spirit.\n",
                date=now - dt.timedelta(days=40),
            ),
            ("\\Seen", "\\Flagged"),
            now - dt.timedelta(days=40),
        ),
        (
            "Sent",
            make_message(
                subject="Re: Quarterly report",
                sender="Bob Example <bob@example.com>",
                to="Carol <carol@example.com>",
                body="Thanks, looks good.\n",
                date=now - dt.timedelta(days=1),
            ),
            ("\\Seen",),
            now - dt.timedelta(days=1),
        ),
        (
            "Entwürfe",
            make_message(
                subject="Grüße aus Köln",
                to="Dora <dora@example.com>",
                body="Noch nicht fertig …\n",
                date=now - dt.timedelta(days=3),
                message_id=None,
            ),
            ("\\Draft",),
            now - dt.timedelta(days=3),
        ),
    ]
    added: dict[str, list[int]] = {}
    for folder, raw, flags, when in samples:
        uid = client.append(folder, raw, flags=flags, internal_date=when)
        added.setdefault(folder, []).append(uid)
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a throwaway Dovecot with a sample mailbox.")
    parser.add_argument("--flavour", choices=("full", "basic"), default="full")
    parser.add_argument("--base-dir", type=Path, help="keep state here (default: a temp dir)")
    for name in _PORT_NAMES:
        parser.add_argument(f"--{name}-port", type=int, default=0)
    parser.add_argument("--user", help="user name (default: random)")
    parser.add_argument("--password", help="password (default: random)")
    args = parser.parse_args(argv)

    base_dir = args.base_dir or Path(tempfile.mkdtemp(prefix="mailsync-dovecot-"))
    ports = {n: getattr(args, f"{n}_port") for n in _PORT_NAMES if getattr(args, f"{n}_port")}
    try:
        return _serve_demo(base_dir, args.flavour, ports, args.user, args.password)
    finally:
        if args.base_dir is None:
            shutil.rmtree(base_dir, ignore_errors=True)


def _serve_demo(
    base_dir: Path, flavour: Flavour, ports: dict[str, int], username: str | None, password: str | None
) -> int:
    with DovecotServer(base_dir, flavour=flavour, ports=ports) as server:
        user = server.add_user(username, password)
        with user.client() as client:
            seed_sample_mailbox(client)
        print(
            f"Dovecot ({flavour}) running, state in {base_dir}\n"
            f"  host      {user.host}\n"
            f"  imap      {user.imap_port} (STARTTLS)\n"
            f"  imaps     {user.imaps_port}\n"
            f"  pop3      {user.pop3_port} (STLS)\n"
            f"  pop3s     {user.pop3s_port}\n"
            f"  user      {user.username}\n"
            f"  password  {user.password}\n"
            f"  CA file   {user.ca_file}\n"
            f"  log       {server.log_file}\n"
            "Ctrl-C to stop.",
            flush=True,
        )
        try:
            server.wait()
        except KeyboardInterrupt:
            return 0
        print(f"dovecot exited unexpectedly\n{server.log_tail()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
