"""Message metadata as stored on the message item, from a parsed message (pure).

A DynamoDB item is at most 400 KB and any write with a bigger item fails whole (a BatchWriteItem
with one such item fails for all 25), so every field taken from a message's content is bounded in
bytes, and every list in count *and* bytes. The budgets below add up to about 220 KB in the worst
case, leaving room for the rest of the item. Anything cut sets ``metadata_truncated``; the raw
message in S3 is always whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mailsync import mime
from mailsync.domain import Address, Attachment
from mailsync.flags import cap_flags

MAX_TEXT = 2000  # characters shown of a subject (and its byte budget below)
MAX_LIST = 100

SUBJECT_BYTES = 2000
NAME_BYTES = 256
# RFC 5321 caps a path at 256 octets; the dossier index uses the address in a key (<= 2048 bytes).
EMAIL_BYTES = 320
ID_BYTES = 1000  # one Message-ID, In-Reply-To or References entry
FILENAME_BYTES = 300
CONTENT_TYPE_BYTES = 200
ERROR_BYTES = 300
SNIPPET_BYTES = 1024
# Byte budget of each list (count is MAX_LIST on top).
LIST_BYTES = {
    "from_": 8_000,
    "reply_to": 8_000,
    "to": 32_000,
    "cc": 32_000,
    "bcc": 16_000,
    "references": 32_000,
    "attachments": 32_000,
    "participants": 32_000,
    "parse_errors": 8_000,
}


def _utf8(value: str) -> bytes:
    # Lone surrogates (undecodable input) must not make the size check itself raise.
    return value.encode("utf-8", "surrogatepass")


def cap(value: str | None, limit: int) -> str | None:
    """``value`` cut to at most ``limit`` characters *and* ``limit`` UTF-8 bytes ("…" marks a cut)."""
    if value is None:
        return None
    if len(value) <= limit and len(_utf8(value)) <= limit:
        return value
    cut = _utf8(value[: limit - 1])[: limit - 3]  # room for the 3-byte ellipsis
    return cut.decode("utf-8", "ignore") + "…"


class _Cuts:
    """Remembers whether any field lost content."""

    def __init__(self) -> None:
        self.any = False

    def text(self, value: str | None, limit: int) -> str | None:
        out = cap(value, limit)
        if out != value:
            self.any = True
        return out

    def items[T, R](
        self, name: str, values: Iterable[T], convert: Callable[[T], R], size: Callable[[R], int], *, last: bool = False
    ) -> list[R]:
        """At most MAX_LIST converted items within the list's byte budget (the last ones if ``last``)."""
        source = list(values)
        if last:
            source.reverse()
        budget = LIST_BYTES[name]
        out: list[R] = []
        for value in source:
            if len(out) >= MAX_LIST:
                self.any = True
                break
            item = convert(value)
            budget -= size(item) + 8  # per-element overhead in DynamoDB's size accounting
            if budget < 0:
                self.any = True
                break
            out.append(item)
        if last:
            out.reverse()
        return out


def _address_size(a: Address) -> int:
    return len(_utf8(a.name or "")) + len(_utf8(a.email)) + 16


def metadata_fields(parsed: mime.ParsedMessage, content_sha256: str) -> dict[str, Any]:
    """Everything the CRM shows about a message that comes from its content, bounded in bytes."""
    cuts = _Cuts()

    def addresses(name: str, values: list[mime.Address]) -> list[Address]:
        def convert(a: mime.Address) -> Address:
            return Address(name=cuts.text(a.name, NAME_BYTES), email=cuts.text(a.email, EMAIL_BYTES))

        return cuts.items(name, values, convert, _address_size)

    def text_list(name: str, values: Iterable[str], limit: int, *, last: bool = False) -> list[str]:
        return cuts.items(name, values, lambda v: cuts.text(v, limit) or "", lambda v: len(_utf8(v)), last=last)

    fields: dict[str, Any] = {
        "subject": cuts.text(parsed.subject, SUBJECT_BYTES),
        "from_": addresses("from_", parsed.from_),
        "to": addresses("to", parsed.to),
        "cc": addresses("cc", parsed.cc),
        "bcc": addresses("bcc", parsed.bcc),
        "reply_to": addresses("reply_to", parsed.reply_to),
        "date": parsed.date,
        "internet_message_id": cuts.text(parsed.internet_message_id, ID_BYTES),
        "in_reply_to": cuts.text(parsed.in_reply_to, ID_BYTES),
        # The nearest ancestors are last: keep those.
        "references": text_list("references", parsed.references, ID_BYTES, last=True),
        "thread_id": mime.thread_key(parsed, content_sha256),
        "snippet": cuts.text(parsed.snippet, SNIPPET_BYTES) or "",
        "attachments": cuts.items(
            "attachments",
            parsed.attachments,
            lambda a: Attachment(
                filename=cuts.text(a.filename, FILENAME_BYTES),
                content_type=cuts.text(a.content_type, CONTENT_TYPE_BYTES) or "",
                size=a.size,
            ),
            lambda m: len(_utf8(m.filename or "")) + len(_utf8(m.content_type)) + 32,
        ),
        "participants": text_list("participants", mime.participants(parsed), EMAIL_BYTES),
        "parse_errors": text_list("parse_errors", parsed.parse_errors, ERROR_BYTES),
    }
    fields["metadata_truncated"] = cuts.any
    return fields


def minimal_fields(
    subject: str | None,
    from_: Iterable[Address],
    internet_message_id: str | None,
    note: str,
    flags: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The last resort when a message's metadata still cannot be stored: only what identifies it.

    The raw message (S3) stays whole; the CRM shows a short subject and the sender. Given the
    message's ``flags``, they come back bounded (``cap_flags``) with ``seen`` to match, so the
    fallback write cannot fail on them again.
    """
    out: dict[str, Any] = {}
    if flags is not None:
        kept = cap_flags(flags)
        out = {"flags": list(kept), "seen": any(f.lower() == "\\seen" for f in kept)}
    return out | {
        "subject": cap(subject, 200),
        "from_": [Address(name=cap(a.name, 100), email=cap(a.email, 254) or "") for a in list(from_)[:1]],
        "to": [],
        "cc": [],
        "bcc": [],
        "reply_to": [],
        "internet_message_id": cap(internet_message_id, 250),
        "in_reply_to": None,
        "references": [],
        "snippet": "",
        "attachments": [],
        "participants": [],
        "parse_errors": [note],
        "metadata_truncated": True,
    }
