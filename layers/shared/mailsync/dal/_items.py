"""Items <-> domain values, the one factory of each item, and writes shared by both APIs of the package."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from pynamodb.exceptions import UpdateError
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from mailsync import blobstore
from mailsync.dal import _keys as keys
from mailsync.dal._models import (
    AccountModel,
    ContactIndexModel,
    LocationModel,
    MatchKeyModel,
    MessageModel,
    OpModel,
    SyncStateModel,
    ThreadMemberModel,
    utcnow,
)
from mailsync.domain import Account, Location, Message, Op, SyncState
from mailsync.observability import with_log_keys

_MESSAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Message))
_TUPLES = frozenset(
    {
        "flags",
        "from_",
        "to",
        "cc",
        "bcc",
        "reply_to",
        "references",
        "attachments",
        "participants",
        "parse_errors",
        "confidential_reasons",
    }
)
_INTS = frozenset({"uidvalidity", "uid", "size", "pending_ops"})


def _plain(value: Any) -> Any:
    """Numbers read back from DynamoDB as int; everything else as is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# --- messages ------------------------------------------------------------------------------------


def message_item(message: Message) -> MessageModel:
    """The one factory of a message item: keys and index attributes are derived here only."""
    sort_key = keys.message_sort_key(message.internal_date, message.id)
    values = {name: getattr(message, name) for name in _MESSAGE_FIELDS}
    values = {name: list(value) if name in _TUPLES else value for name, value in values.items()}
    now = utcnow()  # one instant for both stamps: a new item then leaves ``updated_at`` out
    for stamp in ("created_at", "updated_at"):
        if values[stamp] is None:
            values[stamp] = now
    return MessageModel(
        keys.message_pk(message.id),
        keys.MESSAGE_SK,
        gsi1pk=keys.account_pk(message.tenant_id, message.user_id),
        gsi1sk=sort_key,
        gsi2pk=keys.folder_gsi_pk(message.tenant_id, message.user_id, message.folder),
        gsi2sk=sort_key,
        **values,
    )


def message_from(item: MessageModel) -> Message:
    values: dict[str, Any] = {}
    derived: dict[str, Any] | None = None
    for name in _MESSAGE_FIELDS:
        value = getattr(item, name)
        if value is None and name in _DERIVABLE:
            derived = _derived(item) if derived is None else derived
            value = derived.get(name)
        if name in _TUPLES:
            value = tuple(value or ())
        elif name in _INTS and value is not None:
            value = int(value)
        values[name] = value
    values["seen"] = bool(values["seen"])
    values["confidential"] = bool(values["confidential"])
    values["metadata_truncated"] = bool(values["metadata_truncated"])
    values["too_large"] = bool(values["too_large"])
    values["pending_ops"] = int(values["pending_ops"] or 0)
    values["snippet"] = values["snippet"] or ""
    return Message(**values)


# Attributes a new message item leaves out when ``_derived`` gives them back exactly: the keys
# hold the id, tenant, user, CRM folder and INTERNALDATE already. Under 1 KB an item costs one
# write unit instead of two. Stored items rely on these rules as they are: a change to
# ``_derived`` must still read every item written before it.
_DERIVABLE = frozenset(
    {
        "id",
        "tenant_id",
        "user_id",
        "folder",
        "internal_date",
        "updated_at",
        "match_key",
        "participants",
        "thread_id",
        "s3_key",
    }
)
# Never changed by an update: what ``_derived`` reads (a stored item may lack what it gives from
# them) and what the keys hold. The CRM folder changes with its index key (``message_fields``).
_DERIVATION_SOURCES = frozenset(
    {
        "id",
        "tenant_id",
        "user_id",
        "internal_date",
        "created_at",
        "internet_message_id",
        "content_hash",
        "from_",
        "reply_to",
        "to",
        "cc",
        "bcc",
        "references",
        "in_reply_to",
    }
)


def _derived(item: MessageModel) -> dict[str, Any]:
    """The ``_DERIVABLE`` attributes as they follow from the rest of ``item`` (those that do)."""
    values = item.attribute_values  # by attribute name; PynamoDB's descriptors cost CPU per message
    out: dict[str, Any] = {}
    pk, account_key, folder_key = values.get("pk") or "", values.get("gsi1pk") or "", values.get("gsi2pk") or ""
    if pk.startswith("M#"):
        out["id"] = pk[2:]
    account = account_key.split("#")
    if len(account) == 3 and account[0] == "A":
        out["tenant_id"], out["user_id"] = account[1], account[2]
        if folder_key.startswith(f"{account_key}#F#"):
            out["folder"] = folder_key[len(account_key) + 3 :]
    # gsi1sk is ``keys.message_sort_key``: UTC to the microsecond ("Z"), then "#" and the id.
    when = (values.get("gsi1sk") or "").split("#", 1)[0]
    if when.endswith("Z"):
        with contextlib.suppress(ValueError):
            out["internal_date"] = datetime.fromisoformat(when)
    out["updated_at"] = values.get("created_at")
    mid, content_hash = values.get("internet_message_id"), values.get("content_hash")
    if content_hash and "user_id" in out:
        # A message stored on its own (every message but a first sync's packed ones).
        out["s3_key"] = blobstore.raw_key(out["tenant_id"], out["user_id"], content_hash)
    out["match_key"] = f"mid:{mid}" if mid else f"sha:{content_hash}"
    groups = (values.get(name) or () for name in ("from_", "reply_to", "to", "cc", "bcc"))
    out["participants"] = list(dict.fromkeys(a.email.lower() for group in groups for a in group))
    # The thread root as ``mime.thread_key`` finds it, from what the item kept of the headers.
    references = values.get("references")
    root = (references[0] if references else None) or values.get("in_reply_to") or mid or content_hash
    if root:
        out["thread_id"] = hashlib.sha256(root.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return out


def message_key(message: Any) -> MessageModel:
    """The key of ``message``'s item (anything with an ``id``), for updates and deletes."""
    return MessageModel(keys.message_pk(message.id), keys.MESSAGE_SK)


def message_fields(tenant_id: str, user_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Attributes to write for changed message fields: a new CRM folder moves the folder index too."""
    fixed = _DERIVATION_SOURCES & fields.keys()
    if fixed:
        raise ValueError(f"message attributes that are never updated: {sorted(fixed)}")
    out = {name: list(value) if name in _TUPLES and value is not None else value for name, value in fields.items()}
    if fields.get("folder") is not None:
        out["gsi2pk"] = keys.folder_gsi_pk(tenant_id, user_id, fields["folder"])
    return out


def match_key_item(message: Any) -> MatchKeyModel:
    return MatchKeyModel(
        keys.match_pk(message.tenant_id, message.user_id, message.match_key), message.id, id=message.id
    )


def contact_item(message: Any, address: str) -> ContactIndexModel:
    return ContactIndexModel(
        keys.contact_pk(message.tenant_id, address),
        keys.message_sort_key(message.internal_date, message.id),
        id=message.id,
        user_id=message.user_id,
        confidential=bool(message.confidential),
    )


def write_message_indexes(messages: Iterable[Any]) -> None:
    """Thread membership and the dossier index of new messages (idempotent puts)."""
    messages = list(messages)
    with ThreadMemberModel.batch_write() as batch:
        for m in messages:
            batch.save(
                ThreadMemberModel(
                    keys.thread_pk(m.tenant_id, m.user_id, m.thread_id), keys.thread_member_sk(m.id), id=m.id
                )
            )
    with ContactIndexModel.batch_write() as batch:
        for m in messages:
            for address in m.dossier_addresses():
                batch.save(contact_item(m, address))


# --- other items -----------------------------------------------------------------------------------


def account_from(item: AccountModel) -> Account:
    return Account(
        tenant_id=item.tenant_id,
        user_id=item.user_id,
        host=item.host,
        port=int(item.port),
        username=item.username,
        security=item.security,
        password_ciphertext=item.password_ciphertext,
        protocol=item.protocol or "imap",
        fetch_enabled=bool(item.fetch_enabled),
        keep_copy=bool(item.keep_copy),
        remove_after_days=_plain(item.remove_after_days),
        incoming_confidential=bool(item.incoming_confidential),
        outgoing_confidential=bool(item.outgoing_confidential),
        sync_window_days=int(item.sync_window_days if item.sync_window_days is not None else 30),
        status=item.status,
        last_error=item.last_error,
        settings_version=int(item.settings_version or 1),
        folder_map=dict(item.folder_map.as_dict()) if item.folder_map is not None else None,
        folder_map_updated_at=item.folder_map_updated_at,
        due_shard=_plain(item.due_shard),
        next_sync_at=_plain(item.next_sync_at),
        last_activity_at=_plain(item.last_activity_at),
        created_at=item.created_at,
        updated_at=item.updated_at,
        auth=item.auth or "password",
        provider=item.provider,
        oauth_scopes=item.oauth_scopes,
        connected_at=item.connected_at,
        refresh_token_ciphertext=item.refresh_token_ciphertext,
    )


def account_item(account: Account) -> AccountModel:
    values = dataclasses.asdict(account)
    for stamp in ("created_at", "updated_at"):
        if values[stamp] is None:
            del values[stamp]  # the model's defaults: now
    return AccountModel(**values)


def account_key(account: Any) -> AccountModel:
    return AccountModel(account.tenant_id, account.user_id)


def sync_state_from(item: SyncStateModel) -> SyncState:
    return SyncState(
        state=item.state or "idle",
        lease_owner=item.lease_owner,
        lease_expires=_plain(item.lease_expires),
        last_started_at=item.last_started_at,
        last_success_at=item.last_success_at,
        last_error=item.last_error,
        failures=int(item.failures or 0),
        last_sweep_at=_plain(item.last_sweep_at),
        has_detached=bool(item.has_detached),
        ops_pending=int(item.ops_pending or 0),
        ops_server=item.ops_server,
        folders=_plain_tree(item.folders.as_dict() if item.folders is not None else {}),
    )


def _plain_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_tree(v) for v in value]
    return _plain(value)


def state_key(tenant_id: str, user_id: str) -> SyncStateModel:
    return SyncStateModel(keys.account_pk(tenant_id, user_id), keys.STATE_SK)


def op_from(item: OpModel) -> Op:
    return Op(
        seq=int(item.seq),
        tenant_id=item.tenant_id,
        user_id=item.user_id,
        kind=item.kind,
        id=item.id,
        seen=item.seen,
        folder=item.folder,
        created_at=item.created_at,
        attempts=int(item.attempts or 0),
    )


def location_from(tenant_id: str, user_id: str, server_folder: str, item: LocationModel) -> Location:
    return Location(
        tenant_id=tenant_id,
        user_id=user_id,
        server_folder=server_folder,
        uidvalidity=int(item.uidvalidity),
        uid=int(item.uid),
        id=item.id,
        internal_date=item.internal_date,
        match_key=item.match_key,
        flags=tuple(item.flags or ()),
    )


def location_item(
    tenant_id: str, user_id: str, server_folder: str, uidvalidity: int, uid: int, /, **attributes: Any
) -> LocationModel:
    """A location record (only its key, unless ``attributes`` are given)."""
    return LocationModel(
        keys.location_pk(tenant_id, user_id, server_folder), keys.location_sk(uidvalidity, uid), **attributes
    )


# BatchWriteItem takes at most 25 puts; a batch of 50 messages is ~15 such requests, sent by
# this many threads at once (DynamoDB latency, not CPU, bounds a sequential stream).
BATCH_WRITE_ITEMS = 25
BATCH_WRITE_THREADS = 6
# Unprocessed items (throttling) are sent again this many times, with jittered backoff.
BATCH_WRITE_ATTEMPTS = 8
# Attributes of a new message item that are left out when they hold their default: reads give
# the default back (``message_from``), and an item under 1 KB costs one write unit instead of
# two, in the table and in each index. A missing attribute matches no comparison: the list
# filters on ``seen`` and ``confidential`` take a missing one as false (``list_messages``).
_OMITTED_DEFAULTS = {
    "seen": {"BOOL": False},
    "confidential": {"BOOL": False},
    "flags": {"L": []},
    "to": {"L": []},
    "cc": {"L": []},
    "bcc": {"L": []},
    "reply_to": {"L": []},
    "references": {"L": []},
    "attachments": {"L": []},
    "parse_errors": {"L": []},
    "confidential_reasons": {"L": []},
    "metadata_truncated": {"BOOL": False},
    "too_large": {"BOOL": False},
    "pending_ops": {"N": "0"},
    "state": {"S": "synced"},
}
_ATTRIBUTE_NAMES = {name: attribute.attr_name for name, attribute in MessageModel.get_attributes().items()}


def new_message_items(message: MessageModel) -> list[dict[str, Any]]:
    """A new message's items but its location, as written (DynamoDB JSON): the message, its
    match key, thread membership and dossier entries. PynamoDB serialises each item once."""
    item = {name: value for name, value in message.serialize().items() if _OMITTED_DEFAULTS.get(name) != value}
    values = message.attribute_values
    for name, value in _derived(message).items():
        if value is not None and value == values.get(name):
            item.pop(_ATTRIBUTE_NAMES[name], None)
    member = ThreadMemberModel(
        keys.thread_pk(message.tenant_id, message.user_id, message.thread_id),
        keys.thread_member_sk(message.id),
        id=message.id,
    )
    return [
        item,
        match_key_item(message).serialize(),
        member.serialize(),
        *(contact_item(message, address).serialize() for address in message.dossier_addresses()),
    ]


def write_new_messages(rows: list[tuple[MessageModel, LocationModel]]) -> None:
    """Store new messages: every item of every message in one parallel stream of BatchWriteItem
    requests, then the locations the same way. A location is what marks a server copy as done,
    so it is written only once all the rest is durable: a crash in between leaves work that is
    redone under the same deterministic id (puts: redoing is safe)."""
    if not rows:
        return
    _put_all([item for message, _ in rows for item in new_message_items(message)])
    _put_all([location.serialize() for _, location in rows])


def _put_all(items: list[dict[str, Any]]) -> None:
    """Put ``items`` (all of the messages table) in requests of 25, several at a time; raises
    the first failure (botocore's ``ClientError``) once all requests are done."""
    table = MessageModel.Meta.table_name
    requests = [items[i : i + BATCH_WRITE_ITEMS] for i in range(0, len(items), BATCH_WRITE_ITEMS)]
    if len(requests) == 1:
        _batch_write(table, requests[0])
        return
    with ThreadPoolExecutor(max_workers=min(BATCH_WRITE_THREADS, len(requests))) as pool:
        write = with_log_keys(_batch_write)
        futures = [pool.submit(write, table, chunk) for chunk in requests]
    for future in futures:
        future.result()


def _batch_write(table: str, items: list[dict[str, Any]]) -> None:
    # PynamoDB's own botocore client (shared by threads): the models' timeouts and retries, and
    # no parameter validation, which costs more CPU than the request itself for 25 items.
    connection = MessageModel._get_connection().connection
    pending: dict[str, Any] = {table: [{"PutRequest": {"Item": item}} for item in items]}
    for attempt in range(BATCH_WRITE_ATTEMPTS):
        result = connection.dispatch("BatchWriteItem", {"RequestItems": pending})
        pending = result.get("UnprocessedItems") or {}
        if not pending:
            return
        time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
    raise UnprocessedWrites(f"{sum(len(v) for v in pending.values())} items still unprocessed")


class UnprocessedWrites(Exception):
    """DynamoDB kept refusing some items of a batch write (throttling): nothing is checkpointed."""


def acquire_lease(
    tenant_id: str, user_id: str, owner: str, seconds: int, fields: dict[str, Any] | None = None
) -> SyncStateModel | None:
    """Take the account's lease (conditional write with expiry); returns the state (read by the
    same request), or None if another worker holds it. ``fields`` are written along."""
    now = int(time.time())
    state = state_key(tenant_id, user_id)
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
                *set_actions(SyncStateModel, fields or {}),
            ],
            condition=condition,
        )
    except UpdateError as exc:
        if conditional_failure(exc):
            return None
        raise
    return state


def release_lease(state: SyncStateModel, owner: str, fields: dict[str, Any] | None = None) -> None:
    """Give the lease back, writing the final sync state in the same request."""
    actions = set_actions(SyncStateModel, {**(fields or {}), "lease_owner": None, "lease_expires": None})
    try:
        state.update(actions=actions, condition=SyncStateModel.lease_owner == owner)
    except UpdateError as exc:
        if not conditional_failure(exc):
            raise


def location_record(location: Location) -> LocationModel:
    """The one factory of a location item."""
    return location_item(
        location.tenant_id,
        location.user_id,
        location.server_folder,
        location.uidvalidity,
        location.uid,
        id=location.id,
        uidvalidity=location.uidvalidity,
        uid=location.uid,
        flags=list(location.flags),
        internal_date=location.internal_date,
        match_key=location.match_key,
    )


def op_key(op: Any) -> OpModel:
    return OpModel(keys.ops_pk(op.tenant_id, op.user_id), keys.op_sk(int(op.seq)))


# --- writing ----------------------------------------------------------------------------------------


def transaction() -> TransactWrite:
    # The models' own connection: same region, endpoint and retry settings as every other call.
    return TransactWrite(connection=MessageModel._get_connection().connection)


def set_actions(model: type[Model], fields: dict[str, Any]) -> list[Any]:
    """SET each field, REMOVE those given as None."""
    actions = []
    for name, value in fields.items():
        attribute = getattr(model, name)
        actions.append(attribute.remove() if value is None else attribute.set(value))
    return actions


def conditional_failure(exc: Exception) -> bool:
    """Whether a write failed only because its condition did not hold."""
    cause = getattr(exc, "cause_response_code", None) or ""
    return "ConditionalCheckFailed" in cause or "TransactionCanceled" in cause
