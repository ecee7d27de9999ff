"""POP3 adapter: the budgeted transport and ``Pop3Connection`` (POP has no folders and no flags:
one mailbox, listed by UIDL, read with TOP and RETR, emptied with DELE, committed by QUIT)."""

from __future__ import annotations

import poplib
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mailsync.config import Settings
from mailsync.errors import (
    AuthFailed,
    ConnectFailed,
    ProtocolMismatch,
    ServerBusy,
    ServerMisbehaving,
    TlsFailed,
    ValidationFailed,
)
from mailsync.mailbox.base import ServerParams, client_ssl_context, precheck, translate_errors
from mailsync.mailbox.transport import (
    LINE_OVERHEAD_BYTES,
    Budget,
    BudgetedReader,
    CheckedConnection,
    expect_greeting,
    server_text,
)
from mailsync.observability import logger

# RFC 2449/3206 response codes that mean "not now", not "wrong credentials".
_BUSY_CODES = re.compile(r"\[(IN-USE|LOGIN-DELAY|SYS/TEMP)\]", re.IGNORECASE)
# RFC 1939: a UIDL is 1 to 70 characters 0x21-0x7E. Some servers send longer ones; beyond this
# a "UIDL" is not an id we could key state on.
MAX_UIDL_CHARS = 255
_UIDL_LINE = re.compile(rb"^(\d{1,10}) ([\x21-\x7e]{1,%d})$" % MAX_UIDL_CHARS)
_LIST_LINE = re.compile(rb"^(\d{1,10}) (\d{1,15})(?: .*)?$")


@dataclass(frozen=True)
class PopListing:
    """One message of the maildrop as UIDL and LIST show it in this session."""

    number: int  # the message number, valid for this session only
    uidl: str
    size: int


class BudgetedPOP3(CheckedConnection, poplib.POP3):
    """poplib's connection, reading through a ``BudgetedReader`` and connecting to checked addresses.

    Every response (a multi-line one such as CAPA, LIST or RETR included) is capped in bytes.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        addresses: list[str],
        tls_context: ssl.SSLContext | None,
        budget: Budget,
    ) -> None:
        self._init_checked(addresses, tls_context, budget)
        self._response_bytes = 0
        self._response_lines = 0
        # A message's lines are bounded by bytes alone (RETR, TOP); listings also by their count.
        self._lines_unbounded = False
        super().__init__(host, port, timeout=budget.read_timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = self._checked_socket()
        # poplib sets self.sock only after this returns, and replaces it after STLS.
        self._reader = BudgetedReader(
            lambda: self.__dict__.get("sock", sock), self.budget, after_first_read=self.save_tls_session
        )
        try:
            expect_greeting(self._reader, lambda data: self._reader.send(sock, data), self.port, "POP3")
        except BaseException:
            sock.close()
            raise
        return sock

    def stls(self, context: ssl.SSLContext | None = None) -> bytes:
        if context is None:
            raise ValueError("STLS needs the verifying context")
        return super().stls(context=self.tls_upgrade(context))

    def close(self) -> None:
        self.save_tls_session()
        super().close()

    def _putline(self, line: bytes) -> None:
        self._response_bytes = 0
        self._response_lines = 0
        self._reader.send(self.sock, line + b"\r\n")

    def _getline(self) -> tuple[bytes, int]:
        line = self._reader.readline(self.budget.max_line_bytes)
        self._response_bytes += len(line) + LINE_OVERHEAD_BYTES
        self._response_lines += 1
        if self._response_lines > self.budget.max_untagged and not self._lines_unbounded:
            self._reader.fail(f"The mail server listed more than {self.budget.max_untagged} lines in one POP3 response")
        if self._response_bytes > self.budget.max_pop3_response_bytes:
            self._reader.fail(
                f"The mail server sent more than {self.budget.max_pop3_response_bytes} bytes in one POP3 response"
            )
        if not line:
            raise ConnectionResetError("The mail server closed the connection")
        octets = len(line)
        if line.endswith(b"\r\n"):
            return line[:-2], octets
        if line.startswith(b"\r"):
            return line[1:-1], octets
        return line[:-1], octets


class Pop3Connection:
    """A POP3 connection: connect, STLS, login, capabilities, quit. POP has no folders; its
    single mailbox is INBOX, and Mailsync only checks logins with it."""

    def __init__(self, conn: poplib.POP3, params: ServerParams) -> None:
        self._conn = conn
        self._params = params
        self._commands = 0

    @classmethod
    def connect(cls, params: ServerParams, addresses: list[str], ctx: ssl.SSLContext, budget: Budget) -> Pop3Connection:
        """Connected (TLS from the first byte with security "ssl") and greeted, not logged in."""
        conn = BudgetedPOP3(
            params.host,
            params.port,
            addresses=addresses,
            tls_context=ctx if params.security == "ssl" else None,
            budget=budget,
        )
        return cls(conn, params)

    @property
    def tls_resumed(self) -> bool:
        """Whether this connection's TLS handshake resumed an earlier connection's session."""
        return isinstance(self._conn, BudgetedPOP3) and self._conn.tls_resumed

    def starttls(self, ctx: ssl.SSLContext) -> None:
        try:
            self._conn.stls(context=ctx)
        except poplib.error_proto as exc:
            raise TlsFailed(f"The mail server refused STLS: {server_text(exc.args[0])}") from None
        except (UnicodeDecodeError, IndexError):
            raise ServerMisbehaving("The mail server sent an unreadable capability list") from None

    def login(self) -> None:
        """USER/PASS; only a -ERR without a "not now" code means wrong credentials."""
        params = self._params
        for name, value in (("username", params.username), ("password", params.password)):
            if "\r" in value or "\n" in value or "\0" in value:
                # POP3 is line-based: a line break would smuggle in another command.
                raise ValidationFailed(f"The {name} must not contain line breaks", field=name)
        try:
            # poplib sends commands in UTF-8, so non-ASCII user names and passwords go as they are.
            self._conn.user(params.username)
            self._conn.pass_(params.password)
        except poplib.error_proto as exc:
            text = server_text(exc.args[0] if exc.args else b"")
            if _BUSY_CODES.search(text):
                logger.info("POP3 login deferred by the server", extra={"mail_host": params.host})
                raise ServerBusy(f"The mail server turned the login away for now: {text}") from None
            logger.info("POP3 login rejected", extra={"mail_host": params.host})
            raise AuthFailed() from None
        except OSError:
            logger.info("POP3 login interrupted", extra={"mail_host": params.host})
            raise ServerBusy("The connection to the mail server dropped or stalled during login") from None

    def capabilities(self) -> list[str]:
        """CAPA's answer, sorted; empty when the server has no CAPA."""
        try:
            return sorted(self._conn.capa())
        except poplib.error_proto:
            return []
        except (UnicodeDecodeError, IndexError):
            raise ServerMisbehaving("The mail server sent an unreadable capability list") from None

    # -- the maildrop (sync) ---------------------------------------------------------------------

    @property
    def command_count(self) -> int:
        """Commands sent since login (the job's ``ImapCommands`` metric counts POP3 ones too)."""
        return self._commands

    def _long(self, command: Callable[[], tuple[bytes, list[bytes], int]], *, bounded_lines: bool = True) -> list:
        """A multi-line command's lines; ``poplib.error_proto`` for its -ERR."""
        self._commands += 1
        conn = self._conn
        if isinstance(conn, BudgetedPOP3):
            conn._lines_unbounded = not bounded_lines
        try:
            _, lines, _ = command()
        finally:
            if isinstance(conn, BudgetedPOP3):
                conn._lines_unbounded = False
        return list(lines)

    def listing(self) -> list[PopListing]:
        """Every message of the maildrop with its UIDL and size (UIDL, then LIST).

        A server without UIDL cannot be synced (nothing tells its messages apart across sessions):
        ``ProtocolMismatch``. Lines that are not "number uidl" / "number size" are a broken server.
        """
        try:
            uidl_lines = self._long(self._conn.uidl)
        except poplib.error_proto as exc:
            raise ProtocolMismatch(
                f"The POP3 server does not support UIDL, which syncing needs: {server_text(exc.args[0])}"
            ) from None
        try:
            list_lines = self._long(self._conn.list)
        except poplib.error_proto as exc:
            raise ServerMisbehaving(f"The POP3 server refused LIST: {server_text(exc.args[0])}") from None
        sizes: dict[int, int] = {}
        for line in list_lines:
            match = _LIST_LINE.match(line.strip())
            if match is None:
                raise ServerMisbehaving("The POP3 server sent an unreadable LIST line")
            sizes[int(match.group(1))] = int(match.group(2))
        out = []
        for line in uidl_lines:
            match = _UIDL_LINE.match(line.strip())
            if match is None:
                raise ServerMisbehaving("The POP3 server sent an unreadable UIDL line")
            number = int(match.group(1))
            if number not in sizes:
                raise ServerMisbehaving("The POP3 server's UIDL and LIST name different messages")
            out.append(PopListing(number=number, uidl=match.group(2).decode("ascii"), size=sizes[number]))
        return out

    def headers(self, number: int) -> bytes | None:
        """``TOP number 0``: the message's header section; None when the server no longer has the
        message, or has no TOP (the caller then reads the whole message)."""
        try:
            lines = self._long(lambda: self._conn.top(number, 0), bounded_lines=False)
        except poplib.error_proto:
            return None
        return b"\r\n".join(lines) + b"\r\n"

    def retrieve(self, number: int) -> bytes | None:
        """``RETR number``: the whole message (bounded by ``max_pop3_response_bytes``); None when
        the server no longer has it (deleted by another client, or by the server's own policy)."""
        try:
            lines = self._long(lambda: self._conn.retr(number), bounded_lines=False)
        except poplib.error_proto:
            return None
        return b"\r\n".join(lines) + b"\r\n"

    def delete(self, number: int) -> bool:
        """``DELE number``: marked for deletion, done at QUIT (a session that ends otherwise
        deletes nothing). False when the server no longer has the message."""
        self._commands += 1
        try:
            self._conn.dele(number)
        except poplib.error_proto:
            return False
        return True

    def quit(self) -> None:
        try:
            self._conn.quit()
        except (poplib.error_proto, OSError) as exc:
            raise ConnectFailed(f"POP3 session ended with an error: {exc}") from None

    def close(self) -> None:
        self._conn.close()


@contextmanager
def open_pop3(params: ServerParams, settings: Settings, *, deadline: float | None = None) -> Iterator[Pop3Connection]:
    """Connect, upgrade to TLS as configured and log in; QUIT after the block, always close.

    ``deadline`` (a ``time.monotonic()`` instant) bounds the whole connection.
    """
    addresses = precheck(params, settings)
    budget = Budget.from_settings(settings, deadline)
    ctx = client_ssl_context(settings)
    with translate_errors(params):
        pop = Pop3Connection.connect(params, addresses, ctx, budget)
        try:
            if params.security == "starttls":
                pop.starttls(ctx)
            pop.login()
            yield pop
            pop.quit()
        finally:
            pop.close()
