"""One logged-in IMAP connection: everything Mailsync asks of or changes in a user's mailbox.

Protocol only: this module knows nothing about storage. ``ImapConnection`` owns the connection's
state (the selected folder and whether it is read-only, whether QRESYNC is enabled) and the
``Strategy`` chosen once at login from the server's capabilities; the transport counts commands.

imapclient's public API carries every command it has a call for: SELECT, EXAMINE, STATUS,
LIST, SEARCH, COPY, MOVE, APPEND, STORE of \\Deleted, EXPUNGE, UID EXPUNGE, ENABLE, UNSELECT
and CLOSE (folder names go to it as this server spells them, see ``mailbox_arg``). Built here
from imaplib's primitives, because imapclient has no call for them or loses what we need:

* LOGIN/AUTHENTICATE: a NO's response code tells wrong credentials from "not now", and a
  LOGIN with two literals (non-ASCII credentials without AUTH=PLAIN) has no imapclient call;
* EXAMINE with CONDSTORE/QRESYNC parameters, and the VANISHED and FETCH answers to it;
* LIST ... RETURN (SPECIAL-USE) and LIST ... RETURN (STATUS ...);
* UID FETCH, and the UID STORE of \\Seen whose FETCH answer is read: imapclient keys a UID-less
  (unsolicited) FETCH by its sequence number, which could be mistaken for a UID;
* COPYUID/APPENDUID, read from the response codes imaplib files away.

This is the only module that touches imaplib's internals.

Errors (all ``MailboxError`` subclasses, never raw imaplib/imapclient exceptions), by what the
caller must do (see ``mailsync.errors``):

* ``FolderMissing``: the folder worked on, or a move's destination, does not exist (any more).
  Skip that folder or fail that operation, never the account. ``status()`` never raises it; a
  missing folder is simply absent from its result.
* Reads (``status``, ``examine``, ``changes_since``, ``search_*``, ``flags``, ``summaries``,
  ``fetch*``, ``find_internet_message_ids``, ``list_folder_names``): any other NO/BAD, a dropped
  connection or an unparseable response is ``ConnectFailed``: retry later.
* Writes (``set_seen``, ``move``, ``remove``, ``append``, ``find_by_*``): any other NO/BAD to
  one of our commands is ``OperationRefused`` (fail that operation); a NO with ``[UNAVAILABLE]``,
  ``[INUSE]`` or ``[SERVERBUG]`` is ``ServerBusy`` (retry later); a dropped connection, or a new
  message that could not be found again without UIDPLUS, is ``ConnectFailed``.
* ``ExtensionMissing``: ``changes_since()`` on a server without CONDSTORE; check
  ``has_condstore`` and use the full-scan fallback instead.
* Login: ``AuthFailed`` (wrong credentials), ``ServerBusy`` (turned away for now),
  ``TlsFailed``, ``ProtocolMismatch``, ``ServerMisbehaving``. Socket, TLS and timeout failures
  map as in ``translate_errors``.

Only what the server advertises is used. Dovecot, for one, sends COPYUID/APPENDUID even when
UIDPLUS is hidden from its capabilities; those codes are ignored then, since without UIDPLUS
nothing promises what they mean, and the UIDNEXT-and-search fallback is taken instead.

Courier-IMAP refuses APPEND into the mailbox the session has EXAMINEd ("NO Current box is
selected READ-ONLY."), so ``append`` first leaves such a selection (UNSELECT, else CLOSE, which
expunges nothing on a read-only selection).
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.datetime_util import parse_to_datetime
from imapclient.exceptions import IMAPClientError
from imapclient.response_parser import gen_parsed_response
from imapclient.util import to_unicode

from mailsync.config import Settings
from mailsync.errors import (
    AccessTokenRejected,
    AuthFailed,
    ConnectFailed,
    ExtensionMissing,
    FolderMissing,
    MailboxError,
    OperationRefused,
    ProtocolMismatch,
    ServerBusy,
    ServerMisbehaving,
    TlsFailed,
)
from mailsync.flags import cap_flags
from mailsync.mailbox import gmail
from mailsync.mailbox.base import (
    SPECIAL_USE_FLAGS,
    ServerFolder,
    ServerParams,
    client_ssl_context,
    precheck,
    translate_errors,
)
from mailsync.mailbox.gmail import GmailAttributes
from mailsync.mailbox.imap import BudgetedClient, BudgetedIMAP4, folder_name, sent_raw, wire_name
from mailsync.mailbox.strategy import ChangeTracking, ExpungeMethod, MoveMethod, NewUidMethod, Strategy
from mailsync.mailbox.transport import Budget, server_text
from mailsync.mime import normalise_msg_id
from mailsync.observability import logger

__all__ = [
    "CONTENT_CHUNK",
    "FETCH_CHUNK",
    "SEARCH_CHUNK",
    "FetchedMessage",
    "FolderChanges",
    "FolderStatus",
    "ImapConnection",
    "MessageSummary",
    "compact_uid_set",
    "open_imap",
]

# UIDs per UID FETCH of flags/summaries/bodies. Keeps command lines well below server limits
# (Dovecot: 64 KiB) even for scattered UIDs, and each response a bounded size.
FETCH_CHUNK = 1000
# Message-IDs OR'ed into one UID SEARCH; each criterion costs the server a header scan.
SEARCH_CHUNK = 50
# Full messages per UID FETCH when looking for one by content: bounds the memory one response
# needs, since messages can be large.
CONTENT_CHUNK = 20

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_NOT_SELECTABLE = {"\\noselect", "\\nonexistent"}
_SPECIAL_USE = {flag.lower(): flag for flag in SPECIAL_USE_FLAGS}
# RFC 5530 response codes that say "not now" rather than "no such folder" to a read.
_TRANSIENT_CODES = {"UNAVAILABLE", "SERVERBUG", "INUSE", "LIMIT", "CONTACTADMIN"}
# RFC 5530 codes of a NO to a write that says "not now": retried later, not a refusal.
_BUSY_CODES = {"UNAVAILABLE", "INUSE", "SERVERBUG"}
# imapclient raises a NO as "<command> failed: <the server's text>".
_IMAPCLIENT_NO = re.compile(r"^\S+ failed: (.*)$", re.DOTALL)
_MISSING_CODES = {"TRYCREATE", "NONEXISTENT"}
# NO response codes to LOGIN that say "not now" rather than "wrong credentials".
_LOGIN_BUSY_CODES = {"UNAVAILABLE", "LIMIT", "INUSE", "SERVERBUG"}
# [ALERT] is free text: Gmail and Microsoft 365 throttle logins with it.
_THROTTLE_WORDS = re.compile(
    r"too many|try again|later|throttl|rate.?limit|temporar|busy|simultaneous|exceeded|unavailable", re.IGNORECASE
)
_RESPONSE_CODE = re.compile(r"^\[([A-Za-z-]+)")
_SUMMARY_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
_GMAIL_SUMMARY_ITEMS = f"{_SUMMARY_ITEMS[:-1]} {gmail.FETCH_ITEMS})"
_BODY_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"
_HEADER_ITEMS = "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
_FOLDED = re.compile(rb"\r?\n[ \t]+")
# Untagged responses our commands cause and nobody reads later; popped so a long session's
# imaplib buffer does not grow with every move.
_NOISE = ("EXPUNGE", "VANISHED", "EXISTS", "RECENT", "FETCH", "OK", "HIGHESTMODSEQ")


@dataclass(frozen=True)
class FolderStatus:
    name: str
    uidvalidity: int
    uidnext: int  # 0 when the server did not report it
    messages: int
    highestmodseq: int | None  # None when the server has no CONDSTORE (or no modseqs for this folder)


@dataclass(frozen=True)
class MessageSummary:
    uid: int
    flags: tuple[str, ...]  # sorted, without \Recent
    internal_date: datetime  # aware, UTC
    size: int
    internet_message_id: str | None  # without <>, stripped; None if the header is absent or empty
    gmail: GmailAttributes | None = None  # X-GM-MSGID/THRID/LABELS, only from a Gmail server


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    flags: tuple[str, ...]
    internal_date: datetime
    size: int
    raw: bytes


@dataclass(frozen=True)
class FolderChanges:
    status: FolderStatus
    # uid -> current flags for every message whose modseq is above the given one; this includes
    # messages added since then, so callers compare against status.uidnext / their own records.
    changed_flags: dict[int, tuple[str, ...]]
    # UIDs expunged since the modseq (QRESYNC only; may include UIDs the caller never saw).
    # None when not known: CONDSTORE-only, or UIDVALIDITY changed.
    vanished: list[int] | None


@dataclass(frozen=True)
class _Selection:
    folder_key: str
    read_only: bool
    # imaplib starts a new dict of untagged responses with every SELECT/EXAMINE, so a selection
    # made by other code on the same imaplib connection (tests, diagnostics through ``client``)
    # is recognised by identity even when it is of the same folder name.
    responses: dict[str, Any]


def compact_uid_set(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1:3,7,9:10"`` (sorted, deduplicated)."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


def _expand_uid_set(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            low, high = sorted(int(x) for x in part.split(":", 1))
            out.update(range(low, high + 1))
        else:
            out.add(int(part))
    return out


def _chunks[T](items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(value: object) -> str:
    # The parser turns all-digit atoms into ints (a folder named "2024", a keyword "1").
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes | str):
        return to_unicode(value)
    raise ConnectFailed(f"Unexpected value in the mail server's response: {value!r}")


def _folder_name(value: object) -> str:
    # Decoded from the wire bytes; a name sent raw ("R&D") stays as sent, as in the LIST.
    if isinstance(value, bytes):
        return folder_name(value)
    return _text(value)


def _flags(value: object) -> tuple[str, ...]:
    if not isinstance(value, tuple):
        return ()
    # \Recent belongs to whichever session saw the message first; storing it would make
    # flags flip between syncs for no reason. Bounded in count and bytes (system flags kept
    # first): thousands of keywords on one message would make its every write fail.
    return cap_flags({_text(f) for f in value} - {"\\Recent"})


def _internal_date(value: object) -> datetime:
    if not isinstance(value, bytes | str):
        raise ConnectFailed(f"The mail server sent an invalid INTERNALDATE: {value!r}")
    try:
        # normalise=False keeps the server's offset; imapclient's default converts to naive
        # local time, which depends on the machine's TZ.
        parsed = parse_to_datetime(value.encode() if isinstance(value, str) else value, normalise=False)
    except ValueError:
        raise ConnectFailed(f"The mail server sent an invalid INTERNALDATE: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _header_msg_id(block: object) -> str | None:
    if not isinstance(block, bytes):
        return None
    unfolded = _FOLDED.sub(b" ", block)
    for line in unfolded.split(b"\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"message-id":
            return normalise_msg_id(value.decode("utf-8", errors="replace"))
    return None


def _section(attrs: dict[bytes, Any], prefix: bytes) -> object:
    # Servers echo the section spec in their own case/spelling (MESSAGE-ID vs Message-ID).
    for key, value in attrs.items():
        if key.startswith(prefix):
            return value
    return None


def _parse_fetch(data: list[Any]) -> dict[int, dict[bytes, Any]]:
    """FETCH responses keyed by UID. Responses without UID are dropped.

    imapclient's parse_fetch_response keys UID-less (unsolicited) responses by sequence
    number, which could then be mistaken for the UID of the same value.
    """
    items = [item for item in data if item is not None]
    out: dict[int, dict[bytes, Any]] = {}
    if not items:
        return out
    parsed = gen_parsed_response(items)
    for _seq in parsed:
        fields = {k.encode(): v for k, v in _pairs(next(parsed, None), "FETCH").items()}
        uid = fields.get(b"UID")
        if isinstance(uid, int):
            out.setdefault(uid, {}).update(fields)
    return out


def _pairs(values: Any, what: str) -> dict[str, Any]:
    """An IMAP attribute list ``(NAME value NAME value ...)`` as a dict with upper-case names."""
    if not isinstance(values, tuple) or len(values) % 2:
        raise ConnectFailed(f"The mail server sent a malformed {what} response: {values!r}")
    return {_text(values[i]).upper(): values[i + 1] for i in range(0, len(values), 2)}


def _parse_status(data: list[Any]) -> list[tuple[str, dict[str, int]]]:
    items = [item for item in data if item is not None]
    out: list[tuple[str, dict[str, int]]] = []
    if not items:
        return out
    parsed = gen_parsed_response(items)
    for name in parsed:
        fields = _pairs(next(parsed, None), "STATUS")
        out.append((_folder_name(name), {k: int(v) for k, v in fields.items() if isinstance(v, int)}))
    return out


def _response_code(data: list[Any]) -> str | None:
    match = re.match(r"\[([A-Za-z-]+)", _response_text(data))
    return match.group(1).upper() if match else None


def _folder_key(name: str) -> str:
    # INBOX is case-insensitive (RFC 3501 5.1); every other name is not.
    return "INBOX" if name.upper() == "INBOX" else name


def _response_text(data: list[Any]) -> str:
    first = data[0] if data else b""
    return _text(first) if isinstance(first, bytes | str | int) else repr(first)


def _refusal_of(exc: imaplib.IMAP4.error) -> tuple[str | None, str] | None:
    """(response code, server text) of a NO that imapclient raised; None for anything else."""
    match = _IMAPCLIENT_NO.match(str(exc))
    if match is None:
        return None
    text = match.group(1)
    code = _RESPONSE_CODE.match(text)
    return (code.group(1).upper() if code else None, text)


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _wire_bytes(raw: bytes) -> bytes:
    # IMAP messages travel with CRLF line ends (imaplib.append converts the same way); the
    # server stores and later returns these bytes, so the content hash must be taken of them.
    return imaplib.MapCRLF.sub(imaplib.CRLF, raw)


def _aware(value: datetime | None) -> datetime | None:
    # A naive datetime is read as UTC, not local time, so results do not depend on the TZ of
    # the machine (imapclient would take the machine's).
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _flag_list(flags: Iterable[str]) -> list[str]:
    # \Recent is the server's to set; APPEND/STORE with it is a BAD on most servers.
    return sorted({f for f in flags if f and f.lower() != "\\recent"}, key=str.lower)


def _copyuid_target(values: list[Any], uid: int) -> int | None:
    """The destination UID of ``uid`` in ``COPYUID uidvalidity source-set dest-set`` codes."""
    for value in values:
        text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else str(value)
        parts = text.split()
        if len(parts) != 3:
            continue
        try:
            # RFC 4315: the sets pair up in ascending source-UID order.
            sources = sorted(_expand_uid_set(parts[1]))
            targets = sorted(_expand_uid_set(parts[2]))
        except ValueError:
            raise ServerMisbehaving(f"The mail server sent a malformed COPYUID: {text!r}") from None
        if len(sources) == len(targets) and uid in sources:
            return targets[sources.index(uid)]
    return None


def _appenduid(values: list[Any]) -> int | None:
    for value in reversed(values):
        parts = value.split() if isinstance(value, bytes) else []
        if len(parts) == 2 and parts[1].isdigit():
            return int(parts[1])
    return None


# -- login -----------------------------------------------------------------------------------


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


def _send_oauth(imap: imaplib.IMAP4, params: ServerParams, capabilities: set[str]) -> tuple[str, list]:
    """AUTHENTICATE OAUTHBEARER (RFC 7628) where offered, else XOAUTH2 (Google's and Microsoft's).

    On failure the server sends an error challenge before its NO; the second answer is the
    reply each mechanism requires to it (OAUTHBEARER: ^A, XOAUTH2: an empty line).
    """
    assert params.access_token is not None
    user, token = params.username.encode(), params.access_token.encode()
    if "AUTH=OAUTHBEARER" in capabilities:
        gs2 = b"n,a=" + user.replace(b"=", b"=3D").replace(b",", b"=2C") + b","
        message = gs2 + b"\x01host=" + params.host.encode() + b"\x01port=%d" % params.port
        message += b"\x01auth=Bearer " + token + b"\x01\x01"
        imap.literal = _Answers(base64.b64encode(message), base64.b64encode(b"\x01")).next
        return imap._simple_command("AUTHENTICATE", "OAUTHBEARER")
    if "AUTH=XOAUTH2" in capabilities:
        message = b"user=" + user + b"\x01auth=Bearer " + token + b"\x01\x01"
        imap.literal = _Answers(base64.b64encode(message), b"").next
        return imap._simple_command("AUTHENTICATE", "XOAUTH2")
    raise ProtocolMismatch("The mail server offers no OAuth2 login (AUTH=XOAUTH2 or AUTH=OAUTHBEARER)")


def _send_login(imap: imaplib.IMAP4, params: ServerParams) -> tuple[str, list]:
    """LOGIN, or AUTHENTICATE PLAIN in UTF-8 for credentials a quoted string cannot carry."""
    user, password = params.username, params.password
    capabilities = set(imap.capabilities)
    if params.access_token is not None:
        return _send_oauth(imap, params, capabilities)
    if "LOGINDISABLED" in capabilities and "AUTH=PLAIN" not in capabilities:
        # LOGIN would send the password where the server said it must not go; its NO would
        # then read as a wrong password and take the account off the schedule.
        if params.security == "none":
            raise TlsFailed(
                "The mail server does not allow logging in on this connection: use security 'ssl' or 'starttls'"
            )
        raise ProtocolMismatch("The mail server offers no login method this app supports (LOGIN or AUTH=PLAIN)")
    if _quotable(user) and _quotable(password) and "LOGINDISABLED" not in capabilities:
        return imap._simple_command("LOGIN", _quote(user), _quote(password))
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
    if code in _LOGIN_BUSY_CODES or (code == "ALERT" and _THROTTLE_WORDS.search(text)):
        logger.info("IMAP login deferred by the server", extra={"mail_host": params.host, "code": code})
        raise ServerBusy(f"The mail server turned the login away for now: {text}")
    logger.info("IMAP login rejected", extra={"mail_host": params.host})
    if params.access_token is not None:
        raise AccessTokenRejected(f"The mail server refused the access token; it will be renewed: {text}")
    raise AuthFailed()


def _connect(params: ServerParams, settings: Settings, addresses: list[str], budget: Budget) -> IMAPClient:
    ctx = client_ssl_context(settings)
    client = BudgetedClient(params, addresses, ctx, budget)
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
def open_imap(
    params: ServerParams,
    settings: Settings,
    *,
    deadline: float | None = None,
    ignore_capabilities: Collection[str] = (),
) -> Iterator[ImapConnection]:
    """Connect, upgrade to TLS as configured, log in, pick the strategy; always log out.

    ``deadline`` (a ``time.monotonic()`` instant) bounds the whole connection: every read gives
    up there with ``ServerMisbehaving``. Without one, an interactive budget applies.
    ``ignore_capabilities`` are never used even when advertised (e.g. "QRESYNC", "MOVE").
    """
    addresses = precheck(params, settings)
    budget = Budget.from_settings(settings, deadline)
    with translate_errors(params):
        client = _connect(params, settings, addresses, budget)
        try:
            _login(client, params)
            # Read the post-login capabilities while the LOGIN response still carries them; after
            # the first SELECT imapclient would need a CAPABILITY command of its own.
            capabilities = sorted(to_unicode(c) for c in client.capabilities())
        except BaseException:
            _close(client)
            raise
    try:
        yield ImapConnection(client, params, capabilities, ignore_capabilities=ignore_capabilities)
    finally:
        try:
            client.logout()
        except Exception:  # noqa: BLE001 - the work is done; a failing LOGOUT must not mask it
            _close(client)


# -- the connection --------------------------------------------------------------------------


class ImapConnection:
    """A logged-in IMAP connection. Protocol only: callers decide what to store.

    Reads that take a ``folder`` EXAMINE it (read-only, never sets \\Seen) unless it is selected
    already, and leave it selected; ``search_*``, ``flags``, ``summaries`` and ``fetch*`` act on
    the folder currently selected. ``set_seen``, ``move`` and ``remove`` SELECT their folder
    read-write unless it is selected so already; ``find_*`` use whatever selection of the
    folder is there, else EXAMINE it. ``append`` never writes into a read-only selection of its
    folder (Courier refuses): it leaves it first.

    QRESYNC, once enabled by ``changes_since``, changes the connection for good: the server then
    reports expunges as ``VANISHED`` instead of ``EXPUNGE`` responses, which nothing else here
    needs to read.
    """

    def __init__(
        self,
        client: IMAPClient,
        params: ServerParams,
        capabilities: Sequence[str],
        *,
        ignore_capabilities: Collection[str] = (),
    ) -> None:
        self._client = client
        self._params = params
        self._capabilities = sorted(capabilities)
        self._strategy = Strategy.choose(capabilities, ignore=ignore_capabilities)
        # Names this server listed that are not valid modified UTF-7 ("R&D"): it knows them
        # only as sent, so they go back byte for byte (see ``mailbox_arg``).
        self.raw_names: set[str] = set()
        self._listed = False
        self._selected: _Selection | None = None
        self._qresync_enabled: bool | None = None
        # Whether the command running now is part of a write (its refusals are the operation's).
        self._writing = False

    # -- the session ----------------------------------------------------------------------

    @property
    def client(self) -> IMAPClient:
        """The underlying imapclient connection, for tests and diagnostics only."""
        return self._client

    @property
    def params(self) -> ServerParams:
        return self._params

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def command_count(self) -> int:
        """IMAP commands sent on this connection so far (LOGIN and CAPABILITY included)."""
        imap = self._client._imap
        return imap.commands_sent if isinstance(imap, BudgetedIMAP4) else 0

    def capabilities(self) -> list[str]:
        """What the server advertised after login (whatever this session ignores included)."""
        return list(self._capabilities)

    def has_capability(self, name: str) -> bool:
        return name.upper() in (c.upper() for c in self._capabilities)

    @property
    def has_condstore(self) -> bool:
        return self._strategy.changes is not ChangeTracking.NONE

    @property
    def has_qresync(self) -> bool:
        """Whether ``changes_since`` uses QRESYNC (and so reports ``vanished``)."""
        return self._strategy.changes is ChangeTracking.QRESYNC

    @property
    def has_list_status(self) -> bool:
        return self._strategy.list_status

    @property
    def has_move(self) -> bool:
        return self._strategy.move is MoveMethod.MOVE

    @property
    def is_gmail(self) -> bool:
        """Whether the server offers Gmail's extensions (``X-GM-EXT-1``: labels as folders)."""
        return self.has_capability(gmail.CAPABILITY)

    @property
    def has_uidplus(self) -> bool:
        return self._strategy.new_uid is NewUidMethod.REPORTED

    # -- folders ---------------------------------------------------------------------------

    def list_folders(self) -> list[ServerFolder]:
        """Every folder the server lists. One command (LIST, with SPECIAL-USE when offered)."""
        with translate_errors(self._params):
            # Names come back raw and are decoded below: one name that is not valid modified
            # UTF-7 must not fail the whole list.
            try:
                with self._wire_names():
                    raw = self._list_raw()
            except IMAPClientError as exc:
                raise ConnectFailed(f"The mail server refused to list folders: {exc}") from None
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

    def list_folder_names(self) -> list[str]:
        """Names of all selectable folders. One command (LIST)."""
        with self._guard("listing folders", write=False):
            folders = self.list_folders()
        return [f.name for f in folders if not {flag.lower() for flag in f.flags} & _NOT_SELECTABLE]

    def mailbox_arg(self, folder: str) -> str:
        """``folder`` as a command argument, spelled the way this server spells it.

        "R&D" is "R&-D" in modified UTF-7 to a server that follows RFC 3501, but "R&D" to one
        that listed it raw; which one only its LIST tells, so a name with "&" costs one LIST
        per session when none was done yet.
        """
        return _quote(self._wire(folder))

    def _wire(self, folder: str) -> str:
        """``folder`` as this server spells it, unquoted (see ``mailbox_arg``)."""
        if "&" in folder and not self._listed:
            self.list_folders()
        return wire_name(folder, raw=folder in self.raw_names)

    @contextmanager
    def _wire_names(self) -> Iterator[None]:
        """imapclient's folder calls take and return names as the server spells them (``_wire``),
        not its own modified UTF-7 spelling of them."""
        encode, self._client.folder_encode = self._client.folder_encode, False
        try:
            yield
        finally:
            self._client.folder_encode = encode

    def status(self, folders: Sequence[str]) -> dict[str, FolderStatus]:
        """Status of each existing folder in ``folders``, keyed by the name as given.

        Commands: one (LIST ... RETURN (STATUS ...)) with LIST-STATUS and several folders,
        otherwise one STATUS per folder. Missing or unselectable folders are left out.
        """
        wanted: dict[str, str] = {}
        for name in folders:
            wanted.setdefault(_folder_key(name), name)
        if not wanted:
            return {}
        items = "MESSAGES UIDNEXT UIDVALIDITY" + (" HIGHESTMODSEQ" if self.has_condstore else "")
        found: dict[str, FolderStatus] = {}
        with self._guard("reading the folder status", write=False):
            if self._strategy.list_status and len(wanted) > 1:
                reported = self._list_status(items)
            else:
                reported = []
                for name in wanted.values():
                    reported.extend(self._status_one(name, items))
        for server_name, values in reported:
            requested = wanted.get(_folder_key(server_name))
            if requested is None or "UIDVALIDITY" not in values:
                continue
            found[requested] = FolderStatus(
                name=requested,
                uidvalidity=values["UIDVALIDITY"],
                uidnext=values.get("UIDNEXT", 0),
                messages=values.get("MESSAGES", 0),
                highestmodseq=values.get("HIGHESTMODSEQ") or None,
            )
        return found

    def examine(self, folder: str) -> FolderStatus:
        """Select ``folder`` read-only. One command (EXAMINE); raises ``FolderMissing``."""
        with self._guard(f"opening {folder!r}", write=False):
            return self._examine(folder, "(CONDSTORE)" if self.has_condstore else None)

    def changes_since(self, folder: str, uidvalidity: int, modseq: int) -> FolderChanges:
        """Flag changes (and, with QRESYNC, expunges) in ``folder`` since ``modseq``.

        Commands: QRESYNC: EXAMINE (QRESYNC ...), preceded once per connection by ENABLE
        QRESYNC (and UNSELECT if a folder is selected then). CONDSTORE only: EXAMINE plus
        UID FETCH ... (CHANGEDSINCE), the FETCH skipped when nothing can have changed.
        ``vanished`` is None whenever QRESYNC was not used (not offered or ignored, or a folder
        was selected and the server has no UNSELECT to leave it for ENABLE).
        Raises ``ExtensionMissing`` without CONDSTORE and ``FolderMissing`` for a missing folder.
        """
        if not self.has_condstore:
            raise ExtensionMissing("The mail server does not support CONDSTORE; a full flag scan is needed")
        if modseq < 1:
            raise ValueError("modseq must be a positive mod-sequence reported by the server")
        with self._guard(f"reading changes in {folder!r}", write=False):
            if self.has_qresync and self._enable_qresync():
                return self._changes_qresync(folder, uidvalidity, modseq)
            return self._changes_condstore(folder, uidvalidity, modseq)

    # -- reads in the selected folder --------------------------------------------------------

    def search_since(self, since: date, *, below: int | None = None) -> list[int]:
        """UIDs with an INTERNALDATE on or after ``since`` (server's day boundaries), ascending;
        with ``below``, only UIDs under it (a snapshot's UIDNEXT).

        One command (UID SEARCH SINCE); none when ``below`` leaves no UID.
        """
        criterion = f"SINCE {since.day}-{_MONTHS[since.month - 1]}-{since.year}"
        if below is not None:
            if below <= 1:
                return []
            criterion = f"UID 1:{below - 1} {criterion}"
        with self._guard("searching messages by date", write=False):
            found = self._uid_search(criterion)
        return [uid for uid in found if below is None or uid < below]

    def search_from_uid(self, first_uid: int, *, below: int | None = None) -> list[int]:
        """UIDs >= ``first_uid``, ascending; with ``below``, only UIDs under it (a snapshot's UIDNEXT).

        One command (UID SEARCH UID n:* or n:below-1); none when the range is empty.
        """
        if first_uid < 1:
            first_uid = 1
        if below is not None and below <= first_uid:
            return []
        upper = "*" if below is None else str(below - 1)
        with self._guard("searching new messages", write=False):
            found = self._uid_search(f"UID {first_uid}:{upper}")
        # "n:*" with n above the highest UID means "highest:n", so the newest message comes
        # back even though it is older than first_uid.
        return [uid for uid in found if uid >= first_uid and (below is None or uid < below)]

    def flags(self, uids: Sequence[int]) -> dict[int, tuple[str, ...]]:
        """Current flags of those ``uids`` that still exist.

        One UID FETCH (FLAGS) per FETCH_CHUNK UIDs; none for an empty input.
        """
        out: dict[int, tuple[str, ...]] = {}
        with self._guard("reading message flags", write=False):
            for chunk in _chunks(sorted(set(uids)), FETCH_CHUNK):
                for uid, attrs in self._uid_fetch(chunk, "(UID FLAGS)").items():
                    out[uid] = _flags(attrs.get(b"FLAGS"))
        return out

    def summaries(self, uids: Sequence[int]) -> list[MessageSummary]:
        """Flags, date, size and Message-ID of those ``uids`` that still exist, by UID.

        One UID FETCH per FETCH_CHUNK UIDs (compact UID ranges in each); none for an empty input.
        """
        out: list[MessageSummary] = []
        with self._guard("reading message summaries", write=False):
            for chunk in _chunks(sorted(set(uids)), FETCH_CHUNK):
                fetched = self._uid_fetch(chunk, _GMAIL_SUMMARY_ITEMS if self.is_gmail else _SUMMARY_ITEMS)
                for uid in sorted(fetched):
                    attrs = fetched[uid]
                    out.append(
                        MessageSummary(
                            uid=uid,
                            flags=_flags(attrs.get(b"FLAGS")),
                            internal_date=_internal_date(attrs.get(b"INTERNALDATE")),
                            size=int(attrs.get(b"RFC822.SIZE") or 0),
                            internet_message_id=_header_msg_id(_section(attrs, b"BODY[HEADER.FIELDS")),
                            gmail=gmail.parse_attributes(attrs) if self.is_gmail else None,
                        )
                    )
        return out

    def fetch(self, uids: Sequence[int]) -> list[FetchedMessage]:
        """Full raw messages (BODY.PEEK[], so \\Seen is left alone) of those ``uids`` that exist.

        One UID FETCH per FETCH_CHUNK UIDs; the caller bounds the batch by count and bytes.
        """
        return self._fetch_raw(uids, _BODY_ITEMS, b"BODY[]", "downloading messages")

    def fetch_headers(self, uids: Sequence[int], max_bytes: int) -> list[FetchedMessage]:
        """The header section only (``raw``), at most ``max_bytes`` of it, of those ``uids`` that exist.

        For messages over the size cap: their body is never transferred. One UID FETCH per
        FETCH_CHUNK UIDs; ``size`` is the whole message's RFC822.SIZE.
        """
        items = f"(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER]<0.{max(1, int(max_bytes))}>)"
        return self._fetch_raw(uids, items, b"BODY[HEADER]", "downloading message headers")

    def find_internet_message_ids(self, folder: str, internet_message_ids: Sequence[str]) -> set[str]:
        """Which of ``internet_message_ids`` (normalised, see ``normalise_msg_id``) exist in ``folder``.

        Commands: EXAMINE, one UID SEARCH per SEARCH_CHUNK ids, one UID FETCH of the hits'
        Message-ID header per FETCH_CHUNK hits (SEARCH HEADER matches substrings, so hits are
        checked exactly). None at all for an empty input. Ids that are not plain ASCII cannot
        be searched for with the US-ASCII charset every server has and are never reported.
        """
        wanted = {n for n in (normalise_msg_id(m) for m in internet_message_ids) if n}
        searchable = sorted(m for m in wanted if m.isascii() and m.isprintable())
        if not searchable:
            return set()
        with self._guard(f"looking for messages in {folder!r}", write=False):
            self._examine(folder, None)
            hits: set[int] = set()
            for chunk in _chunks(searchable, SEARCH_CHUNK):
                criteria = " ".join(f"HEADER Message-ID {_quote(m)}" for m in chunk)
                hits.update(self._uid_search("OR " * (len(chunk) - 1) + criteria))
            found = {m for m in self._msg_ids(sorted(hits)).values() if m in wanted}
        return found

    def gmail_locate(self, folder: str, msgids: Sequence[int]) -> dict[int, int]:
        """Gmail only: the UID in ``folder`` of each of ``msgids`` (X-GM-MSGID) listed there.

        Commands: EXAMINE, one UID SEARCH per SEARCH_CHUNK ids, one UID FETCH (X-GM-MSGID) of
        the hits per FETCH_CHUNK; none for an empty input. Raises ``FolderMissing``.
        """
        asked = {int(m) for m in msgids}
        wanted = sorted(asked)
        if not wanted:
            return {}
        found: dict[int, int] = {}
        with self._guard(f"looking for messages in {folder!r}", write=False):
            self._examine(folder, None)
            hits: set[int] = set()
            for chunk in _chunks(wanted, SEARCH_CHUNK):
                criteria = " ".join(f"X-GM-MSGID {m}" for m in chunk)
                hits.update(self._uid_search("OR " * (len(chunk) - 1) + criteria))
            for chunk in _chunks(sorted(hits), FETCH_CHUNK):
                for uid, attrs in sorted(self._uid_fetch(chunk, "(UID X-GM-MSGID)").items()):
                    parsed = gmail.parse_attributes(attrs)
                    if parsed is not None and parsed.msgid in asked:
                        found.setdefault(parsed.msgid, uid)
        return found

    def gmail_add_label(self, folder: str, uid: int, dest: str, special_use: str | None = None) -> int | None:
        """Gmail only: list the message ``uid`` of ``folder`` in ``dest`` too, by adding the
        label of ``dest`` (``UID STORE +X-GM-LABELS``); nothing is expunged. Its UID in
        ``dest``, or None when ``uid`` is not in ``folder`` (any more).

        Commands: SELECT (unless selected read-write already), UID FETCH (X-GM-MSGID), UID STORE,
        then EXAMINE ``dest``, UID SEARCH X-GM-MSGID and UID FETCH (X-GM-MSGID).
        """
        with self._guard(f"labelling a message of {folder!r} for {dest!r}", write=True):
            self._select(folder, writable=True)
            parsed = gmail.parse_attributes(self._uid_fetch([uid], "(UID X-GM-MSGID)").get(uid, {}))
            if parsed is None:
                return None
            label = gmail.label_arg(gmail.label_for(dest, special_use))
            typ, data = self._imap._simple_command("UID", "STORE", str(uid), "+X-GM-LABELS.SILENT", f"({label})")
            self._check_ok(typ, data, "STORE")
        return self.gmail_locate(dest, [parsed.msgid]).get(parsed.msgid)

    # -- writes ------------------------------------------------------------------------------

    def set_seen(self, folder: str, uid: int, seen: bool) -> tuple[str, ...] | None:
        """Add or remove \\Seen on one message, leaving its other flags alone.

        Returns the message's flags afterwards (sorted, without \\Recent), or None when ``uid``
        does not exist in ``folder`` (moved or expunged meanwhile). Commands: SELECT (unless
        selected read-write already), UID STORE, and a UID FETCH (FLAGS) only when the server
        sent no FETCH for the UID, which Dovecot does when the flag was already as asked.
        """
        with self._guard(f"changing flags in {folder!r}", write=True):
            self._select(folder, writable=True)
            imap = self._imap
            imap.untagged_responses.pop("FETCH", None)
            # +FLAGS/-FLAGS rather than FLAGS: replacing the set would drop \Answered,
            # \Flagged and keywords another client set since we last looked.
            typ, data = imap._simple_command("UID", "STORE", str(uid), "+FLAGS" if seen else "-FLAGS", "(\\Seen)")
            self._check_ok(typ, data, "STORE")
            lines = imap.untagged_responses.pop("FETCH", None) or []
            attrs = _parse_fetch(lines).get(uid)
            if attrs is not None and b"FLAGS" in attrs:
                return _flags(attrs[b"FLAGS"])
            current = self._uid_fetch([uid], "(UID FLAGS)").get(uid)
            return None if current is None else _flags(current.get(b"FLAGS"))

    def move(
        self, folder: str, uid: int, dest: str, *, internet_message_id: str | None, content_sha256: str | None
    ) -> int | None:
        """Move one message from ``folder`` to ``dest``; its UID there, or None if ``uid`` is
        not in ``folder`` (any more), in which case nothing is done. Safe to repeat after a
        crash, except without MOVE: a crash between COPY and EXPUNGE leaves the copy in ``dest``
        and the source in place, so a repeat makes a second copy.

        ``internet_message_id``/``content_sha256`` identify the copy in ``dest`` when the server has no
        UIDPLUS; with both None the source is downloaded once to hash it.

        Commands: MOVE + UIDPLUS: SELECT (unless selected read-write already), UID MOVE.
        COPY + UIDPLUS: SELECT, UID COPY, UID STORE, UID EXPUNGE. Without UIDPLUS: SELECT,
        UID SEARCH (exists? and who else is \\Deleted), STATUS dest, UID MOVE, or UID COPY +
        UID STORE + EXPUNGE (with two more UID STOREs when others have \\Deleted messages),
        then EXAMINE dest and UID FETCH of its new Message-IDs (plus bodies when matching by
        content).
        """
        if _folder_key(folder) == _folder_key(dest):
            raise ValueError("move(): source and destination are the same folder")
        reported = self._strategy.new_uid is NewUidMethod.REPORTED
        with self._guard(f"moving a message from {folder!r} to {dest!r}", write=True):
            self._select(folder, writable=True)
            uidnext = 0
            others_deleted: list[int] = []
            if not reported:
                # Without COPYUID nothing after the COPY/MOVE would say whether the UID still
                # existed, so ask first; the same search lists other clients' \Deleted messages
                # that a plain EXPUNGE must spare.
                found = self._uid_search(f"OR UID {uid} DELETED")
                if uid not in found:
                    return None
                others_deleted = [u for u in found if u != uid]
                if internet_message_id is None and content_sha256 is None:
                    fetched = self._uid_fetch([uid], "(UID BODY.PEEK[])").get(uid, {})
                    body = fetched.get(b"BODY[]")
                    if not isinstance(body, bytes):
                        return None
                    content_sha256 = _sha256(body)
                uidnext = self._uidnext(dest)
            # With UIDPLUS every message copied or moved is reported in COPYUID (RFC 4315), so
            # none means the UID matched nothing (Dovecot: "OK No messages found").
            command = "MOVE" if self._strategy.move is MoveMethod.MOVE else "COPY"
            transferred, new_uid = self._transfer(command, uid, dest)
            if not transferred or (reported and new_uid is None):
                return None
            if self._strategy.move is MoveMethod.COPY_THEN_EXPUNGE:
                self._expunge_one(uid, others_deleted)
            if reported:
                return new_uid
            found_uid = self._find_new(dest, uidnext, internet_message_id, content_sha256)
            if found_uid is None:
                raise ConnectFailed(f"The message was moved to {dest!r} but could not be found there")
            return found_uid

    def remove(self, folder: str, uid: int) -> bool:
        """Expunge exactly this message (others' \\Deleted messages are spared); False if it is
        not there. Used to finish a move whose COPY went through before a crash."""
        with self._guard(f"removing a message from {folder!r}", write=True):
            self._select(folder, writable=True)
            found = self._uid_search(f"OR UID {uid} DELETED")
            if uid not in found:
                return False
            self._expunge_one(uid, [u for u in found if u != uid])
            return True

    def append(
        self,
        folder: str,
        raw: bytes,
        *,
        flags: Sequence[str],
        internal_date: datetime | None,
        internet_message_id: str | None,
        content_sha256: str | None,
    ) -> int:
        """APPEND ``raw`` with ``flags`` and ``internal_date``; returns the new message's UID.

        Not idempotent by itself: a caller that may repeat it checks ``find_by_internet_message_id``
        (or ``find_by_content``) first. ``raw`` is sent with CRLF line ends; without UIDPLUS
        the copy is recognised by ``internet_message_id`` or else by the hash of the bytes sent, which
        is ``content_sha256`` whenever ``raw`` already had CRLF line ends (so that argument
        is not needed and only kept for symmetry with ``move``).

        Commands: with UIDPLUS, APPEND. Without: STATUS, APPEND, EXAMINE (unless the folder
        is selected), UID FETCH of the new Message-IDs (plus bodies when matching by content).
        Plus an UNSELECT (or CLOSE) first when the folder is the one selected read-only.
        """
        wire = _wire_bytes(raw)
        reported = self._strategy.new_uid is NewUidMethod.REPORTED
        with self._guard(f"adding a message to {folder!r}", write=True):
            uidnext = 0 if reported else self._uidnext(folder)
            imap = self._imap
            imap.untagged_responses.pop("APPENDUID", None)
            self._leave_read_only_selection(folder)
            try:
                with self._wire_names():
                    self._client.append(
                        self._wire(folder), wire, flags=_flag_list(flags), msg_time=_aware(internal_date)
                    )
            except IMAPClientError as exc:
                refusal = _refusal_of(exc)
                if refusal is not None and refusal[0] in _MISSING_CODES:
                    # RFC 3501: the target mailbox does not exist (and could be created).
                    raise FolderMissing(folder) from None
                raise
            appended = _appenduid(imap.untagged_responses.pop("APPENDUID", None) or [])
            self._drop_noise()
            if reported:
                if appended is None:
                    raise ServerMisbehaving("The mail server advertises UIDPLUS but sent no APPENDUID")
                return appended
            new_uid = self._find_new(folder, uidnext, internet_message_id, _sha256(wire))
            if new_uid is None:
                raise ConnectFailed(f"The message appended to {folder!r} could not be found there")
            return new_uid

    def find_by_internet_message_id(self, folder: str, internet_message_id: str) -> list[int]:
        """UIDs in ``folder`` whose Message-ID equals ``internet_message_id`` (normalised), ascending.

        Commands: EXAMINE (unless the folder is selected), UID SEARCH HEADER, and a UID FETCH of
        the hits' Message-ID, since SEARCH HEADER matches substrings (and ignores case).
        """
        wanted = normalise_msg_id(internet_message_id)
        if wanted is None:
            return []
        with self._guard(f"looking for a message in {folder!r}", write=True):
            self._select(folder, writable=False)
            hits = self._search_header_msg_id(wanted)
            return [uid for uid, found in self._msg_ids(hits).items() if found == wanted]

    def find_by_content(self, folder: str, content_sha256: str, since_uid: int = 1) -> list[int]:
        """UIDs >= ``since_uid`` in ``folder`` whose raw bytes hash to ``content_sha256``.

        Downloads every message from ``since_uid`` on, so keep the range small. Commands:
        EXAMINE (unless the folder is selected), UID SEARCH, one UID FETCH per CONTENT_CHUNK.
        """
        with self._guard(f"looking for a message in {folder!r}", write=True):
            self._select(folder, writable=False)
            first = max(since_uid, 1)
            # "n:*" with n above the highest UID means "highest:n" (RFC 3501), so filter.
            candidates = [u for u in self._uid_search(f"UID {first}:*") if u >= first]
            return self._matching_content(candidates, content_sha256)

    # -- internals: errors -------------------------------------------------------------------

    @property
    def _imap(self) -> imaplib.IMAP4:
        return self._client._imap

    @contextmanager
    def _guard(self, what: str, *, write: bool) -> Iterator[None]:
        """Map failures while ``what`` to the errors above; ``write`` picks the write policy."""
        outer, self._writing = self._writing, write
        try:
            with translate_errors(self._params):
                try:
                    yield
                except imaplib.IMAP4.readonly:
                    if not write:
                        raise ConnectFailed(f"The mail server dropped the connection while {what}") from None
                    # Another session made the selected mailbox read-only under us.
                    raise OperationRefused(f"The mail server made the folder read-only while {what}") from None
                except imaplib.IMAP4.abort as exc:
                    raise ConnectFailed(f"The mail server dropped the connection while {what}: {exc}") from None
                except imaplib.IMAP4.error as exc:
                    # A tagged BAD (imaplib raises it), a command illegal in the state, an
                    # unparseable response, or a NO to a command sent through imapclient.
                    if not write:
                        raise ConnectFailed(f"The mail server rejected a command while {what}: {exc}") from None
                    refusal = _refusal_of(exc)
                    if refusal is not None and refusal[0] in _BUSY_CODES:
                        raise ServerBusy(f"The mail server could not finish {what} now: {refusal[1]}") from None
                    raise OperationRefused(f"The mail server rejected a command while {what}: {exc}") from None
        finally:
            self._writing = outer

    def _refusal(self, message: str) -> MailboxError:
        """A refusal that is not the folder's absence: a read retries, a write fails the operation."""
        return OperationRefused(message) if self._writing else ConnectFailed(message)

    def _check_ok(self, typ: str, data: list[Any], command: str) -> None:
        if typ == "OK":
            return
        text = _response_text(data)
        if self._writing and _response_code(data) in _BUSY_CODES:
            raise ServerBusy(f"The mail server could not run {command} now: {text}")
        raise self._refusal(f"The mail server refused {command}: {typ} {text}")

    def _raise_open_failed(self, folder: str, code: str | None, text: str) -> None:
        if self._writing and code in _BUSY_CODES:
            raise ServerBusy(f"The mail server could not open the folder {folder!r} now: {text}")
        if code == "NONEXISTENT" or (self._writing and code in _MISSING_CODES):
            raise FolderMissing(folder)
        if code in _TRANSIENT_CODES:
            raise self._refusal(f"The mail server could not open the folder {folder!r} now: {text}")
        # Dovecot 2.3 (and others) say "NO Mailbox doesn't exist" without a response code,
        # so ask LIST before blaming the folder's absence.
        wire = self._wire(folder)
        self._imap.untagged_responses.pop("LIST", None)
        with self._wire_names():
            entries = self._client.list_folders("", wire)
        if not any(
            _folder_key(_folder_name(name)) == _folder_key(folder)
            and not {_text(flag).lower() for flag in flags} & _NOT_SELECTABLE
            for flags, _delimiter, name in entries
        ):
            raise FolderMissing(folder)
        raise self._refusal(f"The mail server refused to open the folder {folder!r}: {text}")

    # -- internals: folders and selection ------------------------------------------------------

    def _limit_folders(self) -> None:
        imap = self._imap
        if isinstance(imap, BudgetedIMAP4):
            cap = imap.budget.max_folders
            imap.limit_next_command(cap, f"The mail server listed more than {cap} folders")

    def _list_raw(self) -> list[tuple]:
        # Dovecot and others send SPECIAL-USE flags only when asked (RFC 6154 LIST-EXTENDED
        # RETURN option); imapclient has no call for it, so build that one command ourselves.
        if not self._strategy.special_use:
            self._limit_folders()
            return self._client.list_folders()
        imap = self._imap
        self._limit_folders()
        typ, data = imap._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
        if typ != "OK":
            self._limit_folders()
            return self._client.list_folders()
        typ, data = imap._untagged_response(typ, data, "LIST")
        return self._client._proc_folder_list(data)

    def _list_status(self, items: str) -> list[tuple[str, dict[str, int]]]:
        imap = self._imap
        imap.untagged_responses.pop("STATUS", None)
        typ, data = imap._simple_command("LIST", '""', '"*"', "RETURN", f"(STATUS ({items}))")
        self._check_ok(typ, data, "LIST-STATUS")
        imap.untagged_responses.pop("LIST", None)
        _, status_data = imap._untagged_response(typ, data, "STATUS")
        return _parse_status(status_data)

    def _status_one(self, folder: str, items: str) -> list[tuple[str, dict[str, int]]]:
        try:
            values = self._folder_status(folder, items.split())
        except IMAPClientError as exc:
            refusal = _refusal_of(exc)
            if refusal is None:
                raise
            code, text = refusal
            if code in _TRANSIENT_CODES:
                # "Try again later" must not read as "the folder is gone".
                raise ConnectFailed(f"The mail server could not report on {folder!r}: {text}") from None
            # Missing, \Noselect or not permitted: for the caller all mean "nothing to sync".
            return []
        # The server's spelling may differ (INBOX case); the STATUS answers this folder.
        return [(folder, values)]

    def _folder_status(self, folder: str, items: list[str]) -> dict[str, int]:
        """One STATUS; the integer items by upper-case name."""
        wire = self._wire(folder)
        # Left over from earlier commands, they would be read as this one's answer.
        self._imap.untagged_responses.pop("STATUS", None)
        with self._wire_names():
            try:
                values = self._client.folder_status(wire, items)
            except (IndexError, TypeError, ValueError):
                raise ConnectFailed(f"The mail server sent a malformed STATUS response for {folder!r}") from None
        return {_text(name).upper(): value for name, value in values.items() if isinstance(value, int)}

    def _uidnext(self, folder: str) -> int:
        """UIDNEXT of ``folder`` by STATUS; raises FolderMissing when it does not exist."""
        try:
            values = self._folder_status(folder, ["UIDNEXT"])
        except IMAPClientError as exc:
            refusal = _refusal_of(exc)
            if refusal is None:
                raise
            # Dovecot says "NO Mailbox doesn't exist" without a code; LIST tells a missing
            # folder from a refusal.
            self._raise_open_failed(folder, *refusal)
            raise  # not reached: _raise_open_failed always raises
        if "UIDNEXT" not in values:
            raise ServerMisbehaving(f"The mail server reported no UIDNEXT for {folder!r}")
        return values["UIDNEXT"]

    def _examine(self, folder: str, parameters: str | None) -> FolderStatus:
        if parameters is None:
            self._open(folder, read_only=True)
        else:
            self._examine_with(folder, parameters)
        return self._selected_status(folder)

    def _open(self, folder: str, *, read_only: bool) -> None:
        """SELECT (or with ``read_only`` EXAMINE) ``folder``."""
        imap = self._imap
        wire = self._wire(folder)
        self._selected = None
        try:
            with self._wire_names():
                self._client.select_folder(wire, readonly=read_only)
        except imaplib.IMAP4.readonly:
            # imaplib reports [READ-ONLY] to a SELECT as a connection abort; the folder is
            # selected, read-only. Marked so, so the next command does not raise it again.
            imap.is_readonly = True
            self._selected = _Selection(_folder_key(folder), True, imap.untagged_responses)
            raise OperationRefused(
                f"The mail server opened {folder!r} read-only; its messages cannot be changed"
            ) from None
        except IMAPClientError as exc:
            # A failed SELECT/EXAMINE leaves no mailbox selected (RFC 3501 6.3.1); imaplib knows.
            refusal = _refusal_of(exc)
            if refusal is None:
                raise
            self._raise_open_failed(folder, *refusal)
        except (IndexError, TypeError, ValueError):
            # imapclient parses EXISTS, UIDNEXT, ... itself; a server's garbage there lands here.
            raise ConnectFailed(f"The mail server sent a malformed answer to opening {folder!r}") from None
        self._selected = _Selection(_folder_key(folder), read_only, imap.untagged_responses)

    def _examine_with(self, folder: str, parameters: str) -> None:
        """EXAMINE with select parameters (CONDSTORE, QRESYNC), which imapclient cannot send."""
        imap = self._imap
        mailbox = self.mailbox_arg(folder)
        # Mirrors imaplib.IMAP4.select(): drop the old mailbox's responses so they cannot be
        # mistaken for this one's.
        imap.untagged_responses = {}
        imap.is_readonly = True
        self._selected = None
        typ, data = imap._simple_command("EXAMINE", mailbox, parameters)
        if typ != "OK":
            # A failed SELECT/EXAMINE leaves no mailbox selected (RFC 3501 6.3.1).
            imap.state = "AUTH"
            self._raise_open_failed(folder, _response_code(data), _response_text(data))
        imap.state = "SELECTED"
        self._selected = _Selection(_folder_key(folder), True, imap.untagged_responses)

    def _select(self, folder: str, *, writable: bool) -> None:
        """Make ``folder`` the selected one: reuse the current selection when it will do."""
        current = self._selection()
        if current is not None and current.folder_key == _folder_key(folder) and not (writable and current.read_only):
            return
        self._open(folder, read_only=not writable)

    def _selection(self) -> _Selection | None:
        """The selection this connection made, if it is still the one in force."""
        imap = self._imap
        current = self._selected
        if (
            current is None
            or imap.state != "SELECTED"
            or imap.untagged_responses is not current.responses
            or imap.is_readonly != current.read_only
        ):
            return None
        return current

    def _unselect(self) -> None:
        """Leave the selected folder: UNSELECT, else CLOSE (only ever on a read-only selection,
        where it expunges nothing, RFC 3501 6.4.2)."""
        if self._strategy.unselect:
            self._client.unselect_folder()
            if self._imap.state != "AUTH":  # imapclient returns a NO's text instead of raising
                raise self._refusal("The mail server refused UNSELECT")
        else:
            self._client.close_folder()
        self._selected = None

    def _leave_read_only_selection(self, folder: str) -> None:
        """Leave a read-only selection that may be ``folder`` before writing into it (Courier
        refuses APPEND into the mailbox the session has EXAMINEd); one not made by this object
        is left too, since its folder is unknown. A read-write selection stays (Courier accepts
        APPEND into it)."""
        imap = self._imap
        if imap.state != "SELECTED" or not imap.is_readonly:
            return
        current = self._selection()
        if current is not None and current.folder_key != _folder_key(folder):
            return
        self._unselect()
        self._drop_noise()

    def _selected_status(self, folder: str) -> FolderStatus:
        responses = self._imap.untagged_responses

        def last_int(key: str) -> int | None:
            values = responses.get(key) or []
            for value in reversed(values):
                try:
                    return int(value)
                except (TypeError, ValueError):
                    continue
            return None

        uidvalidity = last_int("UIDVALIDITY")
        if uidvalidity is None:
            raise ConnectFailed(f"The mail server reported no UIDVALIDITY for {folder!r}")
        # NOMODSEQ: this folder has no mod-sequences even though the server has CONDSTORE.
        modseq = None if "NOMODSEQ" in responses else last_int("HIGHESTMODSEQ")
        return FolderStatus(
            name=folder,
            uidvalidity=uidvalidity,
            uidnext=last_int("UIDNEXT") or 0,
            messages=last_int("EXISTS") or 0,
            highestmodseq=modseq or None,
        )

    # -- internals: change tracking ----------------------------------------------------------

    def _enable_qresync(self) -> bool:
        """ENABLE QRESYNC unless done on this connection; False if it cannot be enabled."""
        if self._qresync_enabled is not None:
            return self._qresync_enabled
        if self._imap.state == "SELECTED":
            # ENABLE is only valid in the authenticated state (RFC 5161). CLOSE would expunge a
            # read-write mailbox, so without UNSELECT stay on the CONDSTORE path.
            if not self._strategy.unselect:
                return False
            self._unselect()
        enabled = self._client.enable("QRESYNC")
        self._qresync_enabled = any(to_unicode(name).upper() == "QRESYNC" for name in enabled)
        return self._qresync_enabled

    def _changes_qresync(self, folder: str, uidvalidity: int, modseq: int) -> FolderChanges:
        status = self._examine(folder, f"(QRESYNC ({uidvalidity} {modseq}))")
        responses = self._imap.untagged_responses
        vanished_lines = responses.pop("VANISHED", None) or []
        fetch_lines = responses.pop("FETCH", None) or []
        if status.uidvalidity != uidvalidity:
            # The server ignores the QRESYNC parameter then; the caller must resync anyway.
            return FolderChanges(status=status, changed_flags={}, vanished=None)
        vanished: set[int] = set()
        for line in vanished_lines:
            text = _text(line) if isinstance(line, bytes | str) else ""
            text = re.sub(r"^\s*\(EARLIER\)\s*", "", text, flags=re.IGNORECASE)
            try:
                vanished |= _expand_uid_set(text)
            except ValueError:
                raise ConnectFailed(f"The mail server sent a malformed VANISHED response: {line!r}") from None
        changed = {
            uid: _flags(attrs[b"FLAGS"]) for uid, attrs in _parse_fetch(fetch_lines).items() if b"FLAGS" in attrs
        }
        return FolderChanges(status=status, changed_flags=changed, vanished=sorted(vanished))

    def _changes_condstore(self, folder: str, uidvalidity: int, modseq: int) -> FolderChanges:
        status = self._examine(folder, "(CONDSTORE)")
        if status.uidvalidity != uidvalidity:
            return FolderChanges(status=status, changed_flags={}, vanished=None)
        changed: dict[int, tuple[str, ...]] = {}
        nothing_new = status.highestmodseq is not None and status.highestmodseq <= modseq
        if status.messages and not nothing_new:
            fetched = self._uid_fetch(None, "(UID FLAGS)", f"(CHANGEDSINCE {modseq})")
            changed = {uid: _flags(attrs.get(b"FLAGS")) for uid, attrs in fetched.items()}
        return FolderChanges(status=status, changed_flags=changed, vanished=None)

    # -- internals: search and fetch -----------------------------------------------------------

    def _uid_search(self, criteria: str | list[str], charset: str | None = None) -> list[int]:
        # Left over from earlier commands, they would be read as this one's answer.
        self._imap.untagged_responses.pop("SEARCH", None)
        return sorted({int(uid) for uid in self._client.search(criteria, charset)})

    def _uid_fetch(
        self, uids: Sequence[int] | None, items: str, modifiers: str | None = None
    ) -> dict[int, dict[bytes, Any]]:
        """One UID FETCH; ``uids=None`` means all (1:*). Unrequested (unsolicited) UIDs are dropped."""
        imap = self._imap
        # Unsolicited FETCHes from earlier commands would otherwise be returned with this one.
        imap.untagged_responses.pop("FETCH", None)
        uid_set = "1:*" if uids is None else compact_uid_set(uids)
        args = [uid_set, items] + ([modifiers] if modifiers else [])
        typ, data = imap._simple_command("UID", "FETCH", *args)
        self._check_ok(typ, data, "FETCH")
        _, lines = imap._untagged_response(typ, data, "FETCH")
        fetched = _parse_fetch(lines)
        if uids is None:
            return fetched
        requested = set(uids)
        return {uid: attrs for uid, attrs in fetched.items() if uid in requested}

    def _fetch_raw(self, uids: Sequence[int], items: str, section: bytes, what: str) -> list[FetchedMessage]:
        out: list[FetchedMessage] = []
        with self._guard(what, write=False):
            for chunk in _chunks(sorted(set(uids)), FETCH_CHUNK):
                fetched = self._uid_fetch(chunk, items)
                for uid in sorted(fetched):
                    attrs = fetched[uid]
                    raw = _section(attrs, section)
                    out.append(
                        FetchedMessage(
                            uid=uid,
                            flags=_flags(attrs.get(b"FLAGS")),
                            internal_date=_internal_date(attrs.get(b"INTERNALDATE")),
                            size=int(attrs.get(b"RFC822.SIZE") or 0),
                            raw=raw if isinstance(raw, bytes) else b"",
                        )
                    )
        return out

    def _msg_ids(self, uids: Sequence[int]) -> dict[int, str | None]:
        out: dict[int, str | None] = {}
        for chunk in _chunks(sorted(set(uids)), FETCH_CHUNK):
            for uid, attrs in sorted(self._uid_fetch(chunk, _HEADER_ITEMS).items()):
                out[uid] = _header_msg_id(_section(attrs, b"BODY[HEADER.FIELDS"))
        return out

    def _msg_ids_from(self, first_uid: int) -> dict[int, str | None]:
        imap = self._imap
        imap.untagged_responses.pop("FETCH", None)
        typ, data = imap._simple_command("UID", "FETCH", f"{max(first_uid, 1)}:*", _HEADER_ITEMS)
        self._check_ok(typ, data, "FETCH")
        _, lines = imap._untagged_response(typ, data, "FETCH")
        return {
            uid: _header_msg_id(_section(attrs, b"BODY[HEADER.FIELDS"))
            for uid, attrs in sorted(_parse_fetch(lines).items())
            if uid >= first_uid
        }

    def _matching_content(self, uids: Sequence[int], content_sha256: str) -> list[int]:
        wanted = content_sha256.lower()
        matches: list[int] = []
        for chunk in _chunks(sorted(set(uids)), CONTENT_CHUNK):
            for uid, attrs in self._uid_fetch(chunk, "(UID BODY.PEEK[])").items():
                body = attrs.get(b"BODY[]")
                if isinstance(body, bytes) and _sha256(body) == wanted:
                    matches.append(uid)
        return sorted(matches)

    def _search_header_msg_id(self, wanted: str) -> list[int]:
        if wanted.isascii() and wanted.isprintable():
            return self._uid_search(f"HEADER Message-ID {_quote(wanted)}")
        # RFC 6532 allows UTF-8 ids; a quoted string cannot carry them, a literal can (imapclient
        # sends 8-bit arguments as literals), and only with a charset the server may refuse (a
        # NO then: better than a silent duplicate).
        return self._uid_search(["HEADER", "Message-ID", wanted], charset="UTF-8")

    # -- internals: moving and expunging -------------------------------------------------------

    def _transfer(self, command: str, uid: int, dest: str) -> tuple[bool, int | None]:
        """UID COPY or UID MOVE of one message: (False, None) if it is known to be gone, else
        (True, its new UID from COPYUID when the strategy trusts it)."""
        imap = self._imap
        imap.untagged_responses.pop("COPYUID", None)
        wire = self._wire(dest)
        try:
            with self._wire_names():
                if command == "MOVE":
                    self._client.move([uid], wire)
                else:
                    self._client.copy([uid], wire)
        except IMAPClientError as exc:
            refusal = _refusal_of(exc)
            if refusal is None:
                raise
            if refusal[0] == "EXPUNGEISSUED":
                # RFC 5530: expunged by another session but not yet announced to ours (Dovecot
                # does not sync before MOVE/COPY, unlike before STORE). For one UID: nothing done.
                self._drop_noise()
                return False, None
            if refusal[0] in _MISSING_CODES:
                raise FolderMissing(dest) from None
            raise
        # COPYUID arrives in an untagged OK before the EXPUNGE/VANISHED (MOVE) or in the tagged
        # OK (COPY); imaplib files the code of either under "COPYUID", which imapclient leaves.
        codes = imap.untagged_responses.pop("COPYUID", None) or []
        self._drop_noise()
        reported = self._strategy.new_uid is NewUidMethod.REPORTED
        return True, _copyuid_target(codes, uid) if reported else None

    def _mark_deleted(self, uids: Sequence[int], deleted: bool) -> None:
        for chunk in _chunks(sorted(set(uids)), FETCH_CHUNK):
            if deleted:
                self._client.add_flags(compact_uid_set(chunk), [b"\\Deleted"], silent=True)
            else:
                self._client.remove_flags(compact_uid_set(chunk), [b"\\Deleted"], silent=True)
        # .SILENT still gets FETCH (MODSEQ) responses once CONDSTORE is on.
        self._imap.untagged_responses.pop("FETCH", None)

    def _expunge_one(self, uid: int, others_deleted: list[int]) -> None:
        self._mark_deleted([uid], True)
        if self._strategy.expunge is ExpungeMethod.UID_EXPUNGE:
            self._client.uid_expunge([uid])
            self._drop_noise()
            return
        # Plain EXPUNGE removes every \Deleted message, so the ones other clients marked are
        # unmarked for its duration and marked again after. This is racy and cannot be made
        # safe without UIDPLUS: a message another client marks \Deleted after our UID SEARCH is
        # expunged with ours (as their own EXPUNGE would have done, only sooner); a client
        # looking in between sees the others unmarked; and if we die before the last STORE
        # they stay unmarked (un-deleted, which loses nothing).
        if others_deleted:
            self._mark_deleted(others_deleted, False)
        try:
            self._client.expunge()
        finally:
            if others_deleted:
                self._mark_deleted(others_deleted, True)
        self._drop_noise()

    def _find_new(
        self, folder: str, uidnext: int, internet_message_id: str | None, content_sha256: str | None
    ) -> int | None:
        """The message that arrived in ``folder`` at or after ``uidnext`` with this identity.

        One UID FETCH of the new messages' Message-ID (usually just ours, so no SEARCH is
        needed to narrow them down first), then their bodies only if matching by content.
        Several matches (identical mail delivered meanwhile) are interchangeable: the lowest
        UID is returned.
        """
        self._select(folder, writable=False)
        new_ids = self._msg_ids_from(uidnext)
        wanted = normalise_msg_id(internet_message_id)
        matches = [uid for uid, found in new_ids.items() if wanted is not None and found == wanted]
        if not matches and content_sha256:
            matches = self._matching_content(sorted(new_ids), content_sha256)
        return min(matches) if matches else None

    def _drop_noise(self) -> None:
        responses = self._imap.untagged_responses
        for key in _NOISE:
            responses.pop(key, None)
