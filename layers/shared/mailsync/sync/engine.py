"""Sync one account from the server to the CRM: gather inputs, ask ``sync.planner``, carry out.

Order of work (each step is safe to redo after a crash, see README "Sync engine"):

0. folders no longer mapped: their messages are detached (``moved_unmapped``);
1. STATUS of every mapped folder in one command (LIST-STATUS) or one per folder; a folder whose
   UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and MESSAGES are unchanged is not even selected;
2. per changed folder: flag changes are applied, disappearances collected, arrivals listed;
3. arrivals of all folders, in batches bounded by count and bytes, newest first: matched
   against the disappearances (a move keeps its id), else stored (S3, then DynamoDB, the
   location record last); a checkpoint after each batch;
4. what still disappeared is detached (``removed`` or ``moved_unmapped``);
5. messages older than the window are detached (``aged_out``);
6. folder checkpoints move forward to what the server reported before the work began.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from mailsync import blobstore, dal, events, mime, privacy
from mailsync.config import get_settings
from mailsync.domain import Account, Location, Message, SyncState
from mailsync.errors import FolderMissing
from mailsync.events import (
    ACCOUNT_FOLDER_MISSING,
    MESSAGE_DETACHED,
    MESSAGE_RECEIVED,
    MESSAGE_UPDATED,
    Event,
    message_event,
)
from mailsync.mailbox.connection import FetchedMessage, ImapConnection, MessageSummary
from mailsync.observability import logger, with_log_keys
from mailsync.privacy import TenantRules
from mailsync.sync.gmail import GmailLabels
from mailsync.sync.metadata import metadata_fields, minimal_fields
from mailsync.sync.planner import folders as plan
from mailsync.sync.planner import messages as decide
from mailsync.sync.planner.folders import Checkpoint, FirstSync, FolderCheckpoint, Mode, ServerStatus
from mailsync.sync.planner.messages import Arrival, Known

BATCH_COUNT = 50
BATCH_BYTES = 8 * 1024 * 1024
# Aging out reads every location of each mapped folder (``dal.aged_out``: ~47 RRU for 1,500
# copies in the window), so it runs once a day, besides after a full resync: a message stops
# syncing up to a day after it left the window (docs/architecture.md, "Aging out").
SWEEP_INTERVAL_SECONDS = 86_400
# At most this many aged-out copies are detached per folder and sweep (each one a read and a
# transaction); a folder with more is swept again next sync (a window shortened by months).
SWEEP_LIMIT = 500
# Of a message over the size cap only this much of its header section is fetched and stored.
TOO_LARGE_HEADER_BYTES = 1024 * 1024
FOLDER_MISSING = "folder_missing"


@dataclass
class FolderWork:
    server_folder: str
    mode: Mode
    # What the folder state advances to: the sync's STATUS snapshot, taken before any scan.
    # Arrivals are bounded by its UIDNEXT, so whatever lands later (a move by another client
    # mid-sync) is next sync's arrival and meets its disappearance there.
    snapshot: ServerStatus
    todo: list[int] = field(default_factory=list)  # arrival candidates, highest UID first
    first_sync: FirstSync | None = None


@dataclass
class SyncOutcome:
    complete: bool = True
    created: int = 0
    relinked: int = 0
    detached: int = 0
    flag_updates: int = 0
    pushed: int = 0
    imap_commands: int = 0
    folder_errors: dict[str, str] = field(default_factory=dict)
    # The sync's last checkpoint (``Checkpoint.to_dict``), not yet written: with
    # ``hand_over_checkpoint`` the lease release writes it, one request instead of two.
    checkpoint: dict[str, Any] | None = None


def _status(status: Any) -> ServerStatus:
    return ServerStatus(
        uidvalidity=status.uidvalidity,
        uidnext=status.uidnext,
        messages=status.messages,
        highestmodseq=status.highestmodseq,
    )


def _known(location: Location) -> Known:
    return Known(
        id=location.id,
        server_folder=location.server_folder,
        uidvalidity=location.uidvalidity,
        uid=location.uid,
        flags=location.flags,
        match_key=location.match_key,
        internal_date=location.internal_date,
    )


def load_checkpoint(state: SyncState) -> Checkpoint:
    return Checkpoint.from_dict(
        {"folders": state.folders, "has_detached": state.has_detached, "last_sweep_at": state.last_sweep_at}
    )


def pending_work(account: Account, state: SyncState, conn: ImapConnection) -> str | None:
    """Why ``AccountSync.run`` would change anything, from the stored checkpoint and one STATUS
    of the mapped folders (no lease taken, nothing written); None: it would change nothing.

    Read before the lease: whoever takes it reads the state again and syncs as usual, so a
    stale answer here costs at most one sync that finds nothing."""
    now = time.time()
    mapped = {server: crm for crm, server in account.mapped_folders().items()}
    checkpoint = load_checkpoint(state)
    reason = plan.checkpoint_work(checkpoint, mapped, now=now, sweep_interval=SWEEP_INTERVAL_SECONDS)
    if reason is not None:
        return reason
    found = conn.status(list(mapped))
    statuses = {name: (_status(found[name]) if name in found else None) for name in mapped}
    return plan.status_work(
        checkpoint,
        statuses,
        now=now,
        scan_every=get_settings().flag_scan_minutes * 60,
        has_copies=lambda name: next(dal.folder_locations(account.tenant_id, account.user_id, name), None) is not None,
    )


class AccountSync:
    """One sync run of one account, holding its lease (``owner``)."""

    def __init__(
        self,
        account: Account,
        state: SyncState,
        conn: ImapConnection,
        *,
        owner: str,
        deadline: Callable[[], bool] = lambda: False,
        now: datetime | None = None,
        revivable: dict[str, list[str]] | None = None,
        pending_moves: frozenset[str] = frozenset(),
        hand_over_checkpoint: bool = False,
    ) -> None:
        self.account = account
        self.hand_over_checkpoint = hand_over_checkpoint
        self.state = state
        self.conn = conn
        self.owner = owner
        self.deadline = deadline
        self.tenant = account.tenant_id
        self.user = account.user_id
        self.now = now or dal.utcnow()
        self.cutoff = self.now - timedelta(days=int(account.sync_window_days))
        folder_map = account.mapped_folders()
        self.crm_for: dict[str, str] = {server: crm for crm, server in folder_map.items()}
        self.checkpoint = load_checkpoint(state)
        self._saved = self.checkpoint  # what storage holds: an unchanged checkpoint is not written
        self.events: list[Event] = []
        self.vanished: list[Known] = []
        self.outcome = SyncOutcome()
        # CRM-written messages not yet appended: an arrival with their key is them.
        self.revivable = {k: list(v) for k, v in (revivable or {}).items()}
        self._rules: TenantRules | None = None
        # Ids of messages with a CRM move still waiting: only those keep their CRM folder on a relink.
        self.pending_moves = pending_moves
        self.max_message_bytes = get_settings().max_message_bytes
        self.scan_every = get_settings().flag_scan_minutes * 60
        self.snapshots: dict[str, ServerStatus] = {}
        self._publisher: ThreadPoolExecutor | None = None
        self._published: list[Future[int]] = []
        # Gmail's labels (X-GM-EXT-1): one CRM message per Gmail message, see sync/gmail.py.
        self.gmail = GmailLabels(self) if conn.is_gmail else None

    # -- entry point ---------------------------------------------------------------------------

    def run(self) -> SyncOutcome:
        try:
            return self._run()
        finally:
            self._publishing_done()

    def _run(self) -> SyncOutcome:
        self._drop_unmapped_folders()
        statuses = self.conn.status(list(self.crm_for))
        work: list[FolderWork] = []
        for server_folder in self.crm_for:
            status = statuses.get(server_folder)
            if status is None:
                self._folder_missing(server_folder)
                continue
            self.snapshots[server_folder] = _status(status)
            try:
                item = self._prepare_folder(server_folder, _status(status))
            except FolderMissing:
                # Deleted between the STATUS and now: the other folders still sync.
                self._folder_missing(server_folder)
                continue
            self.checkpoint = self.checkpoint.with_folder(server_folder, error=None)
            if item is not None:
                work.append(item)
        done: list[FolderWork] = []
        for item in work:
            try:
                if not self._process_arrivals(item):
                    self.outcome.complete = False
                    self._save_checkpoint(last=True)
                    return self._finish()
            except FolderMissing:
                self._folder_missing(item.server_folder)
                continue
            done.append(item)
        waiting = self._detach_vanished()
        self._sweep_aged_out(force=any(w.mode is Mode.FULL for w in done))
        for item in done:
            # A folder whose disappearances wait sees them again next sync from its old state.
            deferred = item.server_folder in waiting
            self.checkpoint = self.checkpoint.with_folder(item.server_folder, deferred=deferred)
            if not deferred:
                self._advance(item)
        self._save_checkpoint(last=True)
        return self._finish()

    def publish_events(self) -> None:
        """Announce what is stored so far: after each batch's checkpoint, so the CRM hears of new
        mail while a long first sync runs and a worker that dies later loses no announcement of
        what it finished (what it did since the last batch is still announced at most once).

        Sent by the publisher thread, in order, while the sync goes on; ``run`` waits for it.
        """
        if self.events:
            if self._publisher is None:
                self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events")
            self._published.append(self._publisher.submit(with_log_keys(events.publish), self.events))
            self.events = []

    def _publishing_done(self) -> None:
        """Wait until every handed-over event is sent (``events.publish`` never raises)."""
        if self._publisher is not None:
            self._publisher.shutdown(wait=True)
            self._publisher = None
        wait(self._published)
        self._published = []

    def _finish(self) -> SyncOutcome:
        self.outcome.imap_commands = self.conn.command_count
        return self.outcome

    # -- step 0 ---------------------------------------------------------------------------------

    def _drop_unmapped_folders(self) -> None:
        for server_folder in [f for f in self.checkpoint.folders if f not in self.crm_for]:
            for location in list(dal.folder_locations(self.tenant, self.user, server_folder)):
                self._detach(_known(location), "moved_unmapped")
            dal.forget_folder_windows(self.tenant, self.user, server_folder)
            self.checkpoint = self.checkpoint.without_folder(server_folder)

    def _folder_missing(self, server_folder: str) -> None:
        """A mapped folder the server no longer has: shown in sync-status, announced once."""
        if self.checkpoint.folder(server_folder).error != FOLDER_MISSING:
            self.events.append(
                Event(
                    ACCOUNT_FOLDER_MISSING,
                    self.tenant,
                    self.user,
                    {"server_folder": server_folder, "crm_folder": self.crm_for[server_folder], "code": FOLDER_MISSING},
                )
            )
        self.outcome.folder_errors[server_folder] = FOLDER_MISSING
        self.checkpoint = self.checkpoint.with_folder(server_folder, error=FOLDER_MISSING)
        logger.warning("folder skipped", extra={"server_folder": server_folder, "reason": FOLDER_MISSING})

    # -- step 2 ---------------------------------------------------------------------------------

    def _prepare_folder(self, server_folder: str, status: ServerStatus) -> FolderWork | None:
        stored = self.checkpoint.folder(server_folder)
        mode = plan.plan_folder(
            stored,
            status,
            qresync=self.conn.has_qresync,
            has_copies=lambda: self._has_copies(server_folder),
            now=time.time(),
            scan_every=self.scan_every,
        )
        if mode is Mode.SKIP:
            return None
        if mode is Mode.FULL:
            return self._prepare_full(server_folder, stored, status)
        if mode is Mode.SCAN:
            return self._prepare_scan(server_folder, stored, status)
        return self._prepare_modseq(server_folder, stored, mode, status)

    def _has_copies(self, server_folder: str) -> bool:
        return next(dal.folder_locations(self.tenant, self.user, server_folder), None) is not None

    def _empty_reset(self, server_folder: str, stored: FolderCheckpoint, live: ServerStatus) -> bool:
        """EXAMINE reported a new UIDVALIDITY that changes nothing (see ``planner.empty_reset``)."""
        return plan.empty_reset(stored, live, has_copies=lambda: self._has_copies(server_folder))

    def _known_copies(self, server_folder: str) -> list[Known]:
        return [_known(loc) for loc in dal.folder_locations(self.tenant, self.user, server_folder)]

    def _prepare_full(self, server_folder: str, stored: FolderCheckpoint, listed: ServerStatus) -> FolderWork:
        snapshot = _status(self.conn.examine(server_folder))
        bound = plan.snapshot_bound(listed, snapshot)
        first = plan.first_sync_start(stored.first_sync, snapshot.uidvalidity, bound)
        current, stale = decide.split_by_uidvalidity(self._known_copies(server_folder), first.uidvalidity)
        self.vanished.extend(stale)
        if current:
            # A resumed first sync: what it stored before may have left the folder meanwhile.
            self.vanished.extend(decide.vanished_by_uids(current, set(self.conn.search_from_uid(1))))
        # This sync's snapshot bounds the arrivals (a resumed first sync's own UIDNEXT is older:
        # what came since is stored now and known next time).
        window = self.conn.search_since(self.cutoff.date(), below=bound.uidnext or None)
        todo = decide.arrivals_todo(window, current)
        first = plan.first_sync_counted(first, len(window), len(todo))
        # The last agreed values stay stored beside it (sync-status shows them) until it completes.
        self.checkpoint = self.checkpoint.with_folder(server_folder, first_sync=first)
        return FolderWork(server_folder, Mode.FULL, snapshot, todo, first)

    def _prepare_modseq(
        self, server_folder: str, stored: FolderCheckpoint, mode: Mode, listed: ServerStatus
    ) -> FolderWork | None:
        assert stored.uidvalidity is not None and stored.highestmodseq is not None
        changes = self.conn.changes_since(server_folder, stored.uidvalidity, stored.highestmodseq)
        live = _status(changes.status)
        if self._empty_reset(server_folder, stored, live):
            return None
        if live.uidvalidity != stored.uidvalidity:
            return self._prepare_full(server_folder, FolderCheckpoint(), listed)
        snapshot = plan.snapshot_bound(listed, live)
        new_uids = self.conn.search_from_uid(stored.uidnext or 1, below=snapshot.uidnext or None)
        # One lookup for both: a new message's UID is among the changed flags too (its MODSEQ is new).
        wanted = set(changes.changed_flags) | set(new_uids)
        found = dal.find_locations(self.tenant, self.user, server_folder, ((stored.uidvalidity, u) for u in wanted))
        known = {uid: _known(loc) for (_, uid), loc in found.items()}
        self._apply_flag_changes(server_folder, stored.uidvalidity, changes.changed_flags, known)
        if changes.vanished is not None:
            gone = dal.find_locations(
                self.tenant, self.user, server_folder, ((stored.uidvalidity, u) for u in changes.vanished)
            )
            self.vanished.extend(_known(loc) for loc in gone.values())
        elif plan.expunges_unreported(snapshot.messages, stored.messages, len(new_uids)):
            copies = {k.uid: k for k in self._known_copies(server_folder)}
            self.vanished.extend(decide.vanished_by_uids(copies, set(self.conn.search_from_uid(1))))
        todo = decide.arrivals_todo(new_uids, {uid for uid in new_uids if uid in known})
        return FolderWork(server_folder, mode, snapshot, todo)

    def _prepare_scan(self, server_folder: str, stored: FolderCheckpoint, listed: ServerStatus) -> FolderWork | None:
        live = _status(self.conn.examine(server_folder))
        if self._empty_reset(server_folder, stored, live):
            return None
        if live.uidvalidity != stored.uidvalidity:
            return self._prepare_full(server_folder, FolderCheckpoint(), listed)
        snapshot = plan.snapshot_bound(listed, live)
        all_uids = set(self.conn.search_from_uid(1))
        known = {k.uid: k for k in self._known_copies(server_folder)}
        self.vanished.extend(decide.vanished_by_uids(known, all_uids))
        present = sorted(u for u in known if u in all_uids)
        self._apply_flag_changes(server_folder, snapshot.uidvalidity, self.conn.flags(present), known)
        window = self.conn.search_since(self.cutoff.date(), below=snapshot.uidnext or None)
        return FolderWork(server_folder, Mode.SCAN, snapshot, decide.arrivals_todo(window, known))

    def _apply_flag_changes(
        self,
        server_folder: str,
        uidvalidity: int,
        changed: dict[int, tuple[str, ...]],
        known: dict[int, Known] | None = None,
    ) -> None:
        if not changed:
            return
        if known is None:
            found = dal.find_locations(self.tenant, self.user, server_folder, ((uidvalidity, u) for u in changed))
            known = {uid: _known(loc) for (_, uid), loc in found.items()}
        touched = [(known[uid], flags) for uid, flags in changed.items() if uid in known]
        touched = [(k, f) for k, f in touched if decide.server_flags_changed(k.flags, f) is not None]
        if not touched:
            return
        messages = dal.find_messages(k.id for k, _ in touched)
        for copy, flags in touched:
            message = messages.get(copy.id)
            if message is None:
                continue
            change = decide.pull_flag_change(
                copy.flags, flags, crm_seen=bool(message.seen), crm_pending=int(message.pending_ops or 0) > 0
            )
            if change is None:
                continue
            dal.set_flags(message, self._location(copy), list(change.flags), change.seen, agreed=list(change.agreed))
            message = replace(message, flags=change.flags, seen=change.seen)
            self.events.append(
                message_event(MESSAGE_UPDATED, message, changes={"flags": list(change.agreed), "seen": change.seen})
            )
            self.outcome.flag_updates += 1

    # -- step 3 ---------------------------------------------------------------------------------

    def _process_arrivals(self, work: FolderWork) -> bool:
        """Store the folder's arrivals batch by batch; False when time ran out (checkpointed).

        One IMAP connection, used by this thread only: while a background thread stores batch N
        (S3, MIME parse, DynamoDB), this one plans and downloads batch N+1. Batch N is
        checkpointed (and its events handed to the publisher) only once its store returned, so
        the checkpoint never runs ahead of what is durable.
        """
        if not work.todo:
            return True
        self.conn.examine(work.server_folder)
        # Headers only (the reader chunks the command); bodies are fetched per batch below.
        summaries = {s.uid: s for s in self.conn.summaries(work.todo)}
        sizes = {uid: self._fetch_size(s.size) for uid, s in summaries.items()}
        # Newest mail first, so the CRM shows what matters while a big first sync runs. UIDs
        # gone between SEARCH and FETCH have no summary: they are not arrivals any more.
        todo = sorted(summaries, key=lambda u: (summaries[u].internal_date, u), reverse=True)
        storing: tuple[list[int], Future[list[Message]]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store") as store:
            try:
                for batch in decide.batches(todo, sizes, max_count=BATCH_COUNT, max_bytes=BATCH_BYTES):
                    if self.deadline():
                        self._batch_stored(work, storing)
                        return False
                    creates = self._prepare_batch(work, [summaries[u] for u in batch])
                    self._batch_stored(work, storing)
                    storing = batch, store.submit(with_log_keys(self._create), work, creates)
                self._batch_stored(work, storing)
                storing = None
            except BaseException:
                # Whatever failed, the store in flight ends before this does (no write after a
                # crash report); its own failure is secondary, and nothing more is checkpointed.
                if storing is not None:
                    wait([storing[1]])
                raise
        return True

    def _batch_stored(self, work: FolderWork, storing: tuple[list[int], Future[list[Message]]] | None) -> None:
        """Wait for a batch's store, then checkpoint it and hand its events to the publisher."""
        if storing is None:
            return
        batch, future = storing
        created = future.result()
        self.events.extend(message_event(MESSAGE_RECEIVED, m) for m in created)
        self.outcome.created += len(created)
        if work.first_sync is not None:
            work.first_sync = plan.first_sync_progress(work.first_sync, batch)
            self.checkpoint = self.checkpoint.with_folder(work.server_folder, first_sync=work.first_sync)
        self._save_checkpoint()
        self.publish_events()

    def _prepare_batch(self, work: FolderWork, batch: list[MessageSummary]) -> list[tuple[Arrival, FetchedMessage]]:
        """The IMAP and matching part of a batch: relinks done, new messages downloaded (returned)."""
        summaries = [s for s in batch if decide.in_window(s.internal_date, self.cutoff)]
        sizes = {s.uid: s.size for s in summaries}
        # A message without Message-ID is recognised by its content: that needs its bytes first.
        fetched = self._fetch([s.uid for s in summaries if not s.internet_message_id], sizes)
        arrivals = [a for a in (self._arrival(work, s, fetched.get(s.uid)) for s in summaries) if a is not None]
        detached = self._detached_candidates({a.match_key for a in arrivals}) if self.checkpoint.has_detached else {}
        if self.gmail is not None:
            arrivals, revive = self.gmail.known_copies(arrivals)
            detached = {**detached, **revive}
        step = decide.plan_batch(arrivals, self.vanished, detached, self.revivable, set(fetched))
        step = self._relayed_checked(step)
        self.revivable, self.vanished = step.revivable, step.vanished
        for relink in step.relinks:
            self._relink(relink)
        if not step.creates:
            return []
        fetched.update(self._fetch(step.fetch, sizes))
        return [(a, fetched[a.uid]) for a in step.creates if a.uid in fetched]

    def _relayed_checked(self, step: decide.BatchPlan) -> decide.BatchPlan:
        """Revivals of relayed messages by Message-ID only where the server copy's headers agree
        (``decide.same_relayed_message``); the others become new messages."""
        revivals = [r for r in step.relinks if r.old is None and not r.arrival.match_key.startswith("sha:")]
        messages = dal.find_messages(r.id for r in revivals) if revivals else {}
        relayed = [r for r in revivals if r.id in messages and messages[r.id].detach_reason == "relayed"]
        if not relayed:
            return step
        heads = {
            m.uid: m.raw for m in self.conn.fetch_headers([r.arrival.uid for r in relayed], TOO_LARGE_HEADER_BYTES)
        }

        def envelope(sender: Sequence[mime.Address], subject: str | None, date: datetime | None) -> decide.Envelope:
            return decide.Envelope(sender[0].email.lower() if sender else None, subject, date)

        rejected = []
        for relink in relayed:
            message = messages[relink.id]
            head = mime.parse_message(heads[relink.arrival.uid]) if relink.arrival.uid in heads else None
            if head is None or not decide.same_relayed_message(
                envelope(message.from_, message.subject, message.date), envelope(head.from_, head.subject, head.date)
            ):
                rejected.append(relink)
        if not rejected:
            return step
        logger.warning("server copy does not match its relayed message: stored as new", extra={"count": len(rejected)})
        return replace(
            step,
            relinks=[r for r in step.relinks if r not in rejected],
            creates=sorted([*step.creates, *(r.arrival for r in rejected)], key=lambda a: a.uid),
            fetch=[*step.fetch, *(r.arrival.uid for r in rejected)],
        )

    def _fetch_size(self, size: int) -> int:
        return min(size, TOO_LARGE_HEADER_BYTES) if size > self.max_message_bytes else size

    def _fetch(self, uids: list[int], sizes: dict[int, int]) -> dict[int, FetchedMessage]:
        """Raw messages; of one over the size cap only its headers (its body never enters memory)."""
        if not uids:
            return {}
        whole = [u for u in uids if sizes.get(u, 0) <= self.max_message_bytes]
        big = [u for u in uids if sizes.get(u, 0) > self.max_message_bytes]
        out = {m.uid: m for m in self.conn.fetch(whole)} if whole else {}
        if big:
            limit = min(self.max_message_bytes, TOO_LARGE_HEADER_BYTES)
            out.update({m.uid: m for m in self.conn.fetch_headers(big, limit)})
        return out

    def _arrival(self, work: FolderWork, summary: MessageSummary, body: FetchedMessage | None) -> Arrival | None:
        gmail_key = self.gmail.match_key(work.server_folder, summary) if self.gmail is not None else None
        if gmail_key is not None:
            key = gmail_key
        elif summary.internet_message_id:
            key = decide.match_key(summary.internet_message_id, "")
        elif body is not None:
            # Without X-TUID lines: mbsync adds one when it re-uploads a moved message.
            key = decide.match_key(None, mime.match_hash(body.raw))
        else:
            return None
        return Arrival(
            server_folder=work.server_folder,
            uidvalidity=work.snapshot.uidvalidity,
            uid=summary.uid,
            flags=tuple(sorted(decide.normalise_flags(summary.flags))),
            internal_date=summary.internal_date,
            size=summary.size,
            match_key=key,
        )

    def _detached_candidates(self, keys: Iterable[str]) -> dict[str, list[str]]:
        ids_by_key = {key: dal.ids_for_match_key(self.tenant, self.user, key) for key in keys}
        messages = dal.find_messages(i for ids in ids_by_key.values() for i in ids)
        out: dict[str, list[str]] = {}
        for key, ids in ids_by_key.items():
            detached = [i for i in ids if i in messages and messages[i].state == "detached"]
            if detached:
                out[key] = detached
        return out

    def _location(self, known: Known | Arrival, new_id: str | None = None) -> Location:
        """The domain location of a known copy, or of an arrival stored under ``new_id``."""
        return Location(
            tenant_id=self.tenant,
            user_id=self.user,
            server_folder=known.server_folder,
            uidvalidity=known.uidvalidity,
            uid=known.uid,
            id=new_id if new_id is not None else known.id,  # type: ignore[union-attr]
            internal_date=known.internal_date,
            match_key=known.match_key,
            flags=tuple(known.flags),
        )

    def _relink(self, relink: decide.Relink) -> None:
        arrival = relink.arrival
        message = dal.find_message(relink.id)
        if message is None:
            return
        view = decide.relink_view(
            server_crm_folder=self.crm_for[arrival.server_folder],
            server_flags=arrival.flags,
            crm_folder=message.folder,
            crm_seen=bool(message.seen),
            ops_pending=int(message.pending_ops or 0) > 0,
            move_pending=relink.id in self.pending_moves,
        )
        # Waiting CRM changes stay visible while the server copy is tracked; the pusher applies them from here.
        shown: dict[str, Any] = {
            "folder": view.folder,
            "server_folder": arrival.server_folder,
            "uidvalidity": arrival.uidvalidity,
            "uid": arrival.uid,
            "flags": view.flags,
            "seen": view.seen,
            "state": "synced",
            "detach_reason": None,
            "detached_at": None,
            "updated_at": dal.utcnow(),
        }
        old = self._location(relink.old) if relink.old is not None else None
        previous_folder = message.folder
        dal.relink(message, self._location(arrival, relink.id), shown, old)
        message = replace(message, **shown)
        self.events.append(
            message_event(MESSAGE_UPDATED, message, changes={"folder": view.folder, "previous_folder": previous_folder})
        )
        self.outcome.relinked += 1

    def _create(self, work: FolderWork, items: list[tuple[Arrival, FetchedMessage]]) -> list[Message]:
        """Store new messages (S3, then DynamoDB); returns them as stored. Runs on the store
        thread: it touches no IMAP and no state of the run but ``_rules``, which only it uses."""
        if not items:
            return []
        stored = blobstore.put_many(self.tenant, self.user, (body.raw for _, body in items))
        crm_folder = self.crm_for[work.server_folder]
        rows: list[tuple[Message, Location]] = []
        for (arrival, body), (s3_key, sha) in zip(items, stored, strict=True):
            new_id = decide.id_for_new_copy(
                self.tenant, self.user, arrival.server_folder, arrival.uidvalidity, arrival.uid
            )
            if self.gmail is not None:
                new_id = self.gmail.new_id(arrival, new_id)
            message = self._new_message(new_id, crm_folder, arrival, body.raw, s3_key, sha)
            if self.gmail is not None:
                message = self.gmail.thread_of(message)
            rows.append((message, self._location(arrival, new_id)))
        rows = self._classify([m for m, _ in rows], rows)
        try:
            dal.store_new_messages(rows)
        except dal.Unstorable:
            # One item over a DynamoDB limit fails its whole batch write: store the messages one
            # by one, so only an unstorable one loses metadata (puts: redoing the others is safe).
            rows = [self._store_one(row) for row in rows]
        return [message for message, _ in rows]

    def _classify(
        self, messages: list[Message], rows: list[tuple[Message, Location]]
    ) -> list[tuple[Message, Location]]:
        """Confidentiality of new messages (``privacy.classify_new``, fed by the tenant's rules and
        the marks of their threads); the threads they make confidential are marked first."""
        if self._rules is None:
            self._rules = privacy.rules_from(
                dal.get_tenant_settings(self.tenant, max_age=dal.TENANT_SETTINGS_MAX_AGE_SECONDS)
            )
        threads = dal.thread_marks(self.tenant, self.user, {m.thread_id for m in messages})
        result = privacy.classify_new(self.account, messages, self._rules, threads)
        dal.mark_threads(self.tenant, self.user, result.threads_to_mark, confidential=True, by_owner=False)
        return [
            (replace(m, confidential=bool(result.reasons[m.id]), confidential_reasons=tuple(result.reasons[m.id])), loc)
            for m, loc in rows
        ]

    def _store_one(self, row: tuple[Message, Location]) -> tuple[Message, Location]:
        try:
            dal.store_new_messages([row])
            return row
        except dal.Unstorable:
            pass
        message, location = row
        logger.warning("message metadata cannot be stored: kept raw with minimal metadata", extra={"id": message.id})
        note = "Metadata too large to store: only a minimal part is shown; the raw message is complete"
        minimal = minimal_fields(message.subject, message.from_, message.internet_message_id, note, flags=message.flags)
        message = replace(message, **{k: tuple(v) if isinstance(v, list) else v for k, v in minimal.items()})
        dal.store_new_messages([(message, location)])
        return message, location

    def _new_message(
        self, new_id: str, crm_folder: str, arrival: Arrival, raw: bytes, s3_key: str, sha: str
    ) -> Message:
        parsed = mime.parse_message(raw)
        metadata = metadata_fields(parsed, sha)
        too_large = arrival.size > self.max_message_bytes
        if too_large:
            note = f"Message of {arrival.size} bytes is over the cap of {self.max_message_bytes}: headers only"
            metadata["parse_errors"] = [note, *metadata["parse_errors"]][:20]
        return Message(
            id=new_id,
            tenant_id=self.tenant,
            user_id=self.user,
            folder=crm_folder,
            server_folder=arrival.server_folder,
            uidvalidity=arrival.uidvalidity,
            uid=arrival.uid,
            flags=arrival.flags,
            seen="\\Seen" in arrival.flags,
            internal_date=arrival.internal_date,
            size=arrival.size,
            match_key=arrival.match_key,
            s3_key=s3_key,
            content_hash=sha,
            state="synced",
            too_large=too_large,
            **{k: tuple(v) if isinstance(v, list) else v for k, v in metadata.items()},
        )

    # -- steps 4 and 5 --------------------------------------------------------------------------

    def _detach_vanished(self) -> set[str]:
        """Detach what disappeared unmatched; returns the folders whose disappearances wait instead."""
        if not self.vanished:
            return set()
        folders = {k.server_folder for k in self.vanished}
        deferred_before = any(self.checkpoint.folder(f).deferred for f in folders)
        if plan.disappearances_wait(
            deferred_before=deferred_before, changed_since_snapshot=self._changed_since_snapshot
        ):
            logger.info("disappearances wait for the next sync", extra={"count": len(self.vanished)})
            self.vanished = []
            return folders
        moved_away: set[str] = set()
        if self.gmail is not None:
            self.vanished, moved_away = self.gmail.rehome(self.vanished)
        searchable = sorted({k.match_key[4:] for k in self.vanished if k.match_key.startswith("mid:")})
        if searchable:
            mapped = set(self.crm_for)
            for folder in self.conn.list_folder_names():
                if folder not in mapped:
                    try:
                        moved_away |= {f"mid:{m}" for m in self.conn.find_internet_message_ids(folder, searchable)}
                    except FolderMissing:
                        continue  # deleted since the LIST: nothing moved there
        for known in self.vanished:
            self._detach(known, decide.detach_reason(known, moved_away))
        self.vanished = []
        return set()

    def _changed_since_snapshot(self) -> bool:
        """Whether any mapped folder moved on since the sync's STATUS snapshot (one more STATUS)."""
        if not self.snapshots:
            return False
        now = self.conn.status(list(self.snapshots))
        for server_folder, snapshot in self.snapshots.items():
            current = now.get(server_folder)
            if current is not None and plan.moved_on(snapshot, _status(current)):
                return True
        return False

    def _sweep_aged_out(self, *, force: bool) -> None:
        now = time.time()
        if not plan.sweep_due(self.checkpoint.last_sweep_at, now, force=force, interval=SWEEP_INTERVAL_SECONDS):
            return
        more = False
        for server_folder in self.crm_for:
            if self.deadline():
                more = True
                break
            found = dal.aged_out(self.tenant, self.user, server_folder, self.cutoff, limit=SWEEP_LIMIT)
            for location in found:
                if self.deadline():
                    more = True
                    break
                self._detach(_known(location), "aged_out")
            more = more or len(found) >= SWEEP_LIMIT
        # More to detach (the limit reached, or the job's time up): recorded as never swept, so
        # the next sync sweeps again (and ``pending_work`` sees work) however recent the last
        # complete sweep was.
        self.checkpoint = replace(self.checkpoint, last_sweep_at=0 if more else int(now))

    def _detach(self, known: Known, reason: str) -> None:
        location = self._location(known)
        message = dal.find_message(known.id)
        at = (message.server_folder, message.uidvalidity, message.uid) if message is not None else None
        action = decide.on_vanished(known, message.state if message is not None else None, at)
        if action is decide.Vanish.DROP_LOCATION:
            dal.drop(location)
            return
        assert message is not None
        dal.detach(message, location, reason, first=not self.checkpoint.has_detached)
        message = replace(message, state="detached", detach_reason=reason)
        self.events.append(message_event(MESSAGE_DETACHED, message, detach_reason=reason))
        self.outcome.detached += 1
        self.checkpoint = replace(self.checkpoint, has_detached=True)

    # -- step 6 ---------------------------------------------------------------------------------

    def _advance(self, work: FolderWork) -> None:
        status = plan.advanced(work.snapshot, work.first_sync)
        # Only kept when scans are spaced out: with an interval of 0 it would only cost a write.
        scanned = int(time.time()) if self.scan_every > 0 and work.mode in (Mode.SCAN, Mode.FULL) else None
        self.checkpoint = self.checkpoint.with_folder(
            work.server_folder,
            uidvalidity=status.uidvalidity,
            uidnext=status.uidnext,
            highestmodseq=status.highestmodseq,
            messages=status.messages,
            first_sync=None,
            scanned_at=scanned if scanned is not None else self.checkpoint.folder(work.server_folder).scanned_at,
        )

    def _save_checkpoint(self, *, last: bool = False) -> None:
        """After every batch and at the end; a sync that found nothing writes nothing. The last
        one is handed over in the outcome when the caller writes it with the lease release: a
        worker that dies before then redoes the sync's tail from the batch before, as it would
        had it died just before this write."""
        mapped = {name: replace(self.checkpoint.folder(name), crm_folder=crm) for name, crm in self.crm_for.items()}
        self.checkpoint = replace(self.checkpoint, folders=mapped)
        if self.checkpoint == self._saved:
            return
        if last and self.hand_over_checkpoint:
            self.outcome.checkpoint = self.checkpoint.to_dict()
        else:
            dal.save_checkpoint(self.tenant, self.user, self.owner, **self.checkpoint.to_dict())
        self._saved = self.checkpoint
