"""One POP3 account's sync over one logged-in connection: the maildrop into the CRM folder
``inbox``, then the deletions its settings ask for.

The decisions are ``planner.pop``'s; this module gathers their inputs (UIDL and LIST, the UIDLs
earlier syncs dealt with, the headers of new messages), stores new mail through the same path as
relayed mail (``sync.inbound``: S3, metadata, confidentiality, dossiers) and carries out the
deletions. Order is what makes a crash at any point safe to rerun:

1. a new message is stored under an id derived from its UIDL and content: storing it again
   (after a crash before step 2) finds it there and stores nothing twice;
2. what the sync dealt with (stored, or older than the window) is recorded by UIDL, in batches;
3. only then are messages marked for deletion (DELE), and only QUIT deletes them: a session
   that dies before QUIT deletes nothing, and the rerun marks them again.

POP3 has no flags and no folders: nothing goes back to the server but deletions.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

from mailsync import dal, events, mime, privacy
from mailsync.config import get_settings
from mailsync.domain import Account, PopSeen, SyncState
from mailsync.errors import ServerMisbehaving
from mailsync.events import MESSAGE_RECEIVED, message_event
from mailsync.mailbox.pop import Pop3Connection
from mailsync.observability import logger
from mailsync.privacy import TenantRules
from mailsync.sync import inbound
from mailsync.sync.engine import SyncOutcome
from mailsync.sync.planner import pop as plan
from mailsync.sync.planner.messages import match_key
from mailsync.sync.planner.pop import Listed

CRM_FOLDER = "inbox"
# ``Message.detach_reason`` of POP3 mail: the CRM follows no server copy of it.
DETACH_REASON = "pop3"
# What a sync learned is written every this many messages (and at its end).
RECORD_BATCH = 25
# The server folder name POP3's one mailbox is shown under (sync-status, the folder list).
MAILBOX = "INBOX"


def now() -> datetime:
    """The sync's clock (the window, remove_after_days); tests move it."""
    return dal.utcnow()


class _Dealt(NamedTuple):
    """What became of a new message: the CRM id holding it ("" when not stored), whether it
    holds its headers alone (over the size cap), and ``planner.pop.header_digest`` of them."""

    id: str
    headers_only: bool
    header_digest: str | None


def message_id_for(tenant_id: str, user_id: str, uidl: str, raw: bytes) -> str:
    """Our id of a fetched message: the same message fetched again gets the same id; a reused
    UIDL with other content another."""
    content = hashlib.sha256(raw).hexdigest()
    digest = hashlib.sha256(f"{tenant_id}\0{user_id}\0pop3\0{uidl}\0{content}".encode()).digest()
    return base64.b32encode(digest[:15]).decode().lower()


class PopSync:
    """One run over one connection. ``take_lease`` returns the state read by the lease write
    and raises when another worker holds it; it is called only once there is work."""

    def __init__(
        self,
        account: Account,
        conn: Pop3Connection,
        *,
        owner: str,
        take_lease: Callable[[], SyncState],
        deadline: Callable[[], bool],
    ) -> None:
        self.account = account
        self.owner = owner
        self.conn = conn
        self.take_lease = take_lease
        self.deadline = deadline
        self.tenant, self.user = account.tenant_id, account.user_id
        self.server = (account.host, account.username)
        self.max_message_bytes = get_settings().max_message_bytes
        self.outcome = SyncOutcome()
        self._rules: TenantRules | None = None
        self._top = True  # until the server shows it has no TOP
        self._recorded: list[PopSeen] = []  # not written yet
        self._remembered: list[PopSeen] = []  # all this run dealt with
        self._received: list[events.Event] = []
        self.skipped_old = 0
        self.skipped_too_large = 0
        self.dropped = 0
        self.unfetchable = 0  # refused FETCH_ATTEMPTS times, this run or earlier: left on the server
        self.deleted = 0

    def run(self, *, unleased: SyncState | None) -> SyncOutcome | int:
        """The sync; with ``unleased`` (the state read without the lease), a maildrop with
        nothing to do ends it with the commands it took (an ``int``), having written nothing:
        a listing the last complete sync dealt with ends it before the UIDL state is read."""
        listed = [Listed(m.number, m.uidl, m.size) for m in self.conn.listing()]
        at = now()
        settings = {"keep_copy": self.account.keep_copy, "remove_after_days": self.account.remove_after_days}
        digest = plan.listing_digest(listed, server="\0".join(self.server), **settings)
        if unleased is not None and plan.nothing_to_do(unleased.folders.get(MAILBOX, {}), digest, at):
            return self.conn.command_count
        known = dal.pop_seen(self.tenant, self.user, *self.server)
        step = plan.plan(
            listed,
            known,
            now=at,
            keep_copy=self.account.keep_copy,
            remove_after_days=self.account.remove_after_days,
            max_fetches=plan.MAX_FETCHES_PER_JOB,
        )
        if step.ambiguous:
            logger.warning(
                "POP3 server lists a UIDL twice: those messages are left alone", extra={"count": len(step.ambiguous)}
            )
        if unleased is not None and not step.has_work:
            return self.conn.command_count
        state = self.take_lease()
        if step.forget:
            dal.forget_pop_seen(self.tenant, self.user, *self.server, step.forget)
        stored_now = self._fetch(step.fetch, known, plan.window_start(at, self.account.sync_window_days), at)
        self.unfetchable += len(step.unfetchable)
        self._flush()
        # Stored earlier: deleted only when the server still lists that message under its UIDL
        # (checked here, just before DELE); stored in this session: its headers were just read.
        deletions = [(m, known[m.uidl]) for m in step.delete] + [
            (m, None) for m in (stored_now if not self.account.keep_copy else [])
        ]
        swapped: list[str] = []
        for message, seen in deletions:
            if self.deadline():
                self.outcome.complete = False
                break
            if seen is not None and not plan.same_message(seen, self._digest_on_server(message)):
                swapped.append(message.uidl)
                continue
            if self.conn.delete(message.number):
                self.deleted += 1
        if swapped:
            # Another message under a stored one's UIDL (same size): never deleted; forgotten,
            # so the continuation job fetches it as new.
            logger.warning(
                "POP3 server reused a UIDL for another message of the same size", extra={"count": len(swapped)}
            )
            dal.forget_pop_seen(self.tenant, self.user, *self.server, swapped)
            self.outcome.complete = False
        if step.more:
            self.outcome.complete = False
        complete = self.outcome.complete and not self.unfetchable
        if not self.outcome.complete and not self._remembered and not self.deleted and not swapped:
            # A continuation that would make no progress either would follow this one forever:
            # the schedule's next sync tries again instead (no digest is saved, so it reads all).
            logger.warning("POP3 sync made no progress: no continuation job")
            self.outcome.complete = True
        if complete:
            known = {uidl: s for uidl, s in known.items() if uidl not in step.forget}
            known.update({s.uidl: s for s in self._remembered})
        self._save_checkpoint(
            state,
            plan.checkpoint(
                on_server=len(listed),
                digest=digest if complete else None,
                next_deletion_at=plan.next_deletion(known, listed, **settings) if complete else None,
            ),
        )
        self.outcome.imap_commands = self.conn.command_count
        logger.info(
            "POP3 sync done",
            extra={
                "messages_created": self.outcome.created,
                "skipped_old": self.skipped_old,
                "skipped_too_large": self.skipped_too_large,
                "dropped_by_server": self.dropped,
                "marked_deleted": self.deleted,
                "forgotten": len(step.forget),
                "unfetchable": self.unfetchable,
            },
        )
        if self.unfetchable and self.outcome.complete:
            # Everything else is done; the account says why it is not all there, and stays so
            # (each sync reads the state again) while the server keeps listing those messages.
            raise ServerMisbehaving(
                f"The POP3 server lists {self.unfetchable} message(s) it refused to give "
                f"{plan.FETCH_ATTEMPTS} times (TOP and RETR failed): they stay on the server and are not in the CRM"
            )
        return self.outcome

    # -- new messages ---------------------------------------------------------------------------

    def _fetch(
        self, new: list[Listed], known: dict[str, PopSeen], window_start: datetime, at: datetime
    ) -> list[Listed]:
        """Store the new messages in the window; returns those the CRM holds whole now."""
        held: list[Listed] = []
        for message in new:
            if self.deadline():
                self.outcome.complete = False
                break
            result = self._one(message, window_start)
            if result is None:
                # Gone meanwhile (the next listing forgets it) or refused: counted, so that a
                # message the server never gives is tried a bounded number of times.
                self._recorded.append(plan.failed(message, now=at, before=known.get(message.uidl)))
                self.unfetchable += int(self._recorded[-1].failures >= plan.FETCH_ATTEMPTS)
            else:
                id_, headers_only, digest = result
                self._recorded.append(
                    plan.remembered(message, now=at, id=id_ or None, headers_only=headers_only, header_digest=digest)
                )
                if id_ and not headers_only:
                    held.append(message)  # a copy stored from its headers alone never leaves the server
            self._remembered.append(self._recorded[-1])
            if len(self._recorded) >= RECORD_BATCH:
                self._flush()
        return held

    def _digest_on_server(self, message: Listed) -> str | None:
        """``planner.pop.header_digest`` of the message the server lists as ``message`` now; None
        when it cannot tell (gone, or no TOP and over the size cap)."""
        head = self.conn.headers(message.number) if self._top else None
        if head is None and message.size <= self.max_message_bytes:
            head = self.conn.retrieve(message.number)
        return None if head is None else plan.header_digest(_header_section(head))

    def _one(self, message: Listed, window_start: datetime) -> _Dealt | None:
        """What became of ``message`` (see ``_Dealt``): id "" when it is not stored (older than
        the window, or over the size cap on a server without TOP); None when the server no
        longer has it (or refuses to give it)."""
        head = self.conn.headers(message.number) if self._top else None
        raw: bytes | None = None
        if head is None and message.size > self.max_message_bytes:
            # Without TOP its headers come only with its body, which must never enter memory: it
            # stays on the server, unstored (and so never deleted), rather than fail every sync.
            logger.warning(
                "POP3 message over the size cap and no TOP: left on the server", extra={"size": message.size}
            )
            self.skipped_too_large += 1
            return _Dealt("", False, None)
        if head is None:
            # No TOP (then no server answers it), or the message is gone: RETR tells which.
            raw = self.conn.retrieve(message.number)
            if raw is None:
                self.dropped += 1
                return None
            if self._top:
                logger.info("POP3 server has no TOP: reading whole messages")
                self._top = False
            head = raw
        header = _header_section(head)
        received = plan.received_time(header.split(b"\r\n"))
        when = plan.message_time(mime.parse_message(header).date, received)
        if not plan.in_window(when, window_start):
            self.skipped_old += 1
            return _Dealt("", False, plan.header_digest(header))
        too_large = message.size > self.max_message_bytes
        if too_large:
            raw = header  # the body of a message over the cap never enters memory
        elif raw is None:
            raw = self.conn.retrieve(message.number)
            if raw is None:
                self.dropped += 1
                return None
        parsed = mime.parse_message(raw[: inbound.TOO_LARGE_HEADER_BYTES] if too_large else raw)
        key = match_key(parsed.internet_message_id, "" if parsed.internet_message_id else mime.match_hash(raw))
        id_ = message_id_for(self.tenant, self.user, message.uidl, raw)
        if self._rules is None:
            self._rules = privacy.rules_from(
                dal.get_tenant_settings(self.tenant, max_age=dal.TENANT_SETTINGS_MAX_AGE_SECONDS)
            )
        stored = inbound.store_detached(
            self.account,
            raw,
            id=id_,
            match_key=key,
            # Delivery to the maildrop, as IMAP's INTERNALDATE would say; else the Date header.
            received_at=received or when or now(),
            detach_reason=DETACH_REASON,
            crm_folder=CRM_FOLDER,
            size=message.size if too_large else None,
            rules=self._rules,
        )
        if stored.created is not None:
            self.outcome.created += 1
            self._received.append(message_event(MESSAGE_RECEIVED, stored.created))
        return _Dealt(stored.id, too_large, plan.header_digest(header))

    def _flush(self) -> None:
        """Record what was dealt with, then announce what was stored."""
        if self._recorded:
            dal.record_pop_seen(self.tenant, self.user, *self.server, self._recorded)
            self._recorded = []
        if self._received:
            events.publish(self._received)
            self._received = []

    def _save_checkpoint(self, state: SyncState, mailbox: dict[str, object]) -> None:
        """The maildrop's entry in the sync state, written only when it changed."""
        folders = {MAILBOX: mailbox}
        if state.folders != folders:
            dal.save_checkpoint(self.tenant, self.user, self.owner, folders=folders)


def _header_section(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 2]


def sync_pop3(
    account: Account,
    conn: Pop3Connection,
    *,
    owner: str,
    take_lease: Callable[[], SyncState],
    deadline: Callable[[], bool],
    unleased: SyncState | None,
) -> SyncOutcome | int:
    """Sync one POP3 account over ``conn`` (see the module docstring); ``unleased``: the state as
    read without the lease when the job may end without it (no work), else None."""
    return PopSync(account, conn, owner=owner, take_lease=take_lease, deadline=deadline).run(unleased=unleased)
