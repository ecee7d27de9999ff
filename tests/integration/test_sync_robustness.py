"""Failures, crashes, races, resumable first syncs and the cost of doing nothing."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections import Counter
from datetime import datetime

import boto3
import pytest

from devstack.dovecot import MailboxClient, MailUser
from mailsync.sync.planner import jobs as policy
from tests.fixtures.crash import CrashInjector, WorkerCrashed
from tests.integration.raw_copies import checked_raw_copies
from tests.integration.sync_support import (
    Account,
    capture_events,
    connect_account,
    count_dynamodb_calls,
    days_ago,
    message,
    reads,
)


@pytest.fixture
def account(api, local_mail_env, mail_user) -> Account:
    return connect_account(api, mail_user)


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(policy, "RETRY_BASE_DELAY_SECONDS", 0)


def login_failures(dovecot, username: str) -> int:
    log = dovecot.log_file.read_text(errors="replace")
    return sum(1 for line in log.splitlines() if f"user=<{username}>" in line and "auth failed" in line)


def test_password_changed_on_server_stops_logins(account: Account, dovecot, aws) -> None:
    with account.user.client() as imap:
        imap.append("INBOX", message("before", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    events = capture_events(aws["EVENT_BUS_NAME"])
    dovecot.set_password(account.user.username, "changed-by-the-user-in-outlook")

    result = account.sync()
    assert (result.status, result.error) == ("failed", "auth_failed")
    settings = account.api("GET", "/v1/users/me/mail-settings", caller=account.caller).body
    assert settings["status"] == "auth_failed"
    assert settings["last_error"] == "Login to mailbox failed: check user name and password"
    [event] = events.of_type("account.auth_failed")
    assert event["user_id"] == "alice"
    failures = login_failures(dovecot, account.user.username)
    assert failures == 1

    # No more logins: not due for the scheduler, and a job that still arrives does not log in.
    from mailsync.services import scheduling

    assert scheduling.enqueue_due_accounts() == 0
    assert account.sync(reason="schedule").status == "skipped"
    assert account.sync(reason="user").status == "skipped"
    assert login_failures(dovecot, account.user.username) == failures
    # The old messages stay.
    assert "before" in account.synced()

    # New settings (the new password) make the account due and syncing again.
    body = account.settings_body() | {"password": "changed-by-the-user-in-outlook"}
    account.api("PUT", "/v1/users/me/mail-settings", body, caller=account.caller)
    assert scheduling.enqueue_due_accounts() == 1
    assert account.sync().status == "synced"


def test_unreachable_server_backs_off(api, local_mail_env, mail_user, aws) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    account = connect_account(api, mail_user)
    account.api("PUT", "/v1/users/me/mail-settings", account.settings_body() | {"port": closed}, caller=account.caller)
    events = capture_events(aws["EVENT_BUS_NAME"])
    started = time.time()
    result = account.sync()
    assert (result.status, result.error) == ("failed", "connect_failed")
    from mailsync import dal

    stored = dal.get_account("acme", "alice")
    assert stored.status == "connect_failed"
    assert stored.next_sync_at >= started + 40, "backed off (about a minute after the first failure)"
    assert stored.due_shard is not None, "still due later: network trouble passes"
    from mailsync.services import scheduling

    assert scheduling.enqueue_due_accounts() == 0, "not due during the backoff"
    assert [e["code"] for e in events.of_type("account.sync_failed")] == ["connect_failed"]
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert status["state"] == "failed" and "connect" in status["last_error"].lower()


def test_untrusted_certificate_is_tls_failed(account: Account, monkeypatch, aws) -> None:
    from mailsync import dal
    from mailsync.config import get_settings

    monkeypatch.delenv("MAILSYNC_EXTRA_CA_FILE")
    get_settings.cache_clear()
    events = capture_events(aws["EVENT_BUS_NAME"])
    result = account.sync()
    assert (result.status, result.error) == ("failed", "tls_failed")
    stored = dal.get_account("acme", "alice")
    assert stored.status == "tls_failed" and "certificate" in stored.last_error
    assert stored.next_sync_at > time.time() + 400, "certificates are not fixed in a minute: long backoff"
    assert [e["code"] for e in events.of_type("account.sync_failed")] == ["tls_failed"]


@pytest.mark.parametrize("write", ["s3:PutObject", "dynamodb:BatchWriteItem", "dynamodb:UpdateItem"])
def test_crash_then_rerun_leaves_no_duplicate_and_no_gap(account: Account, aws, write: str) -> None:
    """Seven messages, one without Message-ID; the worker dies after the first write of a kind
    (the raw upload, the first batch of items, the lease/checkpoint). Every crash point of a
    scripted scenario is covered by test_crash_every_write.py; this one adds the move after."""
    with account.user.client() as imap:
        for i in range(6):
            imap.append("INBOX", message(f"c{i}", days=1 + i), internal_date=days_ago(1 + i))
        imap.append("INBOX", message("c-noid", days=1, message_id=None), internal_date=days_ago(1))
    with pytest.raises(WorkerCrashed), CrashInjector(first=write) as crash:
        account.sync(owner="worker-1")
    assert crash.crashed and str(crash.writes[-1]) == write
    assert account.sync(owner="worker-1").status == "synced"
    messages = account.messages()
    assert sorted(m["subject"] for m in messages) == sorted([f"c{i}" for i in range(6)] + ["c-noid"])
    assert all(m["state"] == "synced" for m in messages)
    # Content-addressed (the batch's pack too): a rerun overwrites, never piles up.
    objects = checked_raw_copies(account.tenant, account.caller.user, [m["id"] for m in messages])
    assert len(objects) == 1, "the seven messages of the batch in one pack"
    # A move after the crash still keeps the id (the location records are consistent).
    ids = {m["subject"]: m["id"] for m in messages}
    with account.user.client() as imap:
        imap.move("INBOX", imap.uids("INBOX")[0], "Archive")
    account.sync()
    after = account.messages()
    assert len(after) == 7 and {m["subject"]: m["id"] for m in after} == ids


def test_two_workers_racing_for_one_account(account: Account) -> None:
    with account.user.client() as imap:
        for i in range(20):
            imap.append("INBOX", message(f"r{i}", days=1), internal_date=days_ago(1))
    barrier = threading.Barrier(2)
    results: list[str] = []

    def worker(owner: str) -> None:
        barrier.wait()
        results.append(account.sync(owner=owner).status)

    threads = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["busy", "synced"]
    assert len(account.messages()) == 20


def test_lease_held_by_another_worker(account: Account) -> None:
    from mailsync import dal

    assert dal.take_lease("acme", "alice", "someone-else", 600) is not None
    assert account.sync().status == "busy"
    dal.give_back_lease("acme", "alice", "someone-else")
    assert account.sync().status == "synced"


def test_first_sync_resumes_after_running_out_of_time(account: Account, monkeypatch) -> None:
    from mailsync.sync import engine

    monkeypatch.setattr(engine, "BATCH_COUNT", 5)
    with account.user.client() as imap:
        for i in range(12):
            imap.append("INBOX", message(f"slow {i:02d}", days=1 + i / 10), internal_date=days_ago(1 + i / 10))
    budget = iter([False, False, True])  # two batches, then the Lambda is about to time out
    result = account.sync(deadline=lambda: next(budget, True))
    assert result.status == "incomplete"
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    inbox = next(f for f in status["folders"] if f["crm_folder"] == "inbox")
    assert inbox["first_sync"] == {"total": 12, "done": 10}
    assert status["state"] == "syncing"
    # The newest mail came first.
    assert {m["subject"] for m in account.messages()} == {f"slow {i:02d}" for i in range(10)}
    # The job put itself back on the queue.
    from mailsync.config import get_settings

    queued = boto3.client("sqs").receive_message(QueueUrl=get_settings().sync_queue_url, MaxNumberOfMessages=10)
    assert [json.loads(m["Body"])["reason"] for m in queued["Messages"]] == ["continue"]

    assert account.sync(reason="continue").status == "synced"
    assert len(account.messages()) == 12
    inbox = next(
        f
        for f in account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body["folders"]
        if f["crm_folder"] == "inbox"
    )
    assert inbox["first_sync"] is None and inbox["messages"] == 12


def noop_cost(account: Account) -> tuple[int, Counter]:
    with count_dynamodb_calls() as calls:
        result = account.sync(reason="schedule")  # a poll (a sync the user asks for confirms itself)
    assert result.status == "synced" and result.outcome.created == 0
    return result.outcome.imap_commands, calls


FILL_CHUNK = 500  # messages per MULTIAPPEND
# Per server reply while filling: this is set-up, not the code under test, and a busy machine
# took longer than the default 10 s to answer one 20,000-message MULTIAPPEND.
FILL_TIMEOUT_SECONDS = 120.0


def fill(user: MailUser, count: int, in_window: int) -> None:
    """``count`` messages on the server, ``in_window`` of them recent enough to be synced."""
    # One message built per distinct age, then numbered: building 20,000 with the email package
    # took longer than appending them.
    run = secrets.token_hex(4)
    templates: dict[int, tuple[bytes, datetime]] = {}
    batch: list[dict[str, object]] = []
    with MailboxClient(
        user.host, user.imaps_port, user.username, user.password, ca_file=user.ca_file, timeout=FILL_TIMEOUT_SECONDS
    ) as imap:
        for i in range(count):
            age = 1 + (i % 5) if i < in_window else 40 + (i % 300)
            if age not in templates:
                raw = message("bulk NUMBER", days=age, message_id=f"<bulk-NUMBER-{run}@mailsync.test>")
                templates[age] = (raw, days_ago(age))
            raw, date = templates[age]
            batch.append({"msg": raw.replace(b"NUMBER", str(i).encode()), "date": date})
            if len(batch) == FILL_CHUNK or i == count - 1:
                imap.imap.multiappend("INBOX", batch)
                batch = []
        assert imap.imap.select_folder("INBOX", readonly=True)[b"EXISTS"] == count


# `make soak` fills the big mailbox with 20,000 messages; 5,000 (25 times the small one) keeps make
# test's fill at a quarter of the time and still shows whether the cost follows the mailbox.
BIG_MAILBOX = 20_000 if os.environ.get("MAILSYNC_SOAK") == "1" else 5_000


def test_noop_sync_cost_does_not_grow_with_the_mailbox(api, local_mail_env, dovecot, monkeypatch) -> None:
    from mailsync.sync.planner import jobs

    monkeypatch.setattr(jobs, "MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS", 0)  # the poll follows the first sync at once
    small_user, big_user = dovecot.add_user(), dovecot.add_user()
    # The small mailbox has more synced messages, the big one far more on the server: the cost
    # of a sync that finds nothing new depends on neither.
    fill(small_user, 200, in_window=200)
    fill(big_user, BIG_MAILBOX, in_window=20)
    costs = {}
    for who, user in (("small", small_user), ("big", big_user)):
        account = connect_account(api, user, who=who)
        assert account.sync().status == "synced"
        costs[who] = noop_cost(account)
    (small_cmds, small_calls), (big_cmds, big_calls) = costs["small"], costs["big"]
    assert small_cmds == big_cmds
    assert reads(small_calls) == reads(big_calls)
    assert small_calls == big_calls
    # And it is small: connect, login, one LIST-STATUS, logout; a handful of DynamoDB reads.
    assert small_cmds <= 6, small_cmds
    # One read (the account item and its sync state together); no lease, no writes at all.
    assert small_calls == {"BatchGetItem": 1}, small_calls
