"""Pure sync decisions: what to do with a folder, and how server changes map onto CRM messages.

Nothing here does I/O; the engine gathers the inputs and carries out the result.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any


class Mode(Enum):
    SKIP = "skip"  # nothing changed since the last sync: no SELECT at all
    FULL = "full"  # first sync, a continued first sync, or UIDVALIDITY changed
    QRESYNC = "qresync"  # VANISHED + changed flags since the last HIGHESTMODSEQ
    CONDSTORE = "condstore"  # changed flags since HIGHESTMODSEQ; expunges by UID comparison
    SCAN = "scan"  # no CONDSTORE: flags of the whole window, expunges by UID comparison


@dataclass(frozen=True)
class FirstSync:
    """A first sync (or a resync) in progress, checkpointed after every batch."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int | None
    messages: int
    total: int = 0
    done: int = 0
    cursor: int | None = None  # lowest UID done so far; work goes newest (highest UID) first

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FirstSync:
        return cls(
            uidvalidity=int(data["uidvalidity"]),
            uidnext=int(data["uidnext"]),
            highestmodseq=int(data["highestmodseq"]) if data.get("highestmodseq") is not None else None,
            messages=int(data.get("messages", 0)),
            total=int(data.get("total", 0)),
            done=int(data.get("done", 0)),
            cursor=int(data["cursor"]) if data.get("cursor") is not None else None,
        )


@dataclass(frozen=True)
class FolderState:
    """What the last completed sync agreed with the server about one folder."""

    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    messages: int | None = None
    first_sync: FirstSync | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k != "first_sync" and v is not None}
        if self.first_sync is not None:
            data["first_sync"] = self.first_sync.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FolderState:
        if not data:
            return cls()

        def num(key: str) -> int | None:
            return int(data[key]) if data.get(key) is not None else None

        first = data.get("first_sync")
        return cls(
            uidvalidity=num("uidvalidity"),
            uidnext=num("uidnext"),
            highestmodseq=num("highestmodseq"),
            messages=num("messages"),
            first_sync=FirstSync.from_dict(first) if first else None,
        )


@dataclass(frozen=True)
class ServerStatus:
    uidvalidity: int
    uidnext: int
    messages: int
    highestmodseq: int | None


def empty_reset(stored: FolderState, status: ServerStatus, *, has_copies: Callable[[], bool]) -> bool:
    """Whether a new UIDVALIDITY changes nothing: the folder is empty on the server and we store
    no copy from it, so there is nothing to relink and nothing to detach.

    Courier-IMAP 5.0 stores a folder's UIDVALIDITY with its first message; until then every
    STATUS or EXAMINE reports a new one (the current second). Taken as a reset, such a folder
    would be resynced on every sync. ``has_copies`` is asked only when everything else fits.
    """
    return (
        stored.uidvalidity is not None
        and stored.first_sync is None
        and status.uidvalidity != stored.uidvalidity
        and status.messages == 0
        and not has_copies()
    )


def moved_on(before: ServerStatus, after: ServerStatus) -> bool:
    """Whether a folder changed between two STATUS reads of one sync.

    Only a new UIDVALIDITY of a folder empty both times is no change (see ``empty_reset``).
    """
    if before.messages == 0 and after.messages == 0:
        return (before.uidnext, before.highestmodseq) != (after.uidnext, after.highestmodseq)
    return before != after


def plan_folder(
    stored: FolderState,
    status: ServerStatus,
    *,
    qresync: bool,
    has_copies: Callable[[], bool] = lambda: True,
) -> Mode:
    """How to sync one folder, from its STATUS alone (and, for an empty folder with a new
    UIDVALIDITY, whether we store any copy from it)."""
    if empty_reset(stored, status, has_copies=has_copies):
        return Mode.SKIP
    if stored.uidvalidity is None or stored.first_sync is not None or status.uidvalidity != stored.uidvalidity:
        return Mode.FULL
    if status.highestmodseq is None or stored.highestmodseq is None:
        # Without HIGHESTMODSEQ a flag change leaves STATUS untouched: only a scan can see it.
        return Mode.SCAN
    unchanged = (
        status.uidnext == stored.uidnext
        and status.highestmodseq == stored.highestmodseq
        and status.messages == stored.messages
    )
    if unchanged:
        return Mode.SKIP
    return Mode.QRESYNC if qresync else Mode.CONDSTORE


MAX_PLAIN_MESSAGE_ID = 400


def match_key(message_id: str | None, content_hash: str) -> str:
    """How a message is recognised after a move: its Message-ID, or its content when it has none.

    An absurdly long Message-ID is hashed ("midh:") so it still fits in a DynamoDB key.
    """
    if message_id and len(message_id.encode("utf-8", "surrogateescape")) > MAX_PLAIN_MESSAGE_ID:
        return "midh:" + hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()
    return f"mid:{message_id}" if message_id else f"sha:{content_hash}"


def message_id_for(tenant_id: str, user_id: str, server_folder: str, uidvalidity: int, uid: int) -> str:
    """Our id for a server copy seen for the first time.

    Derived from where it was first seen, so a rerun after a crash produces the same id and
    overwrites instead of duplicating; after that the id travels with the message on moves.
    """
    digest = hashlib.sha256(f"{tenant_id}\0{user_id}\0{server_folder}\0{uidvalidity}\0{uid}".encode()).digest()
    return base64.b32encode(digest[:15]).decode().lower()


@dataclass(frozen=True)
class Known:
    """A synced server copy the CRM knows (a location record)."""

    id: str
    server_folder: str
    uidvalidity: int
    uid: int
    flags: tuple[str, ...]
    match_key: str
    internal_date: datetime


@dataclass(frozen=True)
class Arrival:
    """A server copy in a mapped folder, within the window, that no location record knows."""

    server_folder: str
    uidvalidity: int
    uid: int
    flags: tuple[str, ...]
    internal_date: datetime
    size: int
    match_key: str


@dataclass(frozen=True)
class Relink:
    arrival: Arrival
    id: str
    old: Known | None  # None when a detached message comes back


@dataclass
class Reconciliation:
    relinks: list[Relink] = field(default_factory=list)
    creates: list[Arrival] = field(default_factory=list)
    vanished: list[Known] = field(default_factory=list)  # still unexplained: to detach


def reconcile(
    arrivals: Iterable[Arrival],
    vanished: Iterable[Known],
    detached_by_key: Mapping[str, Iterable[str]] | None = None,
) -> Reconciliation:
    """Turn arrivals and disappearances into moves, revivals, new messages and detachments.

    All arrivals of a sync are matched before any disappearance becomes a detachment, so a
    move between two mapped folders keeps the message's id. A copy that vanished is preferred
    over a detached message; each is used at most once, oldest UID first, so two copies with the
    same Message-ID (mail sent to oneself) stay two messages.
    """
    pool: dict[str, deque[Known]] = defaultdict(deque)
    for known in sorted(vanished, key=lambda k: (k.server_folder, k.uidvalidity, k.uid)):
        pool[known.match_key].append(known)
    revivable: dict[str, deque[str]] = {k: deque(ids) for k, ids in (detached_by_key or {}).items()}
    result = Reconciliation()
    for arrival in arrivals:
        if pool.get(arrival.match_key):
            old = pool[arrival.match_key].popleft()
            result.relinks.append(Relink(arrival, old.id, old))
        elif revivable.get(arrival.match_key):
            result.relinks.append(Relink(arrival, revivable[arrival.match_key].popleft(), None))
        else:
            result.creates.append(arrival)
    for remaining in pool.values():
        result.vanished.extend(remaining)
    return result


@dataclass(frozen=True)
class RelinkView:
    """What a relinked message shows in the CRM."""

    folder: str
    seen: bool
    flags: tuple[str, ...]


def relink_view(
    *,
    server_crm_folder: str,
    server_flags: Iterable[str],
    crm_folder: str,
    crm_seen: bool,
    ops_pending: bool,
    move_pending: bool,
) -> RelinkView:
    """Where a message the server moved shows up in the CRM, and its \\Seen.

    The server's folder wins unless a CRM *move* of this message still waits (the user's own
    move is applied from the new place); any waiting CRM change keeps the CRM's \\Seen, since
    a waiting mark-read/unread is what the pusher applies next. Freezing the folder for any
    pending op would leave it wrong for good once a \\Seen op completes without a folder.
    """
    flags = normalise_flags(server_flags)
    folder = crm_folder if move_pending else server_crm_folder
    if not ops_pending and not move_pending:
        return RelinkView(folder, "\\Seen" in flags, tuple(sorted(flags)))
    flags.discard("\\Seen")
    if crm_seen:
        flags.add("\\Seen")
    return RelinkView(folder, crm_seen, tuple(sorted(flags)))


_SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent")}


def normalise_flags(flags: Iterable[str]) -> set[str]:
    """System flags are case-insensitive in IMAP; keywords are kept as the server spells them."""
    out = {_SYSTEM_FLAGS.get(f.lower(), f) for f in flags}
    out.discard("\\Recent")
    return out


def merge_server_flags(known_flags: Iterable[str], server_flags: Iterable[str]) -> tuple[str, ...] | None:
    """The flags to store after the server changed them; None when nothing changed."""
    before = normalise_flags(known_flags)
    after = normalise_flags(server_flags)
    return None if before == after else tuple(sorted(after))


def batches(items: list[Any], sizes: Mapping[Any, int] | None, *, max_count: int, max_bytes: int) -> list[list[Any]]:
    """Split work into batches bounded by count and by bytes (a single huge item is its own batch)."""
    out: list[list[Any]] = []
    current: list[Any] = []
    current_bytes = 0
    for item in items:
        size = (sizes or {}).get(item, 0)
        if current and (len(current) >= max_count or current_bytes + size > max_bytes):
            out.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        out.append(current)
    return out
