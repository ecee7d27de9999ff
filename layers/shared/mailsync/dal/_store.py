"""The data layer's domain API: ``mailsync.domain`` values in and out (re-exported by ``mailsync.dal``)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from botocore.exceptions import ClientError
from pynamodb.exceptions import DoesNotExist, PutError, QueryError, TransactWriteError, UpdateError

from mailsync.aws import client
from mailsync.config import get_settings
from mailsync.dal import _keys as keys
from mailsync.dal._items import (
    account_from,
    account_item,
    account_key,
    acquire_lease,
    conditional_failure,
    contact_item,
    location_from,
    location_record,
    match_key_item,
    message_fields,
    message_from,
    message_item,
    message_key,
    op_from,
    op_key,
    release_lease,
    set_actions,
    state_key,
    sync_state_from,
    transaction,
    write_message_indexes,
    write_new_messages,
)
from mailsync.dal._models import (
    OFFICE_HOURS_USER,
    TENANT_SETTINGS_USER,
    AccountModel,
    ContactIndexModel,
    LocationModel,
    MatchKeyModel,
    MessageModel,
    OfficeHoursModel,
    OpModel,
    SyncStateModel,
    TenantSettingsModel,
    ThreadMemberModel,
    ThreadModel,
    WindowModel,
    utcnow,
)
from mailsync.domain import (
    Account,
    Change,
    DueAccount,
    Location,
    Message,
    OfficeHours,
    Op,
    SyncState,
    TenantSettings,
    ThreadMark,
)
from mailsync.errors import NotFound

# --- accounts --------------------------------------------------------------------------------------


def get_account(tenant_id: str, user_id: str) -> Account | None:
    try:
        return account_from(AccountModel.get(tenant_id, user_id, consistent_read=True))
    except DoesNotExist:
        return None


def oauth_grant_holders(tenant_id: str, provider: str, username: str) -> list[str]:
    """Users of ``tenant_id`` whose saved settings hold an OAuth2 grant of ``provider`` for the
    mailbox ``username`` (compared case-insensitively). One Query of the tenant's partition."""
    wanted = username.lower()
    found = AccountModel.query(
        tenant_id,
        filter_condition=(AccountModel.auth == "oauth2")
        & (AccountModel.provider == provider)
        & AccountModel.refresh_token_ciphertext.exists(),
    )
    return [item.user_id for item in found if item.username.lower() == wanted]


# Every user id sorts at or after this ("+" is the lowest character a user id may hold); the
# tenant's own items ("#tenant", "#office_hours") sort before it, so a key range leaves them out.
_FIRST_USER_ID = "+"


def list_accounts(tenant_id: str, limit: int, cursor: str | None) -> tuple[list[Account], str | None]:
    """The tenant's accounts by user id, a page and the cursor to continue from (None at the end).
    One Query of the tenant's partition: another tenant's accounts are out of reach, and a cursor
    this listing did not hand out (another tenant's included) raises ``BadCursor``."""
    start = keys.decode_cursor(cursor, ("tenant_id", tenant_id))
    if start is not None and start["user_id"]["S"] < _FIRST_USER_ID:
        # Outside the key range: DynamoDB would refuse it.
        raise keys.BadCursor()
    items, last_key = _full_page(
        lambda limit_left, after: AccountModel.query(
            tenant_id,
            range_key_condition=AccountModel.user_id >= _FIRST_USER_ID,
            limit=limit_left,
            last_evaluated_key=after,
        ),
        limit,
        start,
    )
    return [account_from(item) for item in items], keys.encode_cursor(last_key)


def account_exists(tenant_id: str, user_id: str) -> bool:
    return get_account(tenant_id, user_id) is not None


def create_account(account: Account) -> Account | None:
    """Insert a new account; None if the user has one already (a concurrent create is a
    conflict, not a silent overwrite)."""
    item = account_item(dataclasses.replace(account, updated_at=utcnow()))
    try:
        item.save(condition=AccountModel.user_id.does_not_exist())
    except PutError as exc:
        if conditional_failure(exc):
            return None
        raise
    return account_from(item)


def put_accounts(accounts: Iterable[Account]) -> None:
    """Write accounts as given, unconditionally (bulk seeding: benchmarks, imports)."""
    with AccountModel.batch_write() as batch:
        for account in accounts:
            batch.save(account_item(account))


def update_account(account: Account, fields: Mapping[str, Any]) -> Account:
    """Write only ``fields`` (``Account`` attributes; None removes), so settings edits and the
    sync engine never overwrite each other's attributes. Returns the account as written."""
    fields = {**fields, "updated_at": utcnow()}
    try:
        account_key(account).update(actions=set_actions(AccountModel, fields), condition=AccountModel.user_id.exists())
    except UpdateError as exc:
        if conditional_failure(exc):  # deleted meanwhile: an edit must not re-create it
            raise NotFound(f"No mail settings saved for user '{account.user_id}'") from None
        raise
    return dataclasses.replace(account, **fields)


def update_account_if_version(
    account: Account,
    fields: Mapping[str, Any],
    version: int,
    ciphertext: bytes | None = None,
    *,
    refresh_token_ciphertext: bytes | None = None,
) -> Account | None:
    """Write ``fields`` only if the account still exists at ``settings_version`` ``version``
    (and, given ``ciphertext``, still holds that password; given ``refresh_token_ciphertext``,
    that refresh token); None when it was deleted or its connection settings changed since it
    was read."""
    fields = {**fields, "updated_at": utcnow()}
    same = AccountModel.settings_version == version
    if version == 1:  # items written before settings_version existed read back as 1
        same = same | AccountModel.settings_version.does_not_exist()
    if ciphertext is not None:
        # A delete and re-create restarts the version; the ciphertext (random nonce) never repeats.
        same = same & (AccountModel.password_ciphertext == ciphertext)
    if refresh_token_ciphertext is not None:
        same = same & (AccountModel.refresh_token_ciphertext == refresh_token_ciphertext)
    try:
        account_key(account).update(
            actions=set_actions(AccountModel, fields), condition=AccountModel.user_id.exists() & same
        )
    except UpdateError as exc:
        if conditional_failure(exc):
            return None
        raise
    return dataclasses.replace(account, **fields)


def update_account_status(
    account: Account, status: str, last_error: str | None, *, extra: Mapping[str, Any] | None = None
) -> bool:
    """Set status unless the settings changed since ``account`` was read (then the result is stale)."""
    fields: dict[str, Any] = {"status": status, "last_error": last_error, "updated_at": utcnow(), **(extra or {})}
    try:
        account_key(account).update(
            actions=set_actions(AccountModel, fields),
            condition=AccountModel.settings_version == account.settings_version,
        )
    except UpdateError as exc:
        if conditional_failure(exc):
            return False
        raise
    return True


def delete_account(tenant_id: str, user_id: str) -> None:
    AccountModel(tenant_id, user_id).delete()


def due_accounts(shard: int, now: int, limit: int | None = None) -> Iterator[DueAccount]:
    """The accounts in ``shard`` whose next sync time has come, with what the polling rule needs."""
    for item in AccountModel.due.query(shard, AccountModel.next_sync_at <= now, limit=limit):
        active = item.last_activity_at
        yield DueAccount(
            item.tenant_id, item.user_id, int(item.next_sync_at or 0), None if active is None else int(active)
        )


def record_activity(tenant_id: str, user_id: str, at: int) -> None:
    """Remember that the account changed at ``at`` (epoch seconds) for the polling rule; nothing
    else of the account is touched, and a deleted account stays deleted."""
    try:
        AccountModel(tenant_id, user_id).update(
            actions=[AccountModel.last_activity_at.set(at)], condition=AccountModel.user_id.exists()
        )
    except UpdateError as exc:
        if not conditional_failure(exc):
            raise


# --- sync state ------------------------------------------------------------------------------------


def get_sync_state(tenant_id: str, user_id: str) -> SyncState | None:
    return _get_sync_state_by_pk(keys.account_pk(tenant_id, user_id))


def _get_sync_state_by_pk(pk: str) -> SyncState | None:
    try:
        item = SyncStateModel.get(pk, keys.STATE_SK, consistent_read=True)
    except DoesNotExist:
        return None
    return sync_state_from(item)


def get_account_and_sync_state(
    tenant_id: str, user_id: str, *, consistent: bool = True
) -> tuple[Account | None, SyncState | None]:
    """(sync core) ``get_account`` and ``get_sync_state`` in one request (a BatchGetItem over both
    tables): every job starts with these two reads, most end there. ``consistent=False`` reads
    them eventually consistent, for half the read units: only for a scheduled poll, whose read
    is a hint (see ``get_accounts_and_sync_states``)."""
    return get_accounts_and_sync_states([(tenant_id, user_id)], consistent=consistent)[(tenant_id, user_id)]


def get_accounts_and_sync_states(
    accounts: Iterable[tuple[str, str]], *, consistent: bool = True
) -> dict[tuple[str, str], tuple[Account | None, SyncState | None]]:
    """``get_account_and_sync_state`` for many accounts, ``BATCH_GET_ACCOUNTS`` per request.

    Eventually consistent reads (``consistent=False``) may miss writes of the last second or so.
    A poll acts on no such read alone: work is done under the lease, whose conditional write
    returns the current sync state, and the job then reads the account consistently and stops
    if anything a sync acts on changed (``planner.jobs.settings_changed``); the due index is
    left only on a consistent read. A stale read can only delay a change to the next poll (a
    pending op is not seen yet: a CRM change also sends a job of its own, read consistently)
    or make a poll take the lease for nothing."""
    settings = get_settings()
    wanted_accounts = list(dict.fromkeys(accounts))
    if settings.accounts_table == settings.messages_table:
        return {(t, u): (get_account(t, u), get_sync_state(t, u)) for t, u in wanted_accounts}
    found: dict[tuple[str, str], tuple[Account | None, SyncState | None]] = {}
    for start in range(0, len(wanted_accounts), BATCH_GET_ACCOUNTS):
        found.update(_batch_get_accounts(wanted_accounts[start : start + BATCH_GET_ACCOUNTS], consistent))
    return found


def _batch_get_accounts(
    accounts: list[tuple[str, str]], consistent: bool
) -> dict[tuple[str, str], tuple[Account | None, SyncState | None]]:
    settings = get_settings()
    tenant_attr, user_attr = AccountModel.tenant_id.attr_name, AccountModel.user_id.attr_name
    pk_attr, sk_attr = SyncStateModel.pk.attr_name, SyncStateModel.sk.attr_name
    wanted: dict[str, Any] = {
        settings.accounts_table: {
            "Keys": [{tenant_attr: {"S": t}, user_attr: {"S": u}} for t, u in accounts],
            "ConsistentRead": consistent,
        },
        settings.messages_table: {
            "Keys": [{pk_attr: {"S": keys.account_pk(t, u)}, sk_attr: {"S": keys.STATE_SK}} for t, u in accounts],
            "ConsistentRead": consistent,
        },
    }
    found_accounts: dict[tuple[str, str], Account] = {}
    found_states: dict[str, SyncState] = {}
    for attempt in range(_BATCH_GET_ATTEMPTS):
        response = client("dynamodb").batch_get_item(RequestItems=wanted)
        responses = response.get("Responses", {})
        for item in responses.get(settings.accounts_table, []):
            found_accounts[(item[tenant_attr]["S"], item[user_attr]["S"])] = account_from(
                AccountModel.from_raw_data(item)
            )
        for item in responses.get(settings.messages_table, []):
            found_states[item[pk_attr]["S"]] = sync_state_from(SyncStateModel.from_raw_data(item))
        wanted = response.get("UnprocessedKeys") or {}
        if not wanted:
            break
        time.sleep(0.05 * 2**attempt)  # throttled: DynamoDB asks for a backoff before the retry
    else:
        # Still throttled: the keys left are read one at a time.
        for key in wanted.get(settings.accounts_table, {}).get("Keys", []):
            t, u = key[tenant_attr]["S"], key[user_attr]["S"]
            account = get_account(t, u)
            if account is not None:
                found_accounts[(t, u)] = account
        for key in wanted.get(settings.messages_table, {}).get("Keys", []):
            state = _get_sync_state_by_pk(key[pk_attr]["S"])
            if state is not None:
                found_states[key[pk_attr]["S"]] = state
    return {(t, u): (found_accounts.get((t, u)), found_states.get(keys.account_pk(t, u))) for t, u in accounts}


# Two keys per account, BatchGetItem's limit is 100 keys a request.
BATCH_GET_ACCOUNTS = 50
_BATCH_GET_ATTEMPTS = 4


def forget_sync_state(tenant_id: str, user_id: str, ops_server: str) -> None:
    """Mail settings deleted: forget what syncs knew of the mailbox (lease, checkpoints, errors)
    but keep the op counters, so pending ops stay visible to the next sync and op sequence
    numbers are never reused (a reused one would overwrite a pending op)."""
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
        state_key(tenant_id, user_id).update(actions=actions, condition=SyncStateModel.pk.exists())
    except UpdateError as exc:
        if not conditional_failure(exc):
            raise


def take_lease(tenant_id: str, user_id: str, owner: str, seconds: int, **fields: Any) -> SyncState | None:
    """(sync core) Take the account's lease, writing ``fields`` (``SyncState`` attributes) along;
    the state as read by the same request, or None if another worker holds it."""
    item = acquire_lease(tenant_id, user_id, owner, seconds, fields)
    return sync_state_from(item) if item is not None else None


def save_checkpoint(tenant_id: str, user_id: str, owner: str, **fields: Any) -> None:
    """(sync core) Checkpoint while holding the lease (``fields``: ``SyncState`` attributes,
    ``folders`` whole); fails if the lease was lost. ``has_detached`` only ever turns on: mail
    relayed while the sync ran sets it, and the sync's older copy must not turn it off."""
    state_key(tenant_id, user_id).update(
        actions=set_actions(SyncStateModel, _checkpoint_fields(fields)), condition=SyncStateModel.lease_owner == owner
    )


def _checkpoint_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if not fields.get("has_detached", True):
        return {name: value for name, value in fields.items() if name != "has_detached"}
    return fields


def give_back_lease(
    tenant_id: str, user_id: str, owner: str, checkpoint: dict[str, Any] | None = None, **fields: Any
) -> None:
    """(sync core) Release the lease, writing the final state and the sync's last checkpoint
    (as ``save_checkpoint`` would) in the same request. A lease lost meanwhile writes neither:
    the next sync starts from the checkpoint before, as after a crash."""
    release_lease(state_key(tenant_id, user_id), owner, {**_checkpoint_fields(checkpoint or {}), **fields})


# --- messages --------------------------------------------------------------------------------------


def find_message(id: str) -> Message | None:
    try:
        return message_from(MessageModel.get(keys.message_pk(id), keys.MESSAGE_SK))
    except DoesNotExist:
        return None


def find_messages(ids: Iterable[str]) -> dict[str, Message]:
    wanted = [(keys.message_pk(i), keys.MESSAGE_SK) for i in set(ids)]
    found = [message_from(m) for m in MessageModel.batch_get(wanted)] if wanted else []
    return {message.id: message for message in found}


def list_messages(
    tenant_id: str,
    user_id: str,
    *,
    folder: str | None,
    since: datetime | None,
    seen: bool | None,
    limit: int,
    cursor: str | None,
    include_confidential: bool = True,
) -> tuple[list[Message], str | None]:
    """Newest first; a page and the cursor to continue from (None at the end).

    A cursor this listing did not hand out raises ``BadCursor`` (a ``ValidationFailed``)."""
    if folder is not None:
        index, hash_key, range_attr = (
            MessageModel.by_folder,
            keys.folder_gsi_pk(tenant_id, user_id, folder),
            MessageModel.gsi2sk,
        )
        start = keys.decode_cursor(cursor, ("gsi2pk", hash_key))
        sort_attribute = "gsi2sk"
    else:
        index, hash_key, range_attr = MessageModel.by_account, keys.account_pk(tenant_id, user_id), MessageModel.gsi1sk
        start = keys.decode_cursor(cursor, ("gsi1pk", hash_key))
        sort_attribute = "gsi1sk"
    if start is not None and since is not None and start[sort_attribute]["S"] < keys.iso(since):
        # Outside the query's key range: DynamoDB refuses such a start key ("outside query boundaries").
        raise keys.BadCursor("cursor is older than since: start again without the cursor")
    # New items leave both out when false (``_items._OMITTED_DEFAULTS``).
    filter_condition = None if seen is None else _is(MessageModel.seen, seen)
    if not include_confidential:
        public = _is(MessageModel.confidential, False)
        filter_condition = public if filter_condition is None else (filter_condition & public)
    range_condition = (range_attr >= keys.iso(since)) if since else None
    try:
        items, last_key = _full_page(
            lambda limit_left, after: index.query(
                hash_key,
                range_key_condition=range_condition,
                filter_condition=filter_condition,
                scan_index_forward=False,
                limit=limit_left,
                last_evaluated_key=after,
            ),
            limit,
            start,
        )
    except QueryError as exc:
        # Any start key DynamoDB still refuses came from the client's cursor.
        if start is not None and getattr(exc, "cause_response_code", None) == "ValidationException":
            raise keys.BadCursor() from None
        raise
    return _messages_by_key(items), keys.encode_cursor(last_key)


def _is(flag: Any, value: bool) -> Any:
    """A filter on a boolean attribute that a missing attribute matches as false."""
    return (flag == True) if value else ((flag == False) | flag.does_not_exist())  # noqa: E712


def _messages_by_key(entries: list[MessageModel]) -> list[Message]:
    """The messages of index entries (which hold only keys and filter attributes), in their order."""
    if not entries:
        return []
    found = {(m.pk, m.sk): m for m in MessageModel.batch_get([(e.pk, e.sk) for e in entries])}
    return [message_from(found[(e.pk, e.sk)]) for e in entries if (e.pk, e.sk) in found]


def count_locations(tenant_id: str, user_id: str, server_folder: str) -> int:
    return LocationModel.count(keys.location_pk(tenant_id, user_id, server_folder))


def _next_op_seq(tenant_id: str, user_id: str) -> int:
    """A strictly increasing number per account (atomic counter): the order ops reach the server."""
    state = state_key(tenant_id, user_id)
    state.update(actions=[SyncStateModel.op_seq.add(1)])
    return int(state.op_seq)


def _op_item(tenant_id: str, user_id: str, id: str, change: Change) -> OpModel:
    seq = _next_op_seq(tenant_id, user_id)
    extra: dict[str, Any] = {}
    if change.seen is not None:
        extra["seen"] = change.seen
    if change.folder is not None:
        extra["folder"] = change.folder
    return OpModel(
        keys.ops_pk(tenant_id, user_id),
        keys.op_sk(seq),
        seq=seq,
        tenant_id=tenant_id,
        user_id=user_id,
        kind=change.kind,
        id=id,
        **extra,
    )


def record_changes(message: Message, changes: list[Change], shown: Mapping[str, Any]) -> None:
    """Store CRM changes as ops and show them on the message (``shown``: ``Message`` attributes),
    atomically: the change is durable once the API answers."""
    ops = [_op_item(message.tenant_id, message.user_id, message.id, change) for change in changes]
    fields = message_fields(message.tenant_id, message.user_id, dict(shown))
    with transaction() as tx:
        for op in ops:
            tx.save(op)
        tx.update(
            message_key(message),
            actions=[*set_actions(MessageModel, fields), MessageModel.pending_ops.add(len(ops))],
            condition=MessageModel.pk.exists(),
        )
        tx.update(state_key(message.tenant_id, message.user_id), actions=[SyncStateModel.ops_pending.add(len(ops))])


def create_outgoing(message: Message) -> Message:
    """Store a message written in the CRM with its append op (``message.pending_ops`` counts it),
    and index it. Returns the message as stored."""
    item = message_item(message)
    op = _op_item(message.tenant_id, message.user_id, message.id, Change("append"))
    with transaction() as tx:
        tx.save(item, condition=MessageModel.pk.does_not_exist())
        tx.save(match_key_item(message))
        tx.save(op)
        tx.update(state_key(message.tenant_id, message.user_id), actions=[SyncStateModel.ops_pending.add(1)])
    stored = message_from(item)
    write_message_indexes([stored])
    return stored


def fail_pending_ops(tenant_id: str, user_id: str, error: str) -> int:
    """Drop every pending op of the account as failed: each message keeps ``last_op_error`` and
    no longer shows a pending change. Returns how many ops failed."""
    ops = list(OpModel.query(keys.ops_pk(tenant_id, user_id), consistent_read=True))
    for op in ops:
        try:
            with transaction() as tx:
                tx.delete(op, condition=OpModel.pk.exists())
                tx.update(state_key(tenant_id, user_id), actions=[SyncStateModel.ops_pending.add(-1)])
        except TransactWriteError as exc:
            if not conditional_failure(exc):
                raise  # else a worker completed it meanwhile
    for id_ in {op.id for op in ops}:
        try:
            MessageModel(keys.message_pk(id_), keys.MESSAGE_SK).update(
                actions=[
                    MessageModel.pending_ops.set(0),
                    MessageModel.last_op_error.set(error),
                    MessageModel.updated_at.set(utcnow()),
                ],
                condition=MessageModel.pk.exists(),
            )
        except UpdateError as exc:
            if not conditional_failure(exc):
                raise
    return len(ops)


def ops_waiting(tenant_id: str, user_id: str) -> list[Op]:
    """(sync core) The account's pending CRM changes, oldest first."""
    return [op_from(item) for item in OpModel.query(keys.ops_pk(tenant_id, user_id), consistent_read=True)]


# --- confidentiality ----------------------------------------------------------------------------


# Syncs read two tenant items: the settings, to classify new mail, and the office hours, to
# decide whether a change needs recording for the scheduler. Read for each sync with work, that
# is a request (~1 ms of CPU) each and, for a tenant with 300 KB of confidential contacts, ~37 RRU.
# Syncs take a copy this process read at most this long ago instead; a save in this process
# replaces it at once, other processes see a change within this time.
TENANT_SETTINGS_MAX_AGE_SECONDS = 60.0


class _Kept[T]:
    """Copies of one kind of tenant item for ``TENANT_SETTINGS_MAX_AGE_SECONDS``: at most
    ``size`` tenants, least recently used dropped first, and copies no reader may use any more
    dropped as others are kept (a tenant at the settings' size limits takes ~0.75 MB)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.copies: OrderedDict[str, tuple[float, T | None]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, tenant_id: str, max_age: float, now: float) -> tuple[bool, T | None]:
        with self.lock:
            kept = self.copies.get(tenant_id)
            if max_age <= 0 or kept is None or now - kept[0] > max_age:
                return False, None
            self.copies.move_to_end(tenant_id)
            return True, kept[1]

    def keep(self, tenant_id: str, value: T | None, at: float) -> None:
        with self.lock:
            kept = self.copies.get(tenant_id)
            if kept is not None and kept[0] > at:
                return  # saved since this read began: the newer copy stays
            self.copies[tenant_id] = (at, value)
            self.copies.move_to_end(tenant_id)
            expired = [t for t, (read_at, _) in self.copies.items() if at - read_at > TENANT_SETTINGS_MAX_AGE_SECONDS]
            for stale in expired:
                del self.copies[stale]
            while len(self.copies) > self.size:
                self.copies.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.copies.clear()


_tenant_settings: _Kept[TenantSettings] = _Kept(64)
_office_hours: _Kept[OfficeHours] = _Kept(1_000)


def get_tenant_settings(tenant_id: str, *, max_age: float = 0.0) -> TenantSettings | None:
    """The tenant's saved settings (None: never saved); with ``max_age`` (seconds), a copy this
    process read or saved at most that long ago will do."""
    now = time.monotonic()
    found, settings = _tenant_settings.get(tenant_id, max_age, now)
    if found:
        return settings
    try:
        item = TenantSettingsModel.get(tenant_id, TENANT_SETTINGS_USER)
    except DoesNotExist:
        settings = None
    else:
        keywords = item.confidential_keywords
        settings = TenantSettings(
            confidential_keywords=tuple(keywords) if keywords is not None else None,
            confidential_contacts=tuple(item.confidential_contacts or ()),
        )
    _tenant_settings.keep(tenant_id, settings, now)
    return settings


def forget_tenant_settings() -> None:
    """Drop every kept copy of tenant items (tests: the next test's tables are new)."""
    _tenant_settings.clear()
    _office_hours.clear()


def save_tenant_settings(tenant_id: str, keywords: list[str], contacts: list[str]) -> TenantSettings:
    TenantSettingsModel(
        tenant_id, TENANT_SETTINGS_USER, confidential_keywords=keywords, confidential_contacts=contacts
    ).save()
    settings = TenantSettings(confidential_keywords=tuple(keywords), confidential_contacts=tuple(contacts))
    _tenant_settings.keep(tenant_id, settings, time.monotonic())
    return settings


def get_office_hours(tenant_id: str, *, max_age: float = 0.0) -> OfficeHours | None:
    """The tenant's saved office hours; None: never saved (the defaults apply). ``max_age``: as
    for ``get_tenant_settings``."""
    now = time.monotonic()
    found, hours = _office_hours.get(tenant_id, max_age, now)
    if found:
        return hours
    try:
        item = OfficeHoursModel.get(tenant_id, OFFICE_HOURS_USER)
    except DoesNotExist:
        hours = None
    else:
        hours = OfficeHours(time_zone=item.time_zone, days=tuple(item.days), start=item.start, end=item.end)
    _office_hours.keep(tenant_id, hours, now)
    return hours


def save_office_hours(tenant_id: str, hours: OfficeHours) -> OfficeHours:
    OfficeHoursModel(
        tenant_id, OFFICE_HOURS_USER, time_zone=hours.time_zone, days=list(hours.days), start=hours.start, end=hours.end
    ).save()
    _office_hours.keep(tenant_id, hours, time.monotonic())
    return hours


def thread_marks(tenant_id: str, user_id: str, thread_ids: Iterable[str]) -> dict[str, ThreadMark]:
    """The stored marks of these threads (unmarked threads are absent)."""
    wanted = [(keys.thread_pk(tenant_id, user_id, t), keys.THREAD_SK) for t in set(thread_ids)]
    if not wanted:
        return {}
    return {
        keys.thread_of(item.pk): ThreadMark(confidential=bool(item.confidential), by_owner=bool(item.by_owner))
        for item in ThreadModel.batch_get(wanted)
    }


def mark_threads(
    tenant_id: str, user_id: str, thread_ids: Iterable[str], *, confidential: bool, by_owner: bool
) -> None:
    for thread_id in thread_ids:
        ThreadModel(
            keys.thread_pk(tenant_id, user_id, thread_id),
            keys.THREAD_SK,
            confidential=confidential,
            by_owner=by_owner,
        ).save()


def thread_member_ids(tenant_id: str, user_id: str, thread_id: str) -> list[str]:
    pk = keys.thread_pk(tenant_id, user_id, thread_id)
    prefix = keys.thread_member_sk("")
    return [m.id for m in ThreadMemberModel.query(pk, ThreadMemberModel.sk.startswith(prefix))]


def set_confidential(message: Message, confidential: bool, reasons: list[str]) -> Message:
    """Change a message's visibility, and its dossier entries with it. Returns it as written."""
    now = utcnow()
    message_key(message).update(
        actions=[
            MessageModel.confidential.set(confidential),
            MessageModel.confidential_reasons.set(reasons),
            MessageModel.updated_at.set(now),
        ]
    )
    changed = dataclasses.replace(
        message, confidential=confidential, confidential_reasons=tuple(reasons), updated_at=now
    )
    with ContactIndexModel.batch_write() as batch:
        for address in changed.dossier_addresses():
            batch.save(contact_item(changed, address))
    return changed


def _full_page(query: Callable[[int, Any], Any], limit: int, start: Any) -> tuple[list[Any], Any]:
    """Up to ``limit`` items from ``query(limit_left, start_key)``, newest first, and the key to go
    on from: a filter can make a DynamoDB page short, so pages are read until this one is full."""
    items: list[Any] = []
    last_key = start
    while len(items) < limit:
        result = query(limit - len(items), last_key)
        items.extend(result)
        last_key = result.last_evaluated_key
        if not last_key:
            break
    return items, last_key


def contact_messages(
    tenant_id: str, address: str, viewer: str, limit: int, cursor: str | None
) -> tuple[list[str], str | None]:
    """Ids of the dossier's messages visible to ``viewer`` (not confidential, or their own),
    newest first, and the cursor to continue from."""
    pk = keys.contact_pk(tenant_id, address)
    start = keys.decode_cursor(cursor, ("pk", pk))
    visible = (ContactIndexModel.confidential == False) | (ContactIndexModel.user_id == viewer)  # noqa: E712
    items, last_key = _full_page(
        lambda limit_left, after: ContactIndexModel.query(
            pk, filter_condition=visible, scan_index_forward=False, limit=limit_left, last_evaluated_key=after
        ),
        limit,
        start,
    )
    return [item.id for item in items], keys.encode_cursor(last_key)


# --- sync core: locations, new messages, relinks, detachments, ops -------------------------


def folder_locations(tenant_id: str, user_id: str, server_folder: str) -> Iterator[Location]:
    """(sync core) Every synced copy in a server folder."""
    for item in LocationModel.query(keys.location_pk(tenant_id, user_id, server_folder)):
        yield location_from(tenant_id, user_id, server_folder, item)


def find_locations(
    tenant_id: str, user_id: str, server_folder: str, wanted: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], Location]:
    """(sync core) Locations for (uidvalidity, uid) pairs; missing ones are absent."""
    pk = keys.location_pk(tenant_id, user_id, server_folder)
    item_keys = [(pk, keys.location_sk(v, u)) for v, u in set(wanted)]
    found = LocationModel.batch_get(item_keys) if item_keys else []
    return {
        (int(item.uidvalidity), int(item.uid)): location_from(tenant_id, user_id, server_folder, item) for item in found
    }


_SWEEP_PAGE_ITEMS = 10_000  # above the ~4,000 locations of 1 MB, DynamoDB's page size


def aged_out(tenant_id: str, user_id: str, server_folder: str, cutoff: datetime, *, limit: int) -> list[Location]:
    """(sync core) Up to ``limit`` synced copies in a server folder with an INTERNALDATE before
    ``cutoff``; ``limit`` bounds what one sweep detaches (the rest: the next sweep).

    One Query over the folder's locations, filtered by their INTERNALDATE (stored as a fixed-width
    UTC string, ``%Y-%m-%dT%H:%M:%S.%f+0000``, so DynamoDB's string order is time order). It is
    charged for every location read, not only those returned (~250 B each: ~47 RRU for 1,500
    copies in the window), which is why the engine sweeps once a day. No index by date is kept:
    an item per message would cost a write unit each to spare this daily read."""
    pk = keys.location_pk(tenant_id, user_id, server_folder)
    before = LocationModel.internal_date < cutoff
    found = [
        location_from(tenant_id, user_id, server_folder, item)
        # DynamoDB's Limit counts the items a page reads before the filter; PynamoDB would set it
        # to ``limit``, paging a large folder in requests of that many. Pages of up to 1 MB instead.
        for item in LocationModel.query(pk, filter_condition=before, limit=limit, page_size=_SWEEP_PAGE_ITEMS)
    ]
    _delete_legacy_windows(tenant_id, user_id, server_folder, cutoff, limit)
    return found


def _delete_legacy_windows(
    tenant_id: str, user_id: str, server_folder: str, cutoff: datetime | None, limit: int | None
) -> None:
    """Earlier builds kept a window item per location (``WindowModel``), written and deleted with
    it. Nothing reads them for aging out any more (their locations carry the same INTERNALDATE and
    are found above), so they are only left over: deleted as they age out (before ``cutoff``), up
    to ``limit`` a sweep; None: all of the folder's. Once every deployment has run this build for
    longer than the longest sync window (365 days; 30 by default) none can be left and this can go."""
    pk = keys.window_pk(tenant_id, user_id, server_folder)
    older = None if cutoff is None else WindowModel.sk < keys.iso(cutoff)
    only_keys = [WindowModel.pk.attr_name, WindowModel.sk.attr_name]
    with WindowModel.batch_write() as batch:
        for window in WindowModel.query(pk, older, limit=limit, attributes_to_get=only_keys):
            batch.delete(window)


def forget_folder_windows(tenant_id: str, user_id: str, server_folder: str) -> None:
    """(sync core) Every window item an earlier build left for a server folder that is no longer
    synced: its sweeps are over, so none would ever age out. Finite: builds that wrote them are gone."""
    _delete_legacy_windows(tenant_id, user_id, server_folder, None, None)


def ids_for_match_key(tenant_id: str, user_id: str, key: str) -> list[str]:
    """(sync core) Mailsync ids of the messages with this match key (Message-ID or content hash)."""
    return [item.id for item in MatchKeyModel.query(keys.match_pk(tenant_id, user_id, key))]


class Unstorable(Exception):
    """A new message's item is over a DynamoDB limit (its metadata must shrink to be stored)."""


def store_new_messages(rows: list[tuple[Message, Location]]) -> None:
    """(sync core) Store new messages with their locations; locations go last (a location marks a
    server copy as done, so a crash in between is redone under the same deterministic id)."""
    items = [(message_item(m), location_record(loc)) for m, loc in rows]
    try:
        write_new_messages(items)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ValidationException":
            raise
        raise Unstorable(str(exc)) from exc


def relink(message: Message, to: Location, shown: Mapping[str, Any], old: Location | None) -> None:
    """(sync core) Point a message at its new server copy, atomically (a move must never look
    like a removal); ``shown``: ``Message`` attributes to write along."""
    fields = message_fields(message.tenant_id, message.user_id, dict(shown))
    with transaction() as tx:
        tx.save(location_record(to))
        tx.update(message_key(message), actions=set_actions(MessageModel, fields))
        if old is not None:
            tx.delete(location_record(old))


def detach(message: Message, location: Location, reason: str, *, first: bool = False) -> None:
    """(sync core) Stop syncing a message but keep it, atomically with removing its location.
    ``first``: the account has no detached message on record yet, and the same request records
    one (``has_detached``). Left to the sync's next checkpoint, a failure before that would
    leave it off, and the message would be stored anew rather than revived if it came back."""
    fields = {"state": "detached", "detach_reason": reason, "detached_at": utcnow(), "updated_at": utcnow()}
    with transaction() as tx:
        tx.update(message_key(message), actions=set_actions(MessageModel, fields))
        tx.delete(location_record(location))
        if first:
            tx.update(state_key(message.tenant_id, message.user_id), actions=[SyncStateModel.has_detached.set(True)])


def drop(location: Location) -> None:
    """(sync core) Forget a server copy whose message is gone or elsewhere: one item, so no
    transaction (which would cost twice the write units)."""
    location_record(location).delete()


def set_flags(
    message: Message, location: Location, flags: list[str], seen: bool, agreed: list[str] | None = None
) -> None:
    """(sync core) Flags shown on the message, and those last agreed with the server on its
    location (they differ only while a CRM change waits)."""
    with transaction() as tx:
        tx.update(
            message_key(message),
            actions=[MessageModel.flags.set(flags), MessageModel.seen.set(seen), MessageModel.updated_at.set(utcnow())],
        )
        tx.update(location_record(location), actions=[LocationModel.flags.set(flags if agreed is None else agreed)])


def finish_op(op: Op, message: Message | None, shown: Mapping[str, Any] | None = None) -> None:
    """(sync core) The op reached the server (or was dropped): remove it and update the message
    (``shown``: ``Message`` attributes) in one go."""
    with transaction() as tx:
        tx.delete(op_key(op), condition=OpModel.pk.exists())
        tx.update(state_key(op.tenant_id, op.user_id), actions=[SyncStateModel.ops_pending.add(-1)])
        if message is not None:
            fields = message_fields(message.tenant_id, message.user_id, dict(shown or {}))
            actions = [*set_actions(MessageModel, fields), MessageModel.pending_ops.add(-1)]
            tx.update(message_key(message), actions=actions, condition=MessageModel.pk.exists())


def count_attempt(op: Op) -> int:
    """(sync core) One more transient failure of ``op``; the new count (0 if the op is gone)."""
    item = op_key(op)
    try:
        item.update(actions=[OpModel.attempts.add(1)], condition=OpModel.pk.exists())
    except UpdateError as exc:
        if conditional_failure(exc):
            return 0
        raise
    return int(item.attempts or 0)


def idempotency_store() -> DynamoDBPersistenceLayer:
    """Where Powertools Idempotency keeps its records (the idempotency table), for retried POSTs.

    One per table and client, as Powertools means it to be used: each one built registers a
    hook on the client (its feature name for the User-Agent) that is never removed, so one built
    per send made every DynamoDB request of a warm API function run one more hook per send."""
    return _idempotency_store(get_settings().idempotency_table, client("dynamodb"))


@lru_cache(maxsize=4)  # a few: tests change tables and clients
def _idempotency_store(table: str, dynamodb: Any) -> DynamoDBPersistenceLayer:
    return DynamoDBPersistenceLayer(table_name=table, boto3_client=dynamodb)
