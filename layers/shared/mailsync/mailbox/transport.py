"""Budgeted socket I/O shared by the IMAP and POP3 adapters.

A mail server is tenant-chosen and may be hostile or broken. Everything read from it goes through
``BudgetedReader``: one wall-clock deadline for the whole connection (a server trickling a byte
every few seconds is cut off there, not after many per-read timeouts), a cap on a line and on a
single read, and a hard stop once any budget broke (so LOGOUT after a failure does not read on).
Connections go to the addresses the SSRF guard checked, never to a fresh DNS answer.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Callable
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
    checked (never resolved again), the TLS context and the budget."""

    host: str
    port: int

    def _init_checked(self, addresses: list[str], tls_context: ssl.SSLContext | None, budget: Budget) -> None:
        self._addresses = addresses
        self._tls_context = tls_context
        self.budget = budget

    def _checked_socket(self) -> socket.socket:
        """Connected to a checked address, with TLS verifying the host name."""
        sock = connect_checked(self._addresses, self.port, self.budget)
        return wrap_tls(sock, self._tls_context, self.host, self.budget) if self._tls_context is not None else sock


def wrap_tls(sock: socket.socket, context: ssl.SSLContext, host: str, budget: Budget) -> ssl.SSLSocket:
    """TLS on a socket connected by address: the certificate is still checked against ``host``."""
    try:
        sock.settimeout(budget.timeout())
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


class BudgetedReader:
    """Buffered reads from whatever socket ``sock_source`` returns now (it changes after STARTTLS)."""

    def __init__(self, sock_source: Callable[[], socket.socket], budget: Budget) -> None:
        self._sock_source = sock_source
        self._sock: socket.socket | None = None
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
