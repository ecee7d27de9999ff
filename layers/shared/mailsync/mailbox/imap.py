"""IMAP adapter on imapclient: connect, login, capabilities, folder list."""

from __future__ import annotations

import base64
import imaplib
import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.imap_utf7 import encode as encode_utf7
from imapclient.util import to_unicode

from mailsync.config import Settings
from mailsync.errors import AuthFailed, ConnectFailed, ProtocolMismatch, ServerBusy, ServerMisbehaving, TlsFailed
from mailsync.mailbox.base import (
    SPECIAL_USE_FLAGS,
    ServerFolder,
    ServerParams,
    client_ssl_context,
    precheck,
    translate_errors,
)
from mailsync.mailbox.transport import (
    LINE_OVERHEAD_BYTES,
    Budget,
    BudgetedReader,
    CheckedConnection,
    expect_greeting,
    server_text,
)
from mailsync.observability import logger

_SPECIAL_USE = {flag.lower(): flag for flag in SPECIAL_USE_FLAGS}

# NO response codes (RFC 5530) that say "not now" rather than "wrong credentials".
_BUSY_CODES = {"UNAVAILABLE", "LIMIT", "INUSE", "SERVERBUG"}
# [ALERT] is free text: Gmail and Microsoft 365 throttle logins with it.
_THROTTLE_WORDS = re.compile(
    r"too many|try again|later|throttl|rate.?limit|temporar|busy|simultaneous|exceeded|unavailable", re.IGNORECASE
)
_RESPONSE_CODE = re.compile(r"^\[([A-Za-z-]+)")
# A literal size with more digits than this is never a real message (and int() of a huge digit
# string is itself costly).
_MAX_LITERAL_DIGITS = 12


class CommandCounter:
    """Counts the commands an imaplib connection sends: sync cost is measured in commands.

    Every command, whichever imaplib path sends it (``_command`` or imapclient's raw path),
    takes exactly one new tag, so counting tags counts commands.
    """

    def __init__(self, client: IMAPClient) -> None:
        self.count = 0
        imap = client._imap
        original = imap._new_tag

        def counted() -> bytes:
            self.count += 1
            return original()

        imap._new_tag = counted


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
        super().__init__(host, port, timeout=budget.read_timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return self._checked_socket()

    def open(self, host: str = "", port: int = imaplib.IMAP4_PORT, timeout: float | None = None) -> None:
        super().open(host, port, timeout)
        self._reader = BudgetedReader(lambda: self.sock, self.budget)
        try:
            expect_greeting(self._reader, self.send, port, "IMAP")
        except BaseException:
            # imaplib only cleans up after failures in _connect(), not in open().
            self.file.close()
            self.sock.close()
            raise

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


class _Client(IMAPClient):
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


class ImapSession:
    """A logged-in IMAP connection. Protocol only: callers decide what to store."""

    def __init__(self, client: IMAPClient, params: ServerParams, counter: CommandCounter | None = None) -> None:
        self._client = client
        self._params = params
        self._counter = counter or CommandCounter(client)
        # Names this server listed that are not valid modified UTF-7 ("R&D"): it knows them
        # only as sent, so they go back byte for byte (see ``mailbox_arg``).
        self.raw_names: set[str] = set()
        self._listed = False

    @property
    def client(self) -> IMAPClient:
        return self._client

    @property
    def params(self) -> ServerParams:
        return self._params

    @property
    def command_count(self) -> int:
        """IMAP commands sent on this connection so far (LOGIN and CAPABILITY included)."""
        return self._counter.count

    def capabilities(self) -> list[str]:
        with translate_errors(self._params):
            return sorted(to_unicode(c) for c in self._client.capabilities())

    def has_capability(self, name: str) -> bool:
        with translate_errors(self._params):
            return self._client.has_capability(name)

    def list_folders(self) -> list[ServerFolder]:
        with translate_errors(self._params):
            # Names come back raw and are decoded below: one name that is not valid modified
            # UTF-7 must not fail the whole list.
            encode, self._client.folder_encode = self._client.folder_encode, False
            try:
                raw = self._list_raw()
            except IMAPClientError as exc:
                raise ConnectFailed(f"The mail server refused to list folders: {exc}") from None
            finally:
                self._client.folder_encode = encode
        folders = []
        self._listed = True
        for flags, delimiter, name in raw:
            if sent_raw(name):
                self.raw_names.add(folder_name(name))
            text_flags = tuple(to_unicode(f) for f in flags)
            special = next((_SPECIAL_USE[f.lower()] for f in text_flags if f.lower() in _SPECIAL_USE), None)
            folders.append(
                ServerFolder(
                    name=folder_name(name),
                    delimiter=to_unicode(delimiter) if delimiter else None,
                    flags=text_flags,
                    special_use=special,
                )
            )
        return folders

    def mailbox_arg(self, folder: str) -> str:
        """``folder`` as a command argument, spelled the way this server spells it.

        "R&D" is "R&-D" in modified UTF-7 to a server that follows RFC 3501, but "R&D" to one
        that listed it raw; which one only its LIST tells, so a name with "&" costs one LIST
        per session when none was done yet.
        """
        if "&" in folder and not self._listed:
            self.list_folders()
        return mailbox_arg(folder, raw=folder in self.raw_names)

    def _limit_folders(self) -> None:
        imap = self._client._imap
        if isinstance(imap, BudgetedIMAP4):
            cap = imap.budget.max_folders
            imap.limit_next_command(cap, f"The mail server listed more than {cap} folders")

    def _list_raw(self) -> list[tuple]:
        # Dovecot and others send SPECIAL-USE flags only when asked (RFC 6154 LIST-EXTENDED
        # RETURN option); imapclient has no call for it, so build that one command ourselves.
        if not self._client.has_capability("SPECIAL-USE"):
            self._limit_folders()
            return self._client.list_folders()
        imap = self._client._imap
        self._limit_folders()
        typ, data = imap._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
        if typ != "OK":
            self._limit_folders()
            return self._client.list_folders()
        typ, data = imap._untagged_response(typ, data, "LIST")
        return self._client._proc_folder_list(data)


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


def mailbox_arg(folder: str, *, raw: bool = False) -> str:
    """A quoted mailbox argument: modified UTF-7 (plain ASCII), or with ``raw`` the name as
    the server listed it, for a name it sent unencoded ("R&D")."""
    wire = folder if raw and folder.isascii() else encode_utf7(folder).decode("ascii")
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


class _Answers:
    """Answers the server's continuation requests in turn during login (imaplib calls a bound method)."""

    def __init__(self, *answers: bytes) -> None:
        self._answers = list(answers)

    def next(self, _challenge: bytes) -> bytes:
        if not self._answers:
            raise ServerMisbehaving("The mail server asked for more login data than there is")
        return self._answers.pop(0)


def _quotable(text: str) -> bool:
    return all(" " <= ch <= "~" for ch in text)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _send_login(imap: imaplib.IMAP4, params: ServerParams) -> tuple[str, list]:
    """LOGIN, or AUTHENTICATE PLAIN in UTF-8 for credentials a quoted string cannot carry."""
    user, password = params.username, params.password
    capabilities = set(imap.capabilities)
    if "LOGINDISABLED" in capabilities and "AUTH=PLAIN" not in capabilities:
        # LOGIN would send the password where the server said it must not go; its NO would
        # then read as a wrong password and take the account off the schedule.
        if params.security == "none":
            raise TlsFailed(
                "The mail server does not allow logging in on this connection: use security 'ssl' or 'starttls'"
            )
        raise ProtocolMismatch("The mail server offers no login method this app supports (LOGIN or AUTH=PLAIN)")
    if _quotable(user) and _quotable(password) and "LOGINDISABLED" not in capabilities:
        return imap._simple_command("LOGIN", _quoted(user), _quoted(password))
    user_bytes, password_bytes = user.encode(), password.encode()
    if "AUTH=PLAIN" in capabilities:
        token = base64.b64encode(b"\0" + user_bytes + b"\0" + password_bytes)
        imap.literal = _Answers(token).next
        return imap._simple_command("AUTHENTICATE", "PLAIN")
    # imaplib sends one literal per command and LOGIN needs two: each continuation answer
    # carries one argument and announces the next.
    imap.literal = _Answers(user_bytes + b" {%d}" % len(password_bytes), password_bytes).next
    return imap._simple_command("LOGIN", f"{{{len(user_bytes)}}}")


def _login(client: IMAPClient, params: ServerParams) -> None:
    """Log in; only a NO to LOGIN/AUTHENTICATE means wrong credentials, the rest is transient."""
    imap = client._imap
    if imap.state != "NONAUTH":
        return  # PREAUTH: the server logged us in already
    try:
        typ, data = _send_login(imap, params)
    except imaplib.IMAP4.abort as exc:
        # BYE or a dropped connection: throttling and "too many connections" look like this.
        logger.info("IMAP login cut off", extra={"mail_host": params.host})
        raise ServerBusy(f"The mail server ended the connection during login: {server_text(str(exc))}") from None
    except imaplib.IMAP4.error as exc:
        raise ServerMisbehaving(f"The mail server did not accept the login command: {server_text(str(exc))}") from None
    except OSError:
        logger.info("IMAP login interrupted", extra={"mail_host": params.host})
        raise ServerBusy("The connection to the mail server dropped or stalled during login") from None
    finally:
        imap.literal = None
    if typ == "OK":
        imap.state = "AUTH"
        return
    text = server_text(data)
    match = _RESPONSE_CODE.match(text)
    code = match.group(1).upper() if match else ""
    if code in _BUSY_CODES or (code == "ALERT" and _THROTTLE_WORDS.search(text)):
        logger.info("IMAP login deferred by the server", extra={"mail_host": params.host, "code": code})
        raise ServerBusy(f"The mail server turned the login away for now: {text}")
    logger.info("IMAP login rejected", extra={"mail_host": params.host})
    raise AuthFailed()


def _connect(params: ServerParams, settings: Settings, addresses: list[str], budget: Budget) -> IMAPClient:
    ctx = client_ssl_context(settings)
    client = _Client(params, addresses, ctx, budget)
    client.mailsync_counter = CommandCounter(client)
    if params.security == "starttls":
        if not client.has_capability("STARTTLS"):
            client.shutdown()
            raise TlsFailed("The mail server does not offer STARTTLS on this port")
        try:
            client.starttls(ctx)
        except IMAPClientError as exc:
            client.shutdown()
            raise TlsFailed(f"STARTTLS failed: {exc}") from None
    return client


def _close(client: IMAPClient) -> None:
    with suppress(OSError):
        client.shutdown()


@contextmanager
def open_imap(params: ServerParams, settings: Settings, *, deadline: float | None = None) -> Iterator[ImapSession]:
    """Connect, upgrade to TLS as configured, log in; always log out.

    ``deadline`` (a ``time.monotonic()`` instant) bounds the whole connection: every read gives
    up there with ``ServerMisbehaving``. Without one, an interactive budget applies.
    """
    addresses = precheck(params, settings)
    budget = Budget.from_settings(settings, deadline)
    with translate_errors(params):
        client = _connect(params, settings, addresses, budget)
        try:
            _login(client, params)
            # Read the post-login capabilities while the LOGIN response still carries them; after
            # the first SELECT imapclient would need a CAPABILITY command of its own.
            client.capabilities()
        except BaseException:
            _close(client)
            raise
    try:
        yield ImapSession(client, params, getattr(client, "mailsync_counter", None))
    finally:
        try:
            client.logout()
        except Exception:  # noqa: BLE001 - the work is done; a failing LOGOUT must not mask it
            _close(client)
