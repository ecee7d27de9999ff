"""The IMAP transport (imaplib reading through the budgets, connecting to checked addresses)
and folder-name spelling on the wire. ``connection.py`` speaks the protocol over it."""

from __future__ import annotations

import imaplib
import socket
import ssl

from imapclient import IMAPClient
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.imap_utf7 import encode as encode_utf7

from mailsync.mailbox.base import ServerParams
from mailsync.mailbox.transport import LINE_OVERHEAD_BYTES, Budget, BudgetedReader, CheckedConnection, expect_greeting

# A literal size with more digits than this is never a real message (and int() of a huge digit
# string is itself costly).
_MAX_LITERAL_DIGITS = 12


class BudgetedIMAP4(CheckedConnection, imaplib.IMAP4):
    """imaplib's connection, reading through a ``BudgetedReader`` and connecting to checked addresses.

    imaplib reads everything through ``readline()`` and ``read(size)`` (literals) and issues a new
    tag per command; those three seams carry the budgets.
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
        self._reader: BudgetedReader | None = None
        self._untagged = 0
        self._response_bytes = 0
        self._limit: tuple[int, str] | None = None
        self._next_limit: tuple[int, str] | None = None
        # Sync cost is measured in commands; every command, whichever imaplib or imapclient
        # path sends it, takes exactly one new tag.
        self.commands_sent = 0
        super().__init__(host, port, timeout=budget.read_timeout)

    @property
    def debug(self) -> int:
        """imaplib's debug level: always 0. imapclient sets 5, at which imaplib formats every
        response it stores, literals included, into a log string (``%r`` of a 40 MB message is
        ~90 MB more memory) whether or not that log is ever written."""
        return 0

    @debug.setter
    def debug(self, level: int) -> None:
        pass

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return self._checked_socket()

    def open(self, host: str = "", port: int = imaplib.IMAP4_PORT, timeout: float | None = None) -> None:
        super().open(host, port, timeout)
        self._reader = BudgetedReader(lambda: self.sock, self.budget, after_first_read=self.save_tls_session)
        try:
            expect_greeting(self._reader, self.send, port, "IMAP")
        except BaseException:
            # imaplib only cleans up after failures in _connect(), not in open().
            self.file.close()
            self.sock.close()
            raise

    def starttls(self, ssl_context: ssl.SSLContext | None = None) -> tuple[str, list]:
        if ssl_context is None:
            raise ValueError("STARTTLS needs the verifying context")
        return super().starttls(ssl_context=self.tls_upgrade(ssl_context))

    def shutdown(self) -> None:
        self.save_tls_session()
        super().shutdown()

    def limit_next_command(self, untagged: int, message: str) -> None:
        """A tighter cap on untagged responses for the next command only (e.g. folders per LIST)."""
        self._next_limit = (untagged, message)

    @property
    def reader(self) -> BudgetedReader:
        assert self._reader is not None
        return self._reader

    def _new_tag(self) -> bytes:
        self._untagged = 0
        self._response_bytes = 0
        self._limit, self._next_limit = self._next_limit, None
        self.commands_sent += 1
        return super()._new_tag()

    def _charge(self, size: int) -> None:
        self._response_bytes += size
        if self._response_bytes > self.budget.max_response_bytes:
            self.reader.fail(
                f"The mail server sent more than {self.budget.max_response_bytes} bytes in answer to one command"
            )

    def readline(self) -> bytes:
        line = self.reader.readline(self.budget.max_line_bytes)
        self._charge(len(line) + LINE_OVERHEAD_BYTES)
        if line.startswith(b"* "):
            self._untagged += 1
            limit, message = self._limit or (
                self.budget.max_untagged,
                f"The mail server sent more than {self.budget.max_untagged} responses to one command",
            )
            if self._untagged > limit:
                self.reader.fail(message)
        if line.endswith(b"}\r\n"):
            digits = line[line.rfind(b"{") + 1 : -3].rstrip(b"+")
            if digits.isdigit() and len(digits) > _MAX_LITERAL_DIGITS:
                self.reader.fail("The mail server announced an impossibly large literal")
        return line

    def read(self, size: int) -> bytes:
        if size > self.budget.max_literal_bytes:
            self.reader.fail(
                f"The mail server announced {size} bytes in one piece, over the cap of "
                f"{self.budget.max_literal_bytes} bytes"
            )
        self._charge(size)
        return self.reader.read(size)

    def send(self, data: bytes) -> None:
        self.reader.send(self.sock, data)


class BudgetedClient(IMAPClient):
    """IMAPClient whose imaplib connection is a ``BudgetedIMAP4``."""

    def __init__(self, params: ServerParams, addresses: list[str], context: ssl.SSLContext, budget: Budget) -> None:
        self._mailsync_connect = (addresses, context if params.security == "ssl" else None, budget)
        super().__init__(
            params.host,
            port=params.port,
            ssl=params.security == "ssl",
            ssl_context=context,
            timeout=budget.read_timeout,
        )

    def _create_IMAP4(self) -> BudgetedIMAP4:
        addresses, context, budget = self._mailsync_connect
        return BudgetedIMAP4(self.host, self.port, addresses=addresses, tls_context=context, budget=budget)


def sent_raw(name: bytes | str) -> bool:
    """Whether a name from the server is not modified UTF-7 (RFC 3501) but the name itself."""
    if isinstance(name, str):
        return False
    if not name.isascii():
        return True
    try:
        decode_utf7(name)
    except (UnicodeDecodeError, ValueError):
        return True
    return False


def wire_name(folder: str, *, raw: bool = False) -> str:
    """``folder`` as sent on the wire (unquoted): modified UTF-7 (plain ASCII), or with ``raw``
    the name as the server listed it, for a name it sent unencoded ("R&D")."""
    return folder if raw and folder.isascii() else encode_utf7(folder).decode("ascii")


def mailbox_arg(folder: str, *, raw: bool = False) -> str:
    """``wire_name`` quoted: a mailbox argument for a command built by hand."""
    wire = wire_name(folder, raw=raw)
    return '"' + wire.replace("\\", "\\\\").replace('"', '\\"') + '"'


def folder_name(raw: bytes | str) -> str:
    """A folder name as the server meant it: modified UTF-7 (RFC 3501), or, from servers that
    send names unencoded ("R&D", raw UTF-8), the name as sent."""
    if isinstance(raw, str):
        return raw
    if raw.isascii():
        try:
            return decode_utf7(raw)
        except (UnicodeDecodeError, ValueError):
            return raw.decode("ascii")
    return raw.decode("utf-8", "replace")
