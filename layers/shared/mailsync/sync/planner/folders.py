"""Folder decisions: how to sync a folder from its STATUS, what its checkpoint advances to."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
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


def _num(data: Mapping[str, Any], key: str) -> int | None:
    # DynamoDB numbers come back as Decimal: checkpoints hold plain ints.
    return int(data[key]) if data.get(key) is not None else None


@dataclass(frozen=True)
class FolderCheckpoint:
    """What the last sync agreed with the server about one mapped folder, and how it went.

    ``error`` is the folder's own trouble (``folder_missing``), shown in sync-status;
    ``deferred``: its disappearances wait one sync for their arrival elsewhere (see
    ``disappearances_wait``); ``crm_folder`` is what it was mapped to.
    """

    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    messages: int | None = None
    first_sync: FirstSync | None = None
    error: str | None = None
    deferred: bool = False
    crm_folder: str | None = None
    scanned_at: int | None = None  # last full flag scan (servers without CONDSTORE), epoch seconds

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            k: v for k, v in self.__dict__.items() if k not in ("first_sync", "deferred") and v is not None
        }
        if self.first_sync is not None:
            data["first_sync"] = self.first_sync.to_dict()
        if self.deferred:
            data["deferred"] = True
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FolderCheckpoint:
        if not data:
            return cls()
        first = data.get("first_sync")
        return cls(
            uidvalidity=_num(data, "uidvalidity"),
            uidnext=_num(data, "uidnext"),
            highestmodseq=_num(data, "highestmodseq"),
            messages=_num(data, "messages"),
            first_sync=FirstSync.from_dict(first) if first else None,
            error=data.get("error"),
            deferred=bool(data.get("deferred")),
            crm_folder=data.get("crm_folder"),
            scanned_at=_num(data, "scanned_at"),
        )


@dataclass(frozen=True)
class Checkpoint:
    """An account's sync state as the engine saves it: per mapped folder, whether detached
    messages exist (only then are arrivals matched against them), and the last aged-out sweep."""

    folders: Mapping[str, FolderCheckpoint] = field(default_factory=dict)
    has_detached: bool = False
    last_sweep_at: int | None = None

    def folder(self, server_folder: str) -> FolderCheckpoint:
        return self.folders.get(server_folder, FolderCheckpoint())

    def with_folder(self, server_folder: str, **changes: Any) -> Checkpoint:
        folders = dict(self.folders)
        folders[server_folder] = replace(self.folder(server_folder), **changes)
        return replace(self, folders=folders)

    def without_folder(self, server_folder: str) -> Checkpoint:
        return replace(self, folders={k: v for k, v in self.folders.items() if k != server_folder})

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "folders": {name: f.to_dict() for name, f in self.folders.items()},
            "has_detached": self.has_detached,
        }
        if self.last_sweep_at is not None:
            data["last_sweep_at"] = self.last_sweep_at
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        folders = data.get("folders") or {}
        return cls(
            folders={name: FolderCheckpoint.from_dict(f) for name, f in folders.items()},
            has_detached=bool(data.get("has_detached")),
            last_sweep_at=_num(data, "last_sweep_at"),
        )


@dataclass(frozen=True)
class ServerStatus:
    uidvalidity: int
    uidnext: int
    messages: int
    highestmodseq: int | None


def empty_reset(stored: FolderCheckpoint, status: ServerStatus, *, has_copies: Callable[[], bool]) -> bool:
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
    stored: FolderCheckpoint,
    status: ServerStatus,
    *,
    qresync: bool,
    has_copies: Callable[[], bool] = lambda: True,
    now: float = 0.0,
    scan_every: float = 0.0,
) -> Mode:
    """How to sync one folder, from its STATUS alone (and, for an empty folder with a new
    UIDVALIDITY, whether we store any copy from it).

    ``scan_every`` (seconds; 0: always): how often a folder of a server without CONDSTORE is
    scanned for flag changes while its STATUS stays the same (see ``scan_due``)."""
    if empty_reset(stored, status, has_copies=has_copies):
        return Mode.SKIP
    if stored.uidvalidity is None or stored.first_sync is not None or status.uidvalidity != stored.uidvalidity:
        return Mode.FULL
    if status.highestmodseq is None or stored.highestmodseq is None:
        # Without HIGHESTMODSEQ a flag change leaves STATUS untouched: only a scan can see it.
        return Mode.SCAN if scan_due(stored, status, now=now, scan_every=scan_every) else Mode.SKIP
    unchanged = (
        status.uidnext == stored.uidnext
        and status.highestmodseq == stored.highestmodseq
        and status.messages == stored.messages
    )
    if unchanged:
        return Mode.SKIP
    return Mode.QRESYNC if qresync else Mode.CONDSTORE


def snapshot_bound(listed: ServerStatus, live: ServerStatus) -> ServerStatus:
    """The snapshot arrivals are bounded by: the sync's STATUS when it describes the folder
    read now (same UIDVALIDITY, a UIDNEXT reported), else what EXAMINE reported.

    Arrivals above it are the next sync's, so a message another client moves after the
    snapshot meets its disappearance there and keeps its id.
    """
    return listed if listed.uidvalidity == live.uidvalidity and listed.uidnext > 0 else live


def first_sync_start(current: FirstSync | None, uidvalidity: int, bound: ServerStatus) -> FirstSync:
    """A first sync (or a resync after a UIDVALIDITY change) goes on where it stopped while the
    folder keeps its UIDVALIDITY; otherwise it starts over from this snapshot."""
    if current is not None and current.uidvalidity == uidvalidity:
        return current
    return FirstSync(
        uidvalidity=uidvalidity, uidnext=bound.uidnext, highestmodseq=bound.highestmodseq, messages=bound.messages
    )


def first_sync_counted(first: FirstSync, window: int, todo: int) -> FirstSync:
    """Progress shown in sync-status: what the window holds and how much of it is stored."""
    return replace(first, total=window, done=window - todo)


def first_sync_progress(first: FirstSync, batch: Iterable[int]) -> FirstSync:
    uids = list(batch)
    return replace(first, done=first.done + len(uids), cursor=min(uids))


def advanced(snapshot: ServerStatus, first_sync: FirstSync | None) -> ServerStatus:
    """What a folder's checkpoint moves to once its work is done: the snapshot, or for a first
    sync the values seen when it began (changes meanwhile are picked up next time from there)."""
    if first_sync is None:
        return snapshot
    return ServerStatus(first_sync.uidvalidity, first_sync.uidnext, first_sync.messages, first_sync.highestmodseq)


def expunges_unreported(snapshot_messages: int, stored_messages: int | None, new_arrivals: int) -> bool:
    """CONDSTORE without QRESYNC names no expunged UIDs: whether the message count says some
    went (then every UID is compared)."""
    return snapshot_messages != (stored_messages or 0) + new_arrivals


def disappearances_wait(*, deferred_before: bool, changed_since_snapshot: Callable[[], bool]) -> bool:
    """Whether unmatched disappearances wait one sync instead of being detached now.

    Something changed after the snapshot (arrivals past it are next sync's): a copy that
    vanished may be one of them, a move. Only once, so a busy mailbox still detaches.
    ``changed_since_snapshot`` (one more STATUS) is asked only when it can matter.
    """
    return not deferred_before and changed_since_snapshot()


def sweep_due(last_sweep_at: int | None, now: float, *, force: bool, interval: int) -> bool:
    """Whether messages that aged out of the window are looked for now (every ``interval``
    seconds, a day in the engine, and after a full resync of any folder)."""
    return force or now - int(last_sweep_at or 0) >= interval


def scan_due(stored: FolderCheckpoint, status: ServerStatus, *, now: float, scan_every: float) -> bool:
    """Whether a folder without HIGHESTMODSEQ is scanned now: when STATUS shows new mail or an
    expunge (UIDNEXT or MESSAGES moved), when no scan is on record, and otherwise every
    ``scan_every`` seconds. A flag change by another program on such a server reaches the CRM
    within that time; new mail and removals still within a sync."""
    if scan_every <= 0 or stored.scanned_at is None:
        return True
    if (status.uidnext, status.messages) != (stored.uidnext, stored.messages):
        return True
    return now - stored.scanned_at >= scan_every


def checkpoint_work(
    checkpoint: Checkpoint, mapped: Mapping[str, str], *, now: float, sweep_interval: int
) -> str | None:
    """Why the checkpoint alone means work (``mapped``: server folder -> CRM folder); None when
    only the folders' STATUS can tell (``status_work``). Mirrors what the engine would write
    for folders whose STATUS is unchanged: an unmapped folder's messages to detach, a first
    sync to go on with, a changed CRM folder to record, the daily aged-out sweep."""
    if any(name not in mapped for name in checkpoint.folders):
        return "folder_unmapped"
    for name, crm in mapped.items():
        stored = checkpoint.folder(name)
        if stored.uidvalidity is None or stored.first_sync is not None:
            return "first_sync"
        if stored.crm_folder != crm:
            return "folder_remapped"
    if sweep_due(checkpoint.last_sweep_at, now, force=False, interval=sweep_interval):
        return "sweep_due"
    return None


def status_work(
    checkpoint: Checkpoint,
    statuses: Mapping[str, ServerStatus | None],
    *,
    now: float,
    scan_every: float,
    has_copies: Callable[[str], bool],
) -> str | None:
    """Why the folders' STATUS (None: the folder is missing on the server) means work; None for a
    no-op. The same rules as ``plan_folder`` (a folder it would skip is no work), plus a folder
    error to clear or a newly missing folder to report."""
    for name, status in statuses.items():
        stored = checkpoint.folder(name)
        if status is None:
            if stored.error != "folder_missing":
                return "folder_missing"
            continue
        if stored.error is not None:
            return "folder_error_cleared"
        mode = plan_folder(
            stored, status, qresync=False, has_copies=lambda name=name: has_copies(name), now=now, scan_every=scan_every
        )
        if mode is not Mode.SKIP:
            # Which of QRESYNC and CONDSTORE the sync then uses is the connection's to say.
            return f"folder_{mode.value}" if mode in (Mode.FULL, Mode.SCAN) else "folder_changed"
    return None
