"""Key, index and cursor formats of the messages table (private to ``mailsync.dal``)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from mailsync.errors import ValidationFailed


def iso(value: datetime) -> str:
    """Sortable UTC timestamp used inside sort keys."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def account_pk(tenant_id: str, user_id: str) -> str:
    return f"A#{tenant_id}#{user_id}"


def message_pk(id: str) -> str:
    return f"M#{id}"


MESSAGE_SK = "M"
STATE_SK = "STATE"
THREAD_SK = "THREAD"


def message_sort_key(when: datetime, id: str) -> str:
    """Newest-first order of a message in every listing (account, folder, dossier)."""
    return f"{iso(when)}#{id}"


def location_pk(tenant_id: str, user_id: str, server_folder: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#L#{server_folder}"


def location_sk(uidvalidity: int, uid: int) -> str:
    return f"{uidvalidity:010d}#{uid:010d}"


def window_pk(tenant_id: str, user_id: str, server_folder: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#W#{server_folder}"


def window_sk(internal_date: datetime, uidvalidity: int, uid: int) -> str:
    return f"{iso(internal_date)}#{location_sk(uidvalidity, uid)}"


def match_pk(tenant_id: str, user_id: str, key: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#K#{key}"


def thread_pk(tenant_id: str, user_id: str, thread_id: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#T#{thread_id}"


def thread_of(pk: str) -> str:
    return pk.rsplit("#T#", 1)[1]


def thread_member_sk(id: str) -> str:
    return f"M#{id}"


def contact_pk(tenant_id: str, address: str) -> str:
    return f"C#{tenant_id}#{address.lower()}"


def ops_pk(tenant_id: str, user_id: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#OPS"


def op_sk(seq: int) -> str:
    return f"{seq:020d}"


def folder_gsi_pk(tenant_id: str, user_id: str, folder: str) -> str:
    return f"{account_pk(tenant_id, user_id)}#F#{folder}"


RELAY_SK = "RELAY"


def relay_address_pk(local_part: str) -> str:
    return f"R#{local_part.lower()}"


# --- cursors: a page's last key, opaque to the API's clients ------------------------------------

# The key attributes a page can end on, per listing: the table's key plus the index's key.
_CURSOR_KEYS = {
    "gsi1pk": frozenset({"pk", "sk", "gsi1pk", "gsi1sk"}),
    "gsi2pk": frozenset({"pk", "sk", "gsi2pk", "gsi2sk"}),
    "pk": frozenset({"pk", "sk"}),
    "tenant_id": frozenset({"tenant_id", "user_id"}),  # the accounts table
}
MAX_CURSOR_CHARS = 2048


class BadCursor(ValidationFailed):
    """A cursor this API did not return for this listing (the client's 422)."""

    def __init__(self, message: str = "cursor is not a cursor this API returned") -> None:
        super().__init__(message, field="cursor")


def encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, expected_pk: tuple[str, str]) -> dict[str, Any] | None:
    """The start key inside a cursor, checked to the last attribute: a forged cursor of any shape
    is a 422, never a DynamoDB error (or another listing's page)."""
    if not cursor:
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        raise BadCursor()
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError, RecursionError):
        raise BadCursor() from None
    attribute, value = expected_pk
    if not isinstance(key, dict) or set(key) != _CURSOR_KEYS[attribute]:
        raise BadCursor()
    for item in key.values():
        if not (
            isinstance(item, dict)
            and set(item) == {"S"}
            and isinstance(item["S"], str)
            and 0 < len(item["S"]) <= 1024
            and _encodable(item["S"])
        ):
            raise BadCursor()
    if key[attribute]["S"] != value:
        # A cursor from another query (or user) would silently page through the wrong list.
        raise BadCursor("cursor does not belong to this listing")
    return key


def _encodable(text: str) -> bool:
    # JSON escapes can carry lone surrogates ("\\ud800"), which no DynamoDB request can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
