"""All DynamoDB access: PynamoDB models and the queries the services need.

Table names come from settings and are bound at first use, so tests and the local stack can
point the same models at other tables (``bind_tables``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pynamodb.attributes import (
    BinaryAttribute,
    BooleanAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
    VersionAttribute,
)
from pynamodb.exceptions import DoesNotExist
from pynamodb.models import Model

from mailsync.config import Settings, get_settings


def utcnow() -> datetime:
    return datetime.now(UTC)


class AccountModel(Model):
    """One CRM user's mailbox: connection settings, folder map, sync status."""

    class Meta:
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
    # Bumped whenever connection settings change: the sync engine stops retrying a login
    # that failed until this moves.
    settings_version = NumberAttribute(default=1)
    folder_map = MapAttribute(null=True)
    folder_map_updated_at = UTCDateTimeAttribute(null=True)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)
    updated_at = UTCDateTimeAttribute(default=utcnow)
    version = VersionAttribute()


_MODELS: tuple[type[Model], ...] = (AccountModel,)


def bind_tables(settings: Settings | None = None) -> None:
    """Point the models at the configured tables."""
    settings = settings or get_settings()
    AccountModel.Meta.table_name = settings.accounts_table


def get_account(tenant_id: str, user_id: str) -> AccountModel | None:
    bind_tables()
    try:
        return AccountModel.get(tenant_id, user_id, consistent_read=True)
    except DoesNotExist:
        return None


def account_exists(tenant_id: str, user_id: str) -> bool:
    return get_account(tenant_id, user_id) is not None


def save_account(account: AccountModel) -> AccountModel:
    bind_tables()
    account.updated_at = utcnow()
    account.save()
    return account


def update_account_status(account: AccountModel, status: str, last_error: str | None) -> None:
    bind_tables()
    account.update(
        actions=[
            AccountModel.status.set(status),
            AccountModel.last_error.set(last_error) if last_error else AccountModel.last_error.remove(),
            AccountModel.updated_at.set(utcnow()),
        ]
    )


def delete_account(account: AccountModel) -> None:
    bind_tables()
    account.delete()


def new_account(tenant_id: str, user_id: str, **fields: Any) -> AccountModel:
    bind_tables()
    return AccountModel(tenant_id, user_id, **fields)
