"""Message decisions: how server changes map onto CRM messages, in the spirit of mbsync's
per-pair record — from (base as last agreed, server now, CRM pending) decide what to show,
what to write and what to send.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

MAX_PLAIN_MESSAGE_ID = 400


def match_key(internet_message_id: str | None, content_hash: str) -> str:
    """How a message is recognised after a move: its Message-ID, or its content when it has none.

    An absurdly long Message-ID is hashed ("midh:") so it still fits in a DynamoDB key.
    """
    mid = internet_message_id
    if mid and len(mid.encode("utf-8", "surrogateescape")) > MAX_PLAIN_MESSAGE_ID:
        return "midh:" + hashlib.sha256(mid.encode("utf-8", "surrogateescape")).hexdigest()
    return f"mid:{mid}" if mid else f"sha:{content_hash}"


def id_for_new_copy(tenant_id: str, user_id: str, server_folder: str, uidvalidity: int, uid: int) -> str:
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


# A relayed copy and its server copy carry the same Date header; re-rendering may move its zone only.
RELAYED_DATE_TOLERANCE = timedelta(minutes=15)


@dataclass(frozen=True)
class Envelope:
    """What must agree before a relayed message takes a server copy with its Message-ID."""

    sender: str | None  # the first From address, lower-cased
    subject: str | None
    date: datetime | None  # aware


def same_relayed_message(relayed: Envelope, server: Envelope) -> bool:
    """Whether a server copy found by Message-ID is the message that came in by relay.

    Anyone can relay a message with a chosen Message-ID before the real one syncs; matched on the
    ID alone, the real copy would be shown with the relayed bytes. So From and Subject must agree,
    and Date within ``RELAYED_DATE_TOLERANCE``; otherwise the server copy is a message of its own.
    """

    def subject(value: str | None) -> str:
        return " ".join((value or "").split())

    if relayed.sender != server.sender or subject(relayed.subject) != subject(server.subject):
        return False
    if relayed.date is None or server.date is None:
        return relayed.date is None and server.date is None
    return abs(relayed.date - server.date) <= RELAYED_DATE_TOLERANCE


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


def server_flags_changed(known_flags: Iterable[str], server_flags: Iterable[str]) -> tuple[str, ...] | None:
    """The server's flags when they differ from the last agreed ones; None when nothing changed."""
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


def with_seen(flags: Iterable[str], seen: bool) -> tuple[str, ...]:
    out = set(flags) - {"\\Seen"}
    if seen:
        out.add("\\Seen")
    return tuple(sorted(out))


@dataclass(frozen=True)
class FlagChange:
    """A server flag change as the CRM takes it: ``agreed`` is the new base (the server's
    flags), ``flags``/``seen`` what the CRM shows."""

    agreed: tuple[str, ...]
    flags: tuple[str, ...]
    seen: bool


def pull_flag_change(
    base: Iterable[str], server: Iterable[str], *, crm_seen: bool, crm_pending: bool
) -> FlagChange | None:
    """Three-way flags: the server's change is what differs from the last agreed ``base``.

    Non-conflicting changes from both sides both apply (another program's \\Flagged comes to
    the CRM while a CRM change waits); when a CRM change still waits for this message, its
    \\Seen wins (it is applied to the server before the next pull).
    """
    agreed = server_flags_changed(base, server)
    if agreed is None:
        return None
    seen = bool(crm_seen) if crm_pending else "\\Seen" in agreed
    return FlagChange(agreed=agreed, flags=with_seen(agreed, seen), seen=seen)


def split_by_uidvalidity(known: Iterable[Known], uidvalidity: int) -> tuple[dict[int, Known], list[Known]]:
    """Before a full (re)sync: copies recorded under another UIDVALIDITY count as vanished
    until an arrival re-matches them (by Message-ID or content); the others by UID."""
    current: dict[int, Known] = {}
    stale: list[Known] = []
    for k in known:
        if k.uidvalidity == uidvalidity:
            current[k.uid] = k
        else:
            stale.append(k)
    return current, stale


def vanished_by_uids(known: Mapping[int, Known], server_uids: set[int]) -> list[Known]:
    """Known copies the server no longer lists (no VANISHED from the server: UIDs compared)."""
    return [k for uid, k in known.items() if uid not in server_uids]


def arrivals_todo(candidates: Iterable[int], known_uids: set[int] | Mapping[int, Any]) -> list[int]:
    """Arrival candidates not yet stored, highest UID first. A resumed first sync needs no
    cursor: what a previous run stored has a location record now."""
    return sorted((u for u in candidates if u not in known_uids), reverse=True)


def in_window(internal_date: datetime, cutoff: datetime) -> bool:
    return internal_date >= cutoff


@dataclass
class BatchPlan:
    relinks: list[Relink]
    creates: list[Arrival]
    vanished: list[Known]  # still unmatched after this batch
    revivable: dict[str, list[str]]  # CRM-written messages still waiting for their copy
    fetch: list[int]  # bodies still to fetch (for creates)


def plan_batch(
    arrivals: Iterable[Arrival],
    vanished: Iterable[Known],
    detached: Mapping[str, list[str]],
    revivable: Mapping[str, list[str]],
    fetched: set[int],
) -> BatchPlan:
    """One batch of arrivals: which are moves or revivals (relinks), which are new (creates),
    and which bodies still have to be fetched.

    Arrivals are taken oldest UID first, as the vanished copies are consumed, so two copies with
    the same Message-ID keep their own ids across a UIDVALIDITY reset. A CRM-written message not
    yet appended (``revivable``) is matched before a detached one: the server saved it itself.
    """
    ordered = sorted(arrivals, key=lambda a: a.uid)
    candidates = {k: list(v) for k, v in detached.items()}
    for key, ids in revivable.items():
        candidates[key] = [*ids, *candidates.get(key, [])]
    result = reconcile(ordered, vanished, candidates)
    used = {r.id for r in result.relinks}
    return BatchPlan(
        relinks=result.relinks,
        creates=result.creates,
        vanished=result.vanished,
        revivable={k: [i for i in v if i not in used] for k, v in revivable.items()},
        fetch=[a.uid for a in result.creates if a.uid not in fetched],
    )


class Vanish(Enum):
    DETACH = "detach"  # the message lived at this copy: it leaves the sync, the CRM keeps it
    DROP_LOCATION = "drop_location"  # the message lives on elsewhere: only the stale record goes


def on_vanished(known: Known, message_state: str | None, message_at: tuple[str, int, int] | None) -> Vanish:
    """A recorded copy that is gone from the server.

    Only the copy the message is at detaches it; a location left over by a rerun after a move,
    or a second copy, is just dropped.
    """
    here = (known.server_folder, known.uidvalidity, known.uid)
    return Vanish.DETACH if message_state == "synced" and message_at == here else Vanish.DROP_LOCATION


def detach_reason(known: Known, moved_away: set[str]) -> str:
    """``moved_unmapped`` when the message was found in a folder that is not mapped, else
    ``removed``."""
    return "moved_unmapped" if known.match_key in moved_away else "removed"
