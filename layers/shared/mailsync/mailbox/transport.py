"""Budgeted socket I/O shared by the IMAP and POP3 adapters.

A mail server is tenant-chosen and may be hostile or broken. Everything read from it goes through
``BudgetedReader``: one wall-clock deadline for the whole connection (a server trickling a byte
every few seconds is cut off there, not after many per-read timeouts), a cap on a line and on a
single read, and a hard stop once any budget broke (so LOGOUT after a failure does not read on).
Connections go to the addresses the SSRF guard checked, never to a fresh DNS answer.
"""

from __future__ import annotations

import _ssl
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import NoReturn

from mailsync.config import Settings
from mailsync.errors import ConnectFailed, MailboxError, MailTimeout, ProtocolMismatch, ServerBusy, ServerMisbehaving

DEADLINE_MESSAGE = "The mail server did not finish within this account's time budget"
# Interactive calls (settings test, server folders) never wait longer than this, whatever the job
# budget: API Gateway cuts an integration at 29 s, and the API Lambda needs time on top of the
# mail server's (secrets, DynamoDB, the answer) to return a clear error rather than a gateway 504.
INTERACTIVE_BUDGET_SECONDS = 20.0
# Python keeps a little bookkeeping per line on top of its bytes; charge it so that a flood of
# tiny lines cannot get past a byte budget.
LINE_OVERHEAD_BYTES = 64
# Room above the message cap for the rest of one IMAP response (flags, envelopes, UID lists).
RESPONSE_SLACK_BYTES = 32 * 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Budget:
    """Limits for one connection; see Settings for the knobs."""

    deadline: float  # a time.monotonic() instant
    read_timeout: float
    max_line_bytes: int
    max_literal_bytes: int
    max_untagged: int
    max_folders: int
    max_response_bytes: int
    max_pop3_response_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings, deadline: float | None) -> Budget:
        if deadline is None:
            deadline = time.monotonic() + min(settings.job_budget_seconds, INTERACTIVE_BUDGET_SECONDS)
        return cls(
            deadline=deadline,
            read_timeout=settings.imap_timeout_seconds,
            max_line_bytes=settings.max_line_bytes,
            max_literal_bytes=settings.max_message_bytes,
            max_untagged=settings.max_untagged_per_command,
            max_folders=settings.max_folders,
            max_response_bytes=settings.max_message_bytes + RESPONSE_SLACK_BYTES,
            max_pop3_response_bytes=settings.max_pop3_response_bytes,
        )

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self) -> float:
        """Seconds the next socket operation may take; the budget itself when that is shorter."""
        remaining = self.remaining()
        if remaining <= 0:
            raise ServerMisbehaving(DEADLINE_MESSAGE)
        return min(self.read_timeout, remaining)


def connect_checked(addresses: list[str], port: int, budget: Budget) -> socket.socket:
    """Connect to the first reachable of the already checked ``addresses`` (no DNS here)."""
    last: OSError | None = None
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(budget.timeout())
            sock.connect((address, port))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    if last is None:
        raise ConnectFailed("The mail host has no address to connect to")
    raise last


class CheckedConnection:
    """What the budgeted imaplib and poplib connections share: the addresses the SSRF guard
    checked (never resolved again), the TLS context, the budget and TLS session resumption."""

    host: str
    port: int

    def _init_checked(self, addresses: list[str], tls_context: ssl.SSLContext | None, budget: Budget) -> None:
        self._addresses = addresses
        self._tls_context = tls_context
        self.budget = budget
        # Whether this connection's TLS handshake resumed a cached session (no certificate sent).
        self.tls_resumed = False
        self._tls_unsaved: tuple[TlsSessionKey, ssl.SSLSocket, float, int] | None = None

    def _checked_socket(self) -> socket.socket:
        """Connected to a checked address, with TLS verifying the host name."""
        sock = connect_checked(self._addresses, self.port, self.budget)
        return self._start_tls(sock, self._tls_context) if self._tls_context is not None else sock

    def _start_tls(self, sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        """TLS on ``sock``, offering the session of an earlier connection to the same server."""
        key = tls_session_key(self.host, self.port, context)
        cached = _SESSIONS.offer(key) if key is not None else None
        tls = wrap_tls(sock, context, self.host, self.budget, session=cached.session if cached else None)
        self.tls_resumed = tls.session_reused
        if cached is not None:
            _SESSIONS.count_handshake(resumed=tls.session_reused)
            if key is not None and not tls.session_reused:
                # Measured: a turned-down offer costs more CPU than a plain full handshake (Dovecot's
                # default login mode issues tickets it never accepts): no more offers to it a while.
                _SESSIONS.decline(key)
        resumed = cached is not None and tls.session_reused
        # A session keeps the chain the server sent, which the server chooses: only a chain of
        # ordinary size is cached (a resumed one sends none; it is the size it descends from).
        chain_bytes = cached.chain_bytes if cached is not None and resumed else _chain_bytes(tls)
        # A server that declined is kept no session: reading one (``tls.session``) costs ~0.1 ms.
        keepable = key is not None and not _SESSIONS.declined(key)
        if keepable and chain_bytes is not None and chain_bytes <= TLS_SESSION_MAX_CHAIN_BYTES:
            # A resumed session is only as fresh as the full handshake it descends from.
            verified_at = cached.verified_at if cached is not None and resumed else time.time()
            self._tls_unsaved = (key, tls, verified_at, chain_bytes)
            if tls.version() != "TLSv1.3":
                # TLS 1.2's session is complete with the handshake; TLS 1.3's ticket (a fresh
                # one after a resumption too) comes after it, with the first read.
                self.save_tls_session()
        return tls

    def tls_upgrade(self, context: ssl.SSLContext) -> StartTlsContext:
        """What to hand imaplib's ``starttls`` / poplib's ``stls`` as their context: their
        upgrade then goes through ``_start_tls`` (budget, session offer) like implicit TLS."""
        return StartTlsContext(self, context)

    def save_tls_session(self) -> None:
        """Keep this connection's TLS session for the next connection to the same server, once
        it can be resumed (TLS 1.3 sends its ticket after the handshake: the first read after
        the handshake, or at the latest the end of the connection, has it)."""
        if self._tls_unsaved is None:
            return
        key, tls, verified_at, chain_bytes = self._tls_unsaved
        session = tls.session  # None once the socket is closed
        if session is not None and _resumable(tls, session):
            _SESSIONS.keep(key, session, verified_at, chain_bytes)
            self._tls_unsaved = None


class StartTlsContext:
    """The one method imaplib's ``starttls`` and poplib's ``stls`` call on their context."""

    def __init__(self, connection: CheckedConnection, context: ssl.SSLContext) -> None:
        self._connection = connection
        self._context = context

    def wrap_socket(self, sock: socket.socket, server_hostname: str | None = None) -> ssl.SSLSocket:
        if server_hostname != self._connection.host:
            raise ValueError("STARTTLS must verify the host name the connection was made for")
        return self._connection._start_tls(sock, self._context)


def wrap_tls(
    sock: socket.socket,
    context: ssl.SSLContext,
    host: str,
    budget: Budget,
    *,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLSocket:
    """TLS on a socket connected by address: the certificate is still checked against ``host``
    (on every full handshake; a resumed ``session`` was verified by the one that created it)."""
    try:
        sock.settimeout(budget.timeout())
        return context.wrap_socket(sock, server_hostname=host, session=session)
    except BaseException:
        sock.close()
        raise


# -- TLS session resumption ------------------------------------------------------------------
#
# A poll is connect + TLS + LOGIN + one command + LOGOUT; the full handshake (certificate chain
# verification, key exchange) was about a quarter of its CPU. Servers that resume sessions (the
# big providers do) skip most of it when offered the session of the previous connection.

# A cached session (with the server's certificate) took ~13 KB of memory, measured: 13 MB at most.
# The big providers, where most accounts are, are a handful of entries.
TLS_SESSION_CACHE_ENTRIES = 1_000
# A full handshake, and with it certificate verification, at least this often per server: a
# chain of resumptions (each handing out a fresh ticket) would otherwise stretch one
# verification for as long as the process lives.
TLS_SESSION_MAX_AGE_SECONDS = 3600.0
# A cached session holds the certificate chain the server sent: a hostile server (any host a
# user may enter, e.g. through the API's connection test) could pad it to ~100 KB, and 1,000 of
# those would be ~260 MB. Real chains are 2-7 KB; a session with a longer one is not kept.
TLS_SESSION_MAX_CHAIN_BYTES = 16 * 1024

# (host, port, context). The host is the account's host name: the name connected to (through the
# addresses the SSRF guard resolved it to) and the one its certificate was checked against. The
# context is part of the key because it decides what verification means (an extra CA file makes
# another one); ssl itself refuses a session of another context.
TlsSessionKey = tuple[str, int, ssl.SSLContext]


def tls_session_key(host: str, port: int, context: ssl.SSLContext) -> TlsSessionKey | None:
    """None for a context that does not verify certificate and host name: nothing to vouch for."""
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        return None
    return (host, port, context)


def _resumable(tls: ssl.SSLSocket, session: ssl.SSLSession) -> bool:
    """Whether offering ``session`` can resume: TLS 1.3 only with a ticket (which arrives after
    the handshake), TLS 1.2 with a ticket or a session id the server may have kept."""
    return session.has_ticket or (tls.version() != "TLSv1.3" and bool(session.id))


@dataclass(frozen=True)
class CachedSession:
    session: ssl.SSLSession
    verified_at: float  # time.time() of the full, verified handshake this session descends from
    expires_at: float
    chain_bytes: int = 0  # DER bytes of the certificate chain of that handshake


def _chain_bytes(tls: ssl.SSLSocket) -> int | None:
    """DER bytes of the certificate chain the server sent in this handshake; None when unknown
    (then nothing is cached)."""
    try:
        # ``SSLSocket.get_unverified_chain`` is public from Python 3.13; 3.12 has it one level down.
        chain = tls._sslobj.get_unverified_chain()  # type: ignore[union-attr]
        return sum(len(certificate.public_bytes(_ssl.ENCODING_DER)) for certificate in chain or ())
    except (AttributeError, ValueError, ssl.SSLError):
        return None


@dataclass(frozen=True)
class TlsSessionStats:
    """The process's TLS session cache: ``offered`` full handshakes were offered a cached
    session, ``resumed`` of them resumed it; ``kept`` sessions were stored."""

    entries: int
    offered: int
    resumed: int
    kept: int
    expired: int
    evicted: int


class TlsSessionCache:
    """The last resumable TLS session per server, least recently used dropped first; thread-safe."""

    def __init__(
        self,
        max_entries: int = TLS_SESSION_CACHE_ENTRIES,
        max_age: float = TLS_SESSION_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_entries = max_entries
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, CachedSession] = OrderedDict()
        # Servers that turned an offered session down, until when none is kept or offered to them.
        self._declined: OrderedDict[Hashable, float] = OrderedDict()
        self._offered = self._resumed = self._kept = self._expired = self._evicted = 0

    def offer(self, key: Hashable) -> CachedSession | None:
        """The session to offer a new connection to ``key``'s server, if one is still fresh."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() >= entry.expires_at:
                del self._entries[key]
                self._expired += 1
                return None
            self._entries.move_to_end(key)
            return entry

    def count_handshake(self, *, resumed: bool) -> None:
        with self._lock:
            self._offered += 1
            self._resumed += resumed

    def decline(self, key: Hashable) -> None:
        """``key``'s server did not resume the session offered to it: for ``max_age`` it is offered
        none, and none of its sessions is kept."""
        with self._lock:
            self._entries.pop(key, None)
            self._declined[key] = self._clock() + self._max_age
            self._declined.move_to_end(key)
            while len(self._declined) > self._max_entries:
                self._declined.popitem(last=False)

    def declined(self, key: Hashable) -> bool:
        """Whether ``key``'s server turned an offered session down less than ``max_age`` ago."""
        with self._lock:
            until = self._declined.get(key)
            return until is not None and self._clock() < until

    def keep(self, key: Hashable, session: ssl.SSLSession, verified_at: float, chain_bytes: int = 0) -> None:
        """Store ``session`` for ``key``; it lives until the server's lifetime for it ends or
        ``max_age`` after its verified handshake, whichever comes first."""
        expires_at = min(session.time + session.timeout, verified_at + self._max_age)
        if expires_at <= self._clock():
            return
        with self._lock:
            declined_until = self._declined.get(key)
            if declined_until is not None:
                if self._clock() < declined_until:
                    return
                del self._declined[key]
            self._entries[key] = CachedSession(session, verified_at, expires_at, chain_bytes)
            self._entries.move_to_end(key)
            self._kept += 1
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
                self._evicted += 1

    def stats(self) -> TlsSessionStats:
        with self._lock:
            return TlsSessionStats(
                entries=len(self._entries),
                offered=self._offered,
                resumed=self._resumed,
                kept=self._kept,
                expired=self._expired,
                evicted=self._evicted,
            )

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._declined.clear()


# Per process: a Lambda container's threads share it; nothing is written anywhere else.
_SESSIONS = TlsSessionCache()


def tls_session_cache_stats() -> TlsSessionStats:
    """Counters of this process's TLS session cache (benches and tests read them)."""
    return _SESSIONS.stats()


def clear_tls_sessions() -> None:
    """Forget every cached TLS session: the next connection to each server is a full handshake."""
    _SESSIONS.clear()


class BudgetedReader:
    """Buffered reads from whatever socket ``sock_source`` returns now (it changes after STARTTLS)."""

    def __init__(
        self,
        sock_source: Callable[[], socket.socket],
        budget: Budget,
        *,
        after_first_read: Callable[[], None] | None = None,
    ) -> None:
        """``after_first_read`` runs once after the first bytes arrive on each new socket (a
        TLS 1.3 server's session ticket has been read by then)."""
        self._sock_source = sock_source
        self._sock: socket.socket | None = None
        self._after_first_read = after_first_read
        self._first_read = True
        self._buf = bytearray()
        self._scanned = 0
        self.budget = budget
        self.broken: str | None = None

    def fail(self, message: str) -> NoReturn:
        """Break the connection for good: after a broken budget nothing more is read."""
        self.broken = message
        raise ServerMisbehaving(message)

    def _check(self) -> socket.socket:
        """The socket to read from now; refuses once broken."""
        if self.broken:
            raise ServerMisbehaving(self.broken)
        sock = self._sock_source()
        if sock is not self._sock:
            if self._sock is not None and self._buf:
                # Bytes sent in the clear before the TLS handshake would otherwise be read as
                # if they came over TLS (STARTTLS response injection).
                self.fail("The mail server sent data it was not asked for before TLS started")
            self._sock = sock
            self._first_read = True
        return sock

    def _fill(self) -> bool:
        """One recv into the buffer; False at end of stream."""
        sock = self._check()
        remaining = self.budget.remaining()
        if remaining <= 0:
            self.fail(DEADLINE_MESSAGE)
        sock.settimeout(min(self.budget.read_timeout, remaining))
        try:
            chunk = sock.recv(_CHUNK)
        except TimeoutError:
            if self.budget.remaining() <= 0.05:
                self.fail(DEADLINE_MESSAGE)
            raise
        if not chunk:
            return False
        self._buf += chunk
        if self._first_read:
            self._first_read = False
            if self._after_first_read is not None:
                self._after_first_read()
        return True

    def send(self, sock: socket.socket, data: bytes) -> None:
        self._check()
        remaining = self.budget.remaining()
        if remaining <= 0:
            self.fail(DEADLINE_MESSAGE)
        sock.settimeout(min(self.budget.read_timeout, remaining))
        sock.sendall(data)

    def peek(self, size: int = 16) -> bytes:
        """At least ``size`` bytes or one whole line (less at end of stream), not consumed."""
        self._check()
        while b"\n" not in self._buf and len(self._buf) < size:
            if not self._fill():
                break
        return bytes(self._buf[:size])

    def readline(self, limit: int) -> bytes:
        """One line with its line end; at end of stream whatever is left (maybe b"")."""
        self._check()
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end >= 0:
                if end + 1 > limit:
                    self.fail(f"The mail server sent a line longer than {limit} bytes")
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if len(self._buf) > limit:
                self.fail(f"The mail server sent a line longer than {limit} bytes")
            if not self._fill():
                line = bytes(self._buf)
                self._buf.clear()
                self._scanned = 0
                return line

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes (fewer at end of stream); the caller checked ``size`` first."""
        self._check()
        while len(self._buf) < size:
            if not self._fill():
                break
        # Through a memoryview: slicing the bytearray itself would hold a third copy of a literal.
        with memoryview(self._buf) as view:
            data = bytes(view[:size])
        del self._buf[:size]
        self._scanned = 0
        return data


_REPLY_CODE = re.compile(rb"^[2-5]\d\d[ -]")


def _speaks(head: bytes) -> str | None:
    """Which protocol a server's first bytes belong to, as far as we can tell."""
    upper = head.upper()
    if upper.startswith((b"* OK", b"* PREAUTH", b"* BYE")):
        return "IMAP"
    if upper.startswith((b"+OK", b"-ERR")):
        return "POP3"
    if upper.startswith(b"HTTP/"):
        return "HTTP"
    if upper.startswith(b"SSH-"):
        return "SSH"
    if _REPLY_CODE.match(head):
        return "FTP" if b"FTP" in upper else "SMTP"
    if head[:1] in (b"\x15", b"\x16"):
        return "TLS"
    return None


def greeting_problem(head: bytes, port: int, expected: str) -> MailboxError | None:
    """None for a greeting of the ``expected`` protocol, else the error to raise."""
    protocol = _speaks(head)
    if protocol == expected:
        if head.upper().startswith((b"* BYE", b"-ERR")):
            return ServerBusy("The mail server turned the connection away for now (too many connections?)")
        return None
    if protocol == "TLS":
        return ProtocolMismatch(f"Port {port} expects TLS from the first byte: choose security 'ssl'")
    if protocol is None:
        return ProtocolMismatch(f"The server on port {port} does not speak {expected}")
    return ProtocolMismatch(f"Port {port} speaks {protocol}, not {expected}")


def expect_greeting(reader: BudgetedReader, send: Callable[[bytes], None], port: int, expected: str) -> None:
    """Check the first bytes the server sends before the protocol library parses them.

    Servers of some protocols (HTTP, a TLS port reached in the clear) wait for the client; after
    one read timeout we send a harmless line to learn which one it is.
    """
    try:
        head = reader.peek()
    except TimeoutError:
        send(b"A0 CAPABILITY\r\n")
        try:
            head = reader.peek()
        except TimeoutError:
            head = b""
        problem = greeting_problem(head, port, expected) if _speaks(head) not in (None, expected) else None
        raise problem or MailTimeout(f"The mail server on port {port} sent no greeting") from None
    if not head:
        raise ServerBusy("The mail server closed the connection before greeting (too many connections?)")
    problem = greeting_problem(head, port, expected)
    if problem is not None:
        raise problem


def server_text(data: object, limit: int = 200) -> str:
    """A server's words, safe to show: decoded, without control characters, bounded."""
    if isinstance(data, list | tuple):
        data = data[-1] if data else b""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in str(data)).strip()
    return text[:limit]
