"""What Mailsync stores, as plain values: what goes in and out of the data layer (``mailsync.dal``).

Frozen: a changed value is written through a ``dal`` function and read back (or rebuilt with
``dataclasses.replace``), never changed in place in the hope that it gets saved.

Names: ``id`` is Mailsync's id of a message; ``internet_message_id`` is its RFC 5322 Message-ID.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

INBOX_ONLY = {"inbox": "INBOX"}


@dataclass(frozen=True)
class Address:
    email: str
    name: str | None = None


@dataclass(frozen=True)
class Attachment:
    content_type: str
    size: int
    filename: str | None = None


@dataclass(frozen=True)
class Account:
    """One CRM user's mailbox: connection settings, folder map, status, due time."""

    tenant_id: str
    user_id: str
    host: str
    port: int
    username: str
    security: str
    password_ciphertext: bytes | None = None
    protocol: str = "imap"
    fetch_enabled: bool = True
    keep_copy: bool = True
    # POP3 with keep_copy: delete a fetched message from the server this many days after it was
    # fetched (None: never).
    remove_after_days: int | None = None
    incoming_confidential: bool = False
    outgoing_confidential: bool = False
    sync_window_days: int = 30
    status: str = "pending"
    last_error: str | None = None
    # Bumped whenever connection settings change: after auth_failed the sync engine logs in
    # again only once this moves.
    settings_version: int = 1
    folder_map: dict[str, str] | None = None
    folder_map_updated_at: datetime | None = None
    due_shard: int | None = None
    next_sync_at: int | None = None
    # Epoch seconds of the account's last change (a user's edit, a sync that changed something):
    # a recently active account is polled every tick even outside office hours.
    last_activity_at: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # How the mailbox logs in: "password", or "oauth2" with a refresh token from ``provider``'s
    # consent (encrypted like passwords; never leaves the data layer and the login in plain).
    auth: str = "password"
    provider: str | None = None
    oauth_scopes: str | None = None  # space separated, as OAuth2 writes scopes
    connected_at: datetime | None = None
    refresh_token_ciphertext: bytes | None = None

    def mapped_folders(self) -> dict[str, str]:
        """CRM folder -> server folder; before a map is saved, INBOX alone is synced."""
        return dict(self.folder_map) if self.folder_map is not None else dict(INBOX_ONLY)


@dataclass(frozen=True)
class RelayVerdicts:
    """SES's verdicts on a relayed message, as SES words them: ``PASS``, ``FAIL``, ``GRAY``,
    ``PROCESSING_FAILED`` or ``DISABLED`` (None: not reported)."""

    spam: str | None = None
    virus: str | None = None
    spf: str | None = None
    dkim: str | None = None
    dmarc: str | None = None


@dataclass(frozen=True)
class PopSeen:
    """A POP3 message, by its UIDL, that a sync has dealt with: stored in the CRM (``id``), or
    left on the server unstored because it was older than the sync window (``id`` None)."""

    uidl: str
    seen_at: datetime  # when a sync first saw it
    size: int | None = None  # as LIST gave it then: another size under the same UIDL is another message
    id: str | None = None  # the CRM message holding it
    stored_at: datetime | None = None  # when it was fetched and stored (remove_after_days counts from here)
    # Stored from its headers alone (over the size cap): the server holds the only whole copy,
    # so it is never deleted there.
    headers_only: bool = False
    # Fetches the server refused (TOP and RETR -ERR) while it kept listing it: retried up to
    # ``planner.pop.FETCH_ATTEMPTS`` times, then left alone on the server (never deleted).
    failures: int = 0
    # ``planner.pop.header_digest`` of its headers when stored: a message is deleted from the
    # server only when the one listed under its UIDL still has them (a reused UIDL, same size).
    header_digest: str | None = None


@dataclass(frozen=True)
class DueAccount:
    """An account whose next sync time has come, as the due index returns it at a tick."""

    tenant_id: str
    user_id: str
    next_sync_at: int = 0  # above 0: the end of a failure backoff
    last_activity_at: int | None = None


@dataclass(frozen=True)
class Message:
    """A message as the CRM knows it; it outlives its copy on the server (``state: detached``)."""

    id: str
    tenant_id: str
    user_id: str
    folder: str  # CRM folder
    server_folder: str
    internal_date: datetime
    size: int
    match_key: str
    s3_key: str  # the raw copy's locator (a key, or a byte range of a pack: see mailsync.blobstore)
    content_hash: str
    thread_id: str
    uidvalidity: int | None = None
    uid: int | None = None
    flags: tuple[str, ...] = ()
    seen: bool = False
    subject: str | None = None
    from_: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    date: datetime | None = None
    internet_message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    snippet: str = ""
    attachments: tuple[Attachment, ...] = ()
    participants: tuple[str, ...] = ()
    parse_errors: tuple[str, ...] = ()
    # Some header fields were cut to keep the item within DynamoDB's limits (the raw copy is whole).
    metadata_truncated: bool = False
    # Over the message size cap: only the headers were fetched and stored (raw copy = headers).
    too_large: bool = False
    state: str = "synced"  # synced | detached
    detach_reason: str | None = None
    detached_at: datetime | None = None
    # CRM changes not yet on the server; while > 0 the message shows the CRM's wish.
    pending_ops: int = 0
    last_op_error: str | None = None
    # Only the owner may see a confidential message (see mailsync.privacy).
    confidential: bool = False
    confidential_reasons: tuple[str, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # SES's findings on a message that came in through the relay address (None: it did not).
    relay_verdicts: RelayVerdicts | None = None

    def dossier_addresses(self) -> list[str]:
        """Addresses whose dossier this message belongs to: From, To and Cc."""
        return dossier_addresses(self)


def dossier_addresses(message: Any) -> list[str]:
    """From, To and Cc of ``message`` (anything with those address lists), lower-cased, once each."""
    seen: dict[str, None] = {}
    for group in (message.from_, message.to, message.cc):
        for address in group or ():
            if address.email:
                seen.setdefault(address.email.lower(), None)
    return list(seen)


@dataclass(frozen=True)
class Location:
    """Where a synced message lives on the server now, with the flags last agreed."""

    tenant_id: str
    user_id: str
    server_folder: str
    uidvalidity: int
    uid: int
    id: str
    internal_date: datetime
    match_key: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Change:
    """A change made in the CRM, before it is numbered and stored as an ``Op``."""

    kind: str  # seen | move | append
    seen: bool | None = None
    folder: str | None = None  # CRM folder (move)


@dataclass(frozen=True)
class Op:
    """A CRM change waiting to reach the server, in order per account (``seq``)."""

    seq: int
    tenant_id: str
    user_id: str
    kind: str  # seen | move | append
    id: str  # the message it changes (``Message.id``); an op itself is known by ``seq``
    seen: bool | None = None
    folder: str | None = None
    created_at: datetime | None = None
    # Transient failures met while applying it; it fails for good after a bounded number.
    attempts: int = 0


@dataclass(frozen=True)
class SyncState:
    """Per-account sync state, the lease, and per-folder checkpoints (server folder -> values)."""

    state: str = "never"
    lease_owner: str | None = None
    lease_expires: int | None = None
    last_started_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    failures: int = 0
    last_sweep_at: int | None = None
    has_detached: bool = False
    ops_pending: int = 0
    # The mailbox (protocol, host, user name) the pending ops were recorded for.
    ops_server: str | None = None
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class TenantSettings:
    """Tenant-wide privacy settings as saved (None keywords: never saved, defaults apply)."""

    confidential_keywords: tuple[str, ...] | None = None
    confidential_contacts: tuple[str, ...] = ()


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index: ``datetime.weekday()``


@dataclass(frozen=True)
class OfficeHours:
    """A tenant's office hours: when its accounts are polled every tick (README "Scheduling").

    ``start``/``end`` are local wall-clock times ``HH:MM`` in ``time_zone`` (IANA); an ``end``
    at or before ``start`` runs past midnight into the next day, and ``end == start`` is 24 hours.
    A window belongs to the day it starts on: ``days`` lists those days."""

    time_zone: str = "Europe/Amsterdam"
    days: tuple[str, ...] = WEEKDAYS[:5]
    start: str = "07:00"
    end: str = "19:00"


@dataclass(frozen=True)
class ThreadMark:
    """Per owner and thread: whether it is confidential, and whether the owner decided so."""

    confidential: bool
    by_owner: bool  # True: the owner decided (PATCH); automatic rules no longer apply to it


@dataclass(frozen=True)
class OAuthConsent:
    """A consent under way: what its ``state`` stands for, kept until the callback uses it once.

    The PKCE verifier stays here, never in the browser; the state carries only ``nonce``.
    """

    nonce: str
    tenant_id: str
    user_id: str
    caller_id: str
    provider: str
    code_verifier: str
    redirect_uri: str
    return_url: str
    expires_at: int
