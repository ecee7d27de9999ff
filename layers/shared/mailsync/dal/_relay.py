"""Relay addresses and relayed messages (re-exported by ``mailsync.dal``).

A relay address is stored as its local part (lower case): the domain is the deployment's, so
changing ``RelayDomain`` keeps every user's address. It has two items in the messages table:
``R#{local part}`` / ``RELAY`` names its user (incoming mail finds its user with one GetItem),
and ``A#{t}#{u}`` / ``RELAY`` names the user's current address. Both change together, in one
transaction.
"""

from __future__ import annotations

from pynamodb.exceptions import DoesNotExist, TransactWriteError

from mailsync.dal import _keys as keys
from mailsync.dal._items import conditional_failure, match_key_item, message_item, state_key, transaction
from mailsync.dal._items import write_message_indexes as _write_message_indexes
from mailsync.dal._models import MessageModel, RelayAddressModel, SyncStateModel
from mailsync.dal._store import Unstorable
from mailsync.domain import Message


def _pointer(tenant_id: str, user_id: str) -> RelayAddressModel:
    return RelayAddressModel(keys.account_pk(tenant_id, user_id), keys.RELAY_SK)


def _owner_item(local_part: str, tenant_id: str, user_id: str) -> RelayAddressModel:
    return RelayAddressModel(
        keys.relay_address_pk(local_part),
        keys.RELAY_SK,
        tenant_id=tenant_id,
        user_id=user_id,
        address=local_part.lower(),
    )


def relay_address_of(tenant_id: str, user_id: str) -> str | None:
    """The local part of the user's current relay address, or None before the first one is made."""
    try:
        return str(RelayAddressModel.get(keys.account_pk(tenant_id, user_id), keys.RELAY_SK).address)
    except DoesNotExist:
        return None


def create_relay_address(tenant_id: str, user_id: str, local_part: str) -> bool:
    """Give the user the address ``local_part`` unless they have one already (False: read theirs) or the
    address is taken (False too: the caller draws another)."""
    pointer = _pointer(tenant_id, user_id)
    pointer.tenant_id, pointer.user_id, pointer.address = tenant_id, user_id, local_part.lower()
    try:
        with transaction() as tx:
            tx.save(pointer, condition=RelayAddressModel.pk.does_not_exist())
            tx.save(_owner_item(local_part, tenant_id, user_id), condition=RelayAddressModel.pk.does_not_exist())
    except TransactWriteError as exc:
        if conditional_failure(exc):
            return False
        raise
    return True


def rotate_relay_address(tenant_id: str, user_id: str, old: str, new: str) -> bool:
    """Replace the user's address ``old`` by ``new``: from then on mail to ``old`` finds nobody.
    False when the user's address is no longer ``old`` (a concurrent rotation) or ``new`` is taken."""
    pointer = _pointer(tenant_id, user_id)
    try:
        with transaction() as tx:
            tx.update(
                pointer,
                actions=[RelayAddressModel.address.set(new.lower())],
                condition=RelayAddressModel.address == old.lower(),
            )
            tx.delete(RelayAddressModel(keys.relay_address_pk(old), keys.RELAY_SK))
            tx.save(_owner_item(new, tenant_id, user_id), condition=RelayAddressModel.pk.does_not_exist())
    except TransactWriteError as exc:
        if conditional_failure(exc):
            return False
        raise
    return True


def relay_user(local_part: str) -> tuple[str, str] | None:
    """(tenant, user) whose current relay address has ``local_part`` (any case); None for an
    unknown or rotated address."""
    try:
        item = RelayAddressModel.get(keys.relay_address_pk(local_part), keys.RELAY_SK)
    except DoesNotExist:
        return None
    return str(item.tenant_id), str(item.user_id)


def store_relayed(message: Message) -> bool:
    """Store a message that came in through the relay address (no server copy yet); False when
    it is stored already (a redelivery, or a rerun after a crash: its indexes are rewritten).

    The account's sync state is marked ``has_detached`` in the same transaction, so a later
    sync that finds the same message on the server links it to this one instead of storing it
    twice (the engine revives detached messages by match key).
    """
    created = True
    try:
        with transaction() as tx:
            tx.save(message_item(message), condition=MessageModel.pk.does_not_exist())
            tx.save(match_key_item(message))
            tx.update(
                state_key(message.tenant_id, message.user_id),
                actions=[
                    SyncStateModel.has_detached.set(True),
                    # A state item made here must not read as a sync that ran ("idle").
                    SyncStateModel.state.set(SyncStateModel.state | "never"),
                ],
            )
    except TransactWriteError as exc:
        if conditional_failure(exc):
            created = False
        elif getattr(exc, "cause_response_code", None) == "ValidationException":
            raise Unstorable(str(exc)) from exc
        else:
            raise
    _write_message_indexes([message])
    return created
