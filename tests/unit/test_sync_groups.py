"""Groups of accounts synced concurrently (``mailsync.services.sync_groups``): parsing job bodies,
isolation between accounts, deferral, log keys and metrics under threads. ``run_job`` is replaced
by scripted jobs here; tests/integration/test_sync_groups.py runs real ones against Dovecot."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from mailsync.observability import InvocationMetrics, logger, metrics
from mailsync.services import sync_groups, sync_jobs
from mailsync.services.sync_jobs import JobResult, SyncJob
from mailsync.sync.engine import SyncOutcome
from mailsync.sync.planner import jobs as policy
from tests.unit.fake_dal import Fakes

WAIT = 10.0  # seconds any hand-over between threads may take before the test fails


def accounts(n: int) -> list[SyncJob]:
    return [SyncJob(tenant_id="acme", user_id=f"user{i:02d}", reason="schedule") for i in range(n)]


def index_of(job: SyncJob) -> int:
    return int(job.user_id.removeprefix("user"))


@pytest.fixture
def scripted(fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[SyncJob], JobResult]], list]:
    """Replace ``run_job`` by ``script``; returns the list of jobs it was called with."""
    # The invocation's metrics of these tests stay theirs (the handler would publish them).
    monkeypatch.setattr(sync_groups, "job_metrics", InvocationMetrics(metrics))
    calls: list[SyncJob] = []
    lock = threading.Lock()

    def install(script: Callable[[SyncJob], JobResult]) -> list[SyncJob]:
        def run_job(job: SyncJob, *args: Any, **kwargs: Any) -> JobResult:
            with lock:
                calls.append(job)
            return script(job)

        monkeypatch.setattr(sync_jobs, "run_job", run_job)
        return calls

    return install


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    stream = io.StringIO()
    previous = logger.registered_handler.setStream(stream)
    level = logger.log_level
    logger.setLevel("DEBUG")
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    finally:
        logger.setLevel(level)
        logger.registered_handler.setStream(previous)


# -- job bodies ---------------------------------------------------------------------------------


def test_a_body_for_one_account_is_a_group_of_one() -> None:
    body = json.dumps({"tenant_id": "acme", "user_id": "alice", "reason": "user"})
    assert sync_groups.parse_group(body) == [SyncJob(tenant_id="acme", user_id="alice", reason="user")]
    assert sync_groups.parse_group('{"tenant_id": "acme", "user_id": "bob"}')[0].reason == "schedule"


def test_a_group_body_carries_its_accounts_in_order_with_one_reason() -> None:
    body = json.dumps({"accounts": [["acme", "alice"], ["umbrella", "bob"]], "reason": "schedule"})
    assert [(j.tenant_id, j.user_id, j.reason) for j in sync_groups.parse_group(body)] == [
        ("acme", "alice", "schedule"),
        ("umbrella", "bob", "schedule"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "{}",
        '{"tenant_id": "acme"}',
        '{"accounts": []}',
        '{"accounts": [["acme"]]}',
        '{"accounts": [["acme", 7]]}',
        '{"accounts": "acme"}',
        json.dumps({"accounts": [["acme", f"u{i}"] for i in range(sync_groups.MAX_GROUP_ACCOUNTS + 1)]}),
    ],
)
def test_a_body_that_is_not_a_job_is_refused(body: str) -> None:
    with pytest.raises(ValidationError):
        sync_groups.parse_group(body)


# -- running a group ----------------------------------------------------------------------------


def test_an_account_raising_gets_its_own_failure_and_the_others_sync(scripted) -> None:
    def script(job: SyncJob) -> JobResult:
        if job.user_id == "user03":
            raise RuntimeError("storage went away")
        return JobResult("synced", SyncOutcome(created=index_of(job)))

    scripted(script)
    results = sync_groups.run_jobs(accounts(8), threads=4)
    assert [(r.status, r.error) for r in results] == [
        ("failed", "internal_error") if i == 3 else ("synced", None) for i in range(8)
    ]
    assert [r.outcome.created for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7]


def test_a_slow_account_does_not_hold_up_the_others(scripted) -> None:
    # The slow job finishes only once every other job has: with a thread of its own it can.
    others_done = threading.Event()
    finished: list[str] = []
    lock = threading.Lock()
    group = accounts(12)

    def script(job: SyncJob) -> JobResult:
        if job.user_id == "user00":
            return JobResult("synced" if others_done.wait(WAIT) else "incomplete")
        with lock:
            finished.append(job.user_id)
            if len(finished) == len(group) - 1:
                others_done.set()
        return JobResult("synced")

    scripted(script)
    results = sync_groups.run_jobs(group, threads=3)
    assert [r.status for r in results] == ["synced"] * len(group)


def test_accounts_without_lambda_time_are_deferred_in_one_group(scripted, fake_dal: Fakes) -> None:
    # Given a Lambda with time for one job's budget but not for two,
    budget = 6.0
    fake_dal.queue.sent.clear()
    calls = scripted(lambda job: JobResult("synced"))
    from mailsync.config import get_settings

    get_settings().job_budget_seconds = budget  # the fixture's settings object, dropped after the test
    deadline = time.monotonic() + budget + policy.LAMBDA_MARGIN_SECONDS - 1

    # When a group of ten runs,
    results = sync_groups.run_jobs(accounts(10), lambda_deadline=deadline, threads=3)

    # Then the invocation's first account ran and every other went back on the queue, once,
    # in one group with its reason, after the short delay.
    assert [j.user_id for j in calls] == ["user00"]
    assert [r.status for r in results] == ["synced"] + ["deferred"] * 9
    assert sorted(fake_dal.queue.jobs()) == [("acme", f"user{i:02d}", "schedule") for i in range(1, 10)]
    assert {delay for _, delay in fake_dal.queue.sent} == {sync_jobs.DEFERRED_DELAY_SECONDS}
    assert len(fake_dal.queue.sent) == 1, "deferred in a group, not one message per account"


def test_each_accounts_log_lines_carry_its_own_keys_under_threads(scripted, log_lines) -> None:
    # All threads are inside a job at once (the barrier), each logging while the others do.
    threads = 4
    barrier = threading.Barrier(threads, timeout=WAIT)

    def script(job: SyncJob) -> JobResult:
        logger.info("inside", extra={"expected_user": job.user_id})
        barrier.wait()
        logger.info("inside", extra={"expected_user": job.user_id})
        return JobResult("synced", SyncOutcome(created=index_of(job) + 1))

    scripted(script)
    logger.append_keys(function_name="SyncWorkerFunction")
    try:
        results = sync_groups.run_jobs(accounts(threads * 3), threads=threads)
    finally:
        logger.remove_keys(["function_name"])
    assert [r.status for r in results] == ["synced"] * threads * 3

    lines = log_lines()
    inside = [line for line in lines if line["message"] == "inside"]
    assert len(inside) == 2 * threads * 3
    assert all(line["user_id"] == line["expected_user"] for line in inside)
    done = [line for line in lines if line["message"] == "sync job done"]
    assert sorted(line["user_id"] for line in done) == [f"user{i:02d}" for i in range(threads * 3)]
    assert all(line["messages_created"] == int(line["user_id"].removeprefix("user")) + 1 for line in done)
    # The invocation's keys reach the pool threads; the account's keys stay in them.
    assert all(line["function_name"] == "SyncWorkerFunction" for line in inside + done)
    assert "user_id" not in logger.thread_safe_get_current_keys()


def test_metrics_are_recorded_by_the_calling_thread_only(scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[tuple[str, threading.Thread]] = []

    def record(name: str, *args: Any) -> None:
        recorded.append((name, threading.current_thread()))

    scripted(lambda job: JobResult("synced", SyncOutcome(created=1)))
    monkeypatch.setattr(sync_groups.job_metrics, "count", record)
    monkeypatch.setattr(sync_groups.job_metrics, "sample", record)
    sync_groups.run_jobs(accounts(10), threads=4)
    assert sum(1 for name, _ in recorded if name == "Sync_synced") == 10
    assert {thread for _, thread in recorded} == {threading.current_thread()}
