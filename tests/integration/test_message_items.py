"""A new message item leaves out its defaults and what its keys and headers already hold, so a
typical one stays under 1 KB (one write unit instead of two); reads, listing filters and updates
treat such an item exactly like one written in full (the shape of items stored before)."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

import boto3
import pytest

from devstack.dovecot import make_message
from devstack.item_size import item_size
from mailsync import mime
from mailsync.domain import Address, Change, Location, Message
from mailsync.sync.metadata import metadata_fields
from mailsync.sync.planner.messages import id_for_new_copy, match_key

T, U = "acme", "alice"
WHEN = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
STAMP = datetime(2026, 5, 2, 8, 30, tzinfo=UTC)
DERIVED_OR_DEFAULT = {
    "id",
    "tenant_id",
    "user_id",
    "folder",
    "internal_date",
    "updated_at",
    "match_key",
    "participants",
    "thread_id",
    "s3_key",
    "state",
    "seen",
    "confidential",
    "flags",
    "pending_ops",
}


def synced(raw: bytes, tenant: str, user: str, uid: int, when: datetime, flags: tuple[str, ...] = ()) -> Message:
    """A new message as the sync builds it from a downloaded copy (``SyncRun._new_message``)."""
    sha = hashlib.sha256(raw).hexdigest()
    metadata = metadata_fields(mime.parse_message(raw), sha)
    return Message(
        id=id_for_new_copy(tenant, user, "INBOX", 1764633600, uid),
        tenant_id=tenant,
        user_id=user,
        folder="inbox",
        server_folder="INBOX",
        uidvalidity=1764633600,
        uid=uid,
        flags=flags,
        seen="\\Seen" in flags,
        internal_date=when,
        size=len(raw),
        match_key=match_key(metadata["internet_message_id"], sha),
        s3_key=f"raw/{tenant}/{user}/{sha[:2]}/{sha}.eml",
        content_hash=sha,
        **{k: tuple(v) if isinstance(v, list) else v for k, v in metadata.items()},
    )


def written(message: Message) -> dict[str, Any]:
    """The message item exactly as a sync writes it (DynamoDB JSON)."""
    from mailsync.dal._items import message_item, new_message_items

    return new_message_items(message_item(message))[0]


def bench_shaped(index: int) -> bytes:
    """The largest shape of ``bench/bench_initial_sync.py``'s mail: Cc and a PDF attachment."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Sender {index % 97} <sender{index % 97}@example.com>"
    msg["To"] = "Bench User <bench@example.com>"
    msg["Cc"] = f"Colleague {index % 13} <colleague{index % 13}@example.com>"
    msg["Subject"] = f"bench message {index}: candidate interview"
    msg["Date"] = format_datetime(WHEN)
    msg["Message-ID"] = f"<bench-{index}-0badf00d@bench.mailsync.test>"
    msg.set_content("Thank you for the interview on Tuesday; the candidate confirmed the offer. " * 20)
    msg.add_attachment(b"%PDF-1.7" * 100_000, maintype="application", subtype="pdf", filename=f"cv-{index}.pdf")
    return msg.as_bytes()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("bench, with Cc and attachment", bench_shaped(1999)),
        ("the suite's test mail", make_message(subject="Interview on Tuesday", date=WHEN)),
    ],
)
def test_a_typical_message_item_is_at_most_1_kb(name: str, raw: bytes) -> None:
    item = written(synced(raw, "bench", "initial", 1999, WHEN))
    assert item_size(item) <= 1024, name
    assert not DERIVED_OR_DEFAULT & item.keys()


def test_attributes_that_do_not_follow_from_the_rest_are_written() -> None:
    """Gmail's thread and match key, a Sender among the participants, a thread root cut from
    References: none of these can be derived, so the item keeps them."""
    message = dataclasses.replace(
        synced(make_message(subject="x", date=WHEN), T, U, 1, WHEN),
        match_key="gm:1234",
        thread_id="gt:99",
        participants=("alice@example.com", "secretary@example.com", "bob@example.com"),
        seen=True,
        confidential=True,
        state="detached",
        pending_ops=1,
        updated_at=STAMP,
        created_at=WHEN,
    )
    message = dataclasses.replace(message, s3_key=f"pack/{T}/{U}/ab/{'ab' * 32}.pack#1024+2048")
    item = written(message)
    assert {"match_key", "thread_id", "participants", "seen", "confidential", "state", "pending_ops"} <= item.keys()
    assert item["s3_key"] == {"S": message.s3_key}  # a packed message's place is not derivable
    assert item["updated_at"]["S"].startswith("2026-05-02")


def _put_raw(item: dict[str, Any]) -> None:
    from mailsync.config import get_settings

    boto3.client("dynamodb").put_item(TableName=get_settings().messages_table, Item=item)


def _location(message: Message) -> Location:
    return Location(T, U, "INBOX", 7, int(message.uid or 1), message.id, message.internal_date, message.match_key)


def _message(id: str, minutes: int = 0, **fields: Any) -> Message:
    values: dict[str, Any] = {
        "id": id,
        "tenant_id": T,
        "user_id": U,
        "folder": "inbox",
        "server_folder": "INBOX",
        "internal_date": WHEN + timedelta(minutes=minutes),
        "size": 10,
        "match_key": f"mid:{id}@x",
        "s3_key": f"raw/{id}.eml",
        "content_hash": "0" * 64,
        "thread_id": hashlib.sha256(f"{id}@x".encode()).hexdigest()[:32],
        "uidvalidity": 7,
        "uid": minutes + 1,
        "internet_message_id": f"{id}@x",
        "from_": (Address("Bob@Example.com", "Bob"),),
        "to": (Address("alice@example.com"),),
        "participants": ("bob@example.com", "alice@example.com"),
        "created_at": STAMP,
        "updated_at": STAMP,
    }
    return Message(**(values | fields))


def _store_old_shape(message: Message) -> None:
    """Every attribute written, defaults and all: how items were stored before."""
    from mailsync.dal._items import message_item

    item = message_item(message).serialize()
    assert item.keys() >= DERIVED_OR_DEFAULT
    _put_raw(item)


def test_a_trimmed_item_and_a_full_one_read_as_the_same_message(aws: dict[str, str]) -> None:
    from mailsync import dal

    new, old = _message("n1", 1), _message("o1")
    dal.store_new_messages([(new, _location(new))])
    _store_old_shape(old)

    assert dal.find_message("n1") == new
    assert dal.find_message("o1") == old
    assert dal.find_messages(["n1", "o1"]) == {"n1": new, "o1": old}
    listed, _ = dal.list_messages(T, U, folder="inbox", since=None, seen=None, limit=5, cursor=None)
    assert listed == [new, old]


def test_a_message_stored_on_its_own_reads_back_its_raw_key_and_a_packed_one_its_locator(
    aws: dict[str, str],
) -> None:
    from mailsync import blobstore, dal

    alone = synced(make_message(subject="alone", date=WHEN), T, U, 1, WHEN)
    assert alone.s3_key == blobstore.raw_key(T, U, alone.content_hash)
    assert "s3_key" not in written(alone)
    packed = dataclasses.replace(
        synced(make_message(subject="packed", date=WHEN), T, U, 2, WHEN),
        s3_key=f"pack/{T}/{U}/cd/{'cd' * 32}.pack#0+99",
    )
    dal.store_new_messages([(alone, _location(alone)), (packed, _location(packed))])
    for message in (alone, packed):
        read = dal.find_message(message.id)
        assert read is not None
        assert read.s3_key == message.s3_key
        assert dataclasses.replace(read, created_at=None, updated_at=None) == message


def test_the_listing_filters_take_a_missing_seen_or_confidential_as_false(aws: dict[str, str]) -> None:
    from mailsync import dal

    rows = []
    for n, (seen, confidential) in enumerate([(False, False), (True, False), (False, True), (True, True)]):
        rows.append(_message(f"new-{int(seen)}{int(confidential)}", n, seen=seen, confidential=confidential))
        _store_old_shape(_message(f"old-{int(seen)}{int(confidential)}", 10 + n, seen=seen, confidential=confidential))
    dal.store_new_messages([(m, _location(m)) for m in rows])

    def listed(**kw: Any) -> set[str]:
        found = set()
        for folder in (None, "inbox"):
            page, _ = dal.list_messages(T, U, folder=folder, since=None, limit=20, cursor=None, **kw)
            found.add(frozenset(m.id for m in page))
        (only,) = found  # both listings agree
        return set(only)

    both = ("new-", "old-")
    assert listed(seen=False) == {p + s for p in both for s in ("00", "01")}
    assert listed(seen=True) == {p + s for p in both for s in ("10", "11")}
    assert listed(seen=None, include_confidential=False) == {p + s for p in both for s in ("00", "10")}
    assert listed(seen=False, include_confidential=False) == {"new-00", "old-00"}
    assert listed(seen=True, include_confidential=False) == {"new-10", "old-10"}


def test_updates_work_on_items_without_their_defaults(aws: dict[str, str]) -> None:
    """ADD on a missing counter starts from 0; SET adds what was left out; a folder change moves
    the folder index with it, so the folder read from the index key stays right."""
    from mailsync import dal

    message = _message("u1")
    dal.store_new_messages([(message, _location(message))])
    dal.record_changes(message, [Change("seen", seen=True)], {"seen": True, "flags": ["\\Seen"], "folder": "archive"})
    shown = dal.find_message("u1")
    assert shown is not None
    assert (shown.pending_ops, shown.seen, shown.flags, shown.folder) == (1, True, ("\\Seen",), "archive")
    assert shown.updated_at == STAMP, "not given: still the creation time"
    (in_archive,), _ = dal.list_messages(T, U, folder="archive", since=None, seen=True, limit=5, cursor=None)
    assert in_archive == shown

    (op,) = dal.ops_waiting(T, U)
    later = datetime(2026, 5, 3, tzinfo=UTC)
    dal.finish_op(op, shown, {"updated_at": later})
    done = dal.find_message("u1")
    assert done is not None and (done.pending_ops, done.updated_at) == (0, later)

    confidential = dal.set_confidential(done, True, ["keyword"])
    assert dal.find_message("u1") == confidential
    public, _ = dal.list_messages(
        T, U, folder=None, since=None, seen=None, limit=5, cursor=None, include_confidential=False
    )
    assert public == []

    dal.detach(confidential, _location(message), "removed")
    detached = dal.find_message("u1")
    assert detached is not None and (detached.state, detached.detach_reason) == ("detached", "removed")


def test_an_update_of_what_a_trimmed_item_derives_from_is_refused(aws: dict[str, str]) -> None:
    from mailsync import dal

    message = _message("g1")
    dal.store_new_messages([(message, _location(message))])
    with pytest.raises(ValueError, match="internet_message_id"):
        dal.record_changes(message, [], {"internet_message_id": "other@x"})
    assert dal.find_message("g1") == message
