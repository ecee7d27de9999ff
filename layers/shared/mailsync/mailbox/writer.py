"""Write side of the IMAP adapter: the few changes Mailsync makes to a user's mailbox.

Protocol only, like the reader: set or clear \\Seen, move a message, append one, and find
a message again by Message-ID or content. Every command goes through imaplib's ``_command``
so ``ImapSession.command_count`` sees it.

Only what the server advertises is used. Dovecot, for one, sends COPYUID/APPENDUID even when
UIDPLUS is hidden from its capabilities; those codes are ignored then, since without UIDPLUS
nothing promises what they mean, and the UIDNEXT-and-search fallback is taken instead.

Errors (all ``MailboxError`` subclasses), split by what the caller should do:

* ``FolderGone`` (a ``FolderMissing``): the folder worked on, or a move's destination, does
  not exist. Fails that operation, never the account.
* ``OperationRefused``: any other NO/BAD to one of our commands (over quota, read-only
  mailbox, a command the server does not accept); the message carries the server's words.
  Fails that operation.
* ``ServerBusy``: a NO with ``[UNAVAILABLE]``, ``[INUSE]`` or ``[SERVERBUG]``: try again later.
* ``ConnectFailed``/``MailTimeout``: a dropped connection, a response we cannot parse, or a new
  message that could not be found again without UIDPLUS (a retry finds it first). Socket, TLS
  and timeout failures map as in ``translate_errors``.

Courier-IMAP refuses APPEND into the mailbox the session has EXAMINEd ("NO Current box is
selected READ-ONLY."), so ``append`` first leaves such a selection (UNSELECT, else CLOSE, which
expunges nothing on a read-only selection).
"""

from __future__ import annotations

import hashlib
import imaplib
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from mailsync.errors import ConnectFailed, OperationRefused, ServerBusy, ServerMisbehaving
from mailsync.mailbox.base import translate_errors
from mailsync.mailbox.imap import ImapSession
from mailsync.mailbox.reader import (
    FETCH_CHUNK,
    FolderGone,
    MailboxReader,
    _chunks,
    _expand_uid_set,
    _flags,
    _folder_key,
    _parse_fetch,
    _quote,
    _response_code,
    _response_text,
    _section,
    compact_uid_set,
)
from mailsync.mime import normalise_message_id

__all__ = ["CONTENT_CHUNK", "MailboxWriter"]

# Full messages per UID FETCH when looking for one by content: bounds the memory one response
# needs, since messages can be large.
CONTENT_CHUNK = 20

_HEADER_ITEMS = "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
_FOLDED = re.compile(rb"\r?\n[ \t]+")
# Which folder this connection has selected, and how, as (folder key, read-only, the
# untagged_responses dict of that selection). Every SELECT/EXAMINE (imaplib's select() and
# the reader's _examine()) starts a new dict, so a stale record is recognised by identity even
# when someone else selected another folder since: the name alone could not tell.
_SELECTION_ATTR = "mailsync_writer_selection"
# Untagged responses our commands cause and nobody reads later; popped so a long session's
# imaplib buffer does not grow with every move.
_NOISE = ("EXPUNGE", "VANISHED", "EXISTS", "RECENT", "FETCH", "OK", "HIGHESTMODSEQ")
# RFC 5530 codes of a NO that says "not now": retried later, not a refusal of the change.
_BUSY_CODES = {"UNAVAILABLE", "INUSE", "SERVERBUG"}
_MISSING_CODES = {"TRYCREATE", "NONEXISTENT"}


class _WriterReader(MailboxReader):
    """The reader's plumbing with the writer's error policy: a NO/BAD to one of our commands
    refuses that operation (``OperationRefused``) instead of reading as a network failure,
    which would retry it, and fail the account, forever."""

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        with translate_errors(self._session.params):
            try:
                yield
            except imaplib.IMAP4.readonly:
                # Another session made the selected mailbox read-only under us.
                raise OperationRefused(f"The mail server made the folder read-only while {what}") from None
            except imaplib.IMAP4.abort as exc:
                raise ConnectFailed(f"The mail server dropped the connection while {what}: {exc}") from None
            except imaplib.IMAP4.error as exc:
                # imaplib raises this for a tagged BAD (and for a command illegal in the state).
                raise OperationRefused(f"The mail server rejected a command while {what}: {exc}") from None

    def _check_ok(self, typ: str, data: list[Any], command: str) -> None:
        if typ == "OK":
            return
        text = _response_text(data)
        if _response_code(data) in _BUSY_CODES:
            raise ServerBusy(f"The mail server could not run {command} now: {text}")
        raise OperationRefused(f"The mail server refused {command}: {typ} {text}")

    def _raise_examine_failed(self, folder: str, data: list[Any]) -> None:
        code = _response_code(data)
        if code in _BUSY_CODES:
            raise ServerBusy(f"The mail server could not open the folder {folder!r} now: {_response_text(data)}")
        if code in _MISSING_CODES:
            raise FolderGone(folder)
        try:
            super()._raise_examine_failed(folder, data)
        except ConnectFailed as exc:
            # Only the reader's "refused to open" (or its LIST check's refusal) lands here:
            # network failures are still imaplib/socket exceptions at this point.
            raise OperationRefused(exc.message) from None


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _wire_bytes(raw: bytes) -> bytes:
    # IMAP messages travel with CRLF line ends (imaplib.append converts the same way); the
    # server stores and later returns these bytes, so the content hash must be taken of them.
    return imaplib.MapCRLF.sub(imaplib.CRLF, raw)


def _message_id_of(block: object) -> str | None:
    if not isinstance(block, bytes):
        return None
    for line in _FOLDED.sub(b" ", block).split(b"\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"message-id":
            return normalise_message_id(value.decode("utf-8", errors="replace"))
    return None


def _internal_date_arg(value: datetime) -> str:
    # A naive datetime is read as UTC, not local time, so results do not depend on the TZ of
    # the machine (imaplib refuses naive datetimes outright).
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return imaplib.Time2Internaldate(aware)


def _flag_list(flags: Iterable[str]) -> str | None:
    # \Recent is the server's to set; APPEND/STORE with it is a BAD on most servers.
    kept = sorted({f for f in flags if f and f.lower() != "\\recent"}, key=str.lower)
    return "(" + " ".join(kept) + ")" if kept else None


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


class MailboxWriter:
    """Changes to messages on one logged-in IMAP session.

    ``set_seen`` and ``move`` SELECT their folder read-write unless this connection already has
    it selected so; ``find_*`` (and ``append`` without UIDPLUS) use whatever selection of the
    folder is there, else EXAMINE it. ``append`` never writes into a read-only selection of its
    folder (Courier refuses): it leaves it first. Every method but ``append`` with UIDPLUS
    leaves a folder selected. QRESYNC enabled
    on the connection (by ``MailboxReader.changes_since``) does no harm: expunges then arrive
    as VANISHED, which nothing here needs to read.
    """

    def __init__(self, session: ImapSession) -> None:
        self._session = session
        # The reader's plumbing (error guard, UID SEARCH/FETCH, EXAMINE, folder-gone checks);
        # use_qresync=False so nothing here ever ENABLEs anything on the connection.
        self._reader = _WriterReader(session, use_qresync=False)
        # imapclient caches the capabilities from the LOGIN response only while that response
        # is still in imaplib's untagged buffer, which every SELECT/EXAMINE empties; read them
        # now so the first has_uidplus after a SELECT does not cost a CAPABILITY command.
        with self._reader._guard("reading the server's capabilities"):
            session.capabilities()

    @property
    def command_count(self) -> int:
        """IMAP commands sent on the underlying connection so far."""
        return self._session.command_count

    @property
    def has_move(self) -> bool:
        return self._session.has_capability("MOVE")

    @property
    def has_uidplus(self) -> bool:
        return self._session.has_capability("UIDPLUS")

    # -- public API -------------------------------------------------------------

    def set_seen(self, folder: str, uid: int, seen: bool) -> tuple[str, ...] | None:
        """Add or remove \\Seen on one message, leaving its other flags alone.

        Returns the message's flags afterwards (sorted, without \\Recent), or None when ``uid``
        does not exist in ``folder`` (moved or expunged meanwhile). Commands: SELECT (unless
        selected read-write already), UID STORE, and a UID FETCH (FLAGS) only when the server
        sent no FETCH for the UID, which Dovecot does when the flag was already as asked.
        """
        with self._reader._guard(f"changing flags in {folder!r}"):
            self._select(folder, writable=True)
            imap = self._imap
            imap.untagged_responses.pop("FETCH", None)
            # +FLAGS/-FLAGS rather than FLAGS: replacing the set would drop \Answered,
            # \Flagged and keywords another client set since we last looked.
            typ, data = imap._simple_command("UID", "STORE", str(uid), "+FLAGS" if seen else "-FLAGS", "(\\Seen)")
            self._reader._check_ok(typ, data, "STORE")
            lines = imap.untagged_responses.pop("FETCH", None) or []
            attrs = _parse_fetch(lines).get(uid)
            if attrs is not None and b"FLAGS" in attrs:
                return _flags(attrs[b"FLAGS"])
            current = self._reader._uid_fetch([uid], "(UID FLAGS)").get(uid)
            return None if current is None else _flags(current.get(b"FLAGS"))

    def move(
        self, folder: str, uid: int, dest: str, *, message_id: str | None, content_sha256: str | None
    ) -> int | None:
        """Move one message from ``folder`` to ``dest``; its UID there, or None if ``uid`` is
        not in ``folder`` (any more), in which case nothing is done. Safe to repeat after a
        crash, except without MOVE: a crash between COPY and EXPUNGE leaves the copy in ``dest``
        and the source in place, so a repeat makes a second copy.

        ``message_id``/``content_sha256`` identify the copy in ``dest`` when the server has no
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
        with self._reader._guard(f"moving a message from {folder!r} to {dest!r}"):
            self._select(folder, writable=True)
            uidplus = self.has_uidplus
            uidnext = 0
            others_deleted: list[int] = []
            if not uidplus:
                # Without COPYUID nothing after the COPY/MOVE would say whether the UID still
                # existed, so ask first; the same search lists other clients' \Deleted messages
                # that a plain EXPUNGE must spare.
                found = self._reader._uid_search(f"OR UID {uid} DELETED")
                if uid not in found:
                    return None
                others_deleted = [u for u in found if u != uid]
                if message_id is None and content_sha256 is None:
                    fetched = self._reader._uid_fetch([uid], "(UID BODY.PEEK[])").get(uid, {})
                    body = fetched.get(b"BODY[]")
                    if not isinstance(body, bytes):
                        return None
                    content_sha256 = _sha256(body)
                uidnext = self._uidnext(dest)
            # With UIDPLUS every message copied or moved is reported in COPYUID (RFC 4315), so
            # none means the UID matched nothing (Dovecot: "OK No messages found").
            transferred, new_uid = self._transfer("MOVE" if self.has_move else "COPY", uid, dest, uidplus)
            if not transferred or (uidplus and new_uid is None):
                return None
            if not self.has_move:
                self._expunge_one(uid, others_deleted, uidplus)
            if uidplus:
                return new_uid
            found_uid = self._find_new(dest, uidnext, message_id, content_sha256)
            if found_uid is None:
                raise ConnectFailed(f"The message was moved to {dest!r} but could not be found there")
            return found_uid

    def remove(self, folder: str, uid: int) -> bool:
        """Expunge exactly this message (others' \\Deleted messages are spared); False if it is
        not there. Used to finish a move whose COPY went through before a crash."""
        with self._reader._guard(f"removing a message from {folder!r}"):
            self._select(folder, writable=True)
            found = self._reader._uid_search(f"OR UID {uid} DELETED")
            if uid not in found:
                return False
            self._expunge_one(uid, [u for u in found if u != uid], self.has_uidplus)
            return True

    def append(
        self,
        folder: str,
        raw: bytes,
        *,
        flags: Sequence[str],
        internal_date: datetime | None,
        message_id: str | None,
        content_sha256: str | None,
    ) -> int:
        """APPEND ``raw`` with ``flags`` and ``internal_date``; returns the new message's UID.

        Not idempotent by itself: a caller that may repeat it checks ``find_by_message_id``
        (or ``find_by_content``) first. ``raw`` is sent with CRLF line ends; without UIDPLUS
        the copy is recognised by ``message_id`` or else by the hash of the bytes sent, which
        is ``content_sha256`` whenever ``raw`` already had CRLF line ends (so that argument
        is not needed and only kept for symmetry with ``move``).

        Commands: with UIDPLUS, APPEND. Without: STATUS, APPEND, EXAMINE (unless the folder
        is selected), UID FETCH of the new Message-IDs (plus bodies when matching by content).
        Plus an UNSELECT (or CLOSE) first when the folder may be the one selected read-only.
        """
        wire = _wire_bytes(raw)
        with self._reader._guard(f"adding a message to {folder!r}"):
            uidplus = self.has_uidplus
            uidnext = 0 if uidplus else self._uidnext(folder)
            imap = self._imap
            imap.untagged_responses.pop("APPENDUID", None)
            date_arg = _internal_date_arg(internal_date) if internal_date is not None else None
            self._leave_read_only_selection(folder)
            # Spelled before the literal is set: the spelling may cost a LIST of its own.
            mailbox = self._session.mailbox_arg(folder)
            imap.literal = wire
            try:
                typ, data = imap._simple_command("APPEND", mailbox, _flag_list(flags), date_arg)
            finally:
                # Left set after a failure, imaplib would send it with the next command.
                imap.literal = None
            self._check_folder_ok(typ, data, "APPEND", folder)
            appended = _appenduid(imap.untagged_responses.pop("APPENDUID", None) or [])
            self._drop_noise()
            if uidplus:
                if appended is None:
                    raise ServerMisbehaving("The mail server advertises UIDPLUS but sent no APPENDUID")
                return appended
            new_uid = self._find_new(folder, uidnext, message_id, _sha256(wire))
            if new_uid is None:
                raise ConnectFailed(f"The message appended to {folder!r} could not be found there")
            return new_uid

    def find_by_message_id(self, folder: str, message_id: str) -> list[int]:
        """UIDs in ``folder`` whose Message-ID equals ``message_id`` (normalised), ascending.

        Commands: EXAMINE (unless the folder is selected), UID SEARCH HEADER, and a UID FETCH of
        the hits' Message-ID, since SEARCH HEADER matches substrings (and ignores case).
        """
        wanted = normalise_message_id(message_id)
        if wanted is None:
            return []
        with self._reader._guard(f"looking for a message in {folder!r}"):
            self._select(folder, writable=False)
            hits = self._search_header_message_id(wanted)
            return [uid for uid, found in self._message_ids(hits).items() if found == wanted]

    def find_by_content(self, folder: str, content_sha256: str, since_uid: int = 1) -> list[int]:
        """UIDs >= ``since_uid`` in ``folder`` whose raw bytes hash to ``content_sha256``.

        Downloads every message from ``since_uid`` on, so keep the range small. Commands:
        EXAMINE (unless the folder is selected), UID SEARCH, one UID FETCH per CONTENT_CHUNK.
        """
        with self._reader._guard(f"looking for a message in {folder!r}"):
            self._select(folder, writable=False)
            first = max(since_uid, 1)
            # "n:*" with n above the highest UID means "highest:n" (RFC 3501), so filter.
            candidates = [u for u in self._reader._uid_search(f"UID {first}:*") if u >= first]
            return self._matching_content(candidates, content_sha256)

    # -- internals --------------------------------------------------------------

    @property
    def _imap(self) -> imaplib.IMAP4:
        return self._session.client._imap

    def _select(self, folder: str, *, writable: bool) -> None:
        """Make ``folder`` the selected one: reuse the current selection when it will do."""
        imap = self._imap
        client = self._session.client
        current = getattr(client, _SELECTION_ATTR, None)
        if (
            imap.state == "SELECTED"
            and current is not None
            and current[0] == _folder_key(folder)
            and current[2] is imap.untagged_responses
            and imap.is_readonly == current[1]
            and (not writable or not current[1])
        ):
            return
        setattr(client, _SELECTION_ATTR, None)
        if not writable:
            self._reader._examine(folder, None)
            setattr(client, _SELECTION_ATTR, (_folder_key(folder), True, imap.untagged_responses))
            return
        # Not imaplib.select(): it reports [READ-ONLY] as a connection abort. As in the
        # reader's _examine, the old folder's responses must not be mistaken for this one's.
        imap.untagged_responses = {}
        imap.is_readonly = False
        typ, data = imap._simple_command("SELECT", self._session.mailbox_arg(folder))
        if typ != "OK":
            # A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1).
            imap.state = "AUTH"
            self._reader._raise_examine_failed(folder, data)
        imap.state = "SELECTED"
        if _response_code(data) == "READ-ONLY":
            imap.is_readonly = True
            raise OperationRefused(f"The mail server opened {folder!r} read-only; its messages cannot be changed")
        setattr(client, _SELECTION_ATTR, (_folder_key(folder), False, imap.untagged_responses))

    def _leave_read_only_selection(self, folder: str) -> None:
        """Leave a read-only selection that may be ``folder`` before writing into it.

        Courier refuses APPEND into the mailbox the session has EXAMINEd; a selection made by
        the reader is not recorded here, so any read-only selection of an unknown folder is
        left too. A read-write selection stays (Courier accepts APPEND into it).
        """
        imap = self._imap
        if imap.state != "SELECTED" or not imap.is_readonly:
            return
        client = self._session.client
        current = getattr(client, _SELECTION_ATTR, None)
        if current is not None and current[2] is imap.untagged_responses and current[0] != _folder_key(folder):
            return
        # CLOSE expunges nothing on a read-only selection (RFC 3501 6.4.2), so it is safe here.
        command = "UNSELECT" if self._session.has_capability("UNSELECT") else "CLOSE"
        typ, data = imap._simple_command(command)
        self._reader._check_ok(typ, data, command)
        imap.state = "AUTH"
        setattr(client, _SELECTION_ATTR, None)
        self._drop_noise()

    def _check_folder_ok(self, typ: str, data: list[Any], command: str, folder: str) -> None:
        if typ == "NO" and _response_code(data) in _MISSING_CODES:
            # RFC 3501: the target mailbox does not exist (and could be created).
            raise FolderGone(folder)
        self._reader._check_ok(typ, data, command)

    def _uidnext(self, folder: str) -> int:
        """UIDNEXT of ``folder`` by STATUS; raises FolderGone when it does not exist."""
        imap = self._imap
        imap.untagged_responses.pop("STATUS", None)
        typ, data = imap._simple_command("STATUS", self._session.mailbox_arg(folder), "(UIDNEXT)")
        if typ != "OK":
            # Dovecot says "NO Mailbox doesn't exist" without a code; the reader tells a
            # missing folder from a refusal with LIST.
            self._reader._raise_examine_failed(folder, data)
        _, lines = imap._untagged_response(typ, data, "STATUS")
        for line in reversed(lines):
            match = re.search(rb"UIDNEXT\s+(\d+)", line, re.IGNORECASE) if isinstance(line, bytes) else None
            if match:
                return int(match.group(1))
        raise ServerMisbehaving(f"The mail server reported no UIDNEXT for {folder!r}")

    def _transfer(self, command: str, uid: int, dest: str, uidplus: bool) -> tuple[bool, int | None]:
        """UID COPY or UID MOVE of one message: (False, None) if it is known to be gone, else
        (True, its new UID from COPYUID when UIDPLUS is on)."""
        imap = self._imap
        imap.untagged_responses.pop("COPYUID", None)
        # COPYUID arrives in an untagged OK before the EXPUNGE/VANISHED (MOVE) or in the tagged
        # OK (COPY); imaplib files the code of either under "COPYUID".
        typ, data = imap._simple_command("UID", command, str(uid), self._session.mailbox_arg(dest))
        if typ == "NO" and _response_code(data) == "EXPUNGEISSUED":
            # RFC 5530: expunged by another session but not yet announced to ours (Dovecot
            # does not sync before MOVE/COPY, unlike before STORE). For one UID: nothing done.
            self._drop_noise()
            return False, None
        self._check_folder_ok(typ, data, command, dest)
        codes = imap.untagged_responses.pop("COPYUID", None) or []
        self._drop_noise()
        return True, _copyuid_target(codes, uid) if uidplus else None

    def _store_silent(self, uids: Sequence[int], change: str) -> None:
        imap = self._imap
        for chunk in _chunks(sorted(set(uids)), FETCH_CHUNK):
            typ, data = imap._simple_command("UID", "STORE", compact_uid_set(chunk), change, "(\\Deleted)")
            self._reader._check_ok(typ, data, "STORE")
        # .SILENT still gets FETCH (MODSEQ) responses once CONDSTORE is on.
        imap.untagged_responses.pop("FETCH", None)

    def _expunge_one(self, uid: int, others_deleted: list[int], uidplus: bool) -> None:
        imap = self._imap
        self._store_silent([uid], "+FLAGS.SILENT")
        if uidplus:
            typ, data = imap._simple_command("UID", "EXPUNGE", str(uid))
            self._reader._check_ok(typ, data, "UID EXPUNGE")
            self._drop_noise()
            return
        # Plain EXPUNGE removes every \Deleted message, so the ones other clients marked are
        # unmarked for its duration and marked again after. This is racy and cannot be made
        # safe without UIDPLUS: a message another client marks \Deleted after our UID SEARCH is
        # expunged with ours (as their own EXPUNGE would have done, only sooner); a client
        # looking in between sees the others unmarked; and if we die before the last STORE
        # they stay unmarked (un-deleted, which loses nothing).
        if others_deleted:
            self._store_silent(others_deleted, "-FLAGS.SILENT")
        try:
            typ, data = imap._simple_command("EXPUNGE")
            self._reader._check_ok(typ, data, "EXPUNGE")
        finally:
            if others_deleted:
                self._store_silent(others_deleted, "+FLAGS.SILENT")
        self._drop_noise()

    def _find_new(self, folder: str, uidnext: int, message_id: str | None, content_sha256: str | None) -> int | None:
        """The message that arrived in ``folder`` at or after ``uidnext`` with this identity.

        One UID FETCH of the new messages' Message-ID (usually just ours, so no SEARCH is
        needed to narrow them down first), then their bodies only if matching by content.
        Several matches (identical mail delivered meanwhile) are interchangeable: the lowest
        UID is returned.
        """
        self._select(folder, writable=False)
        new_ids = self._message_ids_from(uidnext)
        wanted = normalise_message_id(message_id)
        matches = [uid for uid, found in new_ids.items() if wanted is not None and found == wanted]
        if not matches and content_sha256:
            matches = self._matching_content(sorted(new_ids), content_sha256)
        return min(matches) if matches else None

    def _message_ids_from(self, first_uid: int) -> dict[int, str | None]:
        imap = self._imap
        imap.untagged_responses.pop("FETCH", None)
        typ, data = imap._simple_command("UID", "FETCH", f"{max(first_uid, 1)}:*", _HEADER_ITEMS)
        self._reader._check_ok(typ, data, "FETCH")
        _, lines = imap._untagged_response(typ, data, "FETCH")
        return {
            uid: _message_id_of(_section(attrs, b"BODY[HEADER.FIELDS"))
            for uid, attrs in sorted(_parse_fetch(lines).items())
            if uid >= first_uid
        }

    def _message_ids(self, uids: Sequence[int]) -> dict[int, str | None]:
        out: dict[int, str | None] = {}
        for chunk in _chunks(sorted(set(uids)), FETCH_CHUNK):
            for uid, attrs in sorted(self._reader._uid_fetch(chunk, _HEADER_ITEMS).items()):
                out[uid] = _message_id_of(_section(attrs, b"BODY[HEADER.FIELDS"))
        return out

    def _matching_content(self, uids: Sequence[int], content_sha256: str) -> list[int]:
        wanted = content_sha256.lower()
        matches: list[int] = []
        for chunk in _chunks(sorted(set(uids)), CONTENT_CHUNK):
            for uid, attrs in self._reader._uid_fetch(chunk, "(UID BODY.PEEK[])").items():
                body = attrs.get(b"BODY[]")
                if isinstance(body, bytes) and _sha256(body) == wanted:
                    matches.append(uid)
        return sorted(matches)

    def _search_header_message_id(self, wanted: str) -> list[int]:
        if wanted.isascii() and wanted.isprintable():
            return self._reader._uid_search(f"HEADER Message-ID {_quote(wanted)}")
        # RFC 6532 allows UTF-8 ids; a quoted string cannot carry them, a literal can, and only
        # with a charset the server may refuse (a NO then: better than a silent duplicate).
        imap = self._imap
        imap.literal = wanted.encode("utf-8")
        try:
            return self._reader._uid_search("CHARSET UTF-8 HEADER Message-ID")
        finally:
            imap.literal = None

    def _drop_noise(self) -> None:
        responses = self._imap.untagged_responses
        for key in _NOISE:
            responses.pop(key, None)
