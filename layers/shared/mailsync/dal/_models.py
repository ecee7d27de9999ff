"""PynamoDB models of the two tables (private to ``mailsync.dal``).

Table names come from the settings whenever a model talks to DynamoDB (``_SettingsTable``):
nothing has to bind them, and tests that change the environment only clear the settings cache.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pynamodb.attributes import (
    Attribute,
    BinaryAttribute,
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.constants import LIST, MAP
from pynamodb.indexes import GlobalSecondaryIndex, IncludeProjection
from pynamodb.models import Model

from mailsync.config import get_settings
from mailsync.domain import Address, Attachment, RelayVerdicts, dossier_addresses


def utcnow() -> datetime:
    return datetime.now(UTC)


class _SettingsTable(type):
    """Metaclass of a model's ``Meta``: ``table_name`` is read from the current settings."""

    setting: str

    @property
    def table_name(cls) -> str:
        return str(getattr(get_settings(), cls.setting))


class _Timeouts:
    # Every DynamoDB call of ours is bounded: a slow request must not eat a Lambda's time.
    connect_timeout_seconds = 5
    read_timeout_seconds = 20
    # The sync worker's threads share each model's client (see ``_connections``): its polls, and
    # each sync with work's batch-write and store threads; as many as botocore's (aws.py).
    max_pool_connections = 160


class _AccountsTable(_Timeouts, metaclass=_SettingsTable):
    setting = "accounts_table"


class _MessagesTable(_Timeouts, metaclass=_SettingsTable):
    setting = "messages_table"


# ---------------------------------------------------------------------------------------------
# Accounts table
# ---------------------------------------------------------------------------------------------


class DueIndex(GlobalSecondaryIndex):
    """Sparse: only accounts that should be synced carry ``due_shard``. Besides the keys it carries
    ``last_activity_at``, which the scheduler's polling decision needs (``planner.polling``)."""

    class Meta:
        index_name = "due-index"
        projection = IncludeProjection(["last_activity_at"])

    due_shard = NumberAttribute(hash_key=True)
    next_sync_at = NumberAttribute(range_key=True)


class AccountModel(Model):
    """One CRM user's mailbox (``domain.Account``)."""

    Meta = _AccountsTable

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
    remove_after_days = NumberAttribute(null=True)
    incoming_confidential = BooleanAttribute(default=False)
    outgoing_confidential = BooleanAttribute(default=False)
    sync_window_days = NumberAttribute(default=30)
    status = UnicodeAttribute(default="pending")
    last_error = UnicodeAttribute(null=True)
    settings_version = NumberAttribute(default=1)
    folder_map = MapAttribute(null=True)
    folder_map_updated_at = UTCDateTimeAttribute(null=True)
    due_shard = NumberAttribute(null=True)
    next_sync_at = NumberAttribute(null=True)
    last_activity_at = NumberAttribute(null=True)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)
    updated_at = UTCDateTimeAttribute(default=utcnow)
    auth = UnicodeAttribute(default="password")
    provider = UnicodeAttribute(null=True)
    oauth_scopes = UnicodeAttribute(null=True)
    connected_at = UTCDateTimeAttribute(null=True)
    refresh_token_ciphertext = BinaryAttribute(null=True, legacy_encoding=False)

    due = DueIndex()

    def mapped_folders(self) -> dict[str, str]:
        """CRM folder -> server folder; before a map is saved, INBOX alone is synced."""
        return dict(self.folder_map.as_dict()) if self.folder_map is not None else {"inbox": "INBOX"}


TENANT_SETTINGS_USER = "#tenant"  # user ids cannot contain "#": no account can collide


class TenantSettingsModel(Model):
    """Tenant-wide privacy settings, stored beside the tenant's accounts."""

    Meta = _AccountsTable

    tenant_id = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute(range_key=True, default=TENANT_SETTINGS_USER)
    confidential_keywords = ListAttribute(of=UnicodeAttribute, null=True)
    confidential_contacts = ListAttribute(of=UnicodeAttribute, null=True)
    updated_at = UTCDateTimeAttribute(default=utcnow)


OFFICE_HOURS_USER = "#office_hours"


class OfficeHoursModel(Model):
    """A tenant's office hours (``domain.OfficeHours``), in an item of their own: the scheduler
    reads them every tick, and a read costs by the item's size (the privacy settings may fill
    hundreds of KB)."""

    Meta = _AccountsTable

    tenant_id = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute(range_key=True, default=OFFICE_HOURS_USER)
    time_zone = UnicodeAttribute()
    days = ListAttribute(of=UnicodeAttribute)
    start = UnicodeAttribute()
    end = UnicodeAttribute()
    updated_at = UTCDateTimeAttribute(default=utcnow)


# ---------------------------------------------------------------------------------------------
# Messages table
# ---------------------------------------------------------------------------------------------


class AddressList(Attribute[list[Address]]):
    """A list of ``domain.Address``, stored as a list of maps ``{name?, email}``."""

    attr_type = LIST

    def serialize(self, value: Any) -> list[dict[str, Any]]:
        out = []
        for address in value:
            entry: dict[str, Any] = {"email": {"S": address.email}}
            if address.name is not None:
                entry["name"] = {"S": address.name}
            out.append({"M": entry})
        return out

    def deserialize(self, value: Any) -> list[Address]:
        out = []
        for item in value:
            entry = item["M"]
            out.append(Address(email=entry["email"]["S"], name=entry["name"]["S"] if "name" in entry else None))
        return out


class AttachmentList(Attribute[list[Attachment]]):
    """A list of ``domain.Attachment``, stored as a list of maps ``{filename?, content_type, size}``."""

    attr_type = LIST

    def serialize(self, value: Any) -> list[dict[str, Any]]:
        out = []
        for attachment in value:
            entry: dict[str, Any] = {
                "content_type": {"S": attachment.content_type},
                "size": {"N": str(int(attachment.size))},
            }
            if attachment.filename is not None:
                entry["filename"] = {"S": attachment.filename}
            out.append({"M": entry})
        return out

    def deserialize(self, value: Any) -> list[Attachment]:
        out = []
        for item in value:
            entry = item["M"]
            out.append(
                Attachment(
                    content_type=entry["content_type"]["S"],
                    size=int(entry["size"]["N"]),
                    filename=entry["filename"]["S"] if "filename" in entry else None,
                )
            )
        return out


class VerdictsAttribute(Attribute[RelayVerdicts]):
    """``domain.RelayVerdicts``, stored as a map of the verdicts SES reported."""

    attr_type = MAP

    def serialize(self, value: Any) -> dict[str, Any]:
        return {name: {"S": text} for name, text in vars(value).items() if text is not None}

    def deserialize(self, value: Any) -> RelayVerdicts:
        return RelayVerdicts(**{name: entry["S"] for name, entry in value.items() if name in _VERDICTS})


_VERDICTS = frozenset(vars(RelayVerdicts()))


# The listings' indexes hold the keys and what their filters compare (template.yaml says the
# same): a page is read from the index, its messages by key (``list_messages``). Projecting
# every attribute would write each message three times over in full.
LISTING_FILTERS = ["seen", "confidential"]


class AccountIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "gsi1"
        projection = IncludeProjection(LISTING_FILTERS)

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class FolderIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "gsi2"
        projection = IncludeProjection(LISTING_FILTERS)

    gsi2pk = UnicodeAttribute(hash_key=True)
    gsi2sk = UnicodeAttribute(range_key=True)


class _Item(Model):
    Meta = _MessagesTable

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)


class MessageModel(_Item):
    """A message as the CRM knows it (``domain.Message``)."""

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
    from_ = AddressList(attr_name="from", default=list)
    to = AddressList(default=list)
    cc = AddressList(default=list)
    bcc = AddressList(default=list)
    reply_to = AddressList(default=list)
    date = UTCDateTimeAttribute(null=True)
    internal_date = UTCDateTimeAttribute()
    size = NumberAttribute()
    # The RFC 5322 Message-ID (stored under its first name).
    internet_message_id = UnicodeAttribute(null=True, attr_name="message_id")
    in_reply_to = UnicodeAttribute(null=True)
    references = ListAttribute(of=UnicodeAttribute, default=list)
    thread_id = UnicodeAttribute()
    snippet = UnicodeAttribute(default="")
    attachments = AttachmentList(default=list)
    # Absent: the addresses' (``_items._derived``), so no default fills it in on a read.
    participants = ListAttribute(of=UnicodeAttribute, null=True)
    parse_errors = ListAttribute(of=UnicodeAttribute, default=list)
    metadata_truncated = BooleanAttribute(default=False)
    too_large = BooleanAttribute(default=False)
    match_key = UnicodeAttribute()
    s3_key = UnicodeAttribute()
    content_hash = UnicodeAttribute()
    state = UnicodeAttribute(default="synced")
    detach_reason = UnicodeAttribute(null=True)
    detached_at = UTCDateTimeAttribute(null=True)
    pending_ops = NumberAttribute(default=0)
    last_op_error = UnicodeAttribute(null=True)
    confidential = BooleanAttribute(default=False)
    confidential_reasons = ListAttribute(of=UnicodeAttribute, default=list)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)
    # Absent: ``created_at`` (``_items._derived``), so no default fills it in on a read.
    updated_at = UTCDateTimeAttribute(default_for_new=utcnow)
    relay_verdicts = VerdictsAttribute(null=True)

    def dossier_addresses(self) -> list[str]:
        """Addresses whose dossier this message belongs to: From, To and Cc."""
        return dossier_addresses(self)


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
    """Legacy: a synced message by INTERNALDATE, written by earlier builds with each location.
    Aging out now reads the locations themselves; these are deleted as they age out
    (``_store._delete_legacy_windows``)."""

    id = UnicodeAttribute()
    loc_sk = UnicodeAttribute()


class MatchKeyModel(_Item):
    """Message-ID (or content hash) -> Mailsync ids, to recognise a moved message."""

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
    id = UnicodeAttribute(attr_name="message_id")  # the message it changes (stored under its first name)
    seen = BooleanAttribute(null=True)
    folder = UnicodeAttribute(null=True)  # CRM folder (move)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)
    attempts = NumberAttribute(default=0)


class RelayAddressModel(_Item):
    """A relay address: under ``R#{address}`` who it belongs to (the direct lookup of incoming
    mail), and under the user's ``A#{t}#{u}`` / ``RELAY`` which address is theirs now."""

    tenant_id = UnicodeAttribute()
    user_id = UnicodeAttribute()
    address = UnicodeAttribute()
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)
