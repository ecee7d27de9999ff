"""Reading messages and sync status; asking for a sync now."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from mailsync import blobstore, dal
from mailsync.errors import NotFound, ValidationFailed
from mailsync.identity import Principal
from mailsync.schemas import (
    FolderProgressOut,
    FolderSyncOut,
    MessageOut,
    MessagePageOut,
    RawLinkOut,
    SyncStatusOut,
)
from mailsync.services import scheduling
from mailsync.services.accounts import require_account, target_for

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
        target.tenant_id, target.user_id, folder=folder, since=since, seen=seen, limit=limit, start_key=start
    )
    return MessagePageOut(messages=[to_out(m) for m in items], next_cursor=_encode_cursor(last))


def _visible_message(principal: Principal, message_id: str) -> dal.MessageModel:
    message = dal.get_message(message_id)
    visible = (
        message is not None
        and message.tenant_id == principal.tenant_id
        and (principal.is_admin or message.user_id == principal.user_id)
    )
    if not visible:
        # Another user's or tenant's message is indistinguishable from a missing one.
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
    folder_map = account.folder_map.as_dict() if account.folder_map is not None else {"inbox": "INBOX"}
    stored = state.folders.as_dict() if state is not None and state.folders is not None else {}
    folders = []
    for crm_folder, server_folder in folder_map.items():
        meta = stored.get(server_folder, {})
        first = meta.get("first_sync")
        folders.append(
            FolderSyncOut(
                server_folder=server_folder,
                crm_folder=crm_folder,
                messages=dal.count_locations(target.tenant_id, target.user_id, server_folder),
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
