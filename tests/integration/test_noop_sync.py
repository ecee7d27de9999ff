"""A sync that finds nothing writes nothing and decrypts nothing (moto + Dovecot).

AWS calls are counted where every client ends, ``botocore.client.BaseClient._make_api_call``
(boto3 clients and PynamoDB alike), as ``bench/bench_noop_sync.py`` counts them.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import boto3
import pytest

from devstack.aws_calls import count_aws_calls
from tests.integration.sync_support import (
    Account,
    connect_account,
    days_ago,
    flavoured_account,
    message,
    server_flags,
)

MAP = {"inbox": "INBOX", "sent": "Sent"}
DYNAMODB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}


def writes(calls: Counter[str]) -> dict[str, int]:
    return {op: n for op, n in calls.items() if op.startswith("dynamodb:") and op.split(":")[1] in DYNAMODB_WRITES}


def kms(calls: Counter[str]) -> dict[str, int]:
    return {op: n for op, n in calls.items() if op.startswith("kms:")}


def poll(account: Account, **kw: Any) -> Any:
    """A scheduled sync job, as the scheduler sends one every minute."""
    return account.sync(reason="schedule", **kw)


def sync_status(account: Account) -> dict[str, Any]:
    response = account.api("GET", "/v1/users/me/sync-status", caller=account.caller)
    assert response.status == 200, response.body
    return response.body


@pytest.fixture(params=["full", "basic"])
def account(request, api, local_mail_env, monkeypatch) -> Account:
    """Synced once, on Dovecot with CONDSTORE/QRESYNC ("full") and without ("basic", whose flag
    scan then runs every 15 minutes, the default, instead of on every sync as in other tests)."""
    from mailsync.config import get_settings
    from mailsync.sync.planner import jobs

    monkeypatch.setenv("MAILSYNC_FLAG_SCAN_MINUTES", "15")
    # The polls here follow each other at once; the skip of a scheduled job right after a
    # success has its own test (test_sync_handlers.py::test_scheduled_duplicate_right_after_a_sync_is_skipped).
    monkeypatch.setattr(jobs, "MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS", 0)
    get_settings.cache_clear()
    account = flavoured_account(request, api, monkeypatch, MAP)
    with account.user.client() as imap:
        for i in range(3):
            imap.append("INBOX", message(f"old {i}", days=2), internal_date=days_ago(2))
    first = account.sync()
    assert first.status == "synced" and first.outcome.created == 3
    return account


def test_a_no_op_sync_writes_nothing_and_makes_no_kms_call(account: Account) -> None:
    before = sync_status(account)
    with count_aws_calls() as calls:
        result = poll(account)
    assert result.status == "synced" and result.no_op, result
    assert writes(calls) == {}, calls
    assert kms(calls) == {}, calls
    # What it did: read the account item and its sync state in one request, nothing else anywhere.
    assert calls == {"dynamodb:BatchGetItem": 1}, calls
    # The API shows the account as it was: idle, the last sync that had work, no "syncing".
    after = sync_status(account)
    assert (after["state"], after["last_success_at"], after["last_started_at"]) == (
        "idle",
        before["last_success_at"],
        before["last_started_at"],
    )


def test_a_sync_the_user_asked_for_confirms_itself_under_the_lease(account: Account) -> None:
    before = sync_status(account)["last_success_at"]
    with count_aws_calls() as calls:
        result = account.sync(reason="user")  # POST /v1/users/me/sync
    assert result.status == "synced" and result.outcome.created == 0
    assert writes(calls) == {"dynamodb:UpdateItem": 2}, calls  # the lease taken and given back
    assert kms(calls) == {}, calls
    assert sync_status(account)["last_success_at"] > before


def test_a_cold_container_unwraps_the_data_key_once(account: Account) -> None:
    from mailsync import crypto

    crypto.reset_caches()  # a new container: no data key in memory
    with count_aws_calls() as calls:
        assert poll(account).no_op
    assert kms(calls) == {"kms:Decrypt": 1}, calls
    with count_aws_calls() as calls:
        assert poll(account).no_op
    assert kms(calls) == {}, calls


def test_a_change_on_the_server_still_syncs_under_the_lease(account: Account) -> None:
    before = sync_status(account)["last_success_at"]
    with account.user.client() as imap:
        imap.append("INBOX", message("new mail", days=1), internal_date=days_ago(1))
    with count_aws_calls() as calls:
        result = poll(account)
    assert result.status == "synced" and result.outcome.created == 1
    # The lease was taken and given back (its two writes), the message stored.
    assert writes(calls)["dynamodb:UpdateItem"] >= 2, calls
    assert "new mail" in account.synced()
    after = sync_status(account)
    assert after["state"] == "idle" and after["last_success_at"] > before


def test_a_poll_that_stores_one_message_writes_the_sync_state_twice(account: Account) -> None:
    """The steady state of a mailbox: a poll finds one new message. Its sync state is written
    when the lease is taken and once more when it is given back, with the sync's checkpoint;
    the activity recorded by the first sync moments ago is recent enough to stand."""
    with account.user.client() as imap:
        imap.append("INBOX", message("one new", days=1), internal_date=days_ago(1))
    with count_aws_calls() as calls:
        result = poll(account)
    assert result.status == "synced" and result.outcome.created == 1, result
    # The message's items, then its location (last: it marks the copy done), and the two writes.
    assert writes(calls) == {"dynamodb:BatchWriteItem": 2, "dynamodb:UpdateItem": 2}, calls
    assert result.outcome.checkpoint is None  # written, not left over
    # The checkpoint was written with the release: the next poll finds nothing to do.
    with count_aws_calls() as calls:
        assert poll(account).no_op
    assert writes(calls) == {}, calls
    assert sync_status(account)["state"] == "idle"


def test_a_pending_crm_change_still_syncs_under_the_lease(account: Account) -> None:
    target = account.synced()["old 0"]
    assert account.api("PATCH", f"/v1/messages/{target['id']}", {"seen": True}, caller=account.caller).status == 200
    with count_aws_calls() as calls:
        result = poll(account)
    assert result.status == "synced" and result.outcome.pushed == 1
    assert writes(calls), calls
    assert "\\Seen" in server_flags(account, "INBOX", "old 0")
    # Then quiet again.
    with count_aws_calls() as calls:
        assert poll(account).no_op
    assert writes(calls) == {}, calls


def test_a_flag_changed_by_another_program_is_work_on_condstore_servers(account: Account, request) -> None:
    with account.user.client() as imap:
        uid = imap.uids("INBOX")[0]
        imap.add_flags("INBOX", uid, ["\\Flagged"])
    result = poll(account)
    if "basic" in request.node.callspec.id:
        # Without CONDSTORE STATUS does not show it: it waits for the next flag scan (15 min).
        assert result.no_op
    else:
        assert result.outcome.flag_updates == 1


class PerThreadLimits:
    """``mailbox.limits.LIMITS`` as if every thread were a worker process of its own."""

    def __init__(self) -> None:
        from mailsync.mailbox.limits import ConnectionLimits

        self._new = ConnectionLimits
        self._local = threading.local()

    def slot(self, *args: Any, **kwargs: Any) -> Any:
        if not hasattr(self._local, "limits"):
            self._local.limits = self._new()
        return self._local.limits.slot(*args, **kwargs)


def test_two_workers_racing_on_a_change_never_both_write(account: Account, monkeypatch) -> None:
    from mailsync import dal
    from mailsync.services import sync_jobs

    with account.user.client() as imap:
        for i in range(3):
            imap.append("INBOX", message(f"race {i}", days=1), internal_date=days_ago(1))
    # Both have read STATUS without the lease and seen the change; both reach for the lease at once.
    barrier = threading.Barrier(2, timeout=30)
    take_lease = dal.take_lease

    def racing(*args: Any, **kwargs: Any) -> Any:
        barrier.wait()
        return take_lease(*args, **kwargs)

    monkeypatch.setattr(dal, "take_lease", racing)
    # Two worker processes: each has its own connection limits (in one, the second job of the
    # same mailbox would not even connect).
    monkeypatch.setattr(sync_jobs, "LIMITS", PerThreadLimits())
    results: list[Any] = []

    def worker(owner: str) -> None:
        results.append(poll(account, owner=owner))

    threads = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.status for r in results) == ["busy", "synced"]
    assert sum(r.outcome.created for r in results if r.outcome is not None) == 3
    assert sorted(s for s in account.synced() if s.startswith("race")) == ["race 0", "race 1", "race 2"]
    assert len(account.messages()) == 6


def test_one_connection_per_mailbox_and_per_host_limit(
    api, local_mail_env, dovecot, mail_user, aws, monkeypatch
) -> None:
    from mailsync.config import get_settings
    from mailsync.services import sync_jobs

    monkeypatch.setattr(sync_jobs, "HOST_WAIT_SECONDS", 0.0)
    monkeypatch.setenv("MAILSYNC_HOST_CONCURRENCY", "1")
    get_settings.cache_clear()
    alice = connect_account(api, mail_user, MAP, who="alice")
    # Bob, another CRM user, logs in to the very same mailbox; carol to another on the same host.
    bob = connect_account(api, mail_user, MAP, who="bob")
    carol = connect_account(api, dovecot.add_user(), MAP, who="carol")
    inside, leave = threading.Event(), threading.Event()

    def held(conn: Any) -> Any:
        inside.set()
        assert leave.wait(30)
        return conn

    results: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: results.update(alice=alice.sync(connection_factory=held)))
    thread.start()
    try:
        assert inside.wait(30)
        # Alice's job holds the mailbox's one connection in this process: bob's goes back on the queue.
        assert bob.sync().status == "busy"
        # The host's one connection (MAILSYNC_HOST_CONCURRENCY=1) is taken too: carol's waits as well.
        assert carol.sync().status == "busy"
    finally:
        leave.set()
        thread.join(60)
    assert results["alice"].status == "synced"
    assert (bob.sync().status, carol.sync().status) == ("synced", "synced")
    queued = boto3.client("sqs").get_queue_attributes(QueueUrl=aws["SYNC_QUEUE_URL"], AttributeNames=["All"])
    assert queued["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "2"


def test_a_password_saved_in_the_older_format_still_logs_in(api, local_mail_env, mail_user, aws) -> None:
    from mailsync.config import get_settings

    account = connect_account(api, mail_user, MAP)
    legacy = boto3.client("kms").encrypt(
        KeyId=get_settings().credentials_key_id,
        Plaintext=mail_user.password.encode(),
        EncryptionContext={"tenant_id": "acme", "user_id": "alice", "purpose": "mail-password"},
    )["CiphertextBlob"]
    boto3.client("dynamodb").update_item(
        TableName=aws["ACCOUNTS_TABLE"],
        Key={"tenant_id": {"S": "acme"}, "user_id": {"S": "alice"}},
        UpdateExpression="SET password_ciphertext = :c",
        ExpressionAttributeValues={":c": {"B": legacy}},
    )
    assert account.api("POST", "/v1/users/me/mail-settings/test", caller=account.caller).status == 200
    assert account.sync().status == "synced"
