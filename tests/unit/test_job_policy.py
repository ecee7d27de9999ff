"""The sync job's failure and time policy, as pure rules (no AWS, no network).

Given a failure of some kind, when the job's connection step fails with it, then it is retried
only if it is transient and the job's budget allows; given a job budget, the engine's soft
deadline trips before the connection's hard one.
"""

from __future__ import annotations

import pytest

from mailsync.errors import (
    AuthFailed,
    ConnectFailed,
    FolderMissing,
    MailTimeout,
    OperationRefused,
    ProtocolMismatch,
    ServerBusy,
    ServerMisbehaving,
    TlsFailed,
)
from mailsync.services import sync_jobs
from mailsync.sync.planner import jobs as policy


@pytest.fixture(autouse=True)
def no_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "RETRY_BASE_DELAY_SECONDS", 0)


class Flaky:
    """An action failing with ``error`` the first ``failures`` times."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error = error
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "outcome"


@pytest.mark.parametrize(
    "error",
    [ConnectFailed("reset"), MailTimeout("slow"), OperationRefused("NO")],
)
def test_transient_failures_are_retried_within_the_job(error: Exception) -> None:
    action = Flaky(error, failures=policy.CONNECT_ATTEMPTS - 1)
    assert sync_jobs._with_connect_retries(action) == "outcome"
    assert action.calls == policy.CONNECT_ATTEMPTS


def test_retries_are_bounded() -> None:
    action = Flaky(ConnectFailed("down"), failures=100)
    with pytest.raises(ConnectFailed):
        sync_jobs._with_connect_retries(action)
    assert action.calls == policy.CONNECT_ATTEMPTS


@pytest.mark.parametrize(
    "error",
    [
        AuthFailed(),  # mail servers lock accounts after repeated failed logins
        TlsFailed("certificate"),
        ServerMisbehaving("endless FETCH lines"),  # a retry would spend the budget again
        ProtocolMismatch("port 25 speaks SMTP, not IMAP"),
        # A throttled login retried within seconds is how mail servers come to lock accounts:
        # the account's backoff decides when the next login is.
        ServerBusy("NO [UNAVAILABLE] try later"),
        ServerBusy("BYE too many connections"),
    ],
)
def test_failures_that_a_retry_cannot_fix_are_not_retried(error: Exception) -> None:
    action = Flaky(error, failures=1)
    with pytest.raises(type(error)):
        sync_jobs._with_connect_retries(action)
    assert action.calls == 1


def test_no_retry_once_the_budget_is_spent() -> None:
    action = Flaky(ConnectFailed("reset"), failures=1)
    with pytest.raises(ConnectFailed):
        sync_jobs._with_connect_retries(action, lambda: True)
    assert action.calls == 1


def test_folder_missing_is_a_refusal_of_one_operation_not_a_network_failure() -> None:
    gone = FolderMissing("Archive")
    assert isinstance(gone, FolderMissing) and isinstance(gone, OperationRefused)
    assert not isinstance(gone, ConnectFailed)
    assert gone.code == "folder_missing"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_soft_deadline_trips_before_the_hard_one() -> None:
    clock = Clock()
    budget = 120.0
    hard = clock.now + budget
    tripped = policy.job_deadline(lambda: False, hard, budget, clock)
    clock.now = hard - policy.DEADLINE_MARGIN_SECONDS - 0.1
    assert not tripped()
    clock.now = hard - policy.DEADLINE_MARGIN_SECONDS
    assert tripped(), "checkpoint and continue while there is still time to"
    assert clock.now < hard


def test_the_soft_deadline_follows_the_lambda_too() -> None:
    clock = Clock()
    tripped = policy.job_deadline(lambda: True, clock.now + 120, 120, clock)
    assert tripped()


def test_a_small_budget_still_leaves_time_for_work() -> None:
    clock = Clock()
    budget = 8.0  # smaller than the usual margin: the margin shrinks, the job still progresses
    tripped = policy.job_deadline(lambda: False, clock.now + budget, budget, clock)
    assert not tripped()
    clock.now += budget * 0.7
    assert not tripped()
    clock.now += budget * 0.1
    assert tripped()


def test_the_hard_deadline_never_passes_the_lambdas_end() -> None:
    clock = Clock()
    # The Lambda ends in 60 s; the job's budget would run for 120.
    hard = policy.hard_deadline_for(clock.now, 120, clock.now + 60)
    assert hard == clock.now + 60 - policy.LAMBDA_MARGIN_SECONDS
    # Plenty of Lambda time: the budget decides; outside Lambda too.
    assert policy.hard_deadline_for(clock.now, 120, clock.now + 900) == clock.now + 120
    assert policy.hard_deadline_for(clock.now, 120, None) == clock.now + 120


def test_only_jobs_that_found_nothing_to_do_are_quiet_in_the_logs() -> None:
    from mailsync.services.sync_jobs import JobResult
    from mailsync.sync.engine import SyncOutcome

    assert JobResult("skipped").no_op
    assert JobResult("synced", SyncOutcome()).no_op
    assert not JobResult("synced", SyncOutcome(created=1)).no_op
    assert not JobResult("synced", SyncOutcome(pushed=1)).no_op
    assert not JobResult("synced", SyncOutcome(folder_errors={"Archive": "folder_missing"})).no_op
    assert not JobResult("incomplete", SyncOutcome()).no_op
    assert not JobResult("failed", error="auth_failed").no_op
    assert not JobResult("gone").no_op


@pytest.mark.parametrize(("reason", "limit"), [("user", 10), ("continue", 10), ("retry", 10), ("schedule", 2)])
def test_a_job_without_room_goes_back_on_the_queue_a_bounded_number_of_times(reason: str, limit: int) -> None:
    assert [policy.requeue_busy(reason, bounces) for bounces in range(limit + 3)] == [True] * limit + [False] * 3
