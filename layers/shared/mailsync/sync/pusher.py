"""CRM to server: carry out pending operations (read/unread, move, append) in order.

What to do with each op — apply, wait for the pull, or fail — is decided by
``sync.planner.ops`` (see the rules there and README "Conflict rules"); this module gathers the
facts, runs the IMAP commands and records the result.

Every op is idempotent: a move whose source UID is gone does nothing; an append first looks
for the message in the target folder; a seen change is +FLAGS/-FLAGS. A crash at any point
followed by a rerun never appends twice, never moves twice and never flips a flag back.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from typing import Any

from mailsync import blobstore, dal
from mailsync.domain import Account, Location, Message, Op
from mailsync.errors import (
    RAW_UNAVAILABLE,
    ConnectFailed,
    FolderMissing,
    MailboxError,
    MailTimeout,
    OperationRefused,
)
from mailsync.events import MESSAGE_SYNC_FAILED, MESSAGE_UPDATED, Event, message_event
from mailsync.mailbox.connection import ImapConnection
from mailsync.observability import logger
from mailsync.sync import gmail
from mailsync.sync.planner import ops as decide
from mailsync.sync.planner.messages import normalise_flags
from mailsync.sync.planner.ops import Action


def _facts(message: Message) -> decide.MessageFacts:
    return decide.MessageFacts(
        state=message.state,
        server_folder=message.server_folder,
        uidvalidity=message.uidvalidity,
        uid=message.uid,
        last_op_error=message.last_op_error,
    )


class Pusher:
    """Applies one account's pending CRM operations with one IMAP connection."""

    def __init__(self, account: Account, conn: ImapConnection) -> None:
        self.account = account
        self.conn = conn
        self.tenant = account.tenant_id
        self.user = account.user_id
        self.folder_map: dict[str, str] = account.mapped_folders()
        self.crm_for = {server: crm for crm, server in self.folder_map.items()}
        self.events: list[Event] = []
        self._uidvalidity: dict[str, int] = {}
        # Ops of this run not finished yet, per (message, kind): only a later op of the same
        # kind may keep the CRM's wish on show (a pending move the folder, a seen the flag).
        self._left: Counter[tuple[str, str]] = Counter()
        self.applied = 0
        self.failed = 0

    # -- entry points ---------------------------------------------------------------------------

    def run(self, ops: list[Op], *, last_chance: bool = False) -> list[Op]:
        """Apply ``ops`` in order; returns those that must wait for a pull (or the next job).

        Once an op of a message waits, the later ops of that message wait too: order per
        message is kept, other messages go on.
        """
        waiting: list[Op] = []
        blocked: set[str] = set()
        self._left = Counter((op.id, op.kind) for op in ops)
        # The pull in between may have seen a new UIDVALIDITY: ask again.
        self._uidvalidity.clear()
        for op in sorted(ops, key=lambda o: int(o.seq)):
            if op.id in blocked:
                waiting.append(op)
                continue
            if not self._apply(op, last_chance=last_chance):
                waiting.append(op)
                blocked.add(op.id)
        return waiting

    def revivable(self, ops: list[Op]) -> dict[str, list[str]]:
        """Messages written in the CRM and not yet on the server, by match key: if the pull
        meets one (the server saved sent mail itself), it links it instead of a duplicate."""
        out: dict[str, list[str]] = defaultdict(list)
        ids = [op.id for op in ops if op.kind == "append"]
        for message in dal.find_messages(ids).values():
            if message.uid is None and message.state == "synced":
                out[message.match_key].append(message.id)
        return dict(out)

    # -- one op ---------------------------------------------------------------------------------

    def _decide(self, op: Op, message: Message | None, *, last_chance: bool) -> decide.Decision:
        facts = decide.OpFacts(op.kind, self.folder_map.get(op.folder or "") if op.kind == "move" else None)
        about = _facts(message) if message is not None else None
        append_waiting = message is not None and self._left[(message.id, "append")] > 0
        decision = decide.decide_op(facts, about, append_waiting=append_waiting, last_chance=last_chance)
        if decision.action is Action.CHECK_UIDVALIDITY:
            assert message is not None
            decision = decide.decide_op(
                facts,
                about,
                append_waiting=append_waiting,
                folder_uidvalidity=self._folder_uidvalidity(message.server_folder),
                last_chance=last_chance,
            )
        return decision

    def _apply(self, op: Op, *, last_chance: bool) -> bool:
        message = dal.find_message(op.id)
        try:
            decision = self._decide(op, message, last_chance=last_chance)
            done = self._carry_out(op, message, decision)
        except OperationRefused as exc:
            # NO/BAD to this change (FolderMissing included): it will not work by retrying.
            assert message is not None
            self._fail(op, message, exc.message, exc.code)
            done = True
        except blobstore.RawUnreadable as exc:
            # A CRM message to append whose stored copy is gone or damaged: no retry brings it back.
            assert message is not None
            logger.error("raw copy unreadable", extra={"id": message.id, "error": str(exc)})
            self._fail(op, message, RAW_UNAVAILABLE, "raw_unavailable")
            done = True
        except Exception as exc:
            if message is None:
                raise
            attempts = self._count_attempt(op)
            if not decide.after_transient_failure(attempts):
                raise  # the job retries (and reconnects); the op is tried again then
            code = exc.code if isinstance(exc, MailboxError) else "internal_error"
            why = exc.message if isinstance(exc, MailboxError) else "an internal error"
            self._fail(op, message, f"The change could not be applied after {attempts} attempts: {why}", code)
            self._left[(op.id, op.kind)] -= 1
            if isinstance(exc, ConnectFailed | MailTimeout):
                raise  # the connection is likely gone: the job reconnects for the rest
            return True
        if done:
            self._left[(op.id, op.kind)] -= 1
        elif last_chance:
            # Still not where we thought after a full pull: the next job tries again.
            logger.info("op waits for the next sync", extra={"op": op.kind, "id": op.id})
        return done

    def _carry_out(self, op: Op, message: Message | None, decision: decide.Decision) -> bool:
        action = decision.action
        if action is Action.WAIT:
            if op.kind != "append" and message is not None and message.uid is not None:
                logger.info("op waits for a UIDVALIDITY change", extra={"op": op.kind, "id": message.id})
            return False
        if action is Action.DONE:
            if message is not None:
                logger.error("unknown op kind dropped", extra={"kind": op.kind})
            dal.finish_op(op, message)
            return True
        assert message is not None
        if action is Action.FAIL:
            self._fail(op, message, decision.reason or "", decision.code or "failed")
            return True
        if action is Action.ALREADY_THERE:
            dal.finish_op(op, message, {"folder": op.folder, "updated_at": dal.utcnow()})
            return True
        if action is Action.APPEND:
            return self._append(op, message)
        if action is Action.SEEN:
            return self._seen(op, message)
        return self._move(op, message)

    def _seen(self, op: Op, message: Message) -> bool:
        assert message.uid is not None and message.uidvalidity is not None
        flags = self.conn.set_seen(message.server_folder, message.uid, bool(op.seen))
        if flags is None:
            return False
        agreed = tuple(sorted(normalise_flags(flags)))
        location = self._location(message, message.server_folder, message.uidvalidity, message.uid)
        # The server's flags after the store become the agreed base, CRM and location alike.
        dal.set_flags(message, location, list(agreed), "\\Seen" in agreed)
        shown: dict[str, Any] = {"updated_at": dal.utcnow()}
        if self._later(op, "seen"):
            # A later op of this message changes \Seen again: keep showing the CRM's wish.
            shown.update(seen=message.seen)
        if not self._keeps_folder(op, message):
            # The pull may have relinked the message (another client moved it) while this op
            # waited: with no move of ours pending, the CRM folder is where it is now.
            shown.update(self._folder_fields(message.server_folder))
        dal.finish_op(op, message, shown)
        message = replace(message, **{"flags": agreed, "seen": "\\Seen" in agreed, **shown})
        self._event(message, {"seen": bool(op.seen), "flags": list(agreed)})
        return True

    def _move(self, op: Op, message: Message) -> bool:
        assert message.uid is not None and message.uidvalidity is not None
        target = self.folder_map[op.folder or ""]
        source = message.server_folder
        new_uid = None
        # Gmail out of All Mail: the target's label is added, nothing expunged (planner.gmail rule 4).
        method, special_use = gmail.move_method(self.conn, source, target) if self.conn.is_gmail else (None, None)
        if method is gmail.rules.MoveMethod.ADD_LABEL:
            new_uid = self.conn.gmail_add_label(source, message.uid, target, special_use)
            if new_uid is None:
                return False
        elif not self.conn.has_move:
            # Without MOVE a crash between COPY and EXPUNGE leaves a copy in the target: finish
            # that move instead of copying a second time.
            new_uid = self._find_existing(target, message)
            if new_uid is not None:
                self.conn.remove(source, message.uid)
        if new_uid is None:
            new_uid = self.conn.move(
                source,
                message.uid,
                target,
                internet_message_id=message.internet_message_id,
                content_sha256=message.content_hash,
            )
        if new_uid is None:
            return False
        old: Location | None = self._location(message, source, message.uidvalidity, message.uid)
        if method is gmail.rules.MoveMethod.ADD_LABEL:
            old = None  # the copy left in All Mail stays recorded: a further copy of the message
        message = self._relink(op, message, target, new_uid, old=old)
        dal.finish_op(op, message, {"updated_at": dal.utcnow()})
        self._event(message, {"folder": op.folder, "previous_server_folder": source})
        return True

    def _append(self, op: Op, message: Message) -> bool:
        target = message.server_folder
        if message.uid is None:
            uid = self._find_existing(target, message)
            if uid is None:
                raw = blobstore.get_raw(message.s3_key, sha256=message.content_hash)
                uid = self.conn.append(
                    target,
                    raw,
                    flags=["\\Seen"],
                    internal_date=message.internal_date,
                    internet_message_id=message.internet_message_id,
                    content_sha256=message.content_hash,
                )
            message = self._relink(op, message, target, uid, old=None)
        dal.finish_op(op, message, {"updated_at": dal.utcnow()})
        self._event(message, {"on_server": True, "server_folder": target})
        return True

    # -- helpers --------------------------------------------------------------------------------

    def _find_existing(self, folder: str, message: Message) -> int | None:
        """A copy the server already has (it saved the sent mail itself, or our APPEND went
        through before a crash) that no other CRM message owns."""
        if message.internet_message_id:
            candidates = self.conn.find_by_internet_message_id(folder, message.internet_message_id)
        else:
            candidates = self.conn.find_by_content(folder, message.content_hash)
        if not candidates:
            return None
        uidvalidity = self._folder_uidvalidity(folder)
        known = dal.find_locations(self.tenant, self.user, folder, ((uidvalidity, u) for u in candidates))
        return decide.existing_copy(candidates, {uid for _, uid in known})

    def _folder_uidvalidity(self, folder: str) -> int:
        if folder not in self._uidvalidity:
            status = self.conn.status([folder]).get(folder)
            if status is None:
                raise FolderMissing(folder)
            self._uidvalidity[folder] = status.uidvalidity
        return self._uidvalidity[folder]

    def _folder_fields(self, server_folder: str) -> dict[str, Any]:
        crm_folder = self.crm_for.get(server_folder)
        if crm_folder is None:
            return {}
        return {"folder": crm_folder}

    def _later(self, op: Op, kind: str) -> bool:
        """Whether another op of ``kind`` for this message is still to run after ``op``."""
        return self._left[(op.id, kind)] - (1 if op.kind == kind else 0) > 0

    def _keeps_folder(self, op: Op, message: Message) -> bool:
        known = sum(n for (id_, _), n in self._left.items() if id_ == message.id)
        return decide.keeps_crm_folder(
            move_later_in_run=self._later(op, "move"),
            pending_ops=int(message.pending_ops or 0),
            ops_known_in_run=known,
        )

    def _location(self, message: Message, folder: str, uidvalidity: int, uid: int) -> Location:
        return Location(
            tenant_id=self.tenant,
            user_id=self.user,
            server_folder=folder,
            uidvalidity=uidvalidity,
            uid=uid,
            id=message.id,
            internal_date=message.internal_date,
            match_key=message.match_key,
            flags=message.flags,
        )

    def _relink(self, op: Op, message: Message, folder: str, uid: int, old: Location | None) -> Message:
        """Point ``message`` at its server copy in ``folder`` (and forget ``old``); the message as
        it shows now."""
        uidvalidity = self._folder_uidvalidity(folder)
        shown: dict[str, Any] = {"server_folder": folder, "uidvalidity": uidvalidity, "uid": uid}
        if not self._keeps_folder(op, message):
            # Only a move still to come keeps the CRM folder showing the CRM's wish.
            shown.update(self._folder_fields(folder))
        dal.relink(message, self._location(message, folder, uidvalidity, uid), shown, old)
        return replace(message, **shown)

    def _fail(self, op: Op, message: Message, why: str, code: str) -> None:
        """The op cannot be applied: remove it, show the server's truth again and say why."""
        synced = message.state == "synced"
        seen_later = self._later(op, "seen")
        view = decide.failed_op_view(
            op.kind,
            message_synced=synced,
            seen_later=seen_later,
            keeps_folder=synced and op.kind == "move" and self._keeps_folder(op, message),
            agreed=self._agreed_flags(message) if synced and op.kind == "seen" and not seen_later else None,
        )
        fields: dict[str, Any] = {"last_op_error": why, "updated_at": dal.utcnow()}
        if view.flags is not None:
            fields.update(flags=view.flags, seen=view.seen)
        if view.show_server_folder:
            fields.update(self._folder_fields(message.server_folder))
        dal.finish_op(op, message, fields)
        message = replace(message, **fields)
        self.failed += 1
        logger.warning("op failed", extra={"op": op.kind, "id": message.id, "code": code, "reason": why})
        self.events.append(message_event(MESSAGE_SYNC_FAILED, message, op=op.kind, code=code, error=why, origin="crm"))

    def _agreed_flags(self, message: Message) -> list[str] | None:
        """The flags last agreed with the server (the location's), None if not known."""
        if message.uid is None or message.uidvalidity is None:
            return None
        key = (message.uidvalidity, message.uid)
        found = dal.find_locations(self.tenant, self.user, message.server_folder, [key]).get(key)
        return None if found is None else sorted(found.flags or [])

    def _count_attempt(self, op: Op) -> int:
        try:
            return dal.count_attempt(op)
        except Exception:  # noqa: BLE001 - counting must not hide the failure being counted
            logger.exception("counting an op attempt failed", extra={"op": op.kind})
            return int(op.attempts or 0)

    def _event(self, message: Message, changes: dict[str, Any]) -> None:
        self.applied += 1
        self.events.append(message_event(MESSAGE_UPDATED, message, changes=changes, origin="crm"))
