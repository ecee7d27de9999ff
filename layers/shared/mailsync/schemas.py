"""Request and response models of the HTTP API (they also produce the OpenAPI document)."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from mailsync.domain import WEEKDAYS, OfficeHours
from mailsync.sync.planner.polling import TIME_OF_DAY, known_time_zones

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

Security = Literal["ssl", "starttls", "none"]
Protocol = Literal["imap", "pop3"]

DEFAULT_PORTS = {
    ("imap", "ssl"): 993,
    ("imap", "starttls"): 143,
    ("imap", "none"): 143,
    ("pop3", "ssl"): 995,
    ("pop3", "starttls"): 110,
    ("pop3", "none"): 110,
}


def default_port(protocol: str, security: str) -> int:
    return DEFAULT_PORTS[(protocol, security)]


def _check_host(value: str) -> str:
    value = value.strip()
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    name = value.rstrip(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
        raise ValueError("must be a host name or an IP address")
    return name.lower()


def _encodable(value: str) -> str:
    # JSON may carry lone surrogates ("\\ud800"): valid in a Python str, but no UTF-8 encoder,
    # KMS or DynamoDB accepts them. The value itself is never echoed (it may be a password).
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _encodable_secret(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        _encodable(value.get_secret_value())
    return value


class MailSettingsIn(BaseModel):
    """The "E-mail settings" screen. `password` is write-only: required on create, omit it to keep the saved one."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, max_length=255, examples=["imap.example.com"])
    port: int | None = Field(default=None, ge=1, le=65535, description="Default: 993/143 (IMAP), 995/110 (POP3)")
    username: str = Field(min_length=1, max_length=320)
    password: SecretStr | None = Field(
        default=None, min_length=1, max_length=1024, json_schema_extra={"writeOnly": True}
    )
    security: Security = "ssl"
    protocol: Protocol = "imap"
    fetch_enabled: bool = True
    keep_copy: bool = Field(default=True, description="POP3 only: leave fetched mail on the server")
    remove_after_days: int | None = Field(
        default=None,
        ge=1,
        le=3650,
        description="POP3 with keep_copy only: delete fetched mail from the server this many days after it was "
        "fetched (null: never)",
    )
    incoming_confidential: bool = False
    outgoing_confidential: bool = False
    sync_window_days: int = Field(default=30, ge=1, le=365)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        return _encodable(value)

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        return _encodable_secret(value)


class MailSettingsTestIn(BaseModel):
    """Settings to try before saving; any field left out is taken from the saved settings."""

    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(default=None, min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = Field(default=None, min_length=1, max_length=320)
    password: SecretStr | None = Field(
        default=None, min_length=1, max_length=1024, json_schema_extra={"writeOnly": True}
    )
    security: Security | None = None
    protocol: Protocol | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return None if value is None else _check_host(value)

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        return None if value is None else _encodable(value)

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        return _encodable_secret(value)


class MailSettingsOut(BaseModel):
    user_id: str
    host: str
    port: int
    username: str
    security: Security
    protocol: Protocol
    fetch_enabled: bool
    keep_copy: bool
    remove_after_days: int | None = None
    incoming_confidential: bool
    outgoing_confidential: bool
    sync_window_days: int
    password_set: bool
    status: str = Field(
        description="pending | ok | disabled | auth_failed | tls_failed | connect_failed | timeout | server_busy | "
        "protocol_mismatch | server_misbehaving; OAuth2 mailboxes: reauth_required (connect again), "
        "token_rejected, provider_unavailable"
    )
    last_error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    auth: Literal["password", "oauth2"] = Field(
        default="password", description="`oauth2`: connected by a Google or Microsoft consent (no password)"
    )
    provider: Literal["google", "microsoft"] | None = None
    oauth_scopes: list[str] | None = None
    connected_at: datetime | None = Field(default=None, description="When the OAuth2 consent was given")


class ConnectionTestOut(BaseModel):
    ok: bool = True
    protocol: Protocol
    capabilities: list[str]


class ServerFolderOut(BaseModel):
    name: str = Field(description="Decoded folder name (IMAP modified UTF-7 already decoded)")
    delimiter: str | None
    flags: list[str]
    special_use: str | None
    suggested: str | None = Field(description="Suggested CRM folder, or null")


class ServerFoldersOut(BaseModel):
    folders: list[ServerFolderOut]


class FolderMapOut(BaseModel):
    folders: dict[str, str] = Field(description='CRM folder -> server folder, e.g. {"inbox": "INBOX", "sent": "Sent"}')
    saved: bool
    updated_at: datetime | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


class AddressOut(BaseModel):
    name: str | None = None
    email: str


class AttachmentOut(BaseModel):
    filename: str | None = None
    content_type: str
    size: int


class RelayVerdictsOut(BaseModel):
    """SES's verdicts: `PASS`, `FAIL`, `GRAY`, `PROCESSING_FAILED` or `DISABLED` (null: not reported)."""

    spam: str | None = None
    virus: str | None = None
    spf: str | None = None
    dkim: str | None = None
    dmarc: str | None = None


class MessageOut(BaseModel):
    id: str = Field(description="Our stable id: it survives moves between mapped folders and UIDVALIDITY resets")
    user_id: str
    folder: str = Field(description="CRM folder")
    server_folder: str
    uidvalidity: int | None = Field(default=None, description="UIDVALIDITY of the server folder when last synced")
    uid: int | None = Field(default=None, description="UID in the server folder when last synced")
    flags: list[str]
    seen: bool
    subject: str | None = None
    from_: list[AddressOut] = Field(alias="from", serialization_alias="from")
    to: list[AddressOut]
    cc: list[AddressOut]
    date: datetime | None = None
    internal_date: datetime
    size: int
    internet_message_id: str | None = Field(
        default=None, description="The RFC 5322 Message-ID header (`id` is Mailsync's own id of the message)"
    )
    in_reply_to: str | None = None
    references: list[str]
    thread_id: str
    snippet: str
    attachments: list[AttachmentOut]
    participants: list[str]
    state: Literal["synced", "detached"]
    detach_reason: Literal["removed", "moved_unmapped", "aged_out", "relayed", "pop3"] | None = Field(
        default=None,
        description="`relayed`: it came in through the relay address and is on no mail server (yet); "
        "`pop3`: fetched over POP3 (or written in the CRM of a POP3 account): the CRM follows no server copy",
    )
    sync_state: Literal["synced", "pending", "failed", "local"] = Field(
        description="`pending` while a change made in the CRM has not reached the mail server yet; "
        "`failed` when the last one could not be applied (`last_op_error` says why); `local`: mail of a "
        "POP3 account, whose changes stay in the CRM (POP3 has no folders and no flags)"
    )
    last_op_error: str | None = Field(default=None, description="Why the last CRM change could not be applied")
    confidential: bool = Field(default=False, description="Only the owner can see this message")
    metadata_truncated: bool = Field(
        default=False, description="Some header fields were cut to fit storage limits; the raw message is whole"
    )
    too_large: bool = Field(
        default=False, description="Over the size cap: only the headers were stored (the raw copy is the headers)"
    )
    relay_verdicts: RelayVerdictsOut | None = Field(
        default=None, description="What SES found, for a message that came in through the relay address"
    )

    model_config = ConfigDict(populate_by_name=True)


class MessagePatchIn(BaseModel):
    """Mark read/unread and/or move to another mapped CRM folder."""

    model_config = ConfigDict(extra="forbid")

    seen: bool | None = None
    folder: str | None = Field(default=None, pattern=r"^[a-z0-9_-]{1,40}$", description="A mapped CRM folder")
    confidential: bool | None = Field(
        default=None, description="Owner only: applies to the whole thread, including replies that arrive later"
    )


class MessageSendIn(BaseModel):
    """A message written in the CRM, to be placed in the mapped server folder (Sent by default)."""

    model_config = ConfigDict(extra="forbid")

    raw: str = Field(min_length=1, max_length=35_000_000, description="The RFC 822 message, base64")
    folder: str = Field(default="sent", pattern=r"^[a-z0-9_-]{1,40}$")


class MessagePageOut(BaseModel):
    messages: list[MessageOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class RawLinkOut(BaseModel):
    url: str = Field(description="Short-lived download URL of the raw RFC 822 message")
    expires_in: int


class SyncRequestOut(BaseModel):
    enqueued: bool


class FolderProgressOut(BaseModel):
    total: int
    done: int


class FolderSyncOut(BaseModel):
    server_folder: str
    crm_folder: str
    messages: int | None = Field(
        default=None, description="Messages of this folder the CRM has in sync now (shown to the owner only)"
    )
    server_messages: int | None = Field(default=None, description="MESSAGES from the server's last STATUS")
    first_sync: FolderProgressOut | None = Field(default=None, description="Progress while the first sync runs")
    error: str | None = None


class SyncStatusOut(BaseModel):
    state: str = Field(description="never | idle | syncing | failed (IMAP and POP3 accounts alike)")
    account_status: str
    last_started_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = Field(
        default=None,
        description="Why the last sync failed",
    )
    folders: list[FolderSyncOut]


_EMAIL = r"^[^@\s]{1,64}@[^@\s]{1,255}$"
# Together well under DynamoDB's 400 KB item limit (the tenant settings are one item).
MAX_CONTACTS_BYTES = 300_000
MAX_KEYWORDS_BYTES = 50_000


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DEFAULT_HOURS = OfficeHours()


class OfficeHoursBody(BaseModel):
    """When the tenant's mailboxes are polled every minute; outside these hours every 15 minutes
    (a mailbox that changed in the last 30 minutes stays on every minute)."""

    model_config = ConfigDict(extra="forbid")

    time_zone: str = Field(
        default=_DEFAULT_HOURS.time_zone, max_length=64, description="IANA time zone, e.g. Europe/Amsterdam"
    )
    days: list[Weekday] = Field(
        default=list(_DEFAULT_HOURS.days),
        max_length=7,
        description="The days whose office hours start on them (an empty list: never office hours)",
    )
    start: str = Field(default=_DEFAULT_HOURS.start, pattern=TIME_OF_DAY.pattern, description="Local time HH:MM")
    end: str = Field(
        default=_DEFAULT_HOURS.end,
        pattern=TIME_OF_DAY.pattern,
        description="Local time HH:MM, exclusive; at or before `start`: the hours run past midnight "
        "(equal to `start`: the whole day)",
    )

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value not in known_time_zones():
            raise ValueError("must be an IANA time zone name, such as Europe/Amsterdam")
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each day at most once")
        return sorted(value, key=WEEKDAYS.index)

    def to_domain(self) -> OfficeHours:
        return OfficeHours(time_zone=self.time_zone, days=tuple(self.days), start=self.start, end=self.end)

    @classmethod
    def of(cls, hours: OfficeHours) -> OfficeHoursBody:
        return cls.model_construct(time_zone=hours.time_zone, days=list(hours.days), start=hours.start, end=hours.end)


class TenantSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    confidential_keywords: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        max_length=200,
        description=f"Whole words, case-insensitive, matched in subjects (at most {MAX_KEYWORDS_BYTES:,} bytes in all)",
    )
    confidential_contacts: list[Annotated[str, Field(pattern=_EMAIL, max_length=320)]] = Field(
        max_length=5000,
        description="E-mail addresses: mail from (incoming) or to (outgoing) them is confidential "
        f"(at most {MAX_CONTACTS_BYTES:,} bytes of UTF-8 in all)",
    )
    office_hours: OfficeHoursBody | None = Field(
        default=None, description="Omitted: the saved office hours stay; a field omitted inside: its default"
    )

    @field_validator("confidential_keywords", "confidential_contacts")
    @classmethod
    def _texts(cls, value: list[str], info: ValidationInfo) -> list[str]:
        texts = [_encodable(v) for v in value]
        # Both lists live in one DynamoDB item (400 KB at most): the per-entry limits alone
        # allow 5,000 x 320 characters, far more than one item holds.
        limit = MAX_CONTACTS_BYTES if info.field_name == "confidential_contacts" else MAX_KEYWORDS_BYTES
        if sum(len(t.encode("utf-8")) for t in texts) > limit:
            raise ValueError(f"the entries together must not exceed {limit:,} bytes")
        return texts


class TenantSettingsOut(BaseModel):
    confidential_keywords: list[str]
    confidential_contacts: list[str]
    office_hours: OfficeHoursBody = Field(description="As saved, or the defaults")


class DossierMessageOut(MessageOut):
    owner: str = Field(description="The user whose mailbox holds this message")


class DossierPageOut(BaseModel):
    messages: list[DossierMessageOut]
    next_cursor: str | None


class RelayAddressOut(BaseModel):
    address: str = Field(
        description="Mail to this address lands in the user's CRM folder `inbox` (point Exchange's relay/forward here)"
    )


class OAuthStartIn(BaseModel):
    """Where the browser returns after the consent: an address of an origin this deployment allows."""

    model_config = ConfigDict(extra="forbid")

    return_url: str = Field(
        min_length=1,
        max_length=2048,
        description="Gets `?result=confirm` with `#oauth_state=...&oauth_code=...` (finish with "
        "`POST /v1/oauth/finish`), or `?result=error&code=...`",
    )


class OAuthStartOut(BaseModel):
    authorization_url: str = Field(description="Send the user's browser here (valid for a few minutes, once)")


class OAuthFinishIn(BaseModel):
    """What the return URL's fragment carried, sent by the CRM frontend with the JWT of the user
    who started the consent."""

    model_config = ConfigDict(extra="forbid")

    state: str = Field(min_length=1, max_length=512, description="`oauth_state` from the return URL's fragment")
    code: str = Field(min_length=1, max_length=4096, description="`oauth_code` from the return URL's fragment")


class OAuthFinishOut(BaseModel):
    result: Literal["connected", "error"]
    code: str | None = Field(
        default=None,
        description="With `error`: `token_exchange_failed`, `wrong_account_type` or `settings_changed`",
    )


class DeploymentOut(BaseModel):
    """What this deployment accepts; a settings screen offers only these."""

    security: list[Security] = Field(
        description="The `security` values mail settings may use (`none` only where the deployment allows it)"
    )
    oauth_providers: list[Literal["google", "microsoft"]] = Field(
        description="Providers whose Connect button works here (an OAuth2 app is registered)"
    )
    relay_addresses: bool = Field(description="Whether users have a relay address (the deployment has a relay domain)")


class UserOut(BaseModel):
    """A user of the caller's tenant who has mail settings (never a credential)."""

    user_id: str
    username: str = Field(description="The mailbox login (`username` of the mail settings)")
    protocol: Protocol
    status: str = Field(description="As `status` of the mail settings")


class UserPageOut(BaseModel):
    users: list[UserOut] = Field(description="Sorted by `user_id`")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")
