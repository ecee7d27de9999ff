"""Reading messages and sync status; asking for a sync now."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)

from mailsync import blobstore, dal, events, mime
from mailsync.domain import Account, Address, Change, Message, SyncState
from mailsync.errors import RAW_UNAVAILABLE, Conflict, Forbidden, NotFound, RawUnavailable, ValidationFailed
from mailsync.identity import Principal
from mailsync.observability import logger
from mailsync.schemas import (
    DossierMessageOut,
    DossierPageOut,
    FolderProgressOut,
    FolderSyncOut,
    MessageOut,
    MessagePageOut,
    MessagePatchIn,
    MessageSendIn,
    RawLinkOut,
    SyncStatusOut,
)
from mailsync.services import confidentiality, scheduling, sync_jobs
from mailsync.services.accounts import Target, require_account, target_for
from mailsync.sync import inbound
from mailsync.sync.metadata import metadata_fields
from mailsync.sync.planner.messages import match_key

RAW_URL_SECONDS = 300
# Mail of a POP3 account: the CRM follows no server copy, its changes stay in the CRM.
POP3 = "pop3"
# The CRM's own folders: all a POP3 account's mail can be in (it has no server folders to map).
POP3_CRM_FOLDERS = ("inbox", "sent", "drafts", "trash", "archive")


def _sync_state(message: Message) -> str:
    """``pending`` while CRM changes wait; ``failed`` when one could not be applied to a message
    still on the server (``last_op_error`` says why; the next change clears it); else ``synced``.
    A change dropped because the message left the server shows through ``state: detached``."""
    if message.detach_reason == POP3:
        return "local"
    if message.pending_ops > 0:
        return "pending"
    return "failed" if message.last_op_error and message.state == "synced" else "synced"


def to_out(message: Message) -> MessageOut:
    def addresses(values: Iterable[Address]) -> list[dict[str, Any]]:
        return [{"name": a.name, "email": a.email} for a in values]

    return MessageOut.model_validate(
        {
            "id": message.id,
            "user_id": message.user_id,
            "folder": message.folder,
            "server_folder": message.server_folder,
            "uidvalidity": message.uidvalidity,
            "uid": message.uid,
            "flags": list(message.flags),
            "seen": message.seen,
            "subject": message.subject,
            "from": addresses(message.from_),
            "to": addresses(message.to),
            "cc": addresses(message.cc),
            "date": message.date,
            "internal_date": message.internal_date,
            "size": message.size,
            "internet_message_id": message.internet_message_id,
            "in_reply_to": message.in_reply_to,
            "references": list(message.references),
            "thread_id": message.thread_id,
            "snippet": message.snippet,
            "attachments": [
                {"filename": a.filename, "content_type": a.content_type, "size": a.size} for a in message.attachments
            ],
            "participants": list(message.participants),
            "state": message.state,
            "detach_reason": message.detach_reason,
            "sync_state": _sync_state(message),
            "confidential": message.confidential,
            "last_op_error": message.last_op_error,
            "metadata_truncated": message.metadata_truncated,
            "too_large": message.too_large,
            "relay_verdicts": vars(message.relay_verdicts) if message.relay_verdicts is not None else None,
        }
    )


def _utc(since: datetime | None) -> datetime | None:
    if since is None:
        return None
    try:
        # Aware times far at either end of the calendar overflow when moved to UTC.
        return since.astimezone(UTC) if since.tzinfo is not None else since.replace(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise ValidationFailed("since is outside the supported range of dates", field="since") from None


def list_messages(
    principal: Principal,
    user_id: str,
    *,
    folder: str | None,
    seen: bool | None,
    since: datetime | None,
    limit: int,
    cursor: str | None,
) -> MessagePageOut:
    target = target_for(principal, user_id)
    items, next_cursor = dal.list_messages(
        target.tenant_id,
        target.user_id,
        folder=folder,
        since=_utc(since),
        seen=seen,
        limit=limit,
        cursor=cursor,
        include_confidential=target.user_id == principal.user_id,
    )
    return MessagePageOut(messages=[to_out(m) for m in items], next_cursor=next_cursor)


def visible_to(principal: Principal, message: Message | None) -> bool:
    """The owner sees their messages; colleagues of the tenant (admins included) see the
    non-confidential ones (they are in the dossiers); nobody sees another tenant's."""
    if message is None or message.tenant_id != principal.tenant_id:
        return False
    return message.user_id == principal.user_id or not message.confidential


def _visible_message(principal: Principal, id: str) -> Message:
    message = dal.find_message(id)
    if not visible_to(principal, message):
        # A confidential message, or another tenant's, is indistinguishable from a missing one.
        raise NotFound(f"Message '{id}' not found")
    assert message is not None
    return message


def get_message(principal: Principal, id: str) -> MessageOut:
    return to_out(_visible_message(principal, id))


def raw_link(principal: Principal, id: str) -> RawLinkOut:
    message = _visible_message(principal, id)
    try:
        url = blobstore.presigned_url(
            message.s3_key, RAW_URL_SECONDS, filename=f"{message.id}.eml", sha256=message.content_hash
        )
    except blobstore.RawUnreadable as exc:
        # Never a link to other bytes than the message's; the operators get the object's name.
        logger.error("raw copy unreadable", extra={"id": message.id, "error": str(exc)})
        raise RawUnavailable(RAW_UNAVAILABLE) from None
    return RawLinkOut(url=url, expires_in=RAW_URL_SECONDS)


def request_sync(principal: Principal, user_id: str) -> None:
    target = target_for(principal, user_id)
    account = require_account(target)
    if not account.fetch_enabled:
        raise ValidationFailed("Fetching is disabled for this mailbox", field="fetch_enabled")
    scheduling.enqueue(target.tenant_id, target.user_id, "user")


STOPPED_UNEXPECTEDLY = "The last sync stopped unexpectedly; it will be retried"


def _shown_state(state: SyncState | None) -> tuple[str, str | None]:
    """``syncing`` only while a job holds the account's lease (or, between the jobs of a long
    sync, for at most one lease period after the last one started). A ``syncing`` left behind by
    a worker that died shows as ``failed``, never as ``syncing`` forever."""
    if state is None:
        return "never", None
    now = time.time()
    if state.state != "syncing":
        return state.state, state.last_error
    if state.lease_expires is not None and int(state.lease_expires) >= now:
        return "syncing", state.last_error
    started = state.last_started_at.timestamp() if state.last_started_at is not None else 0.0
    if state.lease_expires is None and now - started < sync_jobs.LEASE_SECONDS:
        return "syncing", state.last_error  # a continuation job is on its way
    return "failed", state.last_error or STOPPED_UNEXPECTEDLY


def sync_status(principal: Principal, user_id: str) -> SyncStatusOut:
    """Sync state and per-folder progress.

    Counts include confidential mail, so a non-owner (an admin) gets none of them: ``messages``,
    ``server_messages`` and ``first_sync`` are null for anyone but the owner. (Subtracting the
    confidential ones is impossible for the server's own counts, and a partial count would
    still be a count.)
    """
    target = target_for(principal, user_id)
    account = require_account(target)
    state = dal.get_sync_state(target.tenant_id, target.user_id)
    folder_map = {"inbox": "INBOX"} if account.protocol == POP3 else account.mapped_folders()
    stored = state.folders if state is not None else {}
    owner = target.user_id == principal.user_id
    folders = []
    for crm_folder, server_folder in folder_map.items():
        meta = stored.get(server_folder, {})
        first = meta.get("first_sync")
        folders.append(
            FolderSyncOut(
                server_folder=server_folder,
                crm_folder=crm_folder,
                messages=_in_sync(account, server_folder) if owner else None,
                server_messages=int(meta["messages"]) if owner and meta.get("messages") is not None else None,
                first_sync=FolderProgressOut(total=int(first.get("total", 0)), done=int(first.get("done", 0)))
                if owner and first
                else None,
                error=meta.get("error"),
            )
        )
    shown, last_error = _shown_state(state)
    return SyncStatusOut(
        state=shown,
        account_status=account.status,
        last_started_at=state.last_started_at if state else None,
        last_success_at=state.last_success_at if state else None,
        last_error=last_error or account.last_error,
        folders=folders,
    )


def _in_sync(account: Account, server_folder: str) -> int:
    """Messages of the folder the CRM holds: for POP3, those its syncs stored (by UIDL)."""
    if account.protocol == POP3:
        seen = dal.pop_seen(account.tenant_id, account.user_id, account.host, account.username)
        return sum(1 for s in seen.values() if s.id is not None)
    return dal.count_locations(account.tenant_id, account.user_id, server_folder)


# --- changes made in the CRM -------------------------------------------------------------------

MAX_RAW_BYTES = 25 * 1024 * 1024
# Header bounds of a message written in the CRM: generous for real mail (long References of a
# long thread stay far below), small enough that the stored metadata fits a DynamoDB item.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_BLOCK_BYTES = 256 * 1024
# How long a retried POST of the same message returns the first answer.
IDEMPOTENCY_SECONDS = 24 * 3600


def _own_message(principal: Principal, id: str) -> Message:
    message = _visible_message(principal, id)
    if message.user_id != principal.user_id:
        raise Forbidden("Only the mailbox owner can change a message")
    return message


def _server_folder(account: Account, crm_folder: str, field: str) -> str:
    folder_map = account.mapped_folders()
    if crm_folder not in folder_map:
        raise ValidationFailed(f"CRM folder '{crm_folder}' is not mapped to a server folder", field=field)
    return folder_map[crm_folder]


def _require_synced(message: Message) -> None:
    if message.state != "synced":
        raise Conflict(
            f"The message is no longer on the mail server ({message.detach_reason}); only its archived copy remains"
        )


def patch_message(principal: Principal, id: str, body: MessagePatchIn) -> MessageOut:
    """Record read/unread and move as pending operations; the worker applies them in order."""
    if body.seen is None and body.folder is None and body.confidential is None:
        raise ValidationFailed("Give `seen`, `folder` and/or `confidential`", field="seen")
    message = _own_message(principal, id)
    if body.confidential is not None:
        confidentiality.set_thread_confidential(message, body.confidential)
        if body.seen is None and body.folder is None:
            fresh = dal.find_message(message.id)
            assert fresh is not None
            return to_out(fresh)
    account = _account_of(message)
    if _local_only(message, account):
        return _change_locally(message, body)
    _require_synced(message)
    account = account or require_account(Target(message.tenant_id, message.user_id))
    changes: list[Change] = []
    shown: dict[str, Any] = {"updated_at": dal.utcnow(), "last_op_error": None}
    if body.seen is not None:
        changes.append(Change("seen", seen=body.seen))
        flags = set(message.flags) | {"\\Seen"} if body.seen else set(message.flags) - {"\\Seen"}
        shown.update(seen=body.seen, flags=sorted(flags))
    if body.folder is not None:
        _server_folder(account, body.folder, "folder")
        changes.append(Change("move", folder=body.folder))
        shown.update(folder=body.folder)
    dal.record_changes(message, changes, shown)
    scheduling.enqueue(message.tenant_id, message.user_id, "push")
    fresh = dal.find_message(message.id)
    assert fresh is not None
    return to_out(fresh)


def _account_of(message: Message) -> Account | None:
    """The message's account, unless the message alone shows it is POP3 mail (one read fewer)."""
    return None if message.detach_reason == POP3 else dal.get_account(message.tenant_id, message.user_id)


def _local_only(message: Message, account: Account | None) -> bool:
    """POP3 mail, and any mail of a POP3 account: POP3 has no flags and no folders to change."""
    return message.detach_reason == POP3 or (account is not None and account.protocol == POP3)


def _pop3_folder(crm_folder: str, field: str) -> str:
    """A POP3 account's CRM folder, as ``_server_folder`` checks an IMAP account's."""
    if crm_folder not in POP3_CRM_FOLDERS:
        raise ValidationFailed(
            f"CRM folder '{crm_folder}' is not one a POP3 mailbox has ({', '.join(POP3_CRM_FOLDERS)})", field=field
        )
    return crm_folder


def _change_locally(message: Message, body: MessagePatchIn) -> MessageOut:
    """Read/unread and CRM folder changed in the CRM only (no op, nothing for the server)."""
    shown: dict[str, Any] = {"updated_at": dal.utcnow(), "last_op_error": None}
    if body.seen is not None:
        flags = set(message.flags) | {"\\Seen"} if body.seen else set(message.flags) - {"\\Seen"}
        shown.update(seen=body.seen, flags=sorted(flags))
    if body.folder is not None:
        shown.update(folder=_pop3_folder(body.folder, "folder"))
    dal.record_changes(message, [], shown)
    fresh = dal.find_message(message.id)
    assert fresh is not None
    return to_out(fresh)


def delete_message(principal: Principal, id: str) -> MessageOut:
    """Move to the mapped trash folder (a pending move); POP3 mail to the CRM's trash."""
    message = _own_message(principal, id)
    account = _account_of(message)
    if _local_only(message, account):
        return _change_locally(message, MessagePatchIn(folder="trash"))
    account = account or require_account(Target(message.tenant_id, message.user_id))
    folder_map = account.folder_map or {}
    if "trash" not in folder_map:
        raise Conflict("No trash folder is mapped: map `trash` in the folder map to delete messages")
    return patch_message(principal, id, MessagePatchIn(folder="trash"))


def _with_internet_message_id(raw: bytes, sender_domain: str | None) -> tuple[bytes, str]:
    parsed = mime.parse_message(raw)
    if parsed.internet_message_id:
        return raw, parsed.internet_message_id
    domain = sender_domain or "mailsync.invalid"
    new_id = f"{uuid.uuid4().hex}@{domain}"
    # Prepended, so the rest of the message stays byte for byte as written.
    return f"Message-ID: <{new_id}>\r\n".encode() + raw, new_id


def header_size_error(raw: bytes) -> str | None:
    """Why the header block of ``raw`` is too large to store, or None.

    A header is counted with its folded continuation lines. Bounded so that no single field
    (a 450 KB References) or header block can make a message item exceed DynamoDB's 400 KB.
    """
    end = len(raw)
    for separator in (b"\r\n\r\n", b"\n\n"):
        found = raw.find(separator)
        if found != -1:
            end = min(end, found)
    # Past this much, either a header is already too large or the whole block is: the scan is bounded.
    scanned = raw[: min(end, MAX_HEADER_BLOCK_BYTES + MAX_HEADER_BYTES + 1)]
    name, size = None, 0
    for line in scanned.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and name is not None:
            size += len(line)
        else:
            name, size = line.split(b":", 1)[0].strip()[:80], len(line)
        if size > MAX_HEADER_BYTES:
            shown = (name or b"?").decode("ascii", errors="replace")
            return f"The {shown} header is larger than {MAX_HEADER_BYTES // 1024} KB"
    if end > MAX_HEADER_BLOCK_BYTES:
        return f"The message's headers are larger than {MAX_HEADER_BLOCK_BYTES // 1024} KB"
    return None


def send_message(
    principal: Principal,
    user_id: str,
    body: MessageSendIn,
    *,
    idempotency_key: str | None = None,
    lambda_context: Any = None,
) -> MessageOut:
    """Store a message written in the CRM and queue its append to the mapped server folder.

    Only the owner writes into a mailbox (an admin reading a colleague's mail must not make
    mail appear in it). Retries are idempotent: keyed on ``idempotency_key`` (the
    ``Idempotency-Key`` header), else on the message's Message-ID, else on the folder and the
    raw bytes, scoped by tenant and user; a retry returns the first answer and stores nothing new.
    """
    target = target_for(principal, user_id)
    if target.user_id != principal.user_id:
        raise Forbidden("Only the mailbox owner can place messages in a mailbox")
    account = require_account(target)
    # A POP3 account's message stays in the CRM: POP3 cannot place mail on the server.
    if account.protocol == POP3:
        server_folder = ""
        _pop3_folder(body.folder, "folder")
    else:
        server_folder = _server_folder(account, body.folder, "folder")
    try:
        raw = base64.b64decode(body.raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed("raw must be the message in base64", field="raw") from None
    if not raw.strip():
        raise ValidationFailed("raw is empty", field="raw")
    if len(raw) > MAX_RAW_BYTES:
        raise ValidationFailed(f"raw is larger than {MAX_RAW_BYTES // (1024 * 1024)} MB", field="raw")
    too_large = header_size_error(raw)
    if too_large:
        raise ValidationFailed(too_large, field="raw")
    first = mime.parse_message(raw)
    payload = hashlib.sha256(body.folder.encode() + b"\0" + raw).hexdigest()
    if idempotency_key:
        key, keyed_by = idempotency_key, "header"
    elif first.internet_message_id:
        # "message_id" names the RFC 5322 Message-ID here: a stored idempotency record's key, kept as is.
        key, keyed_by = first.internet_message_id, "message_id"
    else:
        # No key and no Message-ID: a retry is recognised by its bytes (each store would
        # otherwise invent a new Message-ID, and a retried POST would store a second message).
        key, keyed_by = payload, "content"
    request = {
        "tenant_id": target.tenant_id,
        "user_id": target.user_id,
        "key": key,
        "keyed_by": keyed_by,
        "payload": payload,
    }

    def store(request: dict[str, Any]) -> dict[str, Any]:
        out = _store_outgoing(target, account, body.folder, server_folder, raw, first)
        return out.model_dump(mode="json", by_alias=True)

    config = IdempotencyConfig(
        event_key_jmespath="[tenant_id, user_id, keyed_by, key]",
        payload_validation_jmespath="payload",
        expires_after_seconds=IDEMPOTENCY_SECONDS,
        lambda_context=lambda_context,
    )
    persistence = dal.idempotency_store()
    once = idempotent_function(
        store, data_keyword_argument="request", persistence_store=persistence, config=config, key_prefix="send_message"
    )
    field = "idempotency-key" if idempotency_key else "raw"
    try:
        result = once(request=request)
    except IdempotencyValidationError:
        what = "This Idempotency-Key" if idempotency_key else "A message with this Message-ID"
        raise Conflict(f"{what} was already used for a different message", field=field) from None
    except IdempotencyAlreadyInProgressError:
        raise Conflict("The same message is being stored right now; retry in a moment", field=field) from None
    return MessageOut.model_validate(result)


def _store_outgoing(
    target: Target,
    account: Account,
    folder: str,
    server_folder: str,
    raw: bytes,
    first: mime.ParsedMessage,
) -> MessageOut:
    sender_domain = first.from_[0].email.rpartition("@")[2] if first.from_ else None
    raw, internet_message_id = _with_internet_message_id(raw, sender_domain or None)
    if account.protocol == POP3:
        return _store_local(account, folder, raw, internet_message_id)
    parsed = mime.parse_message(raw)
    s3_key, sha = blobstore.put_raw(target.tenant_id, target.user_id, raw)
    metadata = {k: tuple(v) if isinstance(v, list) else v for k, v in metadata_fields(parsed, sha).items()}
    message = Message(
        id=base64.b32encode(uuid.uuid4().bytes[:15]).decode().lower(),
        tenant_id=target.tenant_id,
        user_id=target.user_id,
        folder=folder,
        server_folder=server_folder,
        flags=("\\Seen",),
        seen=True,
        internal_date=parsed.date or dal.utcnow(),
        size=len(raw),
        match_key=match_key(internet_message_id, sha),
        s3_key=s3_key,
        content_hash=sha,
        state="synced",
        pending_ops=1,  # its append
        **metadata,
    )
    [message] = confidentiality.classify_new(account, [message])
    stored = dal.create_outgoing(message)
    scheduling.enqueue(target.tenant_id, target.user_id, "push")
    return to_out(stored)


def _store_local(account: Account, folder: str, raw: bytes, internet_message_id: str) -> MessageOut:
    """A message written in the CRM of a POP3 account: stored in the CRM only (``sync_state:
    local``), through the same path as fetched mail; nothing is queued."""
    parsed = mime.parse_message(raw)
    stored = inbound.store_detached(
        account,
        raw,
        id=base64.b32encode(uuid.uuid4().bytes[:15]).decode().lower(),
        match_key=match_key(internet_message_id, mime.match_hash(raw)),
        received_at=parsed.date or dal.utcnow(),
        detach_reason=POP3,
        crm_folder=folder,
        seen=True,
    )
    found = dal.find_message(stored.id)
    assert found is not None
    if stored.created is not None:
        events.publish([events.message_event(events.MESSAGE_RECEIVED, stored.created)])
    return to_out(found)


def contact_messages(principal: Principal, address: str, limit: int, cursor: str | None) -> DossierPageOut:
    """Every message of the tenant involving ``address`` (From, To, Cc) that the caller may see."""
    address = address.strip().lower()
    ids, next_cursor = dal.contact_messages(principal.tenant_id, address, principal.user_id, limit, cursor)
    found = dal.find_messages(ids)
    out = []
    for id_ in ids:
        message = found.get(id_)
        # The index is a pointer; visibility is decided on the message itself, every time.
        if visible_to(principal, message):
            assert message is not None
            out.append(DossierMessageOut(**to_out(message).model_dump(by_alias=True), owner=message.user_id))
    return DossierPageOut(messages=out, next_cursor=next_cursor)
