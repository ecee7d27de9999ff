"""POP3 adapter: login check (POP has no folders; its single mailbox is INBOX)."""

from __future__ import annotations

import poplib
import re
import socket
import ssl

from mailsync.config import Settings
from mailsync.errors import AuthFailed, ConnectFailed, ServerBusy, ServerMisbehaving, TlsFailed, ValidationFailed
from mailsync.mailbox.base import ConnectionCheck, ServerParams, client_ssl_context, precheck, translate_errors
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
        super().__init__(host, port, timeout=budget.read_timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = self._checked_socket()
        # poplib sets self.sock only after this returns, and replaces it after STLS.
        self._reader = BudgetedReader(lambda: self.__dict__.get("sock", sock), self.budget)
        try:
            expect_greeting(self._reader, lambda data: self._reader.send(sock, data), self.port, "POP3")
        except BaseException:
            sock.close()
            raise
        return sock

    def _putline(self, line: bytes) -> None:
        self._response_bytes = 0
        self._reader.send(self.sock, line + b"\r\n")

    def _getline(self) -> tuple[bytes, int]:
        line = self._reader.readline(self.budget.max_line_bytes)
        self._response_bytes += len(line) + LINE_OVERHEAD_BYTES
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


def _login(conn: poplib.POP3, params: ServerParams) -> None:
    for name, value in (("username", params.username), ("password", params.password)):
        if "\r" in value or "\n" in value or "\0" in value:
            # POP3 is line-based: a line break would smuggle in another command.
            raise ValidationFailed(f"The {name} must not contain line breaks", field=name)
    try:
        # poplib sends commands in UTF-8, so non-ASCII user names and passwords go as they are.
        conn.user(params.username)
        conn.pass_(params.password)
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


def _capabilities(conn: poplib.POP3) -> list[str]:
    try:
        return sorted(conn.capa())
    except poplib.error_proto:
        return []
    except (UnicodeDecodeError, IndexError):
        raise ServerMisbehaving("The mail server sent an unreadable capability list") from None


def check_pop3(params: ServerParams, settings: Settings, *, deadline: float | None = None) -> ConnectionCheck:
    """Log in over POP3 and report the server's capabilities; ``deadline`` bounds the whole check."""
    addresses = precheck(params, settings)
    budget = Budget.from_settings(settings, deadline)
    ctx = client_ssl_context(settings)
    with translate_errors(params):
        conn = BudgetedPOP3(
            params.host,
            params.port,
            addresses=addresses,
            tls_context=ctx if params.security == "ssl" else None,
            budget=budget,
        )
        try:
            if params.security == "starttls":
                try:
                    conn.stls(context=ctx)
                except poplib.error_proto as exc:
                    raise TlsFailed(f"The mail server refused STLS: {server_text(exc.args[0])}") from None
                except (UnicodeDecodeError, IndexError):
                    raise ServerMisbehaving("The mail server sent an unreadable capability list") from None
            _login(conn, params)
            caps = _capabilities(conn)
            try:
                conn.quit()
            except (poplib.error_proto, OSError) as exc:
                raise ConnectFailed(f"POP3 session ended with an error: {exc}") from None
        finally:
            conn.close()
    return ConnectionCheck(protocol="pop3", capabilities=caps)
