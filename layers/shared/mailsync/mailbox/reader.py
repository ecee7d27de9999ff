"""Read side of the IMAP adapter: what the sync engine needs to learn about a mailbox.

Protocol only: this module knows nothing about storage. Every command goes through imaplib's
``_command`` so ``ImapSession.command_count`` sees it (imapclient's ``search()`` and other
``_raw_command`` users bypass it), and responses are parsed with imapclient's parser.

Errors (all ``MailboxError`` subclasses, never raw imaplib/imapclient exceptions):

* ``FolderGone`` (a ``ConnectFailed``): EXAMINE found no such folder, e.g. it was deleted or
  renamed between LIST/STATUS and EXAMINE. ``status()`` never raises it; a missing folder is
  simply absent from its result.
* ``ExtensionMissing`` (a ``ConnectFailed``): ``changes_since()`` on a server without
  CONDSTORE; check ``has_condstore`` and use the full-scan fallback instead.
* ``ConnectFailed``: any other NO/BAD from the server, a dropped connection or a response we
  cannot parse. Socket, TLS and timeout failures map as in ``translate_errors``.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from imapclient.datetime_util import parse_to_datetime
from imapclient.response_parser import gen_parsed_response
from imapclient.util import to_unicode

from mailsync.errors import ConnectFailed, FolderMissing
from mailsync.mailbox.base import translate_errors
from mailsync.mailbox.imap import ImapSession, folder_name, mailbox_arg
from mailsync.mime import normalise_message_id
from mailsync.sync.metadata import cap_flags

__all__ = [
    "FETCH_CHUNK",
    "SEARCH_CHUNK",
    "ExtensionMissing",
    "FetchedMessage",
    "FolderChanges",
    "FolderGone",
    "FolderStatus",
    "MailboxReader",
    "MessageSummary",
    "compact_uid_set",
]

# UIDs per UID FETCH of flags/summaries/bodies. Keeps command lines well below server limits
# (Dovecot: 64 KiB) even for scattered UIDs, and each response a bounded size.
FETCH_CHUNK = 1000
# Message-IDs OR'ed into one UID SEARCH; each criterion costs the server a header scan.
SEARCH_CHUNK = 50

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_NOT_SELECTABLE = {"\\noselect", "\\nonexistent"}
# RFC 5530 response codes that say "not now" rather than "no such folder".
_TRANSIENT_CODES = {"UNAVAILABLE", "SERVERBUG", "INUSE", "LIMIT", "CONTACTADMIN"}
_SUMMARY_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
_BODY_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"
_FOLDED = re.compile(rb"\r?\n[ \t]+")
# Per-connection state kept on the IMAPClient: ENABLE lasts as long as the connection, and
# several readers may share one session.
_QRESYNC_ATTR = "mailsync_qresync_enabled"


class FolderGone(FolderMissing):
    """The folder does not exist on the server (any more): fails the operation, not the account."""

    def __init__(self, folder: str) -> None:
        super().__init__(f"The folder {folder!r} does not exist on the mail server (deleted or renamed?)")
        self.folder = folder


class ExtensionMissing(ConnectFailed):
    """The server lacks an IMAP extension this call needs; the caller should use its fallback."""


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
    message_id: str | None  # without <>, stripped; None if the header is absent or empty


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


def _mailbox_arg(folder: str, raw_names: Collection[str] = ()) -> str:
    """``folder`` as a quoted argument: modified UTF-7 (plain ASCII), except a name in
    ``raw_names`` (listed by the server unencoded, "R&D"), which goes back as it came.
    ``ImapSession.mailbox_arg`` knows the session's raw names."""
    return mailbox_arg(folder, raw=folder in raw_names)


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


def _header_message_id(block: object) -> str | None:
    if not isinstance(block, bytes):
        return None
    unfolded = _FOLDED.sub(b" ", block)
    for line in unfolded.split(b"\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"message-id":
            return normalise_message_id(value.decode("utf-8", errors="replace"))
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


def _parse_list(data: list[Any]) -> list[tuple[set[str], str]]:
    items = [item for item in data if item is not None]
    out: list[tuple[set[str], str]] = []
    if not items:
        return out
    parsed = list(gen_parsed_response(items))
    for i in range(0, len(parsed) - 2, 3):
        flags, _delimiter, name = parsed[i : i + 3]
        flag_set = {_text(f).lower() for f in flags} if isinstance(flags, tuple) else set()
        out.append((flag_set, _folder_name(name)))
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


class MailboxReader:
    """Read-only queries on one logged-in IMAP session.

    Methods that take a ``folder`` EXAMINE it (read-only, never sets \\Seen) and leave it
    selected; ``search_*``, ``flags``, ``summaries`` and ``fetch`` act on the folder currently
    selected (by ``examine()`` or by the caller).

    ``use_qresync=False`` makes ``changes_since`` take the CONDSTORE-only path even on a
    QRESYNC server. Enabling QRESYNC changes the connection for everyone using it: the server
    then reports expunges as ``VANISHED`` instead of ``EXPUNGE`` responses.
    """

    def __init__(self, session: ImapSession, *, use_qresync: bool = True) -> None:
        self._session = session
        self._use_qresync = use_qresync

    # -- capabilities ---------------------------------------------------------

    @property
    def command_count(self) -> int:
        """IMAP commands sent on the underlying connection so far."""
        return self._session.command_count

    @property
    def has_condstore(self) -> bool:
        # QRESYNC implies CONDSTORE (RFC 7162 3.2), though some servers only list QRESYNC.
        return self._session.has_capability("CONDSTORE") or self._session.has_capability("QRESYNC")

    @property
    def has_qresync(self) -> bool:
        """Whether ``changes_since`` will use QRESYNC (and so report ``vanished``)."""
        return self._use_qresync and self._session.has_capability("QRESYNC")

    @property
    def has_list_status(self) -> bool:
        return self._session.has_capability("LIST-STATUS")

    # -- folders --------------------------------------------------------------

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
        with self._guard("reading the folder status"):
            if self.has_list_status and len(wanted) > 1:
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
        """Select ``folder`` read-only. One command (EXAMINE); raises ``FolderGone``."""
        with self._guard(f"opening {folder!r}"):
            return self._examine(folder, "(CONDSTORE)" if self.has_condstore else None)

    def changes_since(self, folder: str, uidvalidity: int, modseq: int) -> FolderChanges:
        """Flag changes (and, with QRESYNC, expunges) in ``folder`` since ``modseq``.

        Commands: QRESYNC: EXAMINE (QRESYNC ...), preceded once per connection by ENABLE
        QRESYNC (and UNSELECT if a folder is selected then). CONDSTORE only: EXAMINE plus
        UID FETCH ... (CHANGEDSINCE), the FETCH skipped when nothing can have changed.
        ``vanished`` is None whenever QRESYNC was not used (not offered, ``use_qresync=False``,
        or a folder was selected and the server has no UNSELECT to leave it for ENABLE).
        Raises ``ExtensionMissing`` without CONDSTORE and ``FolderGone`` for a missing folder.
        """
        if not self.has_condstore:
            raise ExtensionMissing("The mail server does not support CONDSTORE; a full flag scan is needed")
        if modseq < 1:
            raise ValueError("modseq must be a positive mod-sequence reported by the server")
        with self._guard(f"reading changes in {folder!r}"):
            if self.has_qresync and self._enable_qresync():
                return self._changes_qresync(folder, uidvalidity, modseq)
            return self._changes_condstore(folder, uidvalidity, modseq)

    def list_folder_names(self) -> list[str]:
        """Names of all selectable folders. One command (LIST)."""
        with self._guard("listing folders"):
            folders = self._session.list_folders()
        return [f.name for f in folders if not {flag.lower() for flag in f.flags} & _NOT_SELECTABLE]

    # -- selected folder ------------------------------------------------------

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
        with self._guard("searching messages by date"):
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
        with self._guard("searching new messages"):
            found = self._uid_search(f"UID {first_uid}:{upper}")
        # "n:*" with n above the highest UID means "highest:n", so the newest message comes
        # back even though it is older than first_uid.
        return [uid for uid in found if uid >= first_uid and (below is None or uid < below)]

    def flags(self, uids: Sequence[int]) -> dict[int, tuple[str, ...]]:
        """Current flags of those ``uids`` that still exist.

        One UID FETCH (FLAGS) per FETCH_CHUNK UIDs; none for an empty input.
        """
        out: dict[int, tuple[str, ...]] = {}
        with self._guard("reading message flags"):
            for chunk in _chunks(sorted(set(uids)), FETCH_CHUNK):
                for uid, attrs in self._uid_fetch(chunk, "(UID FLAGS)").items():
                    out[uid] = _flags(attrs.get(b"FLAGS"))
        return out

    def summaries(self, uids: Sequence[int]) -> list[MessageSummary]:
        """Flags, date, size and Message-ID of those ``uids`` that still exist, by UID.

        One UID FETCH per FETCH_CHUNK UIDs (compact UID ranges in each); none for an empty input.
        """
        out: list[MessageSummary] = []
        with self._guard("reading message summaries"):
            for chunk in _chunks(sorted(set(uids)), FETCH_CHUNK):
                fetched = self._uid_fetch(chunk, _SUMMARY_ITEMS)
                for uid in sorted(fetched):
                    attrs = fetched[uid]
                    out.append(
                        MessageSummary(
                            uid=uid,
                            flags=_flags(attrs.get(b"FLAGS")),
                            internal_date=_internal_date(attrs.get(b"INTERNALDATE")),
                            size=int(attrs.get(b"RFC822.SIZE") or 0),
                            message_id=_header_message_id(_section(attrs, b"BODY[HEADER.FIELDS")),
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

    def _fetch_raw(self, uids: Sequence[int], items: str, section: bytes, what: str) -> list[FetchedMessage]:
        out: list[FetchedMessage] = []
        with self._guard(what):
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

    def find_message_ids(self, folder: str, message_ids: Sequence[str]) -> set[str]:
        """Which of ``message_ids`` (normalised, see ``normalise_message_id``) exist in ``folder``.

        Commands: EXAMINE, one UID SEARCH per SEARCH_CHUNK ids, one UID FETCH of the hits'
        Message-ID header per FETCH_CHUNK hits (SEARCH HEADER matches substrings, so hits are
        checked exactly). None at all for an empty input. Ids that are not plain ASCII cannot
        be searched for with the US-ASCII charset every server has and are never reported.
        """
        wanted = {n for n in (normalise_message_id(m) for m in message_ids) if n}
        searchable = sorted(m for m in wanted if m.isascii() and m.isprintable())
        if not searchable:
            return set()
        found: set[str] = set()
        with self._guard(f"looking for messages in {folder!r}"):
            self._examine(folder, None)
            hits: set[int] = set()
            for chunk in _chunks(searchable, SEARCH_CHUNK):
                criteria = " ".join(f"HEADER Message-ID {_quote(m)}" for m in chunk)
                hits.update(self._uid_search("OR " * (len(chunk) - 1) + criteria))
            for uid_chunk in _chunks(sorted(hits), FETCH_CHUNK):
                fetched = self._uid_fetch(uid_chunk, "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                for attrs in fetched.values():
                    message_id = _header_message_id(_section(attrs, b"BODY[HEADER.FIELDS"))
                    if message_id in wanted:
                        found.add(message_id)
        return found

    # -- internals --------------------------------------------------------------

    @property
    def _imap(self) -> imaplib.IMAP4:
        return self._session.client._imap

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        with translate_errors(self._session.params):
            try:
                yield
            except imaplib.IMAP4.abort as exc:
                raise ConnectFailed(f"The mail server dropped the connection while {what}: {exc}") from None
            except imaplib.IMAP4.error as exc:
                # BAD responses, commands illegal in the current state, unparseable responses.
                raise ConnectFailed(f"The mail server rejected a command while {what}: {exc}") from None

    def _check_ok(self, typ: str, data: list[Any], command: str) -> None:
        if typ != "OK":
            raise ConnectFailed(f"The mail server refused {command}: {typ} {_response_text(data)}")

    def _list_status(self, items: str) -> list[tuple[str, dict[str, int]]]:
        imap = self._imap
        imap.untagged_responses.pop("STATUS", None)
        typ, data = imap._simple_command("LIST", '""', '"*"', "RETURN", f"(STATUS ({items}))")
        self._check_ok(typ, data, "LIST-STATUS")
        imap.untagged_responses.pop("LIST", None)
        _, status_data = imap._untagged_response(typ, data, "STATUS")
        return _parse_status(status_data)

    def _status_one(self, folder: str, items: str) -> list[tuple[str, dict[str, int]]]:
        imap = self._imap
        mailbox = self._session.mailbox_arg(folder)
        imap.untagged_responses.pop("STATUS", None)
        typ, data = imap._simple_command("STATUS", mailbox, f"({items})")
        if typ == "NO":
            if _response_code(data) in _TRANSIENT_CODES:
                # "Try again later" must not read as "the folder is gone".
                raise ConnectFailed(f"The mail server could not report on {folder!r}: {_response_text(data)}")
            # Missing, \Noselect or not permitted: for the caller all mean "nothing to sync".
            return []
        self._check_ok(typ, data, f"STATUS {folder!r}")
        _, status_data = imap._untagged_response(typ, data, "STATUS")
        # The server's spelling may differ (INBOX case); the STATUS answers this folder.
        return [(folder, values) for _name, values in _parse_status(status_data)[-1:]]

    def _examine(self, folder: str, parameters: str | None) -> FolderStatus:
        imap = self._imap
        args = [self._session.mailbox_arg(folder)] + ([parameters] if parameters else [])
        # Mirrors imaplib.IMAP4.select(), which cannot pass select parameters: drop the old
        # mailbox's responses so they cannot be mistaken for this one's.
        imap.untagged_responses = {}
        imap.is_readonly = True
        typ, data = imap._simple_command("EXAMINE", *args)
        if typ != "OK":
            # A failed SELECT/EXAMINE leaves no mailbox selected (RFC 3501 6.3.1).
            imap.state = "AUTH"
            self._raise_examine_failed(folder, data)
        imap.state = "SELECTED"
        return self._selected_status(folder)

    def _raise_examine_failed(self, folder: str, data: list[Any]) -> None:
        text = _response_text(data)
        code = _response_code(data)
        if code == "NONEXISTENT":
            raise FolderGone(folder)
        if code in _TRANSIENT_CODES:
            raise ConnectFailed(f"The mail server could not open the folder {folder!r} now: {text}")
        # Dovecot 2.3 (and others) say "NO Mailbox doesn't exist" without a response code,
        # so ask LIST before blaming the folder's absence.
        imap = self._imap
        mailbox = self._session.mailbox_arg(folder)
        imap.untagged_responses.pop("LIST", None)
        typ, list_data = imap._simple_command("LIST", '""', mailbox)
        self._check_ok(typ, list_data, "LIST")
        _, entries = imap._untagged_response(typ, list_data, "LIST")
        if not any(
            _folder_key(name) == _folder_key(folder) and not flags & _NOT_SELECTABLE
            for flags, name in _parse_list(entries)
        ):
            raise FolderGone(folder)
        raise ConnectFailed(f"The mail server refused to open the folder {folder!r}: {text}")

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

    def _enable_qresync(self) -> bool:
        """ENABLE QRESYNC unless done on this connection; False if it cannot be enabled."""
        client = self._session.client
        state = getattr(client, _QRESYNC_ATTR, None)
        if state is not None:
            return bool(state)
        imap = self._imap
        if imap.state == "SELECTED":
            # ENABLE is only valid in the authenticated state (RFC 5161). CLOSE would expunge a
            # read-write mailbox, so without UNSELECT stay on the CONDSTORE path.
            if not self._session.has_capability("UNSELECT"):
                return False
            typ, data = imap._simple_command("UNSELECT")
            self._check_ok(typ, data, "UNSELECT")
            imap.state = "AUTH"
        imap.untagged_responses.pop("ENABLED", None)
        typ, data = imap._simple_command("ENABLE", "QRESYNC")
        self._check_ok(typ, data, "ENABLE QRESYNC")
        _, enabled = imap._untagged_response(typ, data, "ENABLED")
        ok = any(b"QRESYNC" in item.upper().split() for item in enabled if isinstance(item, bytes))
        setattr(client, _QRESYNC_ATTR, ok)
        return ok

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

    def _uid_search(self, criteria: str) -> list[int]:
        imap = self._imap
        imap.untagged_responses.pop("SEARCH", None)
        typ, data = imap._simple_command("UID", "SEARCH", criteria)
        self._check_ok(typ, data, "SEARCH")
        _, lines = imap._untagged_response(typ, data, "SEARCH")
        found: set[int] = set()
        for line in lines:
            if isinstance(line, bytes):
                # Any "(MODSEQ n)" tail is not all digits and so skipped.
                found.update(int(tok) for tok in line.split() if tok.isdigit())
        return sorted(found)

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
