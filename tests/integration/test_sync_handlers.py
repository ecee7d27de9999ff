"""The scheduler and worker functions called with real event shapes (moto + Dovecot)."""

from __future__ import annotations

import json

import boto3
import pytest

from devstack.lambda_runtime import LambdaContext, load_handler, scheduled_event, sqs_event
from tests.conftest import Caller
from tests.integration.sync_support import connect_account, days_ago, message, per_account


def queued_bodies(queue_url: str) -> list[dict]:
    """Every message on the queue (removed from it), parsed."""
    sqs = boto3.client("sqs")
    bodies = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
        if not got.get("Messages"):
            return bodies
        for m in got["Messages"]:
            bodies.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def queued_jobs(queue_url: str) -> list[dict]:
    return per_account(queued_bodies(queue_url))


def save_settings(api, user_id: str, **overrides) -> None:
    body = {"host": "imap.example.com", "username": user_id, "password": "pw-123456", **overrides}
    assert api("PUT", "/v1/users/me/mail-settings", body, caller=Caller(user_id, "acme")).status == 201


def test_scheduler_enqueues_due_accounts_only(api, aws) -> None:
    for i in range(23):
        save_settings(api, f"user{i:02d}")
    save_settings(api, "disabled", fetch_enabled=False)
    result = load_handler("scheduler")(scheduled_event(), LambdaContext(function_name="SchedulerFunction"))
    assert result == {"enqueued": 23}
    jobs = queued_jobs(aws["SYNC_QUEUE_URL"])
    assert sorted(j["user_id"] for j in jobs) == [f"user{i:02d}" for i in range(23)]
    assert {j["reason"] for j in jobs} == {"schedule"}


def test_scheduler_skips_backed_off_and_auth_failed_accounts(api, aws) -> None:
    from mailsync import dal
    from mailsync.services import scheduling

    save_settings(api, "backing-off")
    save_settings(api, "locked-out")
    save_settings(api, "fine")
    dal.update_account_status(
        dal.get_account("acme", "backing-off"), "connect_failed", "down", extra={"next_sync_at": 2**40}
    )
    dal.update_account_status(
        dal.get_account("acme", "locked-out"), "auth_failed", "bad", extra={"due_shard": None, "next_sync_at": None}
    )
    assert scheduling.enqueue_due_accounts() == 1
    assert [j["user_id"] for j in queued_jobs(aws["SYNC_QUEUE_URL"])] == ["fine"]


def test_worker_syncs_and_reports_bad_records(api, local_mail_env, mail_user, aws) -> None:
    account = connect_account(api, mail_user)
    with mail_user.client() as imap:
        imap.append("INBOX", message("via sqs", days=1), internal_date=days_ago(1))
    records = [
        {"MessageId": "good", "ReceiptHandle": "r1", "Body": json.dumps({"tenant_id": "acme", "user_id": "alice"})},
        {"MessageId": "bad", "ReceiptHandle": "r2", "Body": "{not json"},
        {"MessageId": "gone", "ReceiptHandle": "r3", "Body": json.dumps({"tenant_id": "acme", "user_id": "nobody"})},
    ]
    event = sqs_event(records, "arn:aws:sqs:eu-west-1:123456789012:mailsync-local-SyncQueue")
    result = load_handler("sync_worker")(event, LambdaContext(function_name="SyncWorkerFunction"))
    assert result == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    assert "via sqs" in account.synced()


def test_post_sync_enqueues_now(api, local_mail_env, mail_user, aws) -> None:
    connect_account(api, mail_user)
    response = api("POST", "/v1/users/me/sync")
    assert (response.status, response.body) == (202, {"enqueued": True})
    assert queued_jobs(aws["SYNC_QUEUE_URL"]) == [{"tenant_id": "acme", "user_id": "alice", "reason": "user"}]
    assert api("POST", "/v1/users/bob/sync").status == 404


def test_host_concurrency_cap_defers_the_job(api, local_mail_env, mail_user, aws, monkeypatch) -> None:
    from mailsync.config import get_settings
    from mailsync.mailbox.limits import LIMITS
    from mailsync.services import sync_jobs

    monkeypatch.setenv("MAILSYNC_HOST_CONCURRENCY", "1")
    monkeypatch.setattr(sync_jobs, "HOST_WAIT_SECONDS", 0.0)
    get_settings.cache_clear()
    account = connect_account(api, mail_user)
    # Another job of this worker process holds the host's only connection.
    with LIMITS.slot("127.0.0.1", "another-user", limit=1, wait_seconds=0):
        assert account.sync().status == "busy"
    # Put back on the queue with a delay, not dropped: it runs when the host has room again.
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=aws["SYNC_QUEUE_URL"], AttributeNames=["All"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "1"
    assert account.sync().status == "synced"


@pytest.mark.parametrize("reason", ["schedule"])
def test_scheduled_duplicate_right_after_a_sync_is_skipped(api, local_mail_env, mail_user, reason) -> None:
    account = connect_account(api, mail_user)
    assert account.sync().status == "synced"
    assert account.sync(reason=reason).status == "skipped"
    assert account.sync(reason="user").status == "synced"


def test_worker_publishes_sync_metrics(api, local_mail_env, mail_user, aws, monkeypatch, capsys) -> None:
    import json as _json

    from mailsync.observability import metrics

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setattr(metrics, "metrics_disabled", False, raising=False)
    connect_account(api, mail_user)
    with mail_user.client() as imap:
        imap.append("INBOX", message("metered", days=1), internal_date=days_ago(1))
    body = json.dumps({"tenant_id": "acme", "user_id": "alice", "reason": "user"})
    event = sqs_event([{"MessageId": "m1", "ReceiptHandle": "r", "Body": body}], "arn:aws:sqs:eu-west-1:1:q")
    capsys.readouterr()
    load_handler("sync_worker")(event, LambdaContext(function_name="SyncWorkerFunction"))
    blobs = [_json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    emitted = {k: v for blob in blobs for k, v in blob.items() if not k.startswith("_")}
    assert emitted["Sync_synced"] == [1.0] or emitted["Sync_synced"] == 1.0
    assert emitted["MessagesCreated"] in (1.0, [1.0])
    assert "SyncDuration" in emitted
    assert emitted["service"] == "mailsync"
