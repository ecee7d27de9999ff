"""Sync one account from the server to the CRM.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pynamodb.exceptions import PutError

from mailsync import blobstore, dal, mime
from mailsync.config import get_settings
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
from mailsync.observability import logger
from mailsync.privacy import TenantRules
from mailsync.services import confidentiality
from mailsync.sync import planner
from mailsync.sync.metadata import metadata_fields, minimal_fields
from mailsync.sync.planner import Arrival, FirstSync, FolderState, Known, Mode, ServerStatus

BATCH_COUNT = 50
BATCH_BYTES = 8 * 1024 * 1024
SWEEP_INTERVAL_SECONDS = 3600
# Of a message over the size cap only this much of its header section is fetched and stored.
TOO_LARGE_HEADER_BYTES = 1024 * 1024
FOLDER_MISSING = "folder_missing"


def _with_seen(flags: Iterable[str], seen: bool) -> list[str]:
    out = set(flags) - {"\\Seen"}
    if seen:
        out.add("\\Seen")
    return sorted(out)


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal: compare checkpoints as plain ints."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "as_integer_ratio") and not isinstance(value, bool | float):
        return int(value)
    return value


class InjectedCrash(RuntimeError):
    """Raised at an armed fault point (tests simulate a crash between two steps)."""


class FaultPoints:
    """Named places where the engine can be made to crash, to prove reruns converge."""

    def __init__(self) -> None:
        self.armed: set[str] = set()

    def hit(self, name: str) -> None:
        if name in self.armed:
            self.armed.discard(name)
            raise InjectedCrash(name)


faults = FaultPoints()


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


def _status(status: Any) -> ServerStatus:
    return ServerStatus(
        uidvalidity=status.uidvalidity,
        uidnext=status.uidnext,
        messages=status.messages,
        highestmodseq=status.highestmodseq,
    )


def _known(server_folder: str, location: dal.LocationModel) -> Known:
    return Known(
        id=location.id,
        server_folder=server_folder,
        uidvalidity=int(location.uidvalidity),
        uid=int(location.uid),
        flags=tuple(location.flags or ()),
        match_key=location.match_key,
        internal_date=location.internal_date,
    )


class AccountSync:
    """One sync run of one account, holding its lease (``owner``)."""

    def __init__(
        self,
        account: dal.AccountModel,
        state: dal.SyncStateModel,
        reader: ImapConnection,
        *,
        owner: str,
        deadline: Callable[[], bool] = lambda: False,
        now: datetime | None = None,
        revivable: dict[str, list[str]] | None = None,
        pending_moves: frozenset[str] = frozenset(),
    ) -> None:
        self.account = account
        self.state = state
        self.reader = reader
        self.owner = owner
        self.deadline = deadline
        self.tenant = account.tenant_id
        self.user = account.user_id
        self.now = now or dal.utcnow()
        self.cutoff = self.now - timedelta(days=int(account.sync_window_days))
        folder_map = account.mapped_folders()
        self.crm_for: dict[str, str] = {server: crm for crm, server in folder_map.items()}
        raw_states = state.folders.as_dict() if state.folders is not None else {}
        self.folder_meta: dict[str, dict[str, Any]] = {name: dict(data) for name, data in raw_states.items()}
        self.states: dict[str, FolderState] = {n: FolderState.from_dict(d) for n, d in self.folder_meta.items()}
        self.events: list[Event] = []
        self.vanished: list[Known] = []
        self.outcome = SyncOutcome()
        self.has_detached = bool(state.has_detached)
        self._written: dict[str, Any] | None = None
        # CRM-written messages not yet appended: an arrival with their key is them.
        self.revivable = {k: list(v) for k, v in (revivable or {}).items()}
        self._rules: TenantRules | None = None
        # Ids of messages with a CRM move still waiting: only those keep their CRM folder on a relink.
        self.pending_moves = pending_moves
        self.max_message_bytes = get_settings().max_message_bytes
        self.snapshots: dict[str, ServerStatus] = {}

    # -- entry point ---------------------------------------------------------------------------

    def run(self) -> SyncOutcome:
        self._drop_unmapped_folders()
        statuses = self.reader.status(list(self.crm_for))
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
            self.folder_meta.setdefault(server_folder, {}).pop("error", None)
            if item is not None:
                work.append(item)
        done: list[FolderWork] = []
        for item in work:
            try:
                if not self._process_arrivals(item):
                    self.outcome.complete = False
                    self._checkpoint()
                    return self._finish()
            except FolderMissing:
                self._folder_missing(item.server_folder)
                continue
            done.append(item)
        waiting = self._detach_vanished()
        self._sweep_aged_out(force=any(w.mode is Mode.FULL for w in done))
        for item in done:
            if item.server_folder in waiting:
                # Its disappearances wait for the next sync: it must see them again from the old state.
                self.folder_meta.setdefault(item.server_folder, {})["deferred"] = True
                continue
            self.folder_meta.setdefault(item.server_folder, {}).pop("deferred", None)
            self._advance(item)
        self._checkpoint()
        return self._finish()

    def _finish(self) -> SyncOutcome:
        self.outcome.imap_commands = self.reader.command_count
        return self.outcome

    # -- step 0 ---------------------------------------------------------------------------------

    def _drop_unmapped_folders(self) -> None:
        for server_folder in [f for f in self.states if f not in self.crm_for]:
            for location in list(dal.locations(self.tenant, self.user, server_folder)):
                self._detach(_known(server_folder, location), "moved_unmapped")
            self.states.pop(server_folder, None)
            self.folder_meta.pop(server_folder, None)

    def _folder_missing(self, server_folder: str) -> None:
        """A mapped folder the server no longer has: shown in sync-status, announced once."""
        meta = self.folder_meta.setdefault(server_folder, {})
        if meta.get("error") != FOLDER_MISSING:
            self.events.append(
                Event(
                    ACCOUNT_FOLDER_MISSING,
                    self.tenant,
                    self.user,
                    {"server_folder": server_folder, "crm_folder": self.crm_for[server_folder], "code": FOLDER_MISSING},
                )
            )
        self._folder_error(server_folder, FOLDER_MISSING)

    def _folder_error(self, server_folder: str, code: str) -> None:
        self.outcome.folder_errors[server_folder] = code
        self.folder_meta.setdefault(server_folder, {})["error"] = code
        logger.warning("folder skipped", extra={"server_folder": server_folder, "reason": code})

    # -- step 2 ---------------------------------------------------------------------------------

    def _prepare_folder(self, server_folder: str, status: ServerStatus) -> FolderWork | None:
        stored = self.states.get(server_folder, FolderState())
        mode = planner.plan_folder(
            stored, status, qresync=self.reader.has_qresync, has_copies=lambda: self._has_copies(server_folder)
        )
        if mode is Mode.SKIP:
            return None
        if mode is Mode.FULL:
            return self._prepare_full(server_folder, stored, status)
        if mode is Mode.SCAN:
            return self._prepare_scan(server_folder, stored, status)
        return self._prepare_modseq(server_folder, stored, mode, status)

    def _has_copies(self, server_folder: str) -> bool:
        return next(dal.locations(self.tenant, self.user, server_folder), None) is not None

    def _empty_reset(self, server_folder: str, stored: FolderState, live: ServerStatus) -> bool:
        """EXAMINE reported a new UIDVALIDITY that changes nothing (see ``planner.empty_reset``)."""
        return planner.empty_reset(stored, live, has_copies=lambda: self._has_copies(server_folder))

    @staticmethod
    def _bound(listed: ServerStatus, live: ServerStatus) -> ServerStatus:
        """The snapshot arrivals are bounded by: the sync's STATUS when it describes the folder
        read now (same UIDVALIDITY, a UIDNEXT reported), else what EXAMINE reported."""
        return listed if listed.uidvalidity == live.uidvalidity and listed.uidnext > 0 else live

    def _prepare_full(self, server_folder: str, stored: FolderState, listed: ServerStatus) -> FolderWork:
        snapshot = _status(self.reader.examine(server_folder))
        first = stored.first_sync
        bound = self._bound(listed, snapshot)
        if first is None or first.uidvalidity != snapshot.uidvalidity:
            first = FirstSync(
                uidvalidity=snapshot.uidvalidity,
                uidnext=bound.uidnext,
                highestmodseq=bound.highestmodseq,
                messages=bound.messages,
            )
        current: dict[int, dal.LocationModel] = {}
        for location in dal.locations(self.tenant, self.user, server_folder):
            if int(location.uidvalidity) != first.uidvalidity:
                # UIDVALIDITY changed: every old copy counts as gone until re-matched below.
                self.vanished.append(_known(server_folder, location))
            else:
                current[int(location.uid)] = location
        if current:
            # A resumed first sync: what it stored before may have left the folder meanwhile.
            self._collect_vanished_by_uids(server_folder, set(self.reader.search_from_uid(1)), current)
        known_now = set(current)
        # This sync's snapshot bounds the arrivals (a resumed first sync's own UIDNEXT is older:
        # what came since is stored now and known next time).
        window = self.reader.search_since(self.cutoff.date(), below=bound.uidnext or None)
        # Resuming needs no cursor: what a previous run stored has a location record now.
        todo = sorted((u for u in window if u not in known_now), reverse=True)
        first = FirstSync(**{**first.__dict__, "total": len(window), "done": len(window) - len(todo)})
        self.states[server_folder] = FolderState(
            stored.uidvalidity, stored.uidnext, stored.highestmodseq, stored.messages, first
        )
        return FolderWork(server_folder, Mode.FULL, snapshot, todo, first)

    def _prepare_modseq(
        self, server_folder: str, stored: FolderState, mode: Mode, listed: ServerStatus
    ) -> FolderWork | None:
        assert stored.uidvalidity is not None and stored.highestmodseq is not None
        changes = self.reader.changes_since(server_folder, stored.uidvalidity, stored.highestmodseq)
        live = _status(changes.status)
        if self._empty_reset(server_folder, stored, live):
            return None
        if live.uidvalidity != stored.uidvalidity:
            return self._prepare_full(server_folder, FolderState(), listed)
        snapshot = self._bound(listed, live)
        self._apply_flag_changes(server_folder, stored.uidvalidity, changes.changed_flags)
        new_uids = self.reader.search_from_uid(stored.uidnext or 1, below=snapshot.uidnext or None)
        if changes.vanished is not None:
            gone = dal.get_locations(
                self.tenant, self.user, server_folder, ((stored.uidvalidity, u) for u in changes.vanished)
            )
            self.vanished.extend(_known(server_folder, loc) for loc in gone.values())
        elif snapshot.messages != (stored.messages or 0) + len(new_uids):
            # CONDSTORE without QRESYNC names no expunged UIDs; counts tell whether any went.
            self._collect_vanished_by_uids(server_folder, set(self.reader.search_from_uid(1)))
        known = dal.get_locations(self.tenant, self.user, server_folder, ((stored.uidvalidity, u) for u in new_uids))
        todo = sorted((u for u in new_uids if (stored.uidvalidity, u) not in known), reverse=True)
        return FolderWork(server_folder, mode, snapshot, todo)

    def _prepare_scan(self, server_folder: str, stored: FolderState, listed: ServerStatus) -> FolderWork | None:
        live = _status(self.reader.examine(server_folder))
        if self._empty_reset(server_folder, stored, live):
            return None
        if live.uidvalidity != stored.uidvalidity:
            return self._prepare_full(server_folder, FolderState(), listed)
        snapshot = self._bound(listed, live)
        all_uids = set(self.reader.search_from_uid(1))
        known = {int(loc.uid): loc for loc in dal.locations(self.tenant, self.user, server_folder)}
        self._collect_vanished_by_uids(server_folder, all_uids, known)
        present = sorted(u for u in known if u in all_uids)
        self._apply_flag_changes(server_folder, snapshot.uidvalidity, self.reader.flags(present), known)
        window = self.reader.search_since(self.cutoff.date(), below=snapshot.uidnext or None)
        todo = sorted((u for u in window if u not in known), reverse=True)
        return FolderWork(server_folder, Mode.SCAN, snapshot, todo)

    def _collect_vanished_by_uids(
        self, server_folder: str, server_uids: set[int], known: dict[int, dal.LocationModel] | None = None
    ) -> None:
        if known is None:
            known = {int(loc.uid): loc for loc in dal.locations(self.tenant, self.user, server_folder)}
        self.vanished.extend(_known(server_folder, loc) for uid, loc in known.items() if uid not in server_uids)

    def _apply_flag_changes(
        self,
        server_folder: str,
        uidvalidity: int,
        changed: dict[int, tuple[str, ...]],
        known: dict[int, dal.LocationModel] | None = None,
    ) -> None:
        if not changed:
            return
        if known is None:
            found = dal.get_locations(self.tenant, self.user, server_folder, ((uidvalidity, u) for u in changed))
            known = {uid: loc for (_, uid), loc in found.items()}
        updates = []
        for uid, flags in changed.items():
            location = known.get(uid)
            if location is None:
                continue
            merged = planner.merge_server_flags(location.flags or (), flags)
            if merged is not None:
                updates.append((location, merged))
        if not updates:
            return
        messages = dal.batch_get_messages(loc.id for loc, _ in updates)
        for location, flags in updates:
            message = messages.get(location.id)
            if message is None:
                continue
            seen = "\\Seen" in flags
            if int(message.pending_ops or 0) > 0:
                # A CRM change still waits for this message: its \Seen wins (three-way rule).
                seen = bool(message.seen)
            shown = _with_seen(flags, seen)
            dal.update_flags(message, location, shown, seen, agreed=list(flags))
            message.flags, message.seen = shown, seen
            self.events.append(message_event(MESSAGE_UPDATED, message, changes={"flags": list(flags), "seen": seen}))
            self.outcome.flag_updates += 1

    # -- step 3 ---------------------------------------------------------------------------------

    def _process_arrivals(self, work: FolderWork) -> bool:
        """Store the folder's arrivals batch by batch; False when time ran out (checkpointed)."""
        if not work.todo:
            return True
        self.reader.examine(work.server_folder)
        # Headers only (the reader chunks the command); bodies are fetched per batch below.
        summaries = {s.uid: s for s in self.reader.summaries(work.todo)}
        sizes = {uid: self._fetch_size(s.size) for uid, s in summaries.items()}
        # Newest mail first, so the CRM shows what matters while a big first sync runs. UIDs
        # gone between SEARCH and FETCH have no summary: they are not arrivals any more.
        todo = sorted(summaries, key=lambda u: (summaries[u].internal_date, u), reverse=True)
        for batch in planner.batches(todo, sizes, max_count=BATCH_COUNT, max_bytes=BATCH_BYTES):
            if self.deadline():
                return False
            self._store_batch(work, [summaries[u] for u in batch])
            if work.first_sync is not None:
                first = work.first_sync
                work.first_sync = FirstSync(**{**first.__dict__, "done": first.done + len(batch), "cursor": min(batch)})
                self.states[work.server_folder] = FolderState(
                    **{**self.states[work.server_folder].__dict__, "first_sync": work.first_sync}
                )
            faults.hit("before_checkpoint")
            self._checkpoint()
        return True

    def _store_batch(self, work: FolderWork, batch: list[MessageSummary]) -> None:
        summaries = [s for s in batch if s.internal_date >= self.cutoff]
        fetched: dict[int, FetchedMessage] = {}
        sizes = {s.uid: s.size for s in summaries}
        without_id = [s.uid for s in summaries if not s.message_id]
        if without_id:
            # A message without Message-ID is recognised by its content: that needs its bytes.
            fetched.update(self._fetch(without_id, sizes))
        arrivals = [self._arrival(work, s, fetched.get(s.uid)) for s in summaries]
        # Oldest UID first, as the vanished copies are consumed: two copies with the same
        # Message-ID keep their own ids across a UIDVALIDITY reset.
        arrivals = sorted((a for a in arrivals if a is not None), key=lambda a: a.uid)
        candidates = self._detached_candidates({a.match_key for a in arrivals}) if self.has_detached else {}
        for key, ids in self.revivable.items():
            candidates[key] = [*ids, *candidates.get(key, [])]
        result = planner.reconcile(arrivals, self.vanished, candidates)
        used = {r.id for r in result.relinks}
        self.revivable = {k: [i for i in v if i not in used] for k, v in self.revivable.items()}
        self.vanished = result.vanished
        for relink in result.relinks:
            self._relink(relink)
        if result.creates:
            need = [a.uid for a in result.creates if a.uid not in fetched]
            if need:
                fetched.update(self._fetch(need, sizes))
            self._create(work, [(a, fetched[a.uid]) for a in result.creates if a.uid in fetched])

    def _fetch_size(self, size: int) -> int:
        return min(size, TOO_LARGE_HEADER_BYTES) if size > self.max_message_bytes else size

    def _fetch(self, uids: list[int], sizes: dict[int, int]) -> dict[int, FetchedMessage]:
        """Raw messages; of one over the size cap only its headers (its body never enters memory)."""
        whole = [u for u in uids if sizes.get(u, 0) <= self.max_message_bytes]
        big = [u for u in uids if sizes.get(u, 0) > self.max_message_bytes]
        out = {m.uid: m for m in self.reader.fetch(whole)} if whole else {}
        if big:
            limit = min(self.max_message_bytes, TOO_LARGE_HEADER_BYTES)
            out.update({m.uid: m for m in self.reader.fetch_headers(big, limit)})
        return out

    def _arrival(self, work: FolderWork, summary: MessageSummary, body: FetchedMessage | None) -> Arrival | None:
        if summary.message_id:
            key = planner.match_key(summary.message_id, "")
        elif body is not None:
            # Without X-TUID lines: mbsync adds one when it re-uploads a moved message.
            key = planner.match_key(None, mime.match_hash(body.raw))
        else:
            return None
        return Arrival(
            server_folder=work.server_folder,
            uidvalidity=work.snapshot.uidvalidity,
            uid=summary.uid,
            flags=tuple(sorted(planner.normalise_flags(summary.flags))),
            internal_date=summary.internal_date,
            size=summary.size,
            match_key=key,
        )

    def _detached_candidates(self, keys: Iterable[str]) -> dict[str, list[str]]:
        ids_by_key = {key: dal.ids_for_match_key(self.tenant, self.user, key) for key in keys}
        messages = dal.batch_get_messages(i for ids in ids_by_key.values() for i in ids)
        out: dict[str, list[str]] = {}
        for key, ids in ids_by_key.items():
            detached = [i for i in ids if i in messages and messages[i].state == "detached"]
            if detached:
                out[key] = detached
        return out

    def _location_items(self, arrival: Arrival, message_id: str) -> tuple[dal.LocationModel, dal.WindowModel]:
        place = (self.tenant, self.user, arrival.server_folder)
        location = dal.location_item(
            *place,
            arrival.uidvalidity,
            arrival.uid,
            id=message_id,
            uidvalidity=arrival.uidvalidity,
            uid=arrival.uid,
            flags=list(arrival.flags),
            internal_date=arrival.internal_date,
            match_key=arrival.match_key,
        )
        window = dal.window_item(
            *place, arrival.internal_date, arrival.uidvalidity, arrival.uid, id=message_id, loc_sk=location.sk
        )
        return location, window

    def _relink(self, relink: planner.Relink) -> None:
        arrival = relink.arrival
        message = dal.get_message(relink.id)
        if message is None:
            return
        crm_folder = self.crm_for[arrival.server_folder]
        location, window = self._location_items(arrival, relink.id)
        fields: dict[str, Any] = {
            "folder": crm_folder,
            "server_folder": arrival.server_folder,
            "uidvalidity": arrival.uidvalidity,
            "uid": arrival.uid,
            "flags": list(arrival.flags),
            "seen": "\\Seen" in arrival.flags,
            "state": "synced",
            "detach_reason": None,
            "detached_at": None,
            "gsi2pk": dal.folder_gsi_pk(self.tenant, self.user, crm_folder),
            "updated_at": dal.utcnow(),
        }
        view = planner.relink_view(
            server_crm_folder=crm_folder,
            server_flags=arrival.flags,
            crm_folder=message.folder,
            crm_seen=bool(message.seen),
            ops_pending=int(message.pending_ops or 0) > 0,
            move_pending=relink.id in self.pending_moves,
        )
        # Waiting CRM changes stay visible while the server copy is tracked; the pusher applies them from here.
        crm_folder = view.folder
        fields.update(
            folder=view.folder,
            gsi2pk=dal.folder_gsi_pk(self.tenant, self.user, view.folder),
            seen=view.seen,
            flags=list(view.flags),
        )
        old = self._keys_of(relink.old) if relink.old is not None else None
        previous_folder = message.folder
        dal.relink_message(message, location, window, fields, old)
        for name, value in fields.items():
            setattr(message, name, value)
        self.events.append(
            message_event(MESSAGE_UPDATED, message, changes={"folder": crm_folder, "previous_folder": previous_folder})
        )
        self.outcome.relinked += 1

    def _create(self, work: FolderWork, items: list[tuple[Arrival, FetchedMessage]]) -> None:
        if not items:
            return
        stored = blobstore.put_many(self.tenant, self.user, (body.raw for _, body in items))
        faults.hit("after_s3_put")
        crm_folder = self.crm_for[work.server_folder]
        rows = []
        for (arrival, body), (s3_key, sha) in zip(items, stored, strict=True):
            message_id = planner.message_id_for(
                self.tenant, self.user, arrival.server_folder, arrival.uidvalidity, arrival.uid
            )
            message = self._message_item(message_id, crm_folder, arrival, body.raw, s3_key, sha)
            location, window = self._location_items(arrival, message_id)
            rows.append((message, location, window))
        if self._rules is None:
            self._rules = confidentiality.tenant_rules(self.tenant)
        confidentiality.classify_new(self.account, [m for m, _, _ in rows], self._rules)
        try:
            dal.write_new_messages(rows, between=lambda: faults.hit("before_location_write"))
        except PutError as exc:
            if exc.cause_response_code != "ValidationException":
                raise
            # One item over a DynamoDB limit fails its whole batch write: store the messages one
            # by one, so only an unstorable one loses metadata (puts: redoing the others is safe).
            for row in rows:
                self._write_one(row)
        for message, _, _ in rows:
            self.events.append(message_event(MESSAGE_RECEIVED, message))
        self.outcome.created += len(rows)

    def _write_one(self, row: tuple[dal.MessageModel, dal.LocationModel, dal.WindowModel]) -> None:
        try:
            dal.write_new_messages([row], between=lambda: faults.hit("before_location_write"))
            return
        except PutError as exc:
            if exc.cause_response_code != "ValidationException":
                raise
        message = row[0]
        logger.warning("message metadata cannot be stored: kept raw with minimal metadata", extra={"id": message.id})
        note = "Metadata too large to store: only a minimal part is shown; the raw message is complete"
        for name, value in minimal_fields(
            message.subject, message.from_ or [], message.message_id, note, flags=message.flags
        ).items():
            setattr(message, name, value)
        dal.write_new_messages([row], between=lambda: faults.hit("before_location_write"))

    def _message_item(
        self, message_id: str, crm_folder: str, arrival: Arrival, raw: bytes, s3_key: str, sha: str
    ) -> dal.MessageModel:
        parsed = mime.parse_message(raw)
        metadata = metadata_fields(parsed, sha)
        too_large = arrival.size > self.max_message_bytes
        if too_large:
            note = f"Message of {arrival.size} bytes is over the cap of {self.max_message_bytes}: headers only"
            metadata["parse_errors"] = [note, *metadata["parse_errors"]][:20]
        sort_key = f"{dal.iso(arrival.internal_date)}#{message_id}"
        return dal.MessageModel(
            dal.message_pk(message_id),
            "M",
            gsi1pk=dal.account_pk(self.tenant, self.user),
            gsi1sk=sort_key,
            gsi2pk=dal.folder_gsi_pk(self.tenant, self.user, crm_folder),
            gsi2sk=sort_key,
            id=message_id,
            tenant_id=self.tenant,
            user_id=self.user,
            folder=crm_folder,
            server_folder=arrival.server_folder,
            uidvalidity=arrival.uidvalidity,
            uid=arrival.uid,
            flags=list(arrival.flags),
            seen="\\Seen" in arrival.flags,
            internal_date=arrival.internal_date,
            size=arrival.size,
            match_key=arrival.match_key,
            s3_key=s3_key,
            content_hash=sha,
            state="synced",
            too_large=too_large,
            **metadata,
        )

    # -- steps 4 and 5 --------------------------------------------------------------------------

    def _detach_vanished(self) -> set[str]:
        """Detach what disappeared unmatched; returns the folders whose disappearances wait instead."""
        if not self.vanished:
            return set()
        folders = {k.server_folder for k in self.vanished}
        if not any(self.folder_meta.get(f, {}).get("deferred") for f in folders) and self._changed_since_snapshot():
            # Something happened after the snapshot (arrivals past it are next sync's): a copy
            # that vanished may be one of them, a move. It waits one sync to meet its arrival,
            # rather than being detached as removed now; only once, so a busy mailbox still detaches.
            logger.info("disappearances wait for the next sync", extra={"count": len(self.vanished)})
            self.vanished = []
            return folders
        moved_away: set[str] = set()
        searchable = sorted({k.match_key[4:] for k in self.vanished if k.match_key.startswith("mid:")})
        if searchable:
            mapped = set(self.crm_for)
            for folder in self.reader.list_folder_names():
                if folder not in mapped:
                    try:
                        moved_away |= {f"mid:{m}" for m in self.reader.find_message_ids(folder, searchable)}
                    except FolderMissing:
                        continue  # deleted since the LIST: nothing moved there
        for known in self.vanished:
            self._detach(known, "moved_unmapped" if known.match_key in moved_away else "removed")
        self.vanished = []
        return set()

    def _changed_since_snapshot(self) -> bool:
        """Whether any mapped folder moved on since the sync's STATUS snapshot (one more STATUS)."""
        if not self.snapshots:
            return False
        now = self.reader.status(list(self.snapshots))
        for server_folder, snapshot in self.snapshots.items():
            current = now.get(server_folder)
            if current is not None and planner.moved_on(snapshot, _status(current)):
                return True
        return False

    def _sweep_aged_out(self, *, force: bool) -> None:
        last = int(self.state.last_sweep_at or 0)
        if not force and time.time() - last < SWEEP_INTERVAL_SECONDS:
            return
        for server_folder in self.crm_for:
            windows = {
                tuple(int(x) for x in w.loc_sk.split("#")): w
                for w in dal.aged_out(self.tenant, self.user, server_folder, self.cutoff)
            }
            found = dal.get_locations(self.tenant, self.user, server_folder, windows)
            for (uidvalidity, uid), window in windows.items():
                location = found.get((uidvalidity, uid))
                if location is None:
                    stale = dal.location_item(self.tenant, self.user, server_folder, uidvalidity, uid)
                    dal.drop_location(stale, window)
                    continue
                self._detach(_known(server_folder, location), "aged_out")
        self.state.last_sweep_at = int(time.time())

    def _keys_of(self, known: Known) -> tuple[dal.LocationModel, dal.WindowModel]:
        place = (self.tenant, self.user, known.server_folder)
        return (
            dal.location_item(*place, known.uidvalidity, known.uid),
            dal.window_item(*place, known.internal_date, known.uidvalidity, known.uid),
        )

    def _detach(self, known: Known, reason: str) -> None:
        location, window = self._keys_of(known)
        message = dal.get_message(known.id)
        at_this_copy = (
            message is not None
            and message.state == "synced"
            and (message.server_folder, message.uidvalidity, message.uid)
            == (known.server_folder, known.uidvalidity, known.uid)
        )
        if not at_this_copy:
            # The message lives on elsewhere (a rerun after a move, or a second copy): only
            # this stale location goes.
            dal.drop_location(location, window)
            return
        assert message is not None
        now = dal.utcnow()
        fields = {"state": "detached", "detach_reason": reason, "detached_at": now, "updated_at": now}
        dal.detach_message(message, location, window, fields)
        message.state, message.detach_reason = "detached", reason
        self.events.append(message_event(MESSAGE_DETACHED, message, detach_reason=reason))
        self.outcome.detached += 1
        self.has_detached = True

    # -- step 6 ---------------------------------------------------------------------------------

    def _advance(self, work: FolderWork) -> None:
        status = work.snapshot
        if work.first_sync is not None:
            # Changes during a first sync are picked up next time from the values seen at its start.
            first = work.first_sync
            status = ServerStatus(first.uidvalidity, first.uidnext, first.messages, first.highestmodseq)
        self.states[work.server_folder] = FolderState(
            uidvalidity=status.uidvalidity,
            uidnext=status.uidnext,
            highestmodseq=status.highestmodseq,
            messages=status.messages,
            first_sync=None,
        )

    def _checkpoint(self) -> None:
        folders: dict[str, Any] = {}
        for server_folder in self.crm_for:
            meta = dict(self.folder_meta.get(server_folder, {}))
            meta.update(self.states.get(server_folder, FolderState()).to_dict())
            if self.states.get(server_folder, FolderState()).first_sync is None:
                meta.pop("first_sync", None)
            meta["crm_folder"] = self.crm_for[server_folder]
            folders[server_folder] = meta
        fields: dict[str, Any] = {"folders": folders, "has_detached": self.has_detached}
        if self.state.last_sweep_at is not None:
            fields["last_sweep_at"] = int(self.state.last_sweep_at)
        if self._written is None:
            self._written = {
                "folders": _plain(self.state.folders.as_dict() if self.state.folders is not None else {}),
                "has_detached": bool(self.state.has_detached),
                "last_sweep_at": int(self.state.last_sweep_at) if self.state.last_sweep_at is not None else None,
            }
        if _plain(fields) == {k: v for k, v in self._written.items() if k in fields}:
            return  # a sync that found nothing writes nothing
        dal.save_sync_progress(self.state, self.owner, fields)
        self._written = _plain(fields)
        self.folder_meta = {k: dict(v) for k, v in folders.items()}
