"""A first sync packs small messages' raw copies into few S3 objects (``blobstore.put_many``).

What must hold whatever the packing: every message's raw copy, read by the worker
(``blobstore.get_raw``) or downloaded through the API's raw link, is byte for byte the server's; a
link's object holds that message only (never the pack: the other messages may be confidential);
large and single arriving messages stay standalone; a wrong byte range is detected, never returned;
the pusher's APPEND reads a packed message; a crash after the pack upload reruns to the same end.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest
import requests

from devstack.aws_calls import count_aws_calls
from tests.fixtures.crash import CrashInjector, WorkerCrashed
from tests.integration.raw_copies import account_objects, checked_raw_copies
from tests.integration.sync_support import Account, connect_account, days_ago, message

SMALL = 24


@pytest.fixture
def account(api, local_mail_env, mail_user) -> Account:
    return connect_account(api, mail_user)


def large(subject: str) -> bytes:
    """Over ``blobstore.PACK_MEMBER_MAX_BYTES``: stored standalone."""
    filler = base64.encodebytes(random.Random(subject).randbytes(300 * 1024)).replace(b"\n", b"\r\n")
    return message(subject, days=1) + filler


def seed(account: Account, count: int) -> dict[str, bytes]:
    raws = {f"small {i}": message(f"small {i}", days=1 + i / 100) for i in range(count)}
    with account.user.client() as imap:
        for i, raw in enumerate(raws.values()):
            imap.append("INBOX", raw, internal_date=days_ago(1 + i / 100))
    return raws


def stored(account: Account) -> dict[str, Any]:
    """Subject -> the message as stored (``mailsync.domain.Message``)."""
    from mailsync import dal

    listed = account.synced()
    found = dal.find_messages([m["id"] for m in listed.values()])
    return {subject: found[m["id"]] for subject, m in listed.items()}


def test_a_first_sync_packs_small_messages_and_every_raw_reads_back_exactly(account: Account) -> None:
    from mailsync import blobstore

    raws = seed(account, SMALL)
    raws["large"] = large("large")
    with account.user.client() as imap:
        imap.append("INBOX", raws["large"], internal_date=days_ago(0.5))

    with count_aws_calls("s3") as s3_calls:
        assert account.sync().status == "synced"

    messages = stored(account)
    assert sorted(messages) == sorted(raws)
    # One batch: its small messages in one pack, the large one on its own.
    assert s3_calls["PutObject"] == 2
    objects = checked_raw_copies(account.tenant, account.caller.user, [m.id for m in messages.values()])
    assert len(objects) == 2
    assert len({blobstore.object_key(messages[f"small {i}"].s3_key) for i in range(SMALL)}) == 1
    assert messages["large"].s3_key == blobstore.raw_key(
        account.tenant, account.caller.user, messages["large"].content_hash
    )

    for subject, raw in raws.items():
        assert blobstore.get_raw(messages[subject].s3_key, sha256=messages[subject].content_hash) == raw, subject
        link = account.api("GET", f"/v1/messages/{messages[subject].id}/raw", caller=account.caller)
        assert link.status == 200, link.body
        # The link's object is the message alone: exactly its bytes, at its own key, not the pack.
        assert "/pack/" not in link.body["url"]
        download = requests.get(link.body["url"], timeout=10)
        assert (download.status_code, download.content) == (200, raw), subject

    # Each link made (once) a standalone copy; asking again makes none.
    with count_aws_calls("s3") as again:
        account.api("GET", f"/v1/messages/{messages['small 0'].id}/raw", caller=account.caller)
    assert again["PutObject"] == 0
    assert len(account_objects(account.tenant, account.caller.user)) == 2 + SMALL


def test_a_single_arriving_message_stays_standalone(account: Account) -> None:
    from mailsync import blobstore

    seed(account, 3)
    assert account.sync().status == "synced"
    new = message("arrives alone", days=0.5)
    with account.user.client() as imap:
        imap.append("INBOX", new, internal_date=days_ago(0.5))
    assert account.sync().status == "synced"

    arrived = stored(account)["arrives alone"]
    assert arrived.s3_key == blobstore.raw_key(account.tenant, account.caller.user, arrived.content_hash)
    assert blobstore.get_raw(arrived.s3_key, sha256=arrived.content_hash) == new


def test_a_wrong_byte_range_is_detected_never_returned(account: Account) -> None:
    from mailsync import blobstore

    seed(account, 3)
    assert account.sync().status == "synced"
    packed = stored(account)["small 1"]
    key, _, span = packed.s3_key.partition("#")
    offset, _, length = span.partition("+")
    assert key == blobstore.object_key(packed.s3_key) and key.startswith("pack/")
    for wrong in (f"{key}#{int(offset) + 1}+{length}", f"{key}#{offset}+{int(length) - 1}"):
        with pytest.raises(blobstore.RawMismatch):
            blobstore.get_raw(wrong, sha256=packed.content_hash)
        with pytest.raises(blobstore.RawMismatch):
            blobstore.presigned_url(wrong, sha256=packed.content_hash)
    # Running past the pack's end: fewer bytes than the locator says, even unverified.
    with pytest.raises(blobstore.RawMismatch):
        blobstore.get_raw(f"{key}#{offset}+{10**6}")
    with pytest.raises(ValueError):
        blobstore.get_raw(f"{key}#x+1")
    # A pack's key without a range is no message's place: never read whole, never linked.
    with pytest.raises(ValueError):
        blobstore.get_raw(key)
    with pytest.raises(ValueError):
        blobstore.presigned_url(key, sha256=packed.content_hash)
    # No download copy was made of bytes that failed the check.
    assert account_objects(account.tenant, account.caller.user) == {key}


def test_the_pusher_appends_a_packed_message(account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CRM message whose raw copy is packed (as a first sync stores mail) is appended to the
    server from its byte range, verified: the server gets exactly the stored bytes."""
    from mailsync import blobstore

    put_many = blobstore.put_many

    def packed(tenant_id: str, user_id: str, raw: bytes) -> tuple[str, str]:
        return put_many(tenant_id, user_id, [raw, message("packed along", days=2)])[0]

    sent = base64.b64encode(message("sent from the crm", days=0)).decode()
    with monkeypatch.context() as patched:
        patched.setattr(blobstore, "put_raw", packed)
        done = account.api("POST", "/v1/users/me/messages", {"raw": sent}, caller=account.caller)
    assert done.status == 201, done.body

    from mailsync import dal

    crm = dal.find_message(done.body["id"])
    assert crm is not None and blobstore.object_key(crm.s3_key).startswith("pack/")
    assert account.sync().status == "synced"

    appended = account.synced()["sent from the crm"]
    assert appended["server_folder"] == "Sent" and appended["uid"] is not None
    with account.user.client() as imap:
        on_server = imap.fetch_raw("Sent", appended["uid"])
    assert on_server == blobstore.get_raw(crm.s3_key, sha256=crm.content_hash)


def test_crash_after_the_pack_upload_then_rerun_converges(account: Account) -> None:
    """The worker dies right after the pack's PutObject, before any DynamoDB write of the batch:
    the rerun fetches the same batch, writes the same pack (same key) and stores every message."""
    raws = seed(account, 5)
    with pytest.raises(WorkerCrashed), CrashInjector(first="s3:PutObject") as crash:
        account.sync(owner="worker-1")
    writes = [str(w) for w in crash.writes]
    assert crash.crashed and writes[-1] == "s3:PutObject" and "dynamodb:BatchWriteItem" not in writes
    [pack] = account_objects(account.tenant, account.caller.user)
    assert account.messages() == []

    assert account.sync(owner="worker-1").status == "synced"
    messages = stored(account)
    assert sorted(messages) == sorted(raws)
    objects = checked_raw_copies(account.tenant, account.caller.user, [m.id for m in messages.values()])
    assert objects == {pack}, "the rerun overwrote the same pack"


def test_put_many_bounds_packs_and_stores_each_content_once(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """Packs stop at ``PACK_MAX_BYTES``; a message packed twice in one batch is stored once; an
    empty or large message and one left alone at the end stand alone; order is kept."""
    from mailsync import blobstore

    monkeypatch.setattr(blobstore, "PACK_MAX_BYTES", 1000)
    monkeypatch.setattr(blobstore, "PACK_MEMBER_MAX_BYTES", 400)
    a, b, c, d, e, f = (bytes([65 + i]) * 300 for i in range(6))
    raws = [a, b, a, c, d, e, f, b"", b"x" * 401]
    with count_aws_calls("s3") as calls:
        stored = blobstore.put_many("acme", "alice", raws)

    assert [blobstore.get_raw(locator, sha256=sha) for locator, sha in stored] == raws
    keys = [blobstore.object_key(locator) for locator, _ in stored]
    # Packs of three (900 bytes, the next one would pass 1000); the repeat is a copy of the first.
    assert keys[0] == keys[1] == keys[2] != keys[3] == keys[4] == keys[5]
    assert stored[2] == stored[0]
    assert head_size(keys[0]) == 600
    # Left alone at the end, empty, over the member size: standalone.
    assert keys[6:] == [blobstore.raw_key("acme", "alice", sha) for _, sha in stored[6:]]
    assert calls["PutObject"] == 2 + 3
    assert account_objects("acme", "alice") == set(keys)


def head_size(key: str) -> int:
    from mailsync.aws import client
    from mailsync.config import get_settings

    return client("s3").head_object(Bucket=get_settings().raw_mail_bucket, Key=key)["ContentLength"]


def test_a_raw_copy_gone_or_damaged_is_said_so_and_never_linked(account: Account) -> None:
    """Storage lost or changed a pack (an operator's mistake, a bad restore): the raw link says
    what is wrong, with its own code, and links no other bytes; the message itself still reads."""
    import boto3

    from mailsync.config import get_settings

    seed(account, 3)
    assert account.sync().status == "synced"
    messages = stored(account)
    key = messages["small 0"].s3_key.partition("#")[0]
    s3, bucket = boto3.client("s3"), get_settings().raw_mail_bucket
    packed = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=packed[::-1])  # other bytes at every range
    damaged = account.api("GET", f"/v1/messages/{messages['small 0'].id}/raw", caller=account.caller)
    s3.delete_object(Bucket=bucket, Key=key)
    gone = account.api("GET", f"/v1/messages/{messages['small 1'].id}/raw", caller=account.caller)
    for response in (damaged, gone):
        assert response.status == 500, response.body
        assert response.body["error"]["code"] == "raw_unavailable", response.body
        assert "cannot be read" in response.body["error"]["message"]
    assert account_objects(account.tenant, account.caller.user) == set()  # no copy of other bytes
    shown = account.api("GET", f"/v1/messages/{messages['small 0'].id}", caller=account.caller)
    assert shown.status == 200 and shown.body["subject"] == "small 0"


def test_a_crm_message_whose_raw_copy_is_gone_fails_its_append_and_the_account_goes_on(account: Account) -> None:
    """The pusher cannot append what it cannot read: that one op fails at once with a plain
    reason (no retries: nothing brings the bytes back), and the sync of everything else goes on."""
    import boto3

    from mailsync import dal
    from mailsync.config import get_settings

    sent = base64.b64encode(message("sent from the crm", days=0)).decode()
    done = account.api("POST", "/v1/users/me/messages", {"raw": sent}, caller=account.caller)
    assert done.status == 201, done.body
    crm = dal.find_message(done.body["id"])
    boto3.client("s3").delete_object(Bucket=get_settings().raw_mail_bucket, Key=crm.s3_key.partition("#")[0])
    seed(account, 1)
    result = account.sync()
    assert result.status == "synced", result
    failed = dal.find_message(crm.id)
    assert failed.uid is None and failed.pending_ops == 0
    assert failed.last_op_error is not None and "cannot be read" in failed.last_op_error
    assert "small 0" in account.synced()
