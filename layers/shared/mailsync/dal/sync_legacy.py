"""LEGACY: the item-level functions the sync core (``sync/engine.py``, ``sync/pusher.py``,
``services/sync_jobs.py``) still uses, re-exported from ``mailsync.dal`` under their old names.

They hand out PynamoDB items that callers mutate and pass back. Nothing else may use them: new
code uses the domain functions of ``mailsync.dal``. This module goes once the sync core is
converted (see the domain functions marked "sync core" in ``mailsync.dal``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from pynamodb.exceptions import DoesNotExist, UpdateError

from mailsync import privacy
from mailsync.dal import _keys as keys
from mailsync.dal._items import (
    acquire_lease,
    conditional_failure,
    location_item,
    message_item,
    release_lease,
    set_actions,
    state_key,
    transaction,
    window_item,
    write_new_messages,
)
from mailsync.dal._keys import account_pk, folder_gsi_pk, iso, message_pk
from mailsync.dal._models import (
    AccountModel,
    LocationModel,
    MessageModel,
    OpModel,
    SyncStateModel,
    WindowModel,
    utcnow,
)
from mailsync.dal._store import mark_threads, thread_marks
from mailsync.domain import ThreadMark

__all__ = [
    "AccountModel",
    "LocationModel",
    "MessageModel",
    "OpModel",
    "SyncStateModel",
    "WindowModel",
    "account_pk",
    "acquire_lease",
    "aged_out",
    "batch_get_messages",
    "classify_new_items",
    "complete_op",
    "count_op_attempt",
    "detach_message",
    "drop_location",
    "folder_gsi_pk",
    "get_locations",
    "get_message",
    "iso",
    "location_item",
    "locations",
    "message_item",
    "message_pk",
    "pending_ops",
    "release_lease",
    "relink_message",
    "save_sync_progress",
    "update_flags",
    "window_item",
    "write_new_messages",
]


# --- messages ----------------------------------------------------------------------------------


def get_message(message_id: str) -> MessageModel | None:
    try:
        return MessageModel.get(message_pk(message_id), keys.MESSAGE_SK)
    except DoesNotExist:
        return None


def batch_get_messages(ids: Iterable[str]) -> dict[str, MessageModel]:
    wanted = [(message_pk(i), keys.MESSAGE_SK) for i in set(ids)]
    return {m.id: m for m in MessageModel.batch_get(wanted)} if wanted else {}


def classify_new_items(account: Any, messages: list[MessageModel], rules: privacy.TenantRules) -> None:
    """Set ``confidential`` on new message items before they are written, and mark the threads
    they make confidential (``privacy.classify_new`` with the reads and writes around it)."""
    if not messages:
        return
    threads: dict[str, ThreadMark] = thread_marks(account.tenant_id, account.user_id, {m.thread_id for m in messages})
    result = privacy.classify_new(account, messages, rules, threads)
    for message in messages:
        why = result.reasons[message.id]
        message.confidential, message.confidential_reasons = bool(why), why
    mark_threads(account.tenant_id, account.user_id, result.threads_to_mark, confidential=True, by_owner=False)


# --- locations ---------------------------------------------------------------------------------


def locations(tenant_id: str, user_id: str, server_folder: str) -> Iterator[LocationModel]:
    yield from LocationModel.query(keys.location_pk(tenant_id, user_id, server_folder))


def get_locations(
    tenant_id: str, user_id: str, server_folder: str, wanted: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], LocationModel]:
    """Locations for (uidvalidity, uid) pairs; missing ones are absent."""
    pk = keys.location_pk(tenant_id, user_id, server_folder)
    item_keys = [(pk, keys.location_sk(v, u)) for v, u in set(wanted)]
    if not item_keys:
        return {}
    return {(loc.uidvalidity, loc.uid): loc for loc in LocationModel.batch_get(item_keys)}


def aged_out(tenant_id: str, user_id: str, server_folder: str, cutoff: datetime) -> Iterator[WindowModel]:
    yield from WindowModel.query(keys.window_pk(tenant_id, user_id, server_folder), WindowModel.sk < iso(cutoff))


def relink_message(
    message: MessageModel,
    new_location: LocationModel,
    new_window: WindowModel,
    fields: dict[str, Any],
    old: tuple[LocationModel, WindowModel | None] | None,
) -> None:
    """Point a message at its new server copy, atomically (a move must never look like a removal)."""
    with transaction() as tx:
        tx.save(new_location)
        tx.save(new_window)
        tx.update(message, actions=set_actions(MessageModel, fields))
        if old is not None:
            old_location, old_window = old
            tx.delete(old_location)
            if old_window is not None:
                tx.delete(old_window)


def detach_message(
    message: MessageModel, location: LocationModel, window: WindowModel | None, fields: dict[str, Any]
) -> None:
    """Stop syncing a message but keep it (atomic with removing its location)."""
    with transaction() as tx:
        tx.update(message, actions=set_actions(MessageModel, fields))
        tx.delete(location)
        if window is not None:
            tx.delete(window)


def drop_location(location: LocationModel, window: WindowModel | None) -> None:
    with transaction() as tx:
        tx.delete(location)
        if window is not None:
            tx.delete(window)


def update_flags(
    message: MessageModel, location: LocationModel, flags: list[str], seen: bool, agreed: list[str] | None = None
) -> None:
    """Flags shown on the message, and the flags last agreed with the server on its location
    (they differ only while a CRM change waits)."""
    now = utcnow()
    with transaction() as tx:
        tx.update(
            message,
            actions=[MessageModel.flags.set(flags), MessageModel.seen.set(seen), MessageModel.updated_at.set(now)],
        )
        tx.update(location, actions=[LocationModel.flags.set(flags if agreed is None else agreed)])


# --- sync state and lease ------------------------------------------------------------------------


def save_sync_progress(state: SyncStateModel, owner: str, fields: dict[str, Any]) -> None:
    """Checkpoint while holding the lease (and extend nothing: a lost lease stops the writer)."""
    state.update(actions=set_actions(SyncStateModel, fields), condition=SyncStateModel.lease_owner == owner)


# --- pending CRM operations ----------------------------------------------------------------------


def pending_ops(tenant_id: str, user_id: str) -> list[OpModel]:
    return list(OpModel.query(keys.ops_pk(tenant_id, user_id), consistent_read=True))


def complete_op(op: OpModel, message: MessageModel | None, fields: dict[str, Any] | None = None) -> None:
    """The op reached the server (or was dropped): remove it and update the message in one go."""
    with transaction() as tx:
        tx.delete(op, condition=OpModel.pk.exists())
        tx.update(state_key(op.tenant_id, op.user_id), actions=[SyncStateModel.ops_pending.add(-1)])
        if message is not None:
            actions = [*set_actions(MessageModel, fields or {}), MessageModel.pending_ops.add(-1)]
            tx.update(message, actions=actions, condition=MessageModel.pk.exists())


def count_op_attempt(op: OpModel) -> int:
    """One more transient failure of ``op``; returns the new count (0 if the op is gone)."""
    try:
        op.update(actions=[OpModel.attempts.add(1)], condition=OpModel.pk.exists())
    except UpdateError as exc:
        if conditional_failure(exc):
            return 0
        raise
    return int(op.attempts or 0)
