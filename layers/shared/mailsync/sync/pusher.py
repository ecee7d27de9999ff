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
from typing import Any

from mailsync import blobstore, dal
from mailsync.errors import ConnectFailed, MailboxError, MailTimeout, OperationRefused
from mailsync.events import MESSAGE_SYNC_FAILED, MESSAGE_UPDATED, Event, message_event
from mailsync.mailbox.reader import FolderGone, MailboxReader
from mailsync.mailbox.writer import MailboxWriter
from mailsync.observability import logger
from mailsync.sync.planner import ops as decide
from mailsync.sync.planner.messages import normalise_flags
from mailsync.sync.planner.ops import Action


def _facts(message: dal.MessageModel) -> decide.MessageFacts:
    return decide.MessageFacts(
        state=message.state,
        server_folder=message.server_folder,
        uidvalidity=int(message.uidvalidity) if message.uidvalidity is not None else None,
        uid=int(message.uid) if message.uid is not None else None,
        last_op_error=message.last_op_error,
    )


class Pusher:
    """Applies one account's pending CRM operations with one IMAP connection."""

    def __init__(self, account: dal.AccountModel, reader: MailboxReader, writer: MailboxWriter) -> None:
        self.account = account
        self.reader = reader
        self.writer = writer
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

    def run(self, ops: list[dal.OpModel], *, last_chance: bool = False) -> list[dal.OpModel]:
        """Apply ``ops`` in order; returns those that must wait for a pull (or the next job).

        Once an op of a message waits, the later ops of that message wait too: order per
        message is kept, other messages go on.
        """
        waiting: list[dal.OpModel] = []
        blocked: set[str] = set()
        self._left = Counter((op.message_id, op.kind) for op in ops)
        # The pull in between may have seen a new UIDVALIDITY: ask again.
        self._uidvalidity.clear()
        for op in sorted(ops, key=lambda o: int(o.seq)):
            if op.message_id in blocked:
                waiting.append(op)
                continue
            if not self._apply(op, last_chance=last_chance):
                waiting.append(op)
                blocked.add(op.message_id)
        return waiting

    def revivable(self, ops: list[dal.OpModel]) -> dict[str, list[str]]:
        """Messages written in the CRM and not yet on the server, by match key: if the pull
        meets one (the server saved sent mail itself), it links it instead of a duplicate."""
        out: dict[str, list[str]] = defaultdict(list)
        ids = [op.message_id for op in ops if op.kind == "append"]
        for message in dal.batch_get_messages(ids).values():
            if message.uid is None and message.state == "synced":
                out[message.match_key].append(message.id)
        return dict(out)

    # -- one op ---------------------------------------------------------------------------------

    def _decide(self, op: dal.OpModel, message: dal.MessageModel | None, *, last_chance: bool) -> decide.Decision:
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

    def _apply(self, op: dal.OpModel, *, last_chance: bool) -> bool:
        message = dal.get_message(op.message_id)
        try:
            decision = self._decide(op, message, last_chance=last_chance)
            done = self._carry_out(op, message, decision)
        except OperationRefused as exc:
            # NO/BAD to this change (FolderMissing included): it will not work by retrying.
            assert message is not None
            self._fail(op, message, exc.message, exc.code)
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
            self._left[(op.message_id, op.kind)] -= 1
            if isinstance(exc, ConnectFailed | MailTimeout):
                raise  # the connection is likely gone: the job reconnects for the rest
            return True
        if done:
            self._left[(op.message_id, op.kind)] -= 1
        elif last_chance:
            # Still not where we thought after a full pull: the next job tries again.
            logger.info("op waits for the next sync", extra={"op": op.kind, "id": op.message_id})
        return done

    def _carry_out(self, op: dal.OpModel, message: dal.MessageModel | None, decision: decide.Decision) -> bool:
        action = decision.action
        if action is Action.WAIT:
            if op.kind != "append" and message is not None and message.uid is not None:
                logger.info("op waits for a UIDVALIDITY change", extra={"op": op.kind, "id": message.id})
            return False
        if action is Action.DONE:
            if message is not None:
                logger.error("unknown op kind dropped", extra={"kind": op.kind})
            dal.complete_op(op, message)
            return True
        assert message is not None
        if action is Action.FAIL:
            self._fail(op, message, decision.reason or "", decision.code or "failed")
            return True
        if action is Action.ALREADY_THERE:
            dal.complete_op(op, message, {"folder": op.folder, "updated_at": dal.utcnow()})
            return True
        if action is Action.APPEND:
            return self._append(op, message)
        if action is Action.SEEN:
            return self._seen(op, message)
        return self._move(op, message)

    def _seen(self, op: dal.OpModel, message: dal.MessageModel) -> bool:
        flags = self.writer.set_seen(message.server_folder, int(message.uid), bool(op.seen))
        if flags is None:
            return False
        agreed = sorted(normalise_flags(flags))
        location = dal.location_item(
            self.tenant, self.user, message.server_folder, int(message.uidvalidity), int(message.uid)
        )
        # The server's flags after the store become the agreed base, CRM and location alike.
        dal.update_flags(message, location, agreed, "\\Seen" in agreed)
        fields: dict[str, Any] = {"updated_at": dal.utcnow()}
        if self._later(op, "seen"):
            # A later op of this message changes \Seen again: keep showing the CRM's wish.
            fields.update(seen=message.seen)
        if not self._keeps_folder(op, message):
            # The pull may have relinked the message (another client moved it) while this op
            # waited: with no move of ours pending, the CRM folder is where it is now.
            fields.update(self._folder_fields(message.server_folder))
        dal.complete_op(op, message, fields)
        message.flags, message.seen = agreed, fields.get("seen", "\\Seen" in agreed)
        for name in ("folder", "gsi2pk"):
            if name in fields:
                setattr(message, name, fields[name])
        message.pending_ops = int(message.pending_ops or 1) - 1
        self._event(message, {"seen": bool(op.seen), "flags": agreed})
        return True

    def _move(self, op: dal.OpModel, message: dal.MessageModel) -> bool:
        target = self.folder_map[op.folder or ""]
        source = message.server_folder
        new_uid = None
        if not self.writer.has_move:
            # Without MOVE a crash between COPY and EXPUNGE leaves a copy in the target: finish
            # that move instead of copying a second time.
            new_uid = self._find_existing(target, message)
            if new_uid is not None:
                self.writer.remove(source, int(message.uid))
        if new_uid is None:
            new_uid = self.writer.move(
                source,
                int(message.uid),
                target,
                message_id=message.internet_message_id,
                content_sha256=message.content_hash,
            )
        if new_uid is None:
            return False
        self._relink(op, message, target, new_uid, old=(source, int(message.uidvalidity), int(message.uid)))
        dal.complete_op(op, message, {"updated_at": dal.utcnow()})
        message.pending_ops = int(message.pending_ops or 1) - 1
        self._event(message, {"folder": op.folder, "previous_server_folder": source})
        return True

    def _append(self, op: dal.OpModel, message: dal.MessageModel) -> bool:
        target = message.server_folder
        if message.uid is None:
            uid = self._find_existing(target, message)
            if uid is None:
                raw = blobstore.get_raw(message.s3_key)
                uid = self.writer.append(
                    target,
                    raw,
                    flags=["\\Seen"],
                    internal_date=message.internal_date,
                    message_id=message.internet_message_id,
                    content_sha256=message.content_hash,
                )
            self._relink(op, message, target, uid, old=None)
        dal.complete_op(op, message, {"updated_at": dal.utcnow()})
        message.pending_ops = int(message.pending_ops or 1) - 1
        self._event(message, {"on_server": True, "server_folder": target})
        return True

    # -- helpers --------------------------------------------------------------------------------

    def _find_existing(self, folder: str, message: dal.MessageModel) -> int | None:
        """A copy the server already has (it saved the sent mail itself, or our APPEND went
        through before a crash) that no other CRM message owns."""
        if message.internet_message_id:
            candidates = self.writer.find_by_message_id(folder, message.internet_message_id)
        else:
            candidates = self.writer.find_by_content(folder, message.content_hash)
        if not candidates:
            return None
        uidvalidity = self._folder_uidvalidity(folder)
        known = dal.get_locations(self.tenant, self.user, folder, ((uidvalidity, u) for u in candidates))
        return decide.existing_copy(candidates, {uid for _, uid in known})

    def _folder_uidvalidity(self, folder: str) -> int:
        if folder not in self._uidvalidity:
            status = self.reader.status([folder]).get(folder)
            if status is None:
                raise FolderGone(folder)
            self._uidvalidity[folder] = status.uidvalidity
        return self._uidvalidity[folder]

    def _folder_fields(self, server_folder: str) -> dict[str, Any]:
        crm_folder = self.crm_for.get(server_folder)
        if crm_folder is None:
            return {}
        return {"folder": crm_folder, "gsi2pk": dal.folder_gsi_pk(self.tenant, self.user, crm_folder)}

    def _later(self, op: dal.OpModel, kind: str) -> bool:
        """Whether another op of ``kind`` for this message is still to run after ``op``."""
        return self._left[(op.message_id, kind)] - (1 if op.kind == kind else 0) > 0

    def _keeps_folder(self, op: dal.OpModel, message: dal.MessageModel) -> bool:
        known = sum(n for (message_id, _), n in self._left.items() if message_id == message.id)
        return decide.keeps_crm_folder(
            move_later_in_run=self._later(op, "move"),
            pending_ops=int(message.pending_ops or 0),
            ops_known_in_run=known,
        )

    def _relink(
        self,
        op: dal.OpModel,
        message: dal.MessageModel,
        folder: str,
        uid: int,
        old: tuple[str, int, int] | None,
    ) -> None:
        uidvalidity = self._folder_uidvalidity(folder)
        place = (self.tenant, self.user, folder)
        location = dal.location_item(
            *place,
            uidvalidity,
            uid,
            id=message.id,
            uidvalidity=uidvalidity,
            uid=uid,
            flags=list(message.flags or []),
            internal_date=message.internal_date,
            match_key=message.match_key,
        )
        window = dal.window_item(*place, message.internal_date, uidvalidity, uid, id=message.id, loc_sk=location.sk)
        fields: dict[str, Any] = {"server_folder": folder, "uidvalidity": uidvalidity, "uid": uid}
        if not self._keeps_folder(op, message):
            # Only a move still to come keeps the CRM folder showing the CRM's wish.
            fields.update(self._folder_fields(folder))
        previous = None
        if old is not None:
            old_place = (self.tenant, self.user, old[0])
            previous = (
                dal.location_item(*old_place, old[1], old[2]),
                dal.window_item(*old_place, message.internal_date, old[1], old[2]),
            )
        dal.relink_message(message, location, window, fields, previous)
        for name, value in fields.items():
            setattr(message, name, value)

    def _fail(self, op: dal.OpModel, message: dal.MessageModel, why: str, code: str) -> None:
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
            fields.update(flags=list(view.flags), seen=view.seen)
        if view.show_server_folder:
            fields.update(self._folder_fields(message.server_folder))
        dal.complete_op(op, message, fields)
        for name, value in fields.items():
            setattr(message, name, value)
        message.pending_ops = max(0, int(message.pending_ops or 1) - 1)
        self.failed += 1
        logger.warning("op failed", extra={"op": op.kind, "id": message.id, "code": code, "reason": why})
        self.events.append(message_event(MESSAGE_SYNC_FAILED, message, op=op.kind, code=code, error=why, origin="crm"))

    def _agreed_flags(self, message: dal.MessageModel) -> list[str] | None:
        """The flags last agreed with the server (the location's), None if not known."""
        if message.uid is None or message.uidvalidity is None:
            return None
        key = (int(message.uidvalidity), int(message.uid))
        found = dal.get_locations(self.tenant, self.user, message.server_folder, [key]).get(key)
        return None if found is None else sorted(found.flags or [])

    def _count_attempt(self, op: dal.OpModel) -> int:
        try:
            return dal.count_op_attempt(op)
        except Exception:  # noqa: BLE001 - counting must not hide the failure being counted
            logger.exception("counting an op attempt failed", extra={"op": op.kind})
            return int(op.attempts or 0)

    def _event(self, message: dal.MessageModel, changes: dict[str, Any]) -> None:
        self.applied += 1
        self.events.append(message_event(MESSAGE_UPDATED, message, changes=changes, origin="crm"))
