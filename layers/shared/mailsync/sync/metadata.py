"""Message metadata as stored on the message item, from a parsed message (pure)."""

from __future__ import annotations

from typing import Any

from mailsync import mime
from mailsync.dal import AddressMap, AttachmentMap

# DynamoDB items are at most 400 KB; a hostile header must not make a message unstorable.
MAX_TEXT = 2000
MAX_LIST = 100


def cap(value: str | None, limit: int) -> str | None:
    return value if value is None or len(value) <= limit else value[: limit - 1] + "…"


def _addresses(values: list[mime.Address]) -> list[AddressMap]:
    return [AddressMap(name=cap(a.name, 200), email=a.email[:320]) for a in values[:MAX_LIST]]


def metadata_fields(parsed: mime.ParsedMessage, content_sha256: str) -> dict[str, Any]:
    """Everything the CRM shows about a message that comes from its content."""
    return {
        "subject": cap(parsed.subject, MAX_TEXT),
        "from_": _addresses(parsed.from_),
        "to": _addresses(parsed.to),
        "cc": _addresses(parsed.cc),
        "bcc": _addresses(parsed.bcc),
        "reply_to": _addresses(parsed.reply_to),
        "date": parsed.date,
        "message_id": cap(parsed.message_id, 900),
        "in_reply_to": cap(parsed.in_reply_to, 900),
        "references": list(parsed.references)[-MAX_LIST:],
        "thread_id": mime.thread_key(parsed, content_sha256),
        "snippet": parsed.snippet,
        "attachments": [
            AttachmentMap(filename=cap(a.filename, 300), content_type=a.content_type[:200], size=a.size)
            for a in parsed.attachments[:MAX_LIST]
        ],
        "participants": mime.participants(parsed)[: MAX_LIST * 4],
        "parse_errors": list(parsed.parse_errors)[:20],
    }
