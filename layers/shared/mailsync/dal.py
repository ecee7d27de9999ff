"""All DynamoDB access: PynamoDB models and the reads and writes the services need.

Two tables. The accounts table holds one item per CRM user (settings, folder map, status,
due time). The messages table is a single-table design keyed by ``pk``/``sk``:

==========================  =======================================  ============================
item                        pk                                       sk
==========================  =======================================  ============================
message                     ``M#{id}``                               ``M``
location (synced copy)      ``A#{t}#{u}#L#{server folder}``          ``{uidvalidity}#{uid}``
window (for aging out)      ``A#{t}#{u}#W#{server folder}``          ``{internal date}#{uidvalidity}#{uid}``
match key (Message-ID/hash) ``A#{t}#{u}#K#{key}``                    ``{id}``
sync state + lease          ``A#{t}#{u}``                            ``STATE``
mail-host slot              ``H#{host}``                             ``{slot}``
==========================  =======================================  ============================

Messages are listed newest first through ``gsi1`` (account) and ``gsi2`` (account + CRM folder).
Table names come from settings and are bound at first use (``bind_tables``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from pynamodb.attributes import (
    BinaryAttribute,
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.exceptions import DoesNotExist, PutError, TransactWriteError, UpdateError
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from mailsync.config import Settings, get_settings
from mailsync.errors import NotFound


class _Timeouts:
    # Every DynamoDB call of ours is bounded: a slow request must not eat a Lambda's time.
    connect_timeout_seconds = 5
    read_timeout_seconds = 20


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    """Sortable UTC timestamp used inside sort keys."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------
# Accounts table
# ---------------------------------------------------------------------------------------------


class DueIndex(GlobalSecondaryIndex):
    """Sparse: only accounts that should be synced carry ``due_shard``."""

    class Meta:
        index_name = "due-index"
        projection = KeysOnlyProjection()

    due_shard = NumberAttribute(hash_key=True)
    next_sync_at = NumberAttribute(range_key=True)


class AccountModel(Model):
    """One CRM user's mailbox: connection settings, folder map, status, due time."""

    class Meta(_Timeouts):
        table_name = "mailsync-accounts"

    tenant_id = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute(range_key=True)
    host = UnicodeAttribute()
    port = NumberAttribute()
    username = UnicodeAttribute()
    password_ciphertext = BinaryAttribute(null=True, legacy_encoding=False)
    security = UnicodeAttribute()
    protocol = UnicodeAttribute(default="imap")
    fetch_enabled = BooleanAttribute(default=True)
    keep_copy = BooleanAttribute(default=True)
    incoming_confidential = BooleanAttribute(default=False)
    outgoing_confidential = BooleanAttribute(default=False)
    sync_window_days = NumberAttribute(default=30)
    status = UnicodeAttribute(default="pending")
    last_error = UnicodeAttribute(null=True)
    # Bumped whenever connection settings change: after auth_failed the sync engine logs in
    # again only once this moves.
    settings_version = NumberAttribute(default=1)
    folder_map = MapAttribute(null=True)
    folder_map_updated_at = UTCDateTimeAttribute(null=True)
    due_shard = NumberAttribute(null=True)
    next_sync_at = NumberAttribute(null=True)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)
    updated_at = UTCDateTimeAttribute(default=utcnow)

    due = DueIndex()

    def mapped_folders(self) -> dict[str, str]:
        """CRM folder -> server folder; before a map is saved, INBOX alone is synced."""
        return dict(self.folder_map.as_dict()) if self.folder_map is not None else {"inbox": "INBOX"}


TENANT_SETTINGS_USER = "#tenant"  # user ids cannot contain "#": no account can collide


class TenantSettingsModel(Model):
    """Tenant-wide privacy settings, stored beside the tenant's accounts."""

    class Meta(_Timeouts):
        table_name = "mailsync-accounts"

    tenant_id = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute(range_key=True, default=TENANT_SETTINGS_USER)
    confidential_keywords = ListAttribute(of=UnicodeAttribute, null=True)
    confidential_contacts = ListAttribute(of=UnicodeAttribute, null=True)
    updated_at = UTCDateTimeAttribute(default=utcnow)


# ---------------------------------------------------------------------------------------------
# Messages table
# ---------------------------------------------------------------------------------------------


class AddressMap(MapAttribute):
    name = UnicodeAttribute(null=True)
    email = UnicodeAttribute()


class AttachmentMap(MapAttribute):
    filename = UnicodeAttribute(null=True)
    content_type = UnicodeAttribute()
    size = NumberAttribute()


class AccountIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "gsi1"
        projection = AllProjection()

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class FolderIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "gsi2"
        projection = AllProjection()

    gsi2pk = UnicodeAttribute(hash_key=True)
    gsi2sk = UnicodeAttribute(range_key=True)


class _Item(Model):
    class Meta(_Timeouts):
        table_name = "mailsync-messages"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)


class MessageModel(_Item):
    """A message as the CRM knows it; it outlives its copy on the server (``state: detached``)."""

    gsi1pk = UnicodeAttribute()
    gsi1sk = UnicodeAttribute()
    gsi2pk = UnicodeAttribute()
    gsi2sk = UnicodeAttribute()
    by_account = AccountIndex()
    by_folder = FolderIndex()

    id = UnicodeAttribute()
    tenant_id = UnicodeAttribute()
    user_id = UnicodeAttribute()
    folder = UnicodeAttribute()
    server_folder = UnicodeAttribute()
    uidvalidity = NumberAttribute(null=True)
    uid = NumberAttribute(null=True)
    flags = ListAttribute(of=UnicodeAttribute, default=list)
    seen = BooleanAttribute(default=False)
    subject = UnicodeAttribute(null=True)
    from_ = ListAttribute(of=AddressMap, attr_name="from", default=list)
    to = ListAttribute(of=AddressMap, default=list)
    cc = ListAttribute(of=AddressMap, default=list)
    bcc = ListAttribute(of=AddressMap, default=list)
    reply_to = ListAttribute(of=AddressMap, default=list)
    date = UTCDateTimeAttribute(null=True)
    internal_date = UTCDateTimeAttribute()
    size = NumberAttribute()
    message_id = UnicodeAttribute(null=True)
    in_reply_to = UnicodeAttribute(null=True)
    references = ListAttribute(of=UnicodeAttribute, default=list)
    thread_id = UnicodeAttribute()
    snippet = UnicodeAttribute(default="")
    attachments = ListAttribute(of=AttachmentMap, default=list)
    participants = ListAttribute(of=UnicodeAttribute, default=list)
    parse_errors = ListAttribute(of=UnicodeAttribute, default=list)
    # Some header fields were cut to keep the item within DynamoDB's limits (the raw copy is whole).
    metadata_truncated = BooleanAttribute(default=False)
    # Over the message size cap: only the headers were fetched and stored (raw copy = headers).
    too_large = BooleanAttribute(default=False)
    match_key = UnicodeAttribute()
    s3_key = UnicodeAttribute()
    content_hash = UnicodeAttribute()
    state = UnicodeAttribute(default="synced")
    detach_reason = UnicodeAttribute(null=True)
    detached_at = UTCDateTimeAttribute(null=True)
    # CRM changes not yet on the server; while > 0 the message shows the CRM's wish (seen,
    # folder) and the pull keeps it rather than flipping it back.
    pending_ops = NumberAttribute(default=0)
    last_op_error = UnicodeAttribute(null=True)
    # Only the owner may see a confidential message (see mailsync.privacy).
    confidential = BooleanAttribute(default=False)
    confidential_reasons = ListAttribute(of=UnicodeAttribute, default=list)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)
    updated_at = UTCDateTimeAttribute(default=utcnow)

    def dossier_addresses(self) -> list[str]:
        """Addresses whose dossier this message belongs to: From, To and Cc."""
        seen: dict[str, None] = {}
        for group in (self.from_, self.to, self.cc):
            for address in group or []:
                if address.email:
                    seen.setdefault(address.email.lower(), None)
        return list(seen)


class ThreadModel(_Item):
    """Per owner and thread: whether it is confidential, and whether the owner decided so."""

    confidential = BooleanAttribute(default=False)
    by_owner = BooleanAttribute(default=False)
    updated_at = UTCDateTimeAttribute(default=utcnow)


class ThreadMemberModel(_Item):
    id = UnicodeAttribute()


class ContactIndexModel(_Item):
    """The dossier index: one item per (tenant, address, message), newest first by sk."""

    id = UnicodeAttribute()
    user_id = UnicodeAttribute()
    confidential = BooleanAttribute(default=False)


class LocationModel(_Item):
    """Where a synced message lives on the server now, with the flags last agreed."""

    id = UnicodeAttribute()
    uidvalidity = NumberAttribute()
    uid = NumberAttribute()
    flags = ListAttribute(of=UnicodeAttribute, default=list)
    internal_date = UTCDateTimeAttribute()
    match_key = UnicodeAttribute()


class WindowModel(_Item):
    """A synced message by INTERNALDATE, so aging out reads only what ages out."""

    id = UnicodeAttribute()
    loc_sk = UnicodeAttribute()


class MatchKeyModel(_Item):
    """Message-ID (or content hash) -> CRM ids, to recognise a moved message."""

    id = UnicodeAttribute()


class SyncStateModel(_Item):
    """Per-account sync state, the per-account lease, and per-folder checkpoints."""

    lease_owner = UnicodeAttribute(null=True)
    lease_expires = NumberAttribute(null=True)
    state = UnicodeAttribute(default="idle")
    last_started_at = UTCDateTimeAttribute(null=True)
    last_success_at = UTCDateTimeAttribute(null=True)
    last_error = UnicodeAttribute(null=True)
    failures = NumberAttribute(default=0)
    last_sweep_at = NumberAttribute(null=True)
    # Set once any message of the account was detached: only then can an arrival be a revival,
    # which costs a lookup per arrival (skipped for the common first sync of a fresh account).
    has_detached = BooleanAttribute(default=False)
    op_seq = NumberAttribute(default=0)
    # Kept in the same transactions as the op items, so a sync with nothing to push does not
    # even query for ops (the lease write returns this item).
    ops_pending = NumberAttribute(default=0)
    # The mailbox (protocol, host, user name) the pending ops were recorded for, kept when the
    # mail settings are deleted: a re-PUT of the same mailbox applies them, another fails them.
    ops_server = UnicodeAttribute(null=True)
    folders = MapAttribute(default=dict)


class OpModel(_Item):
    """A CRM change waiting to reach the server, in order per account (sk = sequence number)."""

    seq = NumberAttribute()
    tenant_id = UnicodeAttribute()
    user_id = UnicodeAttribute()
    kind = UnicodeAttribute()  # seen | move | append
    message_id = UnicodeAttribute()
    seen = BooleanAttribute(null=True)
    folder = UnicodeAttribute(null=True)  # CRM folder (move)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)
    # Transient failures (connection lost, timeout, server busy) met while applying this op; it
    # fails for good after a bounded number, so one op can never hold up an account.
    attempts = NumberAttribute(default=0)


class HostSlotModel(_Item):
    owner = UnicodeAttribute(null=True)
    expires = NumberAttribute(default=0)


_MESSAGE_MODELS: tuple[type[Model], ...] = (
    _Item,
    MessageModel,
    LocationModel,
    WindowModel,
    MatchKeyModel,
    SyncStateModel,
    HostSlotModel,
    OpModel,
    ThreadModel,
    ThreadMemberModel,
    ContactIndexModel,
)


def bind_tables(settings: Settings | None = None) -> None:
    """Point the models at the configured tables."""
    settings = settings or get_settings()
    AccountModel.Meta.table_name = settings.accounts_table
    TenantSettingsModel.Meta.table_name = settings.accounts_table
    for model in _MESSAGE_MODELS:
        model.Meta.table_name = settings.messages_table


# --- keys ------------------------------------------------------------------------------------


def account_pk(tenant_id: str, user_id: str) -> str:
    return f"A#{tenant_id}#{user_id}"


def message_pk(message_id: str) -> str:
    return f"M#{message_id}"


def location_pk(tenant_id: str, user_id: str, server_folder: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#L#{server_folder}"


def location_sk(uidvalidity: int, uid: int) -> str:
    return f"{uidvalidity:010d}#{uid:010d}"


def window_pk(tenant_id: str, user_id: str, server_folder: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#W#{server_folder}"


def window_sk(internal_date: datetime, uidvalidity: int, uid: int) -> str:
    return f"{iso(internal_date)}#{location_sk(uidvalidity, uid)}"


def location_item(
    tenant_id: str, user_id: str, server_folder: str, uidvalidity: int, uid: int, /, **attributes: Any
) -> LocationModel:
    """A location record (only its key, unless ``attributes`` are given)."""
    return LocationModel(location_pk(tenant_id, user_id, server_folder), location_sk(uidvalidity, uid), **attributes)


def window_item(
    tenant_id: str,
    user_id: str,
    server_folder: str,
    internal_date: datetime,
    uidvalidity: int,
    uid: int,
    /,
    **attributes: Any,
) -> WindowModel:
    """A window record (only its key, unless ``attributes`` are given)."""
    return WindowModel(
        window_pk(tenant_id, user_id, server_folder), window_sk(internal_date, uidvalidity, uid), **attributes
    )


def match_pk(tenant_id: str, user_id: str, key: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#K#{key}"


def thread_pk(tenant_id: str, user_id: str, thread_id: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#T#{thread_id}"


def contact_pk(tenant_id: str, address: str) -> str:
    return f"C#{tenant_id}#{address.lower()}"


def ops_pk(tenant_id: str, user_id: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#OPS"


def folder_gsi_pk(tenant_id: str, user_id: str, folder: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#F#{folder}"


# --- accounts --------------------------------------------------------------------------------


def get_account(tenant_id: str, user_id: str) -> AccountModel | None:
    bind_tables()
    try:
        return AccountModel.get(tenant_id, user_id, consistent_read=True)
    except DoesNotExist:
        return None


def account_exists(tenant_id: str, user_id: str) -> bool:
    return get_account(tenant_id, user_id) is not None


def create_account(account: AccountModel) -> AccountModel:
    """Insert a new account; a concurrent create of the same user is a conflict, not a silent overwrite."""
    bind_tables()
    account.updated_at = utcnow()
    account.save(condition=AccountModel.user_id.does_not_exist())
    return account


def update_account(account: AccountModel, fields: dict[str, Any]) -> AccountModel:
    """Write only ``fields`` (None removes), so settings edits and the sync engine never
    overwrite each other's attributes."""
    bind_tables()
    actions = _set_actions(AccountModel, {**fields, "updated_at": utcnow()})
    try:
        account.update(actions=actions, condition=AccountModel.user_id.exists())
    except UpdateError as exc:
        if _conditional_failure(exc):  # deleted meanwhile: an edit must not re-create it
            raise NotFound(f"No mail settings saved for user '{account.user_id}'") from None
        raise
    return account


def update_account_if_version(
    account: AccountModel, fields: dict[str, Any], version: int, ciphertext: bytes | None = None
) -> bool:
    """Write ``fields`` only if the account still exists at ``settings_version`` ``version``
    (and, given ``ciphertext``, still holds that password); False when it was deleted or its
    connection settings changed since it was read."""
    bind_tables()
    actions = _set_actions(AccountModel, {**fields, "updated_at": utcnow()})
    same = AccountModel.settings_version == version
    if version == 1:  # items written before settings_version existed read back as 1
        same = same | AccountModel.settings_version.does_not_exist()
    if ciphertext is not None:
        # A delete and re-create restarts the version; the ciphertext (random nonce) never repeats.
        same = same & (AccountModel.password_ciphertext == ciphertext)
    try:
        account.update(actions=actions, condition=AccountModel.user_id.exists() & same)
    except UpdateError as exc:
        if _conditional_failure(exc):
            return False
        raise
    return True


def update_account_status(
    account: AccountModel, status: str, last_error: str | None, *, extra: dict[str, Any] | None = None
) -> bool:
    """Set status unless the settings changed since ``account`` was read (then the result is stale)."""
    bind_tables()
    fields: dict[str, Any] = {"status": status, "last_error": last_error, "updated_at": utcnow(), **(extra or {})}
    actions = _set_actions(AccountModel, fields)
    try:
        account.update(actions=actions, condition=AccountModel.settings_version == account.settings_version)
    except UpdateError as exc:
        if _conditional_failure(exc):
            return False
        raise
    return True


def delete_account(account: AccountModel) -> None:
    bind_tables()
    account.delete()


def new_account(tenant_id: str, user_id: str, **fields: Any) -> AccountModel:
    bind_tables()
    return AccountModel(tenant_id, user_id, **fields)


def due_accounts(shard: int, now: int, limit: int | None = None) -> Iterator[tuple[str, str]]:
    """(tenant, user) of accounts in ``shard`` whose next sync time has come."""
    bind_tables()
    for item in AccountModel.due.query(shard, AccountModel.next_sync_at <= now, limit=limit):
        yield item.tenant_id, item.user_id


def _conditional_failure(exc: Exception) -> bool:
    cause = getattr(exc, "cause_response_code", None) or ""
    return "ConditionalCheckFailed" in cause or "TransactionCanceled" in cause


def is_conditional_failure(exc: Exception) -> bool:
    """Whether a write failed only because its condition did not hold (for the services)."""
    return _conditional_failure(exc)


# --- sync state and leases -------------------------------------------------------------------


def get_sync_state(tenant_id: str, user_id: str) -> SyncStateModel | None:
    bind_tables()
    try:
        return SyncStateModel.get(account_pk(tenant_id, user_id), "STATE", consistent_read=True)
    except DoesNotExist:
        return None


def acquire_lease(
    tenant_id: str, user_id: str, owner: str, seconds: int, fields: dict[str, Any] | None = None
) -> SyncStateModel | None:
    """Take the account's lease (conditional write with expiry); returns the state (read by the
    same request), or None if another worker holds it. ``fields`` are written along."""
    bind_tables()
    now = int(time.time())
    state = SyncStateModel(account_pk(tenant_id, user_id), "STATE")
    condition = (
        SyncStateModel.lease_expires.does_not_exist()
        | (SyncStateModel.lease_expires < now)
        | (SyncStateModel.lease_owner == owner)
    )
    try:
        state.update(
            actions=[
                SyncStateModel.lease_owner.set(owner),
                SyncStateModel.lease_expires.set(now + seconds),
                *_set_actions(SyncStateModel, fields or {}),
            ],
            condition=condition,
        )
    except UpdateError as exc:
        if _conditional_failure(exc):
            return None
        raise
    return state


def release_lease(state: SyncStateModel, owner: str, fields: dict[str, Any] | None = None) -> None:
    """Give the lease back, writing the final sync state in the same request."""
    bind_tables()
    actions = _set_actions(SyncStateModel, {**(fields or {}), "lease_owner": None, "lease_expires": None})
    try:
        state.update(actions=actions, condition=SyncStateModel.lease_owner == owner)
    except UpdateError as exc:
        if not _conditional_failure(exc):
            raise


def save_sync_progress(state: SyncStateModel, owner: str, fields: dict[str, Any]) -> None:
    """Checkpoint while holding the lease (and extend nothing: a lost lease stops the writer)."""
    bind_tables()
    state.update(actions=_set_actions(SyncStateModel, fields), condition=SyncStateModel.lease_owner == owner)


def delete_sync_state(tenant_id: str, user_id: str) -> None:
    bind_tables()
    SyncStateModel(account_pk(tenant_id, user_id), "STATE").delete()


def forget_sync_state(tenant_id: str, user_id: str, ops_server: str) -> None:
    """Mail settings deleted: forget what syncs knew of the mailbox (lease, checkpoints, errors)
    but keep the op counters, so pending ops stay visible to the next sync and op sequence
    numbers are never reused (a reused one would overwrite a pending op)."""
    bind_tables()
    forgotten = (
        SyncStateModel.lease_owner,
        SyncStateModel.lease_expires,
        SyncStateModel.last_started_at,
        SyncStateModel.last_success_at,
        SyncStateModel.last_error,
        SyncStateModel.last_sweep_at,
    )
    actions = [
        *(attribute.remove() for attribute in forgotten),
        SyncStateModel.state.set("never"),
        SyncStateModel.failures.set(0),
        SyncStateModel.folders.set({}),
        SyncStateModel.ops_server.set(ops_server),
    ]
    try:
        _state_key(tenant_id, user_id).update(actions=actions, condition=SyncStateModel.pk.exists())
    except UpdateError as exc:
        if not _conditional_failure(exc):
            raise


def fail_pending_ops(tenant_id: str, user_id: str, error: str) -> int:
    """Drop every pending op of the account as failed: each message keeps ``last_op_error`` and
    no longer shows a pending change. Returns how many ops failed."""
    bind_tables()
    ops = pending_ops(tenant_id, user_id)
    for op in ops:
        try:
            with _transaction() as tx:
                tx.delete(op, condition=OpModel.pk.exists())
                tx.update(_state_key(tenant_id, user_id), actions=[SyncStateModel.ops_pending.add(-1)])
        except TransactWriteError as exc:
            if not _conditional_failure(exc):
                raise  # else a worker completed it meanwhile
    for message in batch_get_messages({op.message_id for op in ops}).values():
        try:
            message.update(
                actions=[
                    MessageModel.pending_ops.set(0),
                    MessageModel.last_op_error.set(error),
                    MessageModel.updated_at.set(utcnow()),
                ],
                condition=MessageModel.pk.exists(),
            )
        except UpdateError as exc:
            if not _conditional_failure(exc):
                raise
    return len(ops)


def acquire_host_slot(host: str, owner: str, slots: int, seconds: int) -> str | None:
    """One of ``slots`` concurrent syncs against a mail host; None when all are taken."""
    bind_tables()
    now = int(time.time())
    for index in range(slots):
        slot = HostSlotModel(f"H#{host}", f"{index:03d}", owner=owner, expires=now + seconds)
        try:
            slot.save(condition=HostSlotModel.sk.does_not_exist() | (HostSlotModel.expires < now))
        except PutError as exc:
            if _conditional_failure(exc):
                continue
            raise
        return slot.sk
    return None


def release_host_slot(host: str, slot: str, owner: str) -> None:
    bind_tables()
    try:
        HostSlotModel(f"H#{host}", slot).delete(condition=HostSlotModel.owner == owner)
    except Exception as exc:
        if not _conditional_failure(exc):
            raise


# --- messages --------------------------------------------------------------------------------


def get_message(message_id: str) -> MessageModel | None:
    bind_tables()
    try:
        return MessageModel.get(message_pk(message_id), "M")
    except DoesNotExist:
        return None


def batch_get_messages(ids: Iterable[str]) -> dict[str, MessageModel]:
    bind_tables()
    keys = [(message_pk(i), "M") for i in set(ids)]
    return {m.id: m for m in MessageModel.batch_get(keys)} if keys else {}


def list_messages(
    tenant_id: str,
    user_id: str,
    *,
    folder: str | None,
    since: datetime | None,
    seen: bool | None,
    limit: int,
    start_key: dict[str, Any] | None,
    include_confidential: bool = True,
) -> tuple[list[MessageModel], dict[str, Any] | None]:
    """Newest first; returns a page and the key to continue from (None at the end)."""
    bind_tables()
    filter_condition = (MessageModel.seen == seen) if seen is not None else None
    if not include_confidential:
        public = MessageModel.confidential == False  # noqa: E712
        filter_condition = public if filter_condition is None else (filter_condition & public)
    if folder is not None:
        index, hash_key, range_attr = (
            MessageModel.by_folder,
            folder_gsi_pk(tenant_id, user_id, folder),
            MessageModel.gsi2sk,
        )
    else:
        index, hash_key, range_attr = MessageModel.by_account, account_pk(tenant_id, user_id), MessageModel.gsi1sk
    range_condition = (range_attr >= iso(since)) if since else None
    items: list[MessageModel] = []
    last_key = start_key
    # A filter (seen) can make a DynamoDB page short; keep reading until the page is full.
    while len(items) < limit:
        result = index.query(
            hash_key,
            range_key_condition=range_condition,
            filter_condition=filter_condition,
            scan_index_forward=False,
            limit=limit - len(items),
            last_evaluated_key=last_key,
        )
        items.extend(result)
        last_key = result.last_evaluated_key
        if not last_key:
            break
    return items, last_key


def locations(tenant_id: str, user_id: str, server_folder: str) -> Iterator[LocationModel]:
    bind_tables()
    yield from LocationModel.query(location_pk(tenant_id, user_id, server_folder))


def count_locations(tenant_id: str, user_id: str, server_folder: str) -> int:
    bind_tables()
    return LocationModel.count(location_pk(tenant_id, user_id, server_folder))


def get_locations(
    tenant_id: str, user_id: str, server_folder: str, keys: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], LocationModel]:
    """Locations for (uidvalidity, uid) pairs; missing ones are absent."""
    bind_tables()
    pk = location_pk(tenant_id, user_id, server_folder)
    wanted = [(pk, location_sk(v, u)) for v, u in set(keys)]
    if not wanted:
        return {}
    return {(loc.uidvalidity, loc.uid): loc for loc in LocationModel.batch_get(wanted)}


def aged_out(tenant_id: str, user_id: str, server_folder: str, cutoff: datetime) -> Iterator[WindowModel]:
    bind_tables()
    yield from WindowModel.query(window_pk(tenant_id, user_id, server_folder), WindowModel.sk < iso(cutoff))


def ids_for_match_key(tenant_id: str, user_id: str, key: str) -> list[str]:
    bind_tables()
    return [item.id for item in MatchKeyModel.query(match_pk(tenant_id, user_id, key))]


def write_new_messages(
    rows: list[tuple[MessageModel, LocationModel, WindowModel]], between: Callable[[], None] | None = None
) -> None:
    """Store new messages. Location items go last: a location is what marks a server copy as
    done, so a crash in between leaves work that is redone under the same deterministic id."""
    bind_tables()
    with MessageModel.batch_write() as batch:
        for message, _, _ in rows:
            batch.save(message)
    with MatchKeyModel.batch_write() as batch:
        for message, _, _ in rows:
            batch.save(
                MatchKeyModel(
                    match_pk(message.tenant_id, message.user_id, message.match_key), message.id, id=message.id
                )
            )
    with WindowModel.batch_write() as batch:
        for _, _, window in rows:
            batch.save(window)
    write_message_indexes([message for message, _, _ in rows])
    if between is not None:
        between()
    with LocationModel.batch_write() as batch:
        for _, location, _ in rows:
            batch.save(location)


def relink_message(
    message: MessageModel,
    new_location: LocationModel,
    new_window: WindowModel,
    fields: dict[str, Any],
    old: tuple[LocationModel, WindowModel | None] | None,
) -> None:
    """Point a message at its new server copy, atomically (a move must never look like a removal)."""
    bind_tables()
    with _transaction() as tx:
        tx.save(new_location)
        tx.save(new_window)
        tx.update(message, actions=_set_actions(MessageModel, fields))
        if old is not None:
            old_location, old_window = old
            tx.delete(old_location)
            if old_window is not None:
                tx.delete(old_window)


def detach_message(
    message: MessageModel, location: LocationModel, window: WindowModel | None, fields: dict[str, Any]
) -> None:
    """Stop syncing a message but keep it (atomic with removing its location)."""
    bind_tables()
    with _transaction() as tx:
        tx.update(message, actions=_set_actions(MessageModel, fields))
        tx.delete(location)
        if window is not None:
            tx.delete(window)


def drop_location(location: LocationModel, window: WindowModel | None) -> None:
    bind_tables()
    with _transaction() as tx:
        tx.delete(location)
        if window is not None:
            tx.delete(window)


def update_flags(
    message: MessageModel, location: LocationModel, flags: list[str], seen: bool, agreed: list[str] | None = None
) -> None:
    """Flags shown on the message, and the flags last agreed with the server on its location
    (they differ only while a CRM change waits)."""
    bind_tables()
    now = utcnow()
    with _transaction() as tx:
        tx.update(
            message,
            actions=[MessageModel.flags.set(flags), MessageModel.seen.set(seen), MessageModel.updated_at.set(now)],
        )
        tx.update(location, actions=[LocationModel.flags.set(flags if agreed is None else agreed)])


# --- pending CRM operations --------------------------------------------------------------------


def next_op_seq(tenant_id: str, user_id: str) -> int:
    """A strictly increasing number per account (atomic counter): the order ops reach the server."""
    bind_tables()
    state = SyncStateModel(account_pk(tenant_id, user_id), "STATE")
    state.update(actions=[SyncStateModel.op_seq.add(1)])
    return int(state.op_seq)


def new_op(tenant_id: str, user_id: str, kind: str, message_id: str, **fields: Any) -> OpModel:
    bind_tables()
    seq = next_op_seq(tenant_id, user_id)
    return OpModel(
        ops_pk(tenant_id, user_id),
        f"{seq:020d}",
        seq=seq,
        tenant_id=tenant_id,
        user_id=user_id,
        kind=kind,
        message_id=message_id,
        **fields,
    )


def record_ops(message: MessageModel, ops: list[OpModel], fields: dict[str, Any]) -> None:
    """Store CRM changes and show them on the message, atomically (the change is durable once
    the API answers)."""
    bind_tables()
    with _transaction() as tx:
        for op in ops:
            tx.save(op)
        tx.update(
            message,
            actions=[*_set_actions(MessageModel, fields), MessageModel.pending_ops.add(len(ops))],
            condition=MessageModel.pk.exists(),
        )
        tx.update(_state_key(message.tenant_id, message.user_id), actions=[SyncStateModel.ops_pending.add(len(ops))])


def create_outgoing(message: MessageModel, op: OpModel) -> None:
    """A message written in the CRM, with its append op."""
    bind_tables()
    with _transaction() as tx:
        tx.save(message, condition=MessageModel.pk.does_not_exist())
        tx.save(
            MatchKeyModel(match_pk(message.tenant_id, message.user_id, message.match_key), message.id, id=message.id)
        )
        tx.save(op)
        tx.update(_state_key(message.tenant_id, message.user_id), actions=[SyncStateModel.ops_pending.add(1)])


def write_message_indexes(messages: list[MessageModel]) -> None:
    """Thread membership and the dossier index of new messages (idempotent puts)."""
    bind_tables()
    with ThreadMemberModel.batch_write() as batch:
        for m in messages:
            batch.save(ThreadMemberModel(thread_pk(m.tenant_id, m.user_id, m.thread_id), f"M#{m.id}", id=m.id))
    with ContactIndexModel.batch_write() as batch:
        for m in messages:
            for address in m.dossier_addresses():
                batch.save(_contact_item(m, address))


def _contact_item(message: MessageModel, address: str) -> ContactIndexModel:
    return ContactIndexModel(
        contact_pk(message.tenant_id, address),
        f"{iso(message.internal_date)}#{message.id}",
        id=message.id,
        user_id=message.user_id,
        confidential=bool(message.confidential),
    )


def get_tenant_settings(tenant_id: str) -> TenantSettingsModel | None:
    bind_tables()
    try:
        return TenantSettingsModel.get(tenant_id, TENANT_SETTINGS_USER)
    except DoesNotExist:
        return None


def save_tenant_settings(tenant_id: str, keywords: list[str], contacts: list[str]) -> TenantSettingsModel:
    bind_tables()
    item = TenantSettingsModel(
        tenant_id, TENANT_SETTINGS_USER, confidential_keywords=keywords, confidential_contacts=contacts
    )
    item.save()
    return item


def get_threads(tenant_id: str, user_id: str, thread_ids: Iterable[str]) -> dict[str, ThreadModel]:
    bind_tables()
    keys = [(thread_pk(tenant_id, user_id, t), "THREAD") for t in set(thread_ids)]
    if not keys:
        return {}
    return {item.pk.rsplit("#T#", 1)[1]: item for item in ThreadModel.batch_get(keys)}


def mark_thread(tenant_id: str, user_id: str, thread_id: str, confidential: bool, by_owner: bool) -> None:
    bind_tables()
    ThreadModel(thread_pk(tenant_id, user_id, thread_id), "THREAD", confidential=confidential, by_owner=by_owner).save()


def thread_member_ids(tenant_id: str, user_id: str, thread_id: str) -> list[str]:
    bind_tables()
    pk = thread_pk(tenant_id, user_id, thread_id)
    return [m.id for m in ThreadMemberModel.query(pk, ThreadMemberModel.sk.startswith("M#"))]


def set_confidential(message: MessageModel, confidential: bool, reasons: list[str]) -> None:
    """Change a message's visibility, and its dossier entries with it."""
    bind_tables()
    message.update(
        actions=[
            MessageModel.confidential.set(confidential),
            MessageModel.confidential_reasons.set(reasons),
            MessageModel.updated_at.set(utcnow()),
        ]
    )
    with ContactIndexModel.batch_write() as batch:
        for address in message.dossier_addresses():
            batch.save(_contact_item(message, address))


def contact_messages(
    tenant_id: str, address: str, viewer: str, limit: int, start_key: dict[str, Any] | None
) -> tuple[list[ContactIndexModel], dict[str, Any] | None]:
    """Dossier entries visible to ``viewer``: not confidential, or their own. Newest first."""
    bind_tables()
    visible = (ContactIndexModel.confidential == False) | (ContactIndexModel.user_id == viewer)  # noqa: E712
    items: list[ContactIndexModel] = []
    last_key = start_key
    while len(items) < limit:
        result = ContactIndexModel.query(
            contact_pk(tenant_id, address),
            filter_condition=visible,
            scan_index_forward=False,
            limit=limit - len(items),
            last_evaluated_key=last_key,
        )
        items.extend(result)
        last_key = result.last_evaluated_key
        if not last_key:
            break
    return items, last_key


def pending_ops(tenant_id: str, user_id: str) -> list[OpModel]:
    bind_tables()
    return list(OpModel.query(ops_pk(tenant_id, user_id), consistent_read=True))


def complete_op(op: OpModel, message: MessageModel | None, fields: dict[str, Any] | None = None) -> None:
    """The op reached the server (or was dropped): remove it and update the message in one go."""
    bind_tables()
    with _transaction() as tx:
        tx.delete(op, condition=OpModel.pk.exists())
        tx.update(_state_key(op.tenant_id, op.user_id), actions=[SyncStateModel.ops_pending.add(-1)])
        if message is not None:
            actions = [*_set_actions(MessageModel, fields or {}), MessageModel.pending_ops.add(-1)]
            tx.update(message, actions=actions, condition=MessageModel.pk.exists())


def count_op_attempt(op: OpModel) -> int:
    """One more transient failure of ``op``; returns the new count (0 if the op is gone)."""
    bind_tables()
    try:
        op.update(actions=[OpModel.attempts.add(1)], condition=OpModel.pk.exists())
    except UpdateError as exc:
        if _conditional_failure(exc):
            return 0
        raise
    return int(op.attempts or 0)


def _state_key(tenant_id: str, user_id: str) -> SyncStateModel:
    return SyncStateModel(account_pk(tenant_id, user_id), "STATE")


def _transaction() -> TransactWrite:
    # The models' own connection: same region, endpoint and retry settings as every other call.
    return TransactWrite(connection=MessageModel._get_connection().connection)


def _set_actions(model: type[Model], fields: dict[str, Any]) -> list[Any]:
    """SET each field, REMOVE those given as None."""
    actions = []
    for name, value in fields.items():
        attribute = getattr(model, name)
        actions.append(attribute.remove() if value is None else attribute.set(value))
    return actions
