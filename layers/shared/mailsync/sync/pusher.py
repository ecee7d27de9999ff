"""CRM to server: apply pending operations (read/unread, move, append) in order.

Rules (three-way against the last agreed state, as mbsync does; see README "Two-way"):
- only the flag the CRM changed is stored on the server (+FLAGS/-FLAGS \\Seen), so changes by
  other mail programs to other flags survive and are pulled as usual;
- when both sides changed \\Seen since the last agreed state, the CRM's pending operation wins
  (it is applied before the pull, and the pull keeps a pending message's \\Seen);
- a move of a message the server moved meanwhile is applied from where it is now: the op waits
  for the pull to find the message (by Message-ID), then runs again;
- an op on a message removed from the server is dropped after the pull detached it, and the
  message says why (``last_op_error``).

Every op is idempotent: a move whose source UID is gone does nothing; an append first looks
for the message in the target folder; a seen change is +FLAGS/-FLAGS. A crash at any point
followed by a rerun never appends twice, never moves twice and never flips a flag back.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from mailsync import blobstore, dal
from mailsync.events import MESSAGE_UPDATED, Event, message_event
from mailsync.mailbox.reader import MailboxReader
from mailsync.mailbox.writer import MailboxWriter
from mailsync.observability import logger
from mailsync.sync.planner import normalise_flags

DROPPED_REMOVED = "The message was removed from the mail server before this change could be applied"
DROPPED_UNMAPPED = "The target folder is no longer mapped to a server folder"


class Pusher:
    """Applies one account's pending CRM operations with one IMAP connection."""

    def __init__(
        self,
        account: dal.AccountModel,
        reader: MailboxReader,
        writer: MailboxWriter,
        faults: Any = None,
    ) -> None:
        self.account = account
        self.reader = reader
        self.writer = writer
        self.faults = faults
        self.tenant = account.tenant_id
        self.user = account.user_id
        self.folder_map: dict[str, str] = account.mapped_folders()
        self.crm_for = {server: crm for crm, server in self.folder_map.items()}
        self.events: list[Event] = []
        self._uidvalidity: dict[str, int] = {}
        self.applied = 0

    # -- entry points ---------------------------------------------------------------------------

    def run(self, ops: list[dal.OpModel], *, last_chance: bool = False) -> list[dal.OpModel]:
        """Apply ``ops`` in order; returns those that must wait for a pull (or the next job).

        Once an op of a message waits, the later ops of that message wait too: order per
        message is kept, other messages go on.
        """
        waiting: list[dal.OpModel] = []
        blocked: set[str] = set()
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

    def _apply(self, op: dal.OpModel, *, last_chance: bool) -> bool:
        message = dal.get_message(op.message_id)
        if message is None:
            dal.complete_op(op, None)
            return True
        if message.state != "synced":
            self._drop(op, message, DROPPED_REMOVED)
            return True
        if op.kind == "append":
            return self._append(op, message)
        if message.uid is None:
            return False  # its append comes first
        if op.kind == "seen":
            done = self._seen(op, message)
        elif op.kind == "move":
            done = self._move(op, message)
        else:
            logger.error("unknown op kind dropped", extra={"kind": op.kind})
            dal.complete_op(op, message)
            return True
        if not done and last_chance:
            # Still not where we thought after a full pull: the next job tries again.
            logger.info("op waits for the next sync", extra={"op": op.kind, "message_id": message.id})
        return done

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
        self._hit("after_store")
        still_pending = int(message.pending_ops or 0) > 1
        fields: dict[str, Any] = {"updated_at": dal.utcnow()}
        if still_pending:
            # A later op of this message may change \Seen again: keep showing the CRM's wish.
            fields.update(seen=message.seen)
        dal.complete_op(op, message, fields)
        message.flags, message.seen = agreed, fields.get("seen", "\\Seen" in agreed)
        message.pending_ops = int(message.pending_ops or 1) - 1
        self._event(message, {"seen": bool(op.seen), "flags": agreed})
        return True

    def _move(self, op: dal.OpModel, message: dal.MessageModel) -> bool:
        target = self.folder_map.get(op.folder or "")
        if target is None:
            self._drop(op, message, DROPPED_UNMAPPED)
            return True
        if message.server_folder == target:
            dal.complete_op(op, message, {"folder": op.folder, "updated_at": dal.utcnow()})
            return True
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
                message_id=message.message_id,
                content_sha256=message.content_hash,
            )
        if new_uid is None:
            return False
        self._hit("after_move")
        self._relink(message, target, new_uid, old=(source, int(message.uidvalidity), int(message.uid)))
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
                    message_id=message.message_id,
                    content_sha256=message.content_hash,
                )
                self._hit("after_append")
            self._relink(message, target, uid, old=None)
        dal.complete_op(op, message, {"updated_at": dal.utcnow()})
        message.pending_ops = int(message.pending_ops or 1) - 1
        self._event(message, {"on_server": True, "server_folder": target})
        return True

    # -- helpers --------------------------------------------------------------------------------

    def _find_existing(self, folder: str, message: dal.MessageModel) -> int | None:
        """A copy the server already has (it saved the sent mail itself, or our APPEND went
        through before a crash) that no other CRM message owns."""
        if message.message_id:
            candidates = self.writer.find_by_message_id(folder, message.message_id)
        else:
            candidates = self.writer.find_by_content(folder, message.content_hash)
        if not candidates:
            return None
        uidvalidity = self._folder_uidvalidity(folder)
        known = dal.get_locations(self.tenant, self.user, folder, ((uidvalidity, u) for u in candidates))
        free = [u for u in candidates if (uidvalidity, u) not in known]
        return max(free) if free else None

    def _folder_uidvalidity(self, folder: str) -> int:
        if folder not in self._uidvalidity:
            status = self.reader.status([folder])
            self._uidvalidity[folder] = status[folder].uidvalidity
        return self._uidvalidity[folder]

    def _relink(self, message: dal.MessageModel, folder: str, uid: int, old: tuple[str, int, int] | None) -> None:
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
        crm_folder = self.crm_for.get(folder)
        if crm_folder is not None and int(message.pending_ops or 0) <= 1:
            fields.update(folder=crm_folder, gsi2pk=dal.folder_gsi_pk(self.tenant, self.user, crm_folder))
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

    def _drop(self, op: dal.OpModel, message: dal.MessageModel, why: str) -> None:
        dal.complete_op(op, message, {"last_op_error": why, "updated_at": dal.utcnow()})
        message.last_op_error = why
        logger.info("op dropped", extra={"op": op.kind, "message_id": message.id, "reason": why})

    def _event(self, message: dal.MessageModel, changes: dict[str, Any]) -> None:
        self.applied += 1
        self.events.append(message_event(MESSAGE_UPDATED, message, changes=changes, origin="crm"))

    def _hit(self, name: str) -> None:
        if self.faults is not None:
            self.faults.hit(name)
