"""The per-user relay address: mail forwarded to it (Exchange's "Relay") lands in the CRM folder
``inbox`` without any mailbox login.

In AWS, SES receives the relay domain's mail, writes the raw message to the raw mail bucket under
``relay/{SES message id}`` and invokes the relay ingest function with its event (the local stack's
SMTP listener does the same). ``receive`` finds the user by the recipient (one key lookup) and
stores the message like a synced one: raw copy in S3, metadata, confidentiality, dossiers, the
``message.received`` event. It has no server copy: it is stored ``detached`` (``relayed``), so
when the same message later shows up in the user's IMAP inbox the sync engine links that copy
to it (by Message-ID, else content) instead of storing it twice; one that is already in the CRM
from IMAP is not stored again.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailsync import dal, events, mime
from mailsync.aws import client
from mailsync.config import get_settings
from mailsync.domain import RelayVerdicts
from mailsync.errors import Conflict
from mailsync.identity import Principal
from mailsync.observability import logger
from mailsync.schemas import RelayAddressOut
from mailsync.services.accounts import target_for
from mailsync.sync import inbound
from mailsync.sync.planner.messages import match_key

RAW_PREFIX = "relay/"
CRM_FOLDER = "inbox"
RELAYED = "relayed"
RELAY_OFF = "This deployment has no relay domain (RelayDomain is empty): relay addresses are off"
# 80 random bits: an address cannot be guessed (or enumerated) to inject mail into a CRM.
RANDOM_BYTES = 10
SLUG_CHARS = 24
# How often a new address is drawn when the drawn one is taken, or a concurrent rotation won.
ATTEMPTS = 3
# Of a message over the size cap only this much of its header section is parsed (all is stored).
TOO_LARGE_HEADER_BYTES = inbound.TOO_LARGE_HEADER_BYTES
_SES_MESSAGE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# Header lines SES puts in front of the message it stores; left out of the content hash so a
# message without Message-ID matches its copy in the user's mailbox.
_SES_TRACE = re.compile(
    rb"^(?:(?:return-path|received|x-ses-[a-z0-9-]+|authentication-results|received-spf)"
    rb":[^\n]*\n(?:[ \t][^\n]*\n)*)+",  # lines end in LF or CRLF: both are kept as they are
    re.IGNORECASE,
)


# --- the address ---------------------------------------------------------------------------------


def relay_domain() -> str:
    """The deployment's relay domain; ``Conflict`` when relaying is off."""
    domain = get_settings().relay_domain.strip().lower()
    if not domain:
        raise Conflict(RELAY_OFF)
    return domain


def _draw(user_id: str) -> str:
    """A new local part: a readable slug of the user id, then the random part that makes it secret."""
    slug = re.sub(r"[^a-z0-9]+", "-", user_id.lower()).strip("-")[:SLUG_CHARS].strip("-")
    token = base64.b32encode(secrets.token_bytes(RANDOM_BYTES)).decode().lower()
    return f"{slug}.{token}" if slug else token


def _out(local_part: str, domain: str) -> RelayAddressOut:
    return RelayAddressOut(address=f"{local_part}@{domain}")


def get_address(principal: Principal, user_id: str) -> RelayAddressOut:
    """The user's relay address, made on first read."""
    domain = relay_domain()
    target = target_for(principal, user_id)
    for _ in range(ATTEMPTS):
        current = dal.relay_address_of(target.tenant_id, target.user_id)
        if current is not None:
            return _out(current, domain)
        drawn = _draw(target.user_id)
        if dal.create_relay_address(target.tenant_id, target.user_id, drawn):
            logger.info("relay address created", extra={"user_id": target.user_id})
            return _out(drawn, domain)
    raise Conflict("The relay address is being changed right now; retry in a moment")


def rotate_address(principal: Principal, user_id: str) -> RelayAddressOut:
    """A new relay address; mail to the old one is dropped from now on."""
    domain = relay_domain()
    target = target_for(principal, user_id)
    for _ in range(ATTEMPTS):
        current = dal.relay_address_of(target.tenant_id, target.user_id)
        drawn = _draw(target.user_id)
        if current is None:
            done = dal.create_relay_address(target.tenant_id, target.user_id, drawn)
        else:
            done = dal.rotate_relay_address(target.tenant_id, target.user_id, current, drawn)
        if done:
            logger.info("relay address rotated", extra={"user_id": target.user_id})
            return _out(drawn, domain)
    raise Conflict("The relay address is being changed right now; retry in a moment")


# --- incoming mail ---------------------------------------------------------------------------------


class _Verdict(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: str | None = Field(default=None, max_length=40)


class _Receipt(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    timestamp: datetime | None = None
    recipients: list[str] = Field(default_factory=list, max_length=100)
    spam: _Verdict | None = Field(default=None, alias="spamVerdict")
    virus: _Verdict | None = Field(default=None, alias="virusVerdict")
    spf: _Verdict | None = Field(default=None, alias="spfVerdict")
    dkim: _Verdict | None = Field(default=None, alias="dkimVerdict")
    dmarc: _Verdict | None = Field(default=None, alias="dmarcVerdict")


class _Mail(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    message_id: str = Field(alias="messageId", pattern=_SES_MESSAGE_ID.pattern)
    timestamp: datetime | None = None


class SesNotice(BaseModel):
    """What the ingest function reads of one record of SES's Lambda action event (``Records[].ses``)."""

    model_config = ConfigDict(extra="ignore")
    mail: _Mail
    receipt: _Receipt

    def verdicts(self) -> RelayVerdicts:
        r = self.receipt
        return RelayVerdicts(
            **{name: v.status for name in ("spam", "virus", "spf", "dkim", "dmarc") if (v := getattr(r, name))}
        )


@dataclass
class Received:
    """What became of one relayed message (a count per outcome; the function's metrics)."""

    stored: int = 0
    duplicate: int = 0
    unknown_address: int = 0
    virus: int = 0
    malformed_event: int = 0
    raw_missing: int = 0


def parse_notice(record: object) -> SesNotice | None:
    """One record of the event, or None when it is not SES's (logged; nothing to retry)."""
    try:
        ses = record.get("ses") if isinstance(record, dict) else None
        return SesNotice.model_validate(ses)
    except ValidationError:
        logger.warning("relay event record is not an SES notification: dropped")
        return None


def raw_key(ses_message_id: str) -> str:
    """Where SES's S3 action (and the local SMTP listener) put the raw message."""
    return f"{RAW_PREFIX}{ses_message_id}"


def receive(notice: SesNotice, outcome: Received) -> None:
    """Store one relayed message for each user it was sent to (by their current relay address)."""
    # Every line of its handling names SES's copy (relay/{id}), kept 7 days for a re-run; and
    # only its lines: the next record of the invocation is another message.
    logger.append_keys(ses_message_id=notice.mail.message_id)
    try:
        _receive(notice, outcome)
    finally:
        logger.remove_keys(["ses_message_id"])


def _receive(notice: SesNotice, outcome: Received) -> None:
    domain = get_settings().relay_domain.strip().lower()
    users: dict[tuple[str, str], None] = {}
    for recipient in notice.receipt.recipients:
        local, _, at = recipient.strip().lower().rpartition("@")
        user = dal.relay_user(local) if domain and at == domain and 0 < len(local) <= 64 else None
        if user is None:
            outcome.unknown_address += 1  # unknown, rotated, or another domain: dropped
            continue
        users.setdefault(user, None)
    if not users:
        return
    verdicts = notice.verdicts()
    # Only FAIL drops it: GRAY or PROCESSING_FAILED (SES could not tell) is stored with that verdict shown.
    if verdicts.virus == "FAIL":
        logger.warning("relayed message has a virus verdict: not stored", extra={"users": len(users)})
        outcome.virus += len(users)
        return
    raw = _read_raw(notice.mail.message_id)
    if raw is None:
        outcome.raw_missing += len(users)
        return
    when = notice.receipt.timestamp or notice.mail.timestamp or dal.utcnow()
    for tenant_id, user_id in users:
        if store_message(tenant_id, user_id, raw, notice.mail.message_id, verdicts, when):
            outcome.stored += 1
        else:
            outcome.duplicate += 1


def _read_raw(ses_message_id: str) -> bytes | None:
    s3 = client("s3")
    try:
        body = s3.get_object(Bucket=get_settings().raw_mail_bucket, Key=raw_key(ses_message_id))["Body"]
    except s3.exceptions.NoSuchKey:
        logger.error("relayed message not found in the bucket", extra={"key": raw_key(ses_message_id)})
        return None
    return bytes(body.read())


def relay_match_key(raw: bytes, parsed: mime.ParsedMessage) -> str:
    """The key the IMAP sync recognises copies by: Message-ID, else the content without SES's trace lines."""
    if parsed.internet_message_id:
        return match_key(parsed.internet_message_id, "")
    return match_key(None, mime.match_hash(_SES_TRACE.sub(b"", raw, count=1)))


def message_id_for(tenant_id: str, user_id: str, ses_message_id: str) -> str:
    """Our id of a relayed message: the same delivery (a retried invocation) gets the same id."""
    digest = hashlib.sha256(f"{tenant_id}\0{user_id}\0relay\0{ses_message_id}".encode()).digest()
    return base64.b32encode(digest[:15]).decode().lower()


def store_message(
    tenant_id: str,
    user_id: str,
    raw: bytes,
    ses_message_id: str,
    verdicts: RelayVerdicts,
    received_at: datetime,
) -> bool:
    """Store one relayed message into the user's ``inbox``; False when the CRM has it already
    (from IMAP, or an earlier delivery of the same relayed message)."""
    settings = get_settings()
    too_large = len(raw) > settings.max_message_bytes
    # Of an oversized message only the headers are parsed; the raw copy is always whole.
    parsed = mime.parse_message(raw[:TOO_LARGE_HEADER_BYTES] if too_large else raw)
    id_ = message_id_for(tenant_id, user_id, ses_message_id)
    stored = inbound.store_detached(
        inbound.owner_of(tenant_id, user_id),
        raw,
        id=id_,
        match_key=relay_match_key(raw, parsed),
        received_at=received_at,
        detach_reason=RELAYED,
        crm_folder=CRM_FOLDER,
        verdicts=verdicts,
    )
    if stored.created is not None:
        events.publish([events.message_event(events.MESSAGE_RECEIVED, stored.created, relayed=True)])
    return stored.id == id_
