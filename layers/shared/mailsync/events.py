"""Mail events on the EventBridge bus: what a CRM needs to file mail into dossiers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mailsync.aws import client
from mailsync.config import get_settings
from mailsync.observability import logger

SOURCE = "mailsync"
MESSAGE_RECEIVED = "message.received"
MESSAGE_UPDATED = "message.updated"
MESSAGE_DETACHED = "message.detached"
# A change made in the CRM could not be applied on the mail server (the message says why).
MESSAGE_SYNC_FAILED = "message.sync_failed"
ACCOUNT_AUTH_FAILED = "account.auth_failed"
ACCOUNT_SYNC_FAILED = "account.sync_failed"
ACCOUNT_FOLDER_MISSING = "account.folder_missing"
# An OAuth2 grant is gone (consent revoked, password changed, admin policy): connect again.
ACCOUNT_REAUTH_REQUIRED = "account.reauth_required"


@dataclass(frozen=True)
class Event:
    detail_type: str
    tenant_id: str
    user_id: str
    detail: dict[str, Any] = field(default_factory=dict)

    def entry(self, bus: str) -> dict[str, Any]:
        body = {"tenant_id": self.tenant_id, "user_id": self.user_id, **self.detail}
        return {
            "Source": SOURCE,
            "DetailType": self.detail_type,
            "Detail": json.dumps(body, default=str),
            "EventBusName": bus,
        }


def message_event(detail_type: str, message: Any, **extra: Any) -> Event:
    """An event about one message, with the addresses it involves (the dossiers it belongs to)."""
    return Event(
        detail_type,
        message.tenant_id,
        message.user_id,
        {
            "id": message.id,
            "folder": message.folder,
            "state": message.state,
            "participants": list(message.participants or []),
            "confidential": bool(getattr(message, "confidential", False)),
            "internet_message_id": message.internet_message_id,
            **extra,
        },
    )


def publish(events: list[Event]) -> int:
    """PutEvents in batches of 10; returns how many failed (logged, not raised: events are
    notifications and must not undo a sync that has been stored)."""
    if not events:
        return 0
    bus = get_settings().event_bus_name
    failed = 0
    for start in range(0, len(events), 10):
        chunk = events[start : start + 10]
        try:
            response = client("events").put_events(Entries=[e.entry(bus) for e in chunk])
            failed += int(response.get("FailedEntryCount", 0))
        except Exception:  # noqa: BLE001 - see docstring
            logger.exception("publishing mail events failed", extra={"count": len(chunk)})
            failed += len(chunk)
    if failed:
        logger.warning("some mail events were not published", extra={"failed": failed})
    return failed
