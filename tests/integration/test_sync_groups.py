"""Groups of accounts in one worker invocation, synced concurrently (issue 11 item 1).

Driven through the real scheduler and worker handlers (moto + Dovecot); hostile accounts are a
scripted server trickling its answer to LOGIN, so each costs its whole job budget.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from devstack.aws_calls import count_aws_calls
from devstack.dovecot import DovecotServer
from devstack.lambda_runtime import LambdaContext, load_handler, scheduled_event, sqs_event
from mailsync.domain import DueAccount
from mailsync.sync.planner import jobs as policy
from mailsync.sync.planner import polling
from mailsync.sync.planner.polling import Poll
from tests.conftest import Caller
from tests.fixtures.hostile_server import HostileServer, Peer, imap_server
from tests.integration.sync_support import (
    Account,
    LogLines,
    captured_log_lines,
    connect_account,
    days_ago,
    message,
    per_account,
)

BUDGET = 8  # seconds: each job's budget here, so a hostile account costs seconds, not minutes
THREADS = 3
INBOX_ONLY = {"inbox": "INBOX"}
QUEUE_ARN = "arn:aws:sqs:eu-west-1:000000000000:mailsync-local-SyncQueue"


def tarpit_login(peer: Peer, tag: bytes, args: bytes) -> None:
    # Alive but never finishing: one byte at a time, a line that never ends.
    peer.trickle(b"* OK " + b"x" * 100_000, 0.2)


def group_record(users: list[str], reason: str = "schedule", tenant: str = "acme") -> dict[str, str]:
    body = json.dumps({"accounts": [[tenant, u] for u in users], "reason": reason})
    return {"MessageId": f"m-{users[0]}", "ReceiptHandle": f"r-{users[0]}", "Body": body}


def run_worker(records: list[dict[str, str]], timeout_seconds: float = 300) -> tuple[dict, float]:
    context = LambdaContext(function_name="SyncWorkerFunction", timeout_seconds=timeout_seconds)
    started = time.monotonic()
    result = load_handler("sync_worker")(sqs_event(records, QUEUE_ARN), context)
    return result, time.monotonic() - started


def queued(queue_url: str) -> list[dict[str, Any]]:
    """Every message on the queue (removed from it), parsed."""
    sqs = boto3.client("sqs")
    bodies = []
    while got := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
        for m in got:
            bodies.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return bodies


@pytest.fixture
def group_env(local_mail_env: DovecotServer, monkeypatch: pytest.MonkeyPatch) -> DovecotServer:
    from mailsync.config import get_settings
    from mailsync.services import sync_jobs

    monkeypatch.setenv("MAILSYNC_ALLOW_INSECURE", "true")  # the hostile server speaks plain IMAP
    monkeypatch.setenv("MAILSYNC_JOB_BUDGET_SECONDS", str(BUDGET))
    monkeypatch.setenv("MAILSYNC_WORKER_THREADS", str(THREADS))
    get_settings.cache_clear()
    # Deferred jobs become visible at once here, so the test can read them off the queue.
    monkeypatch.setattr(sync_jobs, "DEFERRED_DELAY_SECONDS", 0)
    # The worker imported before a test starts a clock (its Lambda's, or the time its mailboxes
    # must be done in), as a Lambda's init is not part of its timeout: a first import on a
    # loaded machine took seconds of the few a test gives.
    load_handler("sync_worker")
    return local_mail_env


def mail_accounts(api, dovecot: DovecotServer, count: int, prefix: str = "mail") -> list[Account]:
    """``count`` accounts on Dovecot; account i has i + 1 new messages, subjects "<user> <n>"."""
    out = []
    for i in range(count):
        user = dovecot.add_user()
        with user.client() as imap:
            for n in range(i + 1):
                imap.append("INBOX", message(f"{prefix}{i} {n}"), internal_date=days_ago(1))
        out.append(connect_account(api, user, INBOX_ONLY, who=f"{prefix}{i}"))
    return out


def tarpit_accounts(api, server: HostileServer, users: list[str]) -> None:
    body = {"host": server.host, "port": server.port, "password": "pw", "security": "none"}
    for user in users:
        # A user name each: a process opens one connection per mailbox (host, user name) at most.
        saved = api("PUT", "/v1/users/me/mail-settings", body | {"username": user}, caller=Caller(user))
        assert saved.status == 201, saved.body


def assert_synced(account: Account, count: int) -> None:
    from mailsync import dal

    who = account.caller.user
    assert sorted(account.synced()) == sorted(f"{who} {n}" for n in range(count))
    state = dal.get_sync_state("acme", who)
    assert (state.state, state.lease_owner, state.last_error) == ("idle", None, None)
    assert dal.get_account("acme", who).status == "ok"


def test_a_hostile_account_in_a_group_holds_up_no_other(api, group_env, aws, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsync import dal
    from mailsync.config import get_settings

    # A longer budget than the module's: the four mailboxes (on the two threads the tarpit leaves)
    # took up to 4.7 s under load, and must be done well before the tarpit's budget ends.
    budget = 12
    monkeypatch.setenv("MAILSYNC_JOB_BUDGET_SECONDS", str(budget))
    get_settings.cache_clear()
    good = mail_accounts(api, group_env, 4)
    with HostileServer(imap_server({b"LOGIN": tarpit_login})) as server:
        tarpit_accounts(api, server, ["tarpit"])
        started = time.time()
        # The tarpit first: one account at a time, everything else would wait for its budget.
        result, elapsed = run_worker([group_record(["tarpit", *(a.caller.user for a in good)])])

    assert result == {"batchItemFailures": []}
    assert elapsed < 2 * budget, elapsed
    for i, account in enumerate(good):
        assert_synced(account, i + 1)
        finished = dal.get_sync_state("acme", account.caller.user).last_success_at.timestamp()
        assert finished < started + budget - 2, "a mailbox waited for the hostile one"
    tarpit = dal.get_sync_state("acme", "tarpit")
    assert (tarpit.state, tarpit.lease_owner) == ("failed", None)
    assert dal.get_account("acme", "tarpit").status in ("server_misbehaving", "timeout")
    assert server.connections == 1, "a hostile server gets no second try within the job"


@pytest.mark.parametrize("where", ["before the lease", "inside the job"])
def test_an_account_raising_unexpectedly_affects_no_other(
    api, group_env, aws, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from mailsync import dal
    from mailsync.services import sync_jobs

    accounts = mail_accounts(api, group_env, 3)
    victim = accounts[1].caller.user
    if where == "before the lease":
        # Escapes run_job altogether (it reads the account before its own safety net).
        real = dal.get_account_and_sync_state

        def get_account_and_sync_state(tenant_id: str, user_id: str, *args: Any, **kwargs: Any):
            if user_id == victim:
                raise RuntimeError("the accounts table went away")
            return real(tenant_id, user_id, *args, **kwargs)

        monkeypatch.setattr(dal, "get_account_and_sync_state", get_account_and_sync_state)
        real_batch = dal.get_accounts_and_sync_states

        def get_accounts_and_sync_states(accounts: Any, *args: Any, **kwargs: Any):
            # The group's batch read fails too; then each job reads its own.
            if any(user_id == victim for _, user_id in accounts):
                raise RuntimeError("the accounts table went away")
            return real_batch(accounts, *args, **kwargs)

        monkeypatch.setattr(dal, "get_accounts_and_sync_states", get_accounts_and_sync_states)
    else:
        real_sync = sync_jobs.sync_account

        def sync_account(account, *args: Any, **kwargs: Any):
            if account.user_id == victim:
                raise KeyError("a bug for this mailbox only")
            return real_sync(account, *args, **kwargs)

        monkeypatch.setattr(sync_jobs, "sync_account", sync_account)

    result, _ = run_worker([group_record([a.caller.user for a in accounts])])
    monkeypatch.undo()  # the checks below read the real accounts table

    assert result == {"batchItemFailures": []}, "an account's failure is not the record's"
    for i in (0, 2):
        assert_synced(accounts[i], i + 1)
    state = dal.get_sync_state("acme", victim)
    if where == "before the lease":
        assert state is None, "nothing was written: the account stays due, the next tick retries it"
    else:
        assert (state.state, state.lease_owner, state.last_error) == ("failed", None, policy.INTERNAL_ERROR)
    assert accounts[1].synced() == {}


def test_a_group_the_lambda_has_no_time_left_for_is_deferred_none_left_syncing(api, group_env, aws) -> None:
    from mailsync import dal

    good = mail_accounts(api, group_env, 3)
    with HostileServer(imap_server({b"LOGIN": tarpit_login})) as server:
        tarpits = [f"tarpit{i}" for i in range(THREADS)]
        tarpit_accounts(api, server, tarpits)
        queued(aws["SYNC_QUEUE_URL"])
        # Time for one round of whole jobs, not two: the tarpits take every thread for their
        # whole budget, after which no job fits in what is left of the Lambda. The round must
        # start within the 6 s past one job's need (the handler's start-up on a loaded machine);
        # the tarpits' cut comes no sooner than BUDGET, so a second round never fits (6 < BUDGET).
        timeout = BUDGET + policy.LAMBDA_MARGIN_SECONDS + 6
        users = [*tarpits, *(a.caller.user for a in good)]
        result, elapsed = run_worker([group_record(users, reason="user")], timeout_seconds=timeout)

    assert result == {"batchItemFailures": []}, "deferring is not a failure: no DLQ count, no 30 min wait"
    assert elapsed < timeout - policy.LAMBDA_MARGIN_SECONDS / 2, elapsed
    assert server.connections == THREADS
    for user in tarpits:
        state = dal.get_sync_state("acme", user)
        assert (state.state, state.lease_owner) == ("failed", None)
    # The rest went back on the queue together, with their reason, and never showed "syncing".
    bodies = queued(aws["SYNC_QUEUE_URL"])
    assert len(bodies) == 1
    assert per_account(bodies) == [{"tenant_id": "acme", "user_id": a.caller.user, "reason": "user"} for a in good]
    for account in good:
        assert dal.get_sync_state("acme", account.caller.user) is None

    # The next invocation syncs them.
    record = {"MessageId": "again", "ReceiptHandle": "r", "Body": json.dumps(bodies[0])}
    assert run_worker([record])[0] == {"batchItemFailures": []}
    for i, account in enumerate(good):
        assert_synced(account, i + 1)


def test_the_scheduler_sends_groups_and_the_worker_takes_them_with_single_jobs(
    api, group_env, aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync import dal
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_SYNC_GROUP_SIZE", "2")
    monkeypatch.setenv("MAILSYNC_DUE_SHARDS", "1")
    get_settings.cache_clear()
    accounts = mail_accounts(api, group_env, 5)
    single = mail_accounts(api, group_env, 1, prefix="single")[0]
    queued(aws["SYNC_QUEUE_URL"])
    # One account is not due (backing off): it reaches the worker only through a job of its own.
    dal.update_account(dal.get_account("acme", "single0"), {"next_sync_at": 2**40})

    tick = load_handler("scheduler")(scheduled_event(), LambdaContext(function_name="SchedulerFunction"))
    assert tick == {"enqueued": 5}
    bodies = queued(aws["SYNC_QUEUE_URL"])
    # 5 due accounts of one shard, groups of at most 2: 3 messages, not 5.
    assert sorted(len(b["accounts"]) for b in bodies) == [1, 2, 2]
    assert sorted(j["user_id"] for j in per_account(bodies)) == [a.caller.user for a in accounts]

    records = [{"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": json.dumps(b)} for i, b in enumerate(bodies)]
    old_body = json.dumps({"tenant_id": "acme", "user_id": "single0", "reason": "user"})
    records.append({"MessageId": "old", "ReceiptHandle": "r-old", "Body": old_body})
    records.append({"MessageId": "bad", "ReceiptHandle": "r-bad", "Body": json.dumps({"accounts": []})})
    result, _ = run_worker(records)
    assert result == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    for i, account in enumerate(accounts):
        assert_synced(account, i + 1)
    assert sorted(single.synced()) == ["single0 0"]


def test_a_scheduled_groups_accounts_are_read_together_eventually_consistent(
    api, group_env, aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync import dal
    from mailsync.services import sync_groups

    accounts = mail_accounts(api, group_env, 3)
    users = [a.caller.user for a in accounts]
    assert run_worker([group_record(users, reason="user")])[0] == {"batchItemFailures": []}
    monkeypatch.setattr(policy, "MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS", 0)
    monkeypatch.setattr(sync_groups, "PREFETCH_ACCOUNTS", 2)
    reads: list[tuple[list[str], bool]] = []
    real = dal.get_accounts_and_sync_states

    def get_accounts_and_sync_states(wanted: Any, *, consistent: bool = True) -> Any:
        reads.append(([u for _, u in wanted], consistent))
        return real(wanted, consistent=consistent)

    monkeypatch.setattr(dal, "get_accounts_and_sync_states", get_accounts_and_sync_states)
    with count_aws_calls("dynamodb") as calls:
        result, _ = run_worker([group_record(users)])
    assert result == {"batchItemFailures": []}
    # Three no-op polls: two requests (two accounts each at most), eventually consistent, no other.
    assert sorted(reads) == sorted([(users[:2], False), (users[2:], False)])
    assert calls == {"BatchGetItem": 2}, calls
    # A user's request reads its own account, consistently.
    reads.clear()
    real_one = dal.get_account_and_sync_state

    def get_account_and_sync_state(tenant_id: str, user_id: str, *, consistent: bool = True) -> Any:
        reads.append(([user_id], consistent))
        return real_one(tenant_id, user_id, consistent=consistent)

    monkeypatch.setattr(dal, "get_account_and_sync_state", get_account_and_sync_state)
    assert run_worker([group_record(users[:1], reason="user")])[0] == {"batchItemFailures": []}
    assert reads == [(users[:1], True)]


def test_syncs_with_work_take_turns_in_the_process_slots(api, group_env, aws, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsync.config import get_settings
    from mailsync.services import sync_jobs

    accounts = mail_accounts(api, group_env, THREADS)  # every one has new mail: work
    monkeypatch.setattr(sync_jobs, "_WORK_SLOTS", threading.BoundedSemaphore(1))
    # A job waits for a slot up to a quarter of its budget: room for the others' turns here.
    monkeypatch.setenv("MAILSYNC_JOB_BUDGET_SECONDS", "60")
    get_settings.cache_clear()
    lock, another_entered = threading.Lock(), threading.Event()
    running = peak = 0
    real = sync_jobs.sync_account

    def sync_account(*args: Any, **kwargs: Any):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            first = running == 1
            if not first:
                another_entered.set()
        try:
            if first:
                # Without the slots the other threads' syncs start now; with them, none can.
                another_entered.wait(timeout=1)
            return real(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(sync_jobs, "sync_account", sync_account)
    result, _ = run_worker([group_record([a.caller.user for a in accounts])])
    assert result == {"batchItemFailures": []}
    assert peak == 1
    for i, account in enumerate(accounts):
        assert_synced(account, i + 1)


def test_a_sync_with_work_that_gets_no_slot_goes_back_on_the_queue_without_the_lease(
    api, group_env, aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync import dal
    from mailsync.services import sync_jobs

    (account,) = mail_accounts(api, group_env, 1)
    queued(aws["SYNC_QUEUE_URL"])
    taken = threading.BoundedSemaphore(1)
    taken.acquire()  # every slot busy for the whole wait
    monkeypatch.setattr(sync_jobs, "_WORK_SLOTS", taken)
    monkeypatch.setattr(sync_jobs, "HOST_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(sync_jobs, "HOST_BUSY_DELAY_SECONDS", 0)

    result, _ = run_worker([group_record([account.caller.user], reason="user")])
    assert result == {"batchItemFailures": []}
    assert per_account(queued(aws["SYNC_QUEUE_URL"])) == [
        {"tenant_id": "acme", "user_id": account.caller.user, "reason": "user"}
    ]
    state = dal.get_sync_state("acme", account.caller.user)
    assert state is None or (state.state != "syncing" and state.lease_owner is None)
    assert account.synced() == {}


@pytest.mark.parametrize(("reason", "limit"), [("user", 10), ("schedule", 2)])
def test_a_job_that_never_gets_room_bounces_a_bounded_number_of_times_then_is_left_to_the_schedule(
    api, group_env, aws, monkeypatch: pytest.MonkeyPatch, reason: str, limit: int
) -> None:
    from mailsync import dal
    from mailsync.services import sync_jobs

    (account,) = mail_accounts(api, group_env, 1)
    queued(aws["SYNC_QUEUE_URL"])
    long_ago = int(time.time()) - 86_400
    dal.record_activity("acme", account.caller.user, long_ago)  # saving the settings made it active
    taken = threading.BoundedSemaphore(1)
    taken.acquire()  # no slot for syncs with work, however often it comes back
    monkeypatch.setattr(sync_jobs, "_WORK_SLOTS", taken)
    monkeypatch.setattr(sync_jobs, "HOST_WAIT_SECONDS", 0.05)
    monkeypatch.setattr(sync_jobs, "HOST_BUSY_DELAY_SECONDS", 0)

    # Each bounced job is fed back to the worker, as SQS would: the chain ends by itself.
    record = group_record([account.caller.user], reason=reason)
    rounds = 0
    while record is not None:
        assert rounds <= limit, "the job keeps bouncing"
        result, _ = run_worker([record])
        assert result == {"batchItemFailures": []}
        rounds += 1
        bodies = queued(aws["SYNC_QUEUE_URL"])
        assert len(bodies) <= 1
        again = {"MessageId": f"again-{rounds}", "ReceiptHandle": "r", "Body": json.dumps(bodies[0]) if bodies else ""}
        record = again if bodies else None
    assert rounds == limit + 1  # the first try and ``limit`` bounces
    state = dal.get_sync_state("acme", account.caller.user)
    assert state is None or (state.state != "syncing" and state.lease_owner is None)
    assert account.synced() == {}
    # The account is still due: the scheduler's next tick brings it back, at any hour when
    # someone waits for the job (it is active now), on its usual slot for a scheduled poll.
    stored = dal.get_account("acme", account.caller.user)
    assert stored.due_shard is not None
    due = DueAccount("acme", account.caller.user, 0, stored.last_activity_at)
    at_night = polling.decide(due, now=int(time.time()) + 60, tick_seconds=60, office_hours_now=False)
    if reason == "schedule":
        assert stored.last_activity_at == long_ago and at_night is not Poll.ACTIVE
    else:
        assert at_night is Poll.ACTIVE


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    with captured_log_lines("sync_worker") as lines:
        yield lines


def test_each_accounts_log_lines_name_that_account(api, group_env, aws, log_lines) -> None:
    accounts = mail_accounts(api, group_env, 6)
    result, _ = run_worker([group_record([a.caller.user for a in accounts])])
    assert result == {"batchItemFailures": []}

    done = [line for line in log_lines() if line["message"] == "sync job done"]
    # Account i created i + 1 messages: a line carrying another account's keys would not match.
    assert sorted((line["user_id"], line["messages_created"]) for line in done) == [
        (f"mail{i}", i + 1) for i in range(len(accounts))
    ]
    assert all(line["tenant_id"] == "acme" for line in done)
    # The invocation's keys reach the pool threads too.
    assert all(line["function_name"] == "SyncWorkerFunction" for line in done)
    assert len({line["function_request_id"] for line in done}) == 1


def test_lines_from_a_syncs_helper_threads_name_its_account(
    api, group_env, aws, log_lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Events are sent (and their failures logged) on a thread of the sync's own: it starts
    # without the account's log keys unless they are handed over.
    from mailsync.aws import client

    accounts = mail_accounts(api, group_env, 3)

    def refused(**_: Any) -> dict[str, Any]:
        raise RuntimeError("EventBridge is down")

    monkeypatch.setattr(client("events"), "put_events", refused)
    result, _ = run_worker([group_record([a.caller.user for a in accounts])])
    assert result == {"batchItemFailures": []}
    failed = [line for line in log_lines() if line["message"] == "publishing mail events failed"]
    assert sorted({line.get("user_id") for line in failed}) == [a.caller.user for a in accounts]
    assert all(line["tenant_id"] == "acme" for line in failed)


def test_a_deferred_job_keeps_the_times_it_bounced(group_env, aws) -> None:
    """Deferring (no Lambda time left) is no bounce, but must not reset the count either: else
    a job under lasting contention, deferred now and then, would bounce for ever."""
    from mailsync.services import sync_groups, sync_jobs

    queued(aws["SYNC_QUEUE_URL"])
    jobs = [sync_jobs.SyncJob(tenant_id="acme", user_id=f"nobody{i}", reason="user", bounces=4) for i in range(3)]
    # Too little time for any job but the invocation's first (which runs: its account is gone).
    results = sync_groups.run_jobs(jobs, lambda_deadline=time.monotonic() + 1, threads=1)
    assert [r.status for r in results] == ["gone", "deferred", "deferred"]
    assert [(b["accounts"], b.get("bounces")) for b in queued(aws["SYNC_QUEUE_URL"])] == [
        ([["acme", "nobody1"], ["acme", "nobody2"]], 4)
    ]

    alone = sync_jobs.SyncJob(tenant_id="acme", user_id="nobody9", reason="user", bounces=7)
    assert sync_jobs.run_job(alone, lambda_deadline=time.monotonic() + 1).status == "deferred"
    assert [b.get("bounces") for b in queued(aws["SYNC_QUEUE_URL"])] == [7]
