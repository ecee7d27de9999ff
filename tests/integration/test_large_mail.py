"""Large and malformed mail through the real path, and a failed write in the parallel batch stream.

A 40 MB message is parsed without its attachment's lines (``mime`` elides long base64 runs),
but what is stored must not show it: the raw copy in S3 is byte for byte what the server has,
and the metadata (subject with 8-bit bytes, snippet, attachment size) is what a full parse
gives. A failure in one of the BatchWriteItem requests of a batch must leave that batch
unchecked: no checkpoint moves past it and the next sync completes it.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import random
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.sync_support import Account, connect_account, days_ago, message

ATTACHMENT_BYTES = 30 * 1024 * 1024  # 40 MB on the wire once base64-encoded


@pytest.fixture
def account(api, local_mail_env, mail_user) -> Account:
    return connect_account(api, mail_user)


def large_message(payload: bytes, *, close: bool = True) -> bytes:
    """A hand-built multipart message: an 8-bit Latin-1 subject, a text part, a base64 PDF.

    ``close=False`` leaves the attachment's padding and the closing boundary out (malformed)."""
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    if not close:
        encoded = encoded.rstrip(b"=\r\n") + b"\r\n"
    head = (
        "From: Sender <sender@example.com>\r\n"
        "To: Recipient <recipient@example.com>\r\n"
        f"Date: {email.utils.format_datetime(days_ago(1))}\r\n"
        "Message-ID: <large@example.com>\r\n"
    ).encode() + b"Subject: Caf\xe9 r\xe9sum\xe9\r\n"
    body = (
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease find my CV attached.\r\n"
        b'--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="cv.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
    )
    return head + body + (b"--b1--\r\n" if close else b"")


def raw_in_s3(s3_key: str) -> bytes:
    from mailsync import blobstore

    return blobstore.get_raw(s3_key)


def test_a_40_mb_message_is_stored_byte_exact_with_its_metadata(account: Account) -> None:
    from mailsync import dal

    payload = random.Random(40).randbytes(ATTACHMENT_BYTES)
    raw = large_message(payload)
    with account.user.client() as imap:
        imap.append("INBOX", raw, internal_date=days_ago(1))

    assert account.sync().status == "synced"

    [listed] = account.messages()
    stored = dal.find_message(listed["id"])
    assert stored is not None
    assert hashlib.sha256(raw_in_s3(stored.s3_key)).hexdigest() == hashlib.sha256(raw).hexdigest()
    assert stored.subject == "Café résumé"  # 8-bit Latin-1 header bytes, as a full parse reads them
    assert stored.snippet == "Please find my CV attached."
    assert [(a.filename, a.content_type, a.size) for a in stored.attachments] == [
        ("cv.pdf", "application/pdf", ATTACHMENT_BYTES)
    ]
    assert not stored.too_large and not stored.parse_errors


def test_a_malformed_large_message_is_still_stored_raw(account: Account) -> None:
    from mailsync import dal

    raw = large_message(random.Random(41).randbytes(2 * 1024 * 1024), close=False)
    with account.user.client() as imap:
        imap.append("INBOX", raw, internal_date=days_ago(1))

    assert account.sync().status == "synced"

    [listed] = account.messages()
    stored = dal.find_message(listed["id"])
    assert stored is not None
    assert raw_in_s3(stored.s3_key) == raw
    assert stored.snippet == "Please find my CV attached."
    assert [a.filename for a in stored.attachments] == ["cv.pdf"]
    assert stored.parse_errors  # the missing closing boundary is reported, not fatal


def test_a_failed_write_in_the_batch_stream_leaves_that_batch_unchecked(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 messages are two batches (the newest 50, then 10). One BatchWriteItem request of the
    second batch fails: the first batch stays checkpointed, the second is not (no location, no
    progress past it), and the next sync stores it."""
    from botocore.client import BaseClient

    from mailsync import dal

    with account.user.client() as imap:
        imap.imap.multiappend(
            "INBOX", [{"msg": message(f"m{i:02d}", days=1 + i / 100), "date": days_ago(1 + i / 100)} for i in range(60)]
        )
    original = BaseClient._make_api_call
    failed: list[str] = []

    def second_batch_fails(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "BatchWriteItem" and not failed:
            items = [r["PutRequest"]["Item"] for rs in params["RequestItems"].values() for r in rs]
            subjects = [i["subject"]["S"] for i in items if "subject" in i]
            if any(s >= "m50" for s in subjects):  # the oldest ten: the second batch
                failed.append(operation)
                raise ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, operation)
        return original(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", second_batch_fails)
    assert account.sync().status != "synced"
    assert failed

    state = dal.get_sync_state(account.tenant, account.caller.user)
    assert state is not None
    assert state.folders["INBOX"]["first_sync"]["done"] == 50
    assert dal.count_locations(account.tenant, account.caller.user, "INBOX") == 50

    monkeypatch.setattr(BaseClient, "_make_api_call", original)
    assert account.sync().status == "synced"
    assert sorted(account.synced()) == [f"m{i:02d}" for i in range(60)]
    assert dal.count_locations(account.tenant, account.caller.user, "INBOX") == 60
