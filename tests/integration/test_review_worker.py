"""The sync worker never runs a batch into its Lambda timeout (issue 9 review, worker side).

Three tarpit accounts in one SQS batch: each job may spend its whole budget, so a worker that
starts every record regardless of the time it has left is killed mid-job and leaves an account
``syncing`` until its lease expires. Driven through the real worker handler with a Lambda
context whose remaining time is short; the tarpit is a scripted server trickling a reply.
"""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest

from devstack.lambda_runtime import LambdaContext, load_handler, sqs_event
from mailsync.sync.planner import jobs as policy
from tests.conftest import Caller
from tests.fixtures.hostile_server import HostileServer, Peer, imap_server
from tests.integration.sync_support import per_account

# The fixtures of the op-failure tests: an account on Dovecot behind a proxy refusing APPEND.
from tests.integration.test_op_failures import account, plain_text, refusing, send  # noqa: F401

BUDGET = 6  # seconds; the job budget of this test, so a tarpit costs seconds, not minutes
USERS = ["alice", "bob", "carol"]


def tarpit_login(peer: Peer, tag: bytes, args: bytes) -> None:
    # Alive but never finishing: one byte at a time, a line that never ends.
    peer.trickle(b"* OK " + b"x" * 100_000, 0.2)


def drain(queue_url: str) -> list[dict]:
    """The jobs on the queue (removed from it), one per account."""
    sqs = boto3.client("sqs")
    out = []
    while got := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
        for m in got:
            out.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return per_account(out)


def sync_event(users: list[str], **job: str) -> dict[str, Any]:
    """The sync queue's SQS event carrying one job per user."""
    records = [
        {
            "MessageId": f"m-{u}",
            "ReceiptHandle": f"r-{u}",
            "Body": json.dumps({"tenant_id": "acme", "user_id": u, **job}),
        }
        for u in users
    ]
    return sqs_event(records, "arn:aws:sqs:eu-west-1:000000000000:sync")


@pytest.fixture
def tarpit_accounts(api, aws, monkeypatch: pytest.MonkeyPatch):
    from mailsync.config import get_settings
    from mailsync.services import sync_jobs

    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "true")
    monkeypatch.setenv("MAILSYNC_ALLOW_INSECURE", "true")
    monkeypatch.setenv("MAILSYNC_JOB_BUDGET_SECONDS", str(BUDGET))
    # One account at a time, so that the batch outlasts the Lambda (tests/integration/
    # test_sync_groups.py runs tarpits concurrently).
    monkeypatch.setenv("MAILSYNC_WORKER_THREADS", "1")
    get_settings.cache_clear()
    # Deferred jobs become visible at once here, so the test can read them off the queue.
    monkeypatch.setattr(sync_jobs, "DEFERRED_DELAY_SECONDS", 0)
    # The worker imported before a test starts its Lambda's clock, as a Lambda's init is not part
    # of its timeout: a first import on a loaded machine took seconds of the few a test gives.
    load_handler("sync_worker")
    with HostileServer(imap_server({b"LOGIN": tarpit_login})) as server:
        body = {"host": server.host, "port": server.port, "username": "u", "password": "pw", "security": "none"}
        for user in USERS:
            saved = api("PUT", "/v1/users/me/mail-settings", body, caller=Caller(user))
            assert saved.status == 201, saved.body
        drain(aws["SYNC_QUEUE_URL"])  # whatever saving the settings enqueued
        yield server


def test_a_batch_of_tarpits_defers_what_the_lambda_has_no_time_for(tarpit_accounts, aws) -> None:
    from mailsync import dal

    server = tarpit_accounts
    event = sync_event(USERS, reason="user")
    # Time for one whole job and a little more (room for start-up on a loaded machine), not for
    # two: after a whole first job less than BUDGET + margin is left, whatever the start-up took.
    timeout = BUDGET + policy.LAMBDA_MARGIN_SECONDS + 5
    context = LambdaContext(function_name="SyncWorkerFunction", timeout_seconds=timeout)
    started = time.monotonic()
    result = load_handler("sync_worker")(event, context)
    elapsed = time.monotonic() - started

    assert result == {"batchItemFailures": []}, "deferring is not a failure: no DLQ count, no 30 min wait"
    assert elapsed < timeout - policy.LAMBDA_MARGIN_SECONDS / 2, elapsed
    assert server.connections == 1, "only the job with time for its whole budget started"
    first = dal.get_sync_state("acme", "alice")
    assert (first.state, first.lease_owner) == ("failed", None)
    # The others are back on the queue, with their reason, and never showed "syncing".
    queued = drain(aws["SYNC_QUEUE_URL"])
    assert sorted((j["user_id"], j["reason"]) for j in queued) == [("bob", "user"), ("carol", "user")]
    for user in ("bob", "carol"):
        state = dal.get_sync_state("acme", user)
        assert state is None or (state.state != "syncing" and state.lease_owner is None), state


def test_a_lambda_shorter_than_a_job_runs_its_first_record_cut_to_the_lambdas_time(
    tarpit_accounts, aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A budget set longer than the worker's timeout: deferring every record would bounce them
    # between invocations for ever, so the first one runs, its connection cut before the Lambda's end.
    from mailsync import dal
    from mailsync.config import get_settings

    # A job budget far past the Lambda's end, so that being cut at the one and not the other
    # is told apart by tens of seconds, whatever the machine's load.
    long_budget = 60
    monkeypatch.setenv("MAILSYNC_JOB_BUDGET_SECONDS", str(long_budget))
    get_settings.cache_clear()
    server = tarpit_accounts
    event = sync_event(USERS[:2])
    # The cut comes 10 s in: after the invocation has connected (its start-up took 3.4-5 s alone
    # under load, and a cut 3 s in came before the connection), long before the job's budget.
    timeout = policy.LAMBDA_MARGIN_SECONDS + 10
    context = LambdaContext(function_name="SyncWorkerFunction", timeout_seconds=timeout)
    started = time.monotonic()
    assert load_handler("sync_worker")(event, context) == {"batchItemFailures": []}
    elapsed = time.monotonic() - started
    # Cut at the Lambda's end less its margin (10 s in), not at its end (20 s), nor at the budget.
    assert elapsed < timeout - policy.LAMBDA_MARGIN_SECONDS / 2, elapsed
    assert server.connections == 1
    assert dal.get_sync_state("acme", "alice").state == "failed"
    assert [(j["user_id"], j["reason"]) for j in drain(aws["SYNC_QUEUE_URL"])] == [("bob", "schedule")]


def test_a_lambda_with_time_for_every_job_runs_them_all(tarpit_accounts, aws) -> None:
    from mailsync import dal

    server = tarpit_accounts
    event = sync_event(USERS[:2])
    timeout = 2 * (BUDGET + policy.LAMBDA_MARGIN_SECONDS) + 5
    context = LambdaContext(function_name="SyncWorkerFunction", timeout_seconds=timeout)
    assert load_handler("sync_worker")(event, context) == {"batchItemFailures": []}
    assert server.connections == 2
    assert drain(aws["SYNC_QUEUE_URL"]) == []
    assert [dal.get_sync_state("acme", u).state for u in USERS[:2]] == ["failed", "failed"]


# -- a message with huge FLAGS does not block the account's pull ----------------------------

KEYWORDS = tuple(f"$kw{i:05d}-{'k' * 20}".encode() for i in range(20_000))


def test_a_message_with_twenty_thousand_keywords_is_stored_and_the_account_goes_on(
    api, local_mail_env, mail_user, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dovecot's maildir keeps at most 26 keywords per mailbox, so the server's answer is
    # widened where it is parsed: the FETCH response of that one message carries 20,000
    # keywords (~600 KB, under the 1 MB line cap) besides its real flags.
    from mailsync import dal
    from mailsync.mailbox import connection
    from tests.integration.sync_support import connect_account, days_ago, message

    synced = connect_account(api, mail_user)
    with mail_user.client() as imap:
        imap.append("INBOX", message("before"), internal_date=days_ago(1))
        poison_uid = imap.append("INBOX", message("keywords"), flags=["\\Seen"], internal_date=days_ago(1))
        imap.append("INBOX", message("after"), internal_date=days_ago(1))
    parse_fetch = connection._parse_fetch

    def widened(data):
        out = parse_fetch(data)
        attrs = out.get(poison_uid)
        if attrs is not None and b"FLAGS" in attrs:
            attrs[b"FLAGS"] = KEYWORDS + tuple(attrs[b"FLAGS"])
        return out

    monkeypatch.setattr(connection, "_parse_fetch", widened)
    assert synced.sync().status == "synced"
    status = synced.api("GET", "/v1/users/me/sync-status", caller=synced.caller).body
    assert (status["state"], status["last_error"]) == ("idle", None)
    by_subject = {m["subject"]: m for m in synced.messages()}
    assert set(by_subject) == {"before", "keywords", "after"}
    item = dal.find_message(by_subject["keywords"]["id"])
    assert item.seen is True and "\\Seen" in item.flags
    assert 1 < len(item.flags) <= 100
    # The next sync reads the same capped flags: nothing to update, nothing failing.
    assert synced.sync(reason="user").status == "synced"
    assert dal.find_message(by_subject["keywords"]["id"]).flags == item.flags


# -- a busy server is not retried within the job ----------------------------------------------


def test_a_busy_server_costs_one_login_per_job_and_the_op_fails_after_its_attempts(
    account,  # noqa: F811 - the imported fixture
    refusing,  # noqa: F811
) -> None:
    # Replaces test_op_failures' "retried a bounded number of times" test, which counted on
    # three logins per job: each retry within a job is a fresh login seconds after the last.
    from mailsync.sync.planner.ops import OP_ATTEMPTS

    refusing.refuse_append = {"SENT": b"NO [UNAVAILABLE] Temporary failure, try again later"}
    sent = send(account, "later")
    results = [account.sync(reason="push") for _ in range(OP_ATTEMPTS)]
    assert [(r.status, r.error) for r in results[:-1]] == [("failed", "server_busy")] * (OP_ATTEMPTS - 1)
    assert len(refusing.refused) == OP_ATTEMPTS, "one attempt per job, none retried within it"
    assert results[-1].status == "synced", "the op failed for good; the account goes on"
    after = account.by_subject()["later"]
    assert (after["id"], after["sync_state"]) == (sent["id"], "failed")
    assert f"after {OP_ATTEMPTS} attempts" in after["last_op_error"]
