"""CRM to server: apply pending operations (read/unread, move, append) in order.

Rules (three-way against the last agreed state, as mbsync does; see README "Two-way"):
- only the flag the CRM changed is stored on the server (+FLAGS/-FLAGS \\Seen), so changes by
  other mail programs to other flags survive and are pulled as usual;
- when both sides changed \\Seen since the last agreed state, the CRM's pending operation wins
  (it is applied before the pull, and the pull keeps a pending message's \\Seen);
- a move of a message the server moved meanwhile is applied from where it is now: the op waits
  for the pull to find the message (by Message-ID), then runs again;
- an op on a message removed from the server is dropped after the pull detached it, and the
  message says why (``last_op_error``);
- stored UIDs are only used under the UIDVALIDITY they were seen with: after a reset the op
  waits for the pull to find the message again (by Message-ID or content), then applies;
- a refusal (NO/BAD: over quota, read-only mailbox, folder deleted) fails that op only: the
  message shows the server's truth again (its agreed flags, the CRM folder of where it is),
  ``last_op_error`` holds the server's words, ``message.sync_failed`` is published, and the
  other ops and the pull go on. Transient trouble (connection lost, timeout, server busy)
  is counted on the op (``attempts``) and fails it after ``OP_ATTEMPTS``.

Every op is idempotent: a move whose source UID is gone does nothing; an append first looks
for the message in the target folder; a seen change is +FLAGS/-FLAGS. A crash at any point
followed by a rerun never appends twice, never moves twice and never flips a flag back.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from mailsync import blobstore, dal
from mailsync.errors import ConnectFailed, FolderMissing, MailboxError, MailTimeout, OperationRefused
from mailsync.events import MESSAGE_SYNC_FAILED, MESSAGE_UPDATED, Event, message_event
from mailsync.mailbox.connection import ImapConnection
from mailsync.observability import logger
from mailsync.sync.planner import normalise_flags

DROPPED_REMOVED = "The message was removed from the mail server before this change could be applied"
DROPPED_UNMAPPED = "The target folder is no longer mapped to a server folder"
NOT_ON_SERVER = "The message is not on the mail server (adding it there failed)"
NOT_FOUND_AFTER_REBUILD = "The folder was rebuilt on the mail server and the message was not found in it again"
# Transient failures of one op (over several jobs) before it fails for good.
OP_ATTEMPTS = 5


class Pusher:
    """Applies one account's pending CRM operations with one IMAP connection."""

    def __init__(
        self,
        account: dal.AccountModel,
        reader: ImapConnection,
        writer: ImapConnection,
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

    def _apply(self, op: dal.OpModel, *, last_chance: bool) -> bool:
        message = dal.get_message(op.message_id)
        if message is None:
            dal.complete_op(op, None)
            self._left[(op.message_id, op.kind)] -= 1
            return True
        if message.state != "synced":
            self._fail(op, message, DROPPED_REMOVED, "removed")
            self._left[(op.message_id, op.kind)] -= 1
            return True
        try:
            done = self._apply_to(op, message, last_chance=last_chance)
        except OperationRefused as exc:
            # NO/BAD to this change (FolderMissing included): it will not work by retrying.
            self._fail(op, message, exc.message, exc.code)
            done = True
        except Exception as exc:
            attempts = self._count_attempt(op)
            if attempts < OP_ATTEMPTS:
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
            logger.info("op waits for the next sync", extra={"op": op.kind, "message_id": message.id})
        return done

    def _apply_to(self, op: dal.OpModel, message: dal.MessageModel, *, last_chance: bool) -> bool:
        if op.kind == "append":
            return self._append(op, message)
        if message.uid is None:
            if self._left[(message.id, "append")] > 0:
                return False  # its append comes first
            self._fail(op, message, message.last_op_error or NOT_ON_SERVER, "not_on_server")
            return True
        if op.kind not in ("seen", "move"):
            logger.error("unknown op kind dropped", extra={"kind": op.kind})
            dal.complete_op(op, message)
            return True
        if op.kind == "move" and self.folder_map.get(op.folder or "") in (None, message.server_folder):
            return self._move(op, message)  # unmapped target, or nothing to do on the server
        if int(message.uidvalidity or 0) != self._folder_uidvalidity(message.server_folder):
            # The folder was rebuilt: the stored UID may now be another message. The pull
            # finds this one again (or detaches it); the op runs after that.
            if last_chance:
                # A complete pull neither found it again nor detached it: never guess.
                self._fail(op, message, NOT_FOUND_AFTER_REBUILD, "uidvalidity_changed")
                return True
            logger.info("op waits for a UIDVALIDITY change", extra={"op": op.kind, "message_id": message.id})
            return False
        if op.kind == "seen":
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
        self._hit("after_store")
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
        target = self.folder_map.get(op.folder or "")
        if target is None:
            self._fail(op, message, DROPPED_UNMAPPED, "unmapped")
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
                    message_id=message.message_id,
                    content_sha256=message.content_hash,
                )
                self._hit("after_append")
            self._relink(op, message, target, uid, old=None)
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
            status = self.reader.status([folder]).get(folder)
            if status is None:
                raise FolderMissing(folder)
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
        """Whether the CRM folder must keep showing the CRM's wish: a move of ours is still to
        run, or the message counts more pending ops than this run knows of (one recorded since
        the job started may be a move)."""
        known = sum(n for (message_id, _), n in self._left.items() if message_id == message.id)
        return self._later(op, "move") or int(message.pending_ops or 0) > known

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
        fields: dict[str, Any] = {"last_op_error": why, "updated_at": dal.utcnow()}
        if message.state == "synced":
            if op.kind == "seen" and not self._later(op, "seen"):
                agreed = self._agreed_flags(message)
                if agreed is not None:
                    fields.update(flags=agreed, seen="\\Seen" in agreed)
            if op.kind == "move" and not self._keeps_folder(op, message):
                fields.update(self._folder_fields(message.server_folder))
        dal.complete_op(op, message, fields)
        for name, value in fields.items():
            setattr(message, name, value)
        message.pending_ops = max(0, int(message.pending_ops or 1) - 1)
        self.failed += 1
        logger.warning("op failed", extra={"op": op.kind, "message_id": message.id, "code": code, "reason": why})
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

    def _hit(self, name: str) -> None:
        if self.faults is not None:
            self.faults.hit(name)
