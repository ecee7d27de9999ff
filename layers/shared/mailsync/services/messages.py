"""Reading messages and sync status; asking for a sync now."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from mailsync import blobstore, dal, mime
from mailsync.errors import Conflict, Forbidden, NotFound, ValidationFailed
from mailsync.identity import Principal
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
from mailsync.services import confidentiality, scheduling
from mailsync.services.accounts import Target, require_account, target_for
from mailsync.sync import planner
from mailsync.sync.metadata import metadata_fields

RAW_URL_SECONDS = 300


def to_out(message: dal.MessageModel) -> MessageOut:
    def addresses(values: Any) -> list[dict[str, Any]]:
        return [{"name": a.name, "email": a.email} for a in values or []]

    return MessageOut.model_validate(
        {
            "id": message.id,
            "user_id": message.user_id,
            "folder": message.folder,
            "server_folder": message.server_folder,
            "uidvalidity": int(message.uidvalidity) if message.uidvalidity is not None else None,
            "uid": int(message.uid) if message.uid is not None else None,
            "flags": list(message.flags or []),
            "seen": message.seen,
            "subject": message.subject,
            "from": addresses(message.from_),
            "to": addresses(message.to),
            "cc": addresses(message.cc),
            "date": message.date,
            "internal_date": message.internal_date,
            "size": int(message.size),
            "message_id": message.message_id,
            "in_reply_to": message.in_reply_to,
            "references": list(message.references or []),
            "thread_id": message.thread_id,
            "snippet": message.snippet or "",
            "attachments": [
                {"filename": a.filename, "content_type": a.content_type, "size": int(a.size)}
                for a in message.attachments or []
            ],
            "participants": list(message.participants or []),
            "state": message.state,
            "detach_reason": message.detach_reason,
            "sync_state": "pending" if int(message.pending_ops or 0) > 0 else "synced",
            "confidential": bool(message.confidential),
            "last_op_error": message.last_op_error,
        }
    )


def _encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None, expected_pk: tuple[str, str]) -> dict[str, Any] | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValidationFailed("cursor is not a cursor this API returned", field="cursor") from None
    attribute, value = expected_pk
    if not isinstance(key, dict) or key.get(attribute, {}).get("S") != value:
        # A cursor from another query (or user) would silently page through the wrong list.
        raise ValidationFailed("cursor does not belong to this listing", field="cursor")
    return key


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
    if folder is not None:
        expected = ("gsi2pk", dal.folder_gsi_pk(target.tenant_id, target.user_id, folder))
    else:
        expected = ("gsi1pk", dal.account_pk(target.tenant_id, target.user_id))
    start = _decode_cursor(cursor, expected)
    items, last = dal.list_messages(
        target.tenant_id,
        target.user_id,
        folder=folder,
        since=since,
        seen=seen,
        limit=limit,
        start_key=start,
        include_confidential=target.user_id == principal.user_id,
    )
    return MessagePageOut(messages=[to_out(m) for m in items], next_cursor=_encode_cursor(last))


def visible_to(principal: Principal, message: dal.MessageModel | None) -> bool:
    """The owner sees their messages; colleagues of the tenant (admins included) see the
    non-confidential ones (they are in the dossiers); nobody sees another tenant's."""
    if message is None or message.tenant_id != principal.tenant_id:
        return False
    return message.user_id == principal.user_id or not message.confidential


def _visible_message(principal: Principal, message_id: str) -> dal.MessageModel:
    message = dal.get_message(message_id)
    if not visible_to(principal, message):
        # A confidential message, or another tenant's, is indistinguishable from a missing one.
        raise NotFound(f"Message '{message_id}' not found")
    assert message is not None
    return message


def get_message(principal: Principal, message_id: str) -> MessageOut:
    return to_out(_visible_message(principal, message_id))


def raw_link(principal: Principal, message_id: str) -> RawLinkOut:
    message = _visible_message(principal, message_id)
    url = blobstore.presigned_url(message.s3_key, RAW_URL_SECONDS, filename=f"{message.id}.eml")
    return RawLinkOut(url=url, expires_in=RAW_URL_SECONDS)


def request_sync(principal: Principal, user_id: str) -> None:
    target = target_for(principal, user_id)
    account = require_account(target)
    if not account.fetch_enabled:
        raise ValidationFailed("Fetching is disabled for this mailbox", field="fetch_enabled")
    scheduling.enqueue(target.tenant_id, target.user_id, "user")


def sync_status(principal: Principal, user_id: str) -> SyncStatusOut:
    target = target_for(principal, user_id)
    account = require_account(target)
    state = dal.get_sync_state(target.tenant_id, target.user_id)
    folder_map = account.mapped_folders()
    stored = state.folders.as_dict() if state is not None and state.folders is not None else {}
    # Counts include confidential mail: only the owner sees them.
    owner = target.user_id == principal.user_id
    folders = []
    for crm_folder, server_folder in folder_map.items():
        meta = stored.get(server_folder, {})
        first = meta.get("first_sync")
        folders.append(
            FolderSyncOut(
                server_folder=server_folder,
                crm_folder=crm_folder,
                messages=dal.count_locations(target.tenant_id, target.user_id, server_folder) if owner else None,
                server_messages=int(meta["messages"]) if meta.get("messages") is not None else None,
                first_sync=FolderProgressOut(total=int(first.get("total", 0)), done=int(first.get("done", 0)))
                if first
                else None,
                error=meta.get("error"),
            )
        )
    return SyncStatusOut(
        state=state.state if state is not None else "never",
        account_status=account.status,
        last_started_at=state.last_started_at if state else None,
        last_success_at=state.last_success_at if state else None,
        last_error=(state.last_error if state else None) or account.last_error,
        folders=folders,
    )


# --- changes made in the CRM -------------------------------------------------------------------

MAX_RAW_BYTES = 25 * 1024 * 1024


def _own_message(principal: Principal, message_id: str) -> dal.MessageModel:
    message = _visible_message(principal, message_id)
    if message.user_id != principal.user_id:
        raise Forbidden("Only the mailbox owner can change a message")
    return message


def _server_folder(account: dal.AccountModel, crm_folder: str, field: str) -> str:
    folder_map = account.mapped_folders()
    if crm_folder not in folder_map:
        raise ValidationFailed(f"CRM folder '{crm_folder}' is not mapped to a server folder", field=field)
    return folder_map[crm_folder]


def _require_synced(message: dal.MessageModel) -> None:
    if message.state != "synced":
        raise Conflict(
            f"The message is no longer on the mail server ({message.detach_reason}); only its archived copy remains"
        )


def patch_message(principal: Principal, message_id: str, body: MessagePatchIn) -> MessageOut:
    """Record read/unread and move as pending operations; the worker applies them in order."""
    if body.seen is None and body.folder is None and body.confidential is None:
        raise ValidationFailed("Give `seen`, `folder` and/or `confidential`", field="seen")
    message = _own_message(principal, message_id)
    if body.confidential is not None:
        confidentiality.set_thread_confidential(message, body.confidential)
        if body.seen is None and body.folder is None:
            fresh = dal.get_message(message.id)
            assert fresh is not None
            return to_out(fresh)
    _require_synced(message)
    account = require_account(Target(message.tenant_id, message.user_id))
    ops: list[dal.OpModel] = []
    fields: dict[str, Any] = {"updated_at": dal.utcnow(), "last_op_error": None}
    if body.seen is not None:
        ops.append(dal.new_op(message.tenant_id, message.user_id, "seen", message.id, seen=body.seen))
        flags = set(message.flags or []) | {"\\Seen"} if body.seen else set(message.flags or []) - {"\\Seen"}
        fields.update(seen=body.seen, flags=sorted(flags))
    if body.folder is not None:
        _server_folder(account, body.folder, "folder")
        ops.append(dal.new_op(message.tenant_id, message.user_id, "move", message.id, folder=body.folder))
        fields.update(folder=body.folder, gsi2pk=dal.folder_gsi_pk(message.tenant_id, message.user_id, body.folder))
    dal.record_ops(message, ops, fields)
    scheduling.enqueue(message.tenant_id, message.user_id, "push")
    fresh = dal.get_message(message.id)
    assert fresh is not None
    return to_out(fresh)


def delete_message(principal: Principal, message_id: str) -> MessageOut:
    """Move to the mapped trash folder (a pending move)."""
    message = _own_message(principal, message_id)
    account = require_account(Target(message.tenant_id, message.user_id))
    folder_map = account.mapped_folders() if account.folder_map is not None else {}
    if "trash" not in folder_map:
        raise Conflict("No trash folder is mapped: map `trash` in the folder map to delete messages")
    return patch_message(principal, message_id, MessagePatchIn(folder="trash"))


def _with_message_id(raw: bytes, sender_domain: str | None) -> tuple[bytes, str]:
    parsed = mime.parse_message(raw)
    if parsed.message_id:
        return raw, parsed.message_id
    domain = sender_domain or "mailsync.invalid"
    new_id = f"{uuid.uuid4().hex}@{domain}"
    # Prepended, so the rest of the message stays byte for byte as written.
    return f"Message-ID: <{new_id}>\r\n".encode() + raw, new_id


def send_message(principal: Principal, user_id: str, body: MessageSendIn) -> MessageOut:
    """Store a message written in the CRM and queue its append to the mapped server folder."""
    target = target_for(principal, user_id)
    account = require_account(target)
    server_folder = _server_folder(account, body.folder, "folder")
    try:
        raw = base64.b64decode(body.raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed("raw must be the message in base64", field="raw") from None
    if not raw.strip():
        raise ValidationFailed("raw is empty", field="raw")
    if len(raw) > MAX_RAW_BYTES:
        raise ValidationFailed(f"raw is larger than {MAX_RAW_BYTES // (1024 * 1024)} MB", field="raw")
    first = mime.parse_message(raw)
    sender_domain = first.from_[0].email.rpartition("@")[2] if first.from_ else None
    raw, internet_id = _with_message_id(raw, sender_domain or None)
    parsed = mime.parse_message(raw)
    s3_key, sha = blobstore.put_raw(target.tenant_id, target.user_id, raw)
    message_id = base64.b32encode(uuid.uuid4().bytes[:15]).decode().lower()
    when = parsed.date or dal.utcnow()
    sort_key = f"{dal.iso(when)}#{message_id}"
    message = dal.MessageModel(
        dal.message_pk(message_id),
        "M",
        gsi1pk=dal.account_pk(target.tenant_id, target.user_id),
        gsi1sk=sort_key,
        gsi2pk=dal.folder_gsi_pk(target.tenant_id, target.user_id, body.folder),
        gsi2sk=sort_key,
        id=message_id,
        tenant_id=target.tenant_id,
        user_id=target.user_id,
        folder=body.folder,
        server_folder=server_folder,
        flags=["\\Seen"],
        seen=True,
        internal_date=when,
        size=len(raw),
        match_key=planner.match_key(internet_id, sha),
        s3_key=s3_key,
        content_hash=sha,
        state="synced",
        pending_ops=1,
        **metadata_fields(parsed, sha),
    )
    op = dal.new_op(target.tenant_id, target.user_id, "append", message_id)
    confidentiality.classify_new(account, [message])
    dal.create_outgoing(message, op)
    dal.write_message_indexes([message])
    scheduling.enqueue(target.tenant_id, target.user_id, "push")
    return to_out(message)


def contact_messages(principal: Principal, address: str, limit: int, cursor: str | None) -> DossierPageOut:
    """Every message of the tenant involving ``address`` (From, To, Cc) that the caller may see."""
    address = address.strip().lower()
    start = _decode_cursor(cursor, ("pk", dal.contact_pk(principal.tenant_id, address)))
    entries, last = dal.contact_messages(principal.tenant_id, address, principal.user_id, limit, start)
    found = dal.batch_get_messages(e.id for e in entries)
    out = []
    for entry in entries:
        message = found.get(entry.id)
        # The index is a pointer; visibility is decided on the message itself, every time.
        if visible_to(principal, message):
            assert message is not None
            out.append(DossierMessageOut(**to_out(message).model_dump(by_alias=True), owner=message.user_id))
    return DossierPageOut(messages=out, next_cursor=_encode_cursor(last))
