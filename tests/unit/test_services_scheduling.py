"""Scheduling rules (``mailsync.services.scheduling``): shards, due fields, backoff, and the
fan-out of due accounts to the queue, on the in-memory data layer and queue."""

from __future__ import annotations

import random

import pytest

from mailsync.domain import Account
from mailsync.services import scheduling
from tests.unit.fake_dal import Fakes

SHARDS = 4  # what the fake_dal fixture configures


def test_shards_are_stable_in_range_and_spread() -> None:
    users = [f"user{i}" for i in range(400)]
    shards = [scheduling.shard_for("acme", u, SHARDS) for u in users]
    assert shards == [scheduling.shard_for("acme", u, SHARDS) for u in users]
    assert set(shards) == set(range(SHARDS))
    assert max(shards.count(s) for s in range(SHARDS)) < 2 * len(users) / SHARDS


@pytest.mark.parametrize(
    ("fetch_enabled", "status", "protocol", "due"),
    [
        (True, "pending", "imap", True),
        (True, "ok", "imap", True),
        (True, "server_busy", "imap", True),
        (False, "ok", "imap", False),
        (True, "auth_failed", "imap", False),
        (True, "disabled", "imap", False),
        (True, "ok", "pop3", False),
    ],
)
def test_which_accounts_are_in_the_due_index(
    fake_dal: Fakes, fetch_enabled: bool, status: str, protocol: str, due: bool
) -> None:
    fields = scheduling.due_fields("acme", "alice", fetch_enabled, status, protocol)
    if due:
        assert fields == {"due_shard": scheduling.shard_for("acme", "alice", SHARDS), "next_sync_at": 0}
    else:
        assert fields == {"due_shard": None, "next_sync_at": None}


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [(0, 48, 72), (1, 48, 72), (2, 96, 144), (6, 1536, 2304), (7, 2880, 4320), (50, 2880, 4320)],
)
def test_backoff_doubles_per_failure_within_jitter_and_is_capped(
    monkeypatch: pytest.MonkeyPatch, failures: int, low: int, high: int
) -> None:
    # The jitter's extremes give the bounds; a draw in between stays within them.
    for jitter in (0.8, 1.2, random.uniform(0.8, 1.2)):
        monkeypatch.setattr(scheduling.random, "uniform", lambda a, b, j=jitter: j)
        assert low <= scheduling.backoff_seconds(failures) <= high
    monkeypatch.setattr(scheduling.random, "uniform", lambda a, b: 1.2)
    assert scheduling.backoff_seconds(failures) == high


def test_due_accounts_of_every_shard_are_sent_once_in_batches(fake_dal: Fakes) -> None:
    # Given 25 accounts due now or earlier, 3 due later, and 2 off the schedule,
    def account(user: str, next_sync_at: int | None) -> Account:
        due = next_sync_at is not None
        return Account(
            tenant_id="acme",
            user_id=user,
            host="imap.example.com",
            port=993,
            username=user,
            security="ssl",
            due_shard=scheduling.shard_for("acme", user, SHARDS) if due else None,
            next_sync_at=next_sync_at,
        )

    now = 1_000_000
    due = [account(f"due{i}", i * 10) for i in range(25)]
    fake_dal.dal.put_accounts([*due, *(account(f"later{i}", now + 60) for i in range(3))])
    fake_dal.dal.put_accounts([account("off0", None), account("off1", None)])

    # When the scheduler ticks,
    sent = scheduling.enqueue_due_accounts(now)

    # Then each due account gets one "schedule" job, and no batch exceeds SQS's limit.
    assert sent == 25
    assert sorted(fake_dal.queue.jobs()) == sorted(("acme", a.user_id, "schedule") for a in due)
    assert max(fake_dal.queue.batches) <= 10


def test_a_partially_refused_batch_is_retried_once(fake_dal: Fakes) -> None:
    # Given three due accounts in one shard, and a queue that refuses the second entry once,
    users = [u for u in (f"user{i}" for i in range(100)) if scheduling.shard_for("acme", u, SHARDS) == 0][:3]
    fake_dal.dal.put_accounts(
        Account("acme", u, "imap.example.com", 993, u, "ssl", due_shard=0, next_sync_at=0) for u in users
    )
    fake_dal.queue.fail_next = [1]

    # When the scheduler ticks, Then the refused entry is sent alone on the retry and counted.
    assert scheduling.enqueue_due_accounts(1_000_000) == 3  # a Monday afternoon in Amsterdam: office hours
    assert fake_dal.queue.batches == [3, 1]
    assert sorted(u for _, u, _ in fake_dal.queue.jobs()) == sorted(users)


def test_enqueue_sends_one_job_with_its_reason_and_delay(fake_dal: Fakes) -> None:
    scheduling.enqueue("acme", "alice", "push", delay_seconds=30)
    assert fake_dal.queue.sent == [({"tenant_id": "acme", "user_id": "alice", "reason": "push"}, 30)]
