"""POP3 sync decisions, pure: from the maildrop's listing (UIDL, size) and the UIDLs earlier syncs
dealt with (``domain.PopSeen``), what to fetch, what to delete from the server and what to forget.

POP3 has no folders, no flags and no change notification: a message is new when its UIDL is
not known; known UIDLs that are no longer listed are forgotten (the server dropped the message,
or we deleted it), so a server that later reuses one is seen to bring a new message. Deleting
is only ever planned for a message the CRM holds whole (``PopSeen.id``, not ``headers_only``):
with ``keep_copy`` false as soon as it is stored, with ``remove_after_days`` that many days
after it was stored; a message left out for being older than the window, or stored from its
headers alone, is never deleted.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mailsync.domain import PopSeen

# Messages fetched per job; more go to the continuation job (the job's time budget still rules).
MAX_FETCHES_PER_JOB = 200
# A message the server keeps listing but refuses to give (TOP and RETR -ERR) is tried this many
# times, in as many jobs, then left alone: unfetchable, it neither blocks the rest nor keeps
# continuation jobs coming.
FETCH_ATTEMPTS = 3


@dataclass(frozen=True)
class Listed:
    """A message as this session's UIDL and LIST show it."""

    number: int
    uidl: str
    size: int


@dataclass(frozen=True)
class PopPlan:
    fetch: list[Listed]  # new (oldest, lowest number, first), then earlier failed fetches to try again
    delete: list[Listed]  # held by the CRM and due to leave the server
    forget: list[str]  # known UIDLs the server no longer lists (or now names another message)
    more: bool  # new messages beyond this job's share: a continuation job takes them
    ambiguous: list[str]  # UIDLs the server lists twice: neither fetched nor deleted
    unfetchable: list[str]  # listed, but refused FETCH_ATTEMPTS times: left on the server

    @property
    def has_work(self) -> bool:
        return bool(self.fetch or self.delete or self.forget)


def plan(
    listed: Sequence[Listed],
    known: dict[str, PopSeen],
    *,
    now: datetime,
    keep_copy: bool,
    remove_after_days: int | None,
    max_fetches: int = MAX_FETCHES_PER_JOB,
) -> PopPlan:
    """What one sync does with the maildrop."""
    counts = Counter(m.uidl for m in listed)
    ambiguous = sorted(uidl for uidl, n in counts.items() if n > 1)
    on_server = {m.uidl: m for m in listed if counts[m.uidl] == 1}
    forget = sorted(uidl for uidl in known if uidl not in counts)
    new: list[Listed] = []
    retry: list[Listed] = []
    unfetchable: list[str] = []
    delete: list[Listed] = []
    for message in sorted(on_server.values(), key=lambda m: m.number):
        seen = known.get(message.uidl)
        if seen is not None and reused(seen, message):
            forget.append(message.uidl)
            seen = None
        if seen is None:
            new.append(message)
        elif seen.id is None and seen.failures >= FETCH_ATTEMPTS:
            unfetchable.append(message.uidl)
        elif seen.id is None and seen.failures > 0:
            retry.append(message)
        elif due_for_deletion(seen, now=now, keep_copy=keep_copy, remove_after_days=remove_after_days):
            delete.append(message)
    # Messages never tried go first: ones the server refused cannot hold back new mail.
    wanted = new + retry
    return PopPlan(
        fetch=wanted[:max_fetches],
        delete=delete,
        forget=sorted(forget),
        more=len(wanted) > max_fetches,
        ambiguous=ambiguous,
        unfetchable=unfetchable,
    )


def listing_digest(listed: Sequence[Listed], *, server: str, keep_copy: bool, remove_after_days: int | None) -> str:
    """What a sync saw and what its settings made of it, in one value: a later listing with the
    same digest holds nothing the earlier sync did not deal with."""
    lines = sorted(f"{m.uidl} {m.size}" for m in listed)
    text = "\n".join([server, str(keep_copy), str(remove_after_days), *lines])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def next_deletion(
    known: dict[str, PopSeen], listed: Sequence[Listed], *, keep_copy: bool, remove_after_days: int | None
) -> datetime | None:
    """When the next kept copy is due to leave the server (None: none is)."""
    if keep_copy and remove_after_days is None:
        return None
    on_server = {m.uidl for m in listed}
    due = [
        s.stored_at + timedelta(days=remove_after_days or 0)
        for s in known.values()
        if s.id is not None and s.stored_at is not None and not s.headers_only and s.uidl in on_server
    ]
    return min(due, default=None)


def checkpoint(*, on_server: int, digest: str | None, next_deletion_at: datetime | None) -> dict[str, int | str | None]:
    """The POP3 mailbox's entry in the sync state: its size (sync-status) and, after a complete
    sync, the digest and next deletion time that let the next job skip the state read."""
    out: dict[str, int | str | None] = {"messages": on_server}
    if digest is not None:
        out["listing"] = digest
        out["next_deletion_at"] = None if next_deletion_at is None else int(next_deletion_at.timestamp())
    return out


def nothing_to_do(stored: dict[str, object], digest: str, now: datetime) -> bool:
    """The listing is the one the last complete sync dealt with, and no kept copy is due yet."""
    if stored.get("listing") != digest:
        return False
    due = stored.get("next_deletion_at")
    return due is None or (isinstance(due, int | float) and now.timestamp() < float(due))


def reused(seen: PopSeen, listed: Listed) -> bool:
    """The server lists a known UIDL with another size: another message under a reused UIDL."""
    return seen.size is not None and seen.size != listed.size


def due_for_deletion(seen: PopSeen, *, now: datetime, keep_copy: bool, remove_after_days: int | None) -> bool:
    """Only what the CRM holds whole leaves the server: at once without ``keep_copy``, else
    ``remove_after_days`` after it was stored (never when that is None). A message stored from
    its headers alone (over the size cap) never does: the server has its only whole copy."""
    if seen.id is None or seen.stored_at is None or seen.headers_only:
        return False
    if not keep_copy:
        return True
    return remove_after_days is not None and now >= seen.stored_at + timedelta(days=remove_after_days)


def window_start(now: datetime, sync_window_days: int) -> datetime:
    return now - timedelta(days=sync_window_days)


def message_time(date: datetime | None, received: datetime | None) -> datetime | None:
    """When a message was sent, for the window: its Date header, else its newest Received line."""
    when = date or received
    if when is None:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def in_window(when: datetime | None, start: datetime) -> bool:
    """A message without any date is fetched: leaving it out could lose it for good."""
    return when is None or when >= start


_RECEIVED = re.compile(rb"^received:", re.IGNORECASE)


def received_time(header_lines: Iterable[bytes]) -> datetime | None:
    """The date of the topmost Received header (the last hop: our server's delivery), or None.

    ``header_lines`` are the header section's lines as the server sent them (folded lines start
    with white space)."""
    value: bytes | None = None
    for line in header_lines:
        if value is not None:
            if line[:1] in (b" ", b"\t"):
                value += b" " + line.strip()
                continue
            break
        if not line.strip():
            return None  # end of the header section
        if _RECEIVED.match(line):
            value = line.split(b":", 1)[1].strip()
    if value is None or b";" not in value:
        return None
    stamp = value.rsplit(b";", 1)[1].strip().decode("ascii", "replace")
    try:
        parsed = email.utils.parsedate_to_datetime(stamp)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def remembered(
    listed: Listed, *, now: datetime, id: str | None, headers_only: bool = False, header_digest: str | None = None
) -> PopSeen:
    """What is kept of a message a sync dealt with now: stored under ``id`` (from its headers
    alone with ``headers_only``), or left out (None); ``header_digest``: see ``header_digest``."""
    return PopSeen(
        uidl=listed.uidl,
        seen_at=now,
        size=listed.size,
        id=id,
        stored_at=now if id is not None else None,
        headers_only=headers_only and id is not None,
        header_digest=header_digest,
    )


# Headers a mail server has no reason to change once a message is delivered (unlike Status:,
# X-UIDL: or Received: lines some servers add or rewrite as they serve it).
_IDENTITY_HEADERS = (b"message-id", b"date", b"from", b"to", b"subject")


def header_digest(header_section: bytes) -> str:
    """What tells one message from another of the same size under a reused UIDL: a digest of
    its identifying headers (all its header lines when it has none of them)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in header_section.split(b"\r\n"):
        if not line.strip():
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], (fields[-1][1] + b" " + line.strip()).strip())
        elif b":" in line:
            name, value = line.split(b":", 1)
            fields.append((name.strip().lower(), value.strip()))
    picked = [f for f in fields if f[0] in _IDENTITY_HEADERS] or fields
    text = b"\n".join(name + b":" + value for name, value in sorted(picked))
    return hashlib.sha256(text).hexdigest()[:32]


def same_message(seen: PopSeen, digest: str | None) -> bool:
    """Whether the message listed under a known UIDL is the one stored: only then may it be
    deleted (a record without a digest, or headers that cannot be read, say no)."""
    return digest is not None and seen.header_digest is not None and digest == seen.header_digest


def failed(listed: Listed, *, now: datetime, before: PopSeen | None) -> PopSeen:
    """What is kept of a message the server listed but refused to give this time: one more
    failed fetch (counted from ``before``, the earlier record of the same message)."""
    earlier = before.failures if before is not None and before.id is None and not reused(before, listed) else 0
    return PopSeen(uidl=listed.uidl, seen_at=now, size=listed.size, failures=earlier + 1)
