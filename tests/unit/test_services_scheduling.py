"""Scheduling rules (``mailsync.services.scheduling``): shards, due fields, backoff, and the
fan-out of due accounts to the queue, on the in-memory data layer and queue."""

from __future__ import annotations

import json
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
        (True, "ok", "pop3", True),
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


def _due_account(user: str, next_sync_at: int | None) -> Account:
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


def test_due_accounts_of_every_shard_are_sent_once_in_groups(fake_dal: Fakes) -> None:
    # Given 25 accounts due now or earlier, 3 due later, and 2 off the schedule,
    now = 1_000_000
    due = [_due_account(f"due{i}", i * 10) for i in range(25)]
    fake_dal.dal.put_accounts([*due, *(_due_account(f"later{i}", now + 60) for i in range(3))])
    fake_dal.dal.put_accounts([_due_account("off0", None), _due_account("off1", None)])

    # When the scheduler ticks,
    sent = scheduling.enqueue_due_accounts(now)

    # Then each due account gets one "schedule" job, in one message per shard (a group of its
    # due accounts), and no batch exceeds SQS's limit.
    assert sent == 25
    assert sorted(fake_dal.queue.jobs()) == sorted(("acme", a.user_id, "schedule") for a in due)
    shards = {a.user_id: a.due_shard for a in due}
    bodies = [body for body, _ in fake_dal.queue.sent]
    assert len(bodies) == len(set(shards.values()))
    for body in bodies:
        assert len({shards[user] for _, user in body["accounts"]}) == 1
    assert max(fake_dal.queue.batches) <= 10


def test_a_shard_larger_than_a_group_is_split_into_near_equal_groups(fake_dal: Fakes, monkeypatch) -> None:
    # Given groups of at most 4 accounts and 30 due accounts,
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_SYNC_GROUP_SIZE", "4")
    get_settings.cache_clear()
    due = [_due_account(f"due{i}", 0) for i in range(30)]
    fake_dal.dal.put_accounts(due)

    # When the scheduler ticks,
    assert scheduling.enqueue_due_accounts(1_000_000) == 30  # office hours: every due account

    # Then each shard's accounts go in as few groups as fit, sizes differing by one at most.
    per_shard: dict[int, list[int]] = {}
    for body, _ in fake_dal.queue.sent:
        shard = scheduling.shard_for("acme", body["accounts"][0][1], SHARDS)
        per_shard.setdefault(shard, []).append(len(body["accounts"]))
    for shard, sizes in per_shard.items():
        count = sum(1 for a in due if a.due_shard == shard)
        assert sum(sizes) == count
        assert len(sizes) == -(-count // 4)
        assert max(sizes) <= 4 and max(sizes) - min(sizes) <= 1
    assert sorted(u for _, u, _ in fake_dal.queue.jobs()) == sorted(a.user_id for a in due)


def test_each_tick_groups_a_shards_accounts_anew(fake_dal: Fakes, monkeypatch) -> None:
    # Given groups of at most 4 accounts, 30 due accounts, and a seeded shuffle,
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_SYNC_GROUP_SIZE", "4")
    get_settings.cache_clear()
    monkeypatch.setattr(scheduling, "random", random.Random(7))
    due = [_due_account(f"due{i}", 0) for i in range(30)]
    fake_dal.dal.put_accounts(due)

    # When the scheduler ticks twice,
    ticks = []
    for now in (1_000_000, 1_000_060):
        first = len(fake_dal.queue.sent)
        assert scheduling.enqueue_due_accounts(now) == 30
        ticks.append([body["accounts"] for body, _ in fake_dal.queue.sent[first:]])

    # Then each tick sends every account exactly once, but not in the same groups, so an account
    # that crashes its group's worker does not hold back the same neighbours every tick.
    for groups in ticks:
        assert sorted(u for g in groups for _, u in g) == sorted(a.user_id for a in due)
    compositions = [{frozenset(u for _, u in g) for g in groups} for groups in ticks]
    assert compositions[0] != compositions[1]


@pytest.mark.parametrize(("count", "size", "expected"), [(0, 3, []), (1, 3, [1]), (7, 3, [3, 2, 2]), (9, 3, [3, 3, 3])])
def test_split_groups(count: int, size: int, expected: list[int]) -> None:
    accounts = [("acme", f"u{i}") for i in range(count)]
    groups = scheduling.split_groups(accounts, size)
    assert [len(g) for g in groups] == expected
    assert [a for g in groups for a in g] == accounts


def test_a_send_batch_stays_within_sqs_payload_limit(fake_dal: Fakes, monkeypatch) -> None:
    # Given groups whose bodies are ~60 KB each (long ids), When they are sent,
    monkeypatch.setattr(scheduling, "BATCH_PAYLOAD_BYTES", 200_000)
    accounts = [("t" * 128, f"{i:0128d}") for i in range(2000)]
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_SYNC_GROUP_SIZE", "200")
    get_settings.cache_clear()
    assert scheduling._send_batches(accounts, "schedule") == 2000

    # Then no SendMessageBatch carries more bytes than the limit, or more than ten bodies.
    sizes = [len(json.dumps(body)) for body, _ in fake_dal.queue.sent]
    assert max(sizes) > 50_000
    position = 0
    for count in fake_dal.queue.batches:
        assert count <= 10
        assert sum(sizes[position : position + count]) <= 200_000
        position += count


def test_a_partially_refused_batch_is_retried_once(fake_dal: Fakes, monkeypatch) -> None:
    # Given three due accounts in one shard, one account a group, and a queue that refuses the
    # second entry once,
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_SYNC_GROUP_SIZE", "1")
    get_settings.cache_clear()
    users = [u for u in (f"user{i}" for i in range(100)) if scheduling.shard_for("acme", u, SHARDS) == 0][:3]
    fake_dal.dal.put_accounts(
        Account("acme", u, "imap.example.com", 993, u, "ssl", due_shard=0, next_sync_at=0) for u in users
    )
    fake_dal.queue.fail_next = [1]

    # When the scheduler ticks, Then the refused entry is sent alone on the retry and counted.
    assert scheduling.enqueue_due_accounts(1_000_000) == 3  # a Monday afternoon in Amsterdam: office hours
    assert fake_dal.queue.batches == [3, 1]
    assert sorted(u for _, u, _ in fake_dal.queue.jobs()) == sorted(users)


def test_enqueue_accounts_sends_one_alone_and_more_in_groups(fake_dal: Fakes) -> None:
    scheduling.enqueue_accounts([("acme", "alice")], "user", delay_seconds=5)
    scheduling.enqueue_accounts([("acme", "bob"), ("acme", "carol")], "continue", delay_seconds=5)
    assert fake_dal.queue.sent == [
        ({"tenant_id": "acme", "user_id": "alice", "reason": "user"}, 5),
        ({"accounts": [["acme", "bob"], ["acme", "carol"]], "reason": "continue"}, 5),
    ]


def test_enqueue_sends_one_job_with_its_reason_and_delay(fake_dal: Fakes) -> None:
    scheduling.enqueue("acme", "alice", "push", delay_seconds=30)
    assert fake_dal.queue.sent == [({"tenant_id": "acme", "user_id": "alice", "reason": "push"}, 30)]
