"""Metadata stored per message is bounded in bytes, whatever the message holds (poison mail).

A DynamoDB item is at most 400 KB and a key attribute at most 2048 (partition) / 1024 (sort)
bytes; one item over a limit fails its whole batch write, which used to wedge the account.
"""

from __future__ import annotations

import json

import pytest

from mailsync import mime
from mailsync.dal._items import message_item
from mailsync.dal._keys import contact_pk
from mailsync.domain import Message
from mailsync.sync.metadata import EMAIL_BYTES, cap, metadata_fields, minimal_fields

ITEM_LIMIT = 400 * 1024


def _raw(headers: list[str], body: str = "Hello") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body + "\r\n").encode("utf-8")


def _item_bytes(fields: dict) -> int:
    """The message item as DynamoDB would store it, measured generously (JSON of the wire form)."""
    # The data layer's own item factory, so the measure includes the keys and index attributes.
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    item = message_item(
        Message(
            id="x" * 26,
            tenant_id="acme",
            user_id="alice",
            folder="inbox",
            server_folder="INBOX",
            internal_date=mime.parse_message(b"Date: Wed, 1 May 2024 00:00:00 +0000\r\n\r\n").date,
            size=1,
            match_key="mid:x",
            s3_key="raw/acme/alice/x.eml",
            content_hash="0" * 64,
            **values,
        )
    )
    return len(json.dumps(item.serialize(), ensure_ascii=False).encode("utf-8"))


def _fields(raw: bytes) -> dict:
    return metadata_fields(mime.parse_message(raw), mime.content_hash(raw))


POISON = {
    "references of 100 ids x 4.5 KB": [
        "From: a@example.com",
        "References: " + " ".join(f"<{i}.{'r' * 4500}@example.com>" for i in range(100)),
    ],
    "subject of 1 MB": ["From: a@example.com", "Subject: " + "S" * 1_000_000],
    "subject of 1 MB of 4-byte characters": ["From: a@example.com", "Subject: =?utf-8?b?8J+Ygg==?=" * 40_000],
    "10,000 To addresses": [
        "From: a@example.com",
        "To: " + ", ".join(f'"Person {i} {"n" * 150}" <person{i}.{"p" * 150}@example.com>' for i in range(10_000)),
    ],
    "an address of 5 KB": ["From: " + "f" * 5000 + "@example.com", "To: <" + "t" * 5000 + "@example.com>"],
    "10,000 Cc and Bcc and Reply-To addresses": [
        "From: a@example.com",
        *(
            f"{h}: " + ", ".join(f"x{i}.{'y' * 200}@example.com" for i in range(10_000))
            for h in ("Cc", "Bcc", "Reply-To")
        ),
    ],
    "a Message-ID and In-Reply-To of 100 KB": [
        "From: a@example.com",
        "Message-ID: <" + "m" * 100_000 + "@example.com>",
        "In-Reply-To: <" + "i" * 100_000 + "@example.com>",
    ],
}


@pytest.mark.parametrize("headers", POISON.values(), ids=POISON.keys())
def test_poison_headers_make_a_bounded_item_marked_truncated(headers: list[str]) -> None:
    fields = _fields(_raw(headers))
    assert fields["metadata_truncated"] is True
    assert _item_bytes(fields) < ITEM_LIMIT // 2
    for group in ("from_", "to", "cc", "bcc", "reply_to"):
        for address in fields[group]:
            assert len(address.email.encode()) <= EMAIL_BYTES
            # The dossier index keys items by address: the partition key stays far below 2048 bytes.
            assert len(contact_pk("acme", address.email).encode()) < 1024


def test_all_of_it_at_once_still_fits() -> None:
    headers = [h for hs in POISON.values() for h in hs if not h.startswith("From:")]
    fields = _fields(_raw(["From: " + "f" * 5000 + "@example.com", *headers]))
    assert fields["metadata_truncated"] is True
    assert _item_bytes(fields) < ITEM_LIMIT // 2


def test_the_nearest_references_are_kept() -> None:
    refs = [f"<{i}.{'r' * 4500}@example.com>" for i in range(100)]
    fields = _fields(_raw(["From: a@example.com", "References: " + " ".join(refs)]))
    assert 0 < len(fields["references"]) < 100
    assert fields["references"][-1].startswith("99.")


def test_an_ordinary_message_is_stored_whole() -> None:
    raw = _raw(
        [
            "From: Ann <ann@example.com>",
            "To: Bob <bob@example.com>, carol@example.com",
            "Subject: Offer: senior developer (€ 5.000)",
            "Message-ID: <abc@example.com>",
            "References: <r1@example.com> <r2@example.com>",
        ]
    )
    fields = _fields(raw)
    assert fields["metadata_truncated"] is False
    assert fields["subject"] == "Offer: senior developer (€ 5.000)"
    assert [a.email for a in fields["to"]] == ["bob@example.com", "carol@example.com"]
    assert fields["references"] == ["r1@example.com", "r2@example.com"]


@pytest.mark.parametrize("text", ["a" * 5000, "é" * 5000, "😂" * 5000, "a" * 1999 + "😂" * 10])
def test_cap_bounds_characters_and_utf8_bytes(text: str) -> None:
    out = cap(text, 2000)
    assert out is not None and out.endswith("…")
    assert len(out) <= 2000 and len(out.encode()) <= 2000


def test_cap_leaves_short_text_alone() -> None:
    assert cap("short", 2000) == "short"
    assert cap(None, 10) is None


def test_minimal_fields_keep_only_what_identifies_the_message() -> None:
    fields = _fields(_raw(POISON["10,000 To addresses"] + ["Subject: " + "s" * 5000, "Message-ID: <m@x>"]))
    minimal = minimal_fields(fields["subject"], fields["from_"], fields["internet_message_id"], "cut")
    assert minimal["metadata_truncated"] is True
    assert minimal["to"] == [] and minimal["references"] == [] and minimal["participants"] == []
    assert [a.email for a in minimal["from_"]] == ["a@example.com"]
    assert minimal["internet_message_id"] == "m@x" and len(minimal["subject"]) <= 200
