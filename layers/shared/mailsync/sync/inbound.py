"""Storing a message that has no IMAP copy to follow: mail that came in through the relay address
(``services.relay``) or was fetched over POP3 (``sync.pop``).

One path for both, like the IMAP engine's: the raw message into S3 (content-addressed), its
metadata, the confidentiality rules, the match key (so the same message arriving another way is
one CRM message) and the dossier entries. It is stored ``detached`` with the caller's reason:
should the same message later show up in the user's IMAP folders, the sync engine links that
copy to it instead of storing it twice (``has_detached``). Events are the caller's to publish.

Idempotent: the caller gives a deterministic ``id``; storing it again (a rerun after a crash, a
redelivery) writes the same items and reports it was there already.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from mailsync import blobstore, dal, mime, privacy
from mailsync.config import get_settings
from mailsync.domain import Account, Message, RelayVerdicts
from mailsync.observability import logger
from mailsync.privacy import TenantRules
from mailsync.sync.metadata import metadata_fields, minimal_fields

# Of a message over the size cap only this much of its header section is parsed (all is stored).
TOO_LARGE_HEADER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Stored:
    """Where the message is in the CRM now: ``id`` is the message holding it (the caller's id, or
    an earlier message with the same match key); ``created`` when this call stored it."""

    id: str
    created: Message | None


def owner_of(tenant_id: str, user_id: str) -> Account:
    """The user's account for the confidentiality defaults; a user with no mail settings (relay
    only) has the defaults of a new account."""
    account = dal.get_account(tenant_id, user_id)
    return account or Account(tenant_id=tenant_id, user_id=user_id, host="", port=0, username="", security="ssl")


def store_detached(
    owner: Account,
    raw: bytes,
    *,
    id: str,
    match_key: str,
    received_at: datetime,
    detach_reason: str,
    crm_folder: str = "inbox",
    verdicts: RelayVerdicts | None = None,
    size: int | None = None,
    seen: bool = False,
    rules: TenantRules | None = None,
) -> Stored:
    """Store ``raw`` under ``id`` into ``crm_folder`` unless the CRM holds it already.

    ``size``: the whole message's size when ``raw`` is only the header section of a message over
    the size cap (None: ``raw`` is the whole message); ``seen``: read already (written in the
    CRM); ``rules``: the tenant's confidentiality rules when the caller has them.
    """
    tenant_id, user_id = owner.tenant_id, owner.user_id
    settings = get_settings()
    size = len(raw) if size is None else size
    too_large = size > settings.max_message_bytes
    # Of an oversized message only the headers are parsed; the raw copy is always what was given.
    parsed = mime.parse_message(raw[:TOO_LARGE_HEADER_BYTES] if too_large else raw)
    others = [other for other in dal.ids_for_match_key(tenant_id, user_id, match_key) if other != id]
    if others:
        logger.info("message is in the CRM already: not stored again", extra={"user_id": user_id})
        return Stored(id=others[0], created=None)
    s3_key, sha = blobstore.put_raw(tenant_id, user_id, raw)
    metadata = metadata_fields(parsed, sha)
    if too_large:
        note = f"Message of {size} bytes is over the cap of {settings.max_message_bytes}: headers only"
        metadata["parse_errors"] = [note, *metadata["parse_errors"]][:20]
    message = Message(
        id=id,
        tenant_id=tenant_id,
        user_id=user_id,
        folder=crm_folder,
        server_folder="",
        internal_date=received_at.astimezone(UTC) if received_at.tzinfo else received_at.replace(tzinfo=UTC),
        size=size,
        match_key=match_key,
        s3_key=s3_key,
        content_hash=sha,
        state="detached",
        detach_reason=detach_reason,
        detached_at=dal.utcnow(),
        too_large=too_large,
        seen=seen,
        flags=("\\Seen",) if seen else (),
        relay_verdicts=verdicts,
        **{k: tuple(v) if isinstance(v, list) else v for k, v in metadata.items()},
    )
    message = _classified(owner, message, rules)
    try:
        created = dal.store_relayed(message)
    except dal.Unstorable:
        logger.warning("message metadata cannot be stored: kept raw with minimal metadata", extra={"id": message.id})
        note = "Metadata too large to store: only a minimal part is shown; the raw message is complete"
        minimal = minimal_fields(message.subject, message.from_, message.internet_message_id, note, flags=message.flags)
        message = replace(message, **{k: tuple(v) if isinstance(v, list) else v for k, v in minimal.items()})
        created = dal.store_relayed(message)
    return Stored(id=id, created=message if created else None)


def _classified(owner: Account, message: Message, rules: TenantRules | None) -> Message:
    """Confidentiality of a new message (``privacy.classify_new``); the thread it makes
    confidential is marked first, so later replies follow."""
    rules = rules or privacy.rules_from(
        dal.get_tenant_settings(owner.tenant_id, max_age=dal.TENANT_SETTINGS_MAX_AGE_SECONDS)
    )
    threads = dal.thread_marks(owner.tenant_id, owner.user_id, {message.thread_id})
    result = privacy.classify_new(owner, [message], rules, threads)
    dal.mark_threads(owner.tenant_id, owner.user_id, result.threads_to_mark, confidential=True, by_owner=False)
    reasons = result.reasons[message.id]
    return replace(message, confidential=bool(reasons), confidential_reasons=tuple(reasons))
