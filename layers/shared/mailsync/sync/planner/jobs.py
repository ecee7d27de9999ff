"""Job decisions: whether a sync job runs, its time budget, and what its outcome records.

Failure policy (mail servers lock accounts after repeated failed logins):
- wrong password: ``auth_failed``; the account leaves the due index until its settings change —
  no further login attempts;
- an OAuth2 grant the provider no longer honours (``invalid_grant``): ``reauth_required``, off
  the schedule the same way until the user connects the mailbox again; trouble at the
  provider's token endpoint (``provider_unavailable``) is transient: the account's backoff;
- certificate failure: ``tls_failed``, retried with long backoff (someone may fix the server);
- network trouble: retried a few times with backoff inside the job, then the account backs off
  exponentially;
- a hostile or broken server (``server_misbehaving``, ``protocol_mismatch``) or a busy one
  (``server_busy``): no retry within the job (it would only spend the budget again, and repeated
  logins get accounts locked), straight to the account's backoff;
- anything unexpected: the same backoff, sync state ``failed`` with a human ``last_error``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A scheduled job for an account that finished a sync this recently is a duplicate (queue
# backlog, two ticks): skip it without logging in. User-requested syncs always run.
MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS = 20
CONNECT_ATTEMPTS = 3
RETRY_BASE_DELAY_SECONDS = 1.0
# The soft deadline trips this long before the job's budget ends: time to finish the current
# batch, checkpoint and re-enqueue before the connection's hard deadline cuts it.
DEADLINE_MARGIN_SECONDS = 15.0
# Kept free at the end of the worker Lambda: after the connection's hard deadline the job still
# writes its outcome, releases its lease and may re-enqueue (a few DynamoDB/SQS requests).
LAMBDA_MARGIN_SECONDS = 10.0
INTERNAL_ERROR = "Syncing this mailbox failed because of an internal error; it will be retried"
SYNCED_PROTOCOLS = frozenset({"imap", "pop3"})
# Retrying these inside a job only spends the budget again or gets the account locked. A refused
# access token is never sent again: see ``renew_token_and_retry``.
NOT_RETRIED_IN_JOB = frozenset(
    {
        "auth_failed",
        "reauth_required",
        "token_rejected",
        "tls_failed",
        "server_misbehaving",
        "protocol_mismatch",
        "server_busy",
    }
)
# Only the user can end these (new password, new consent): the account leaves the schedule.
NEEDS_THE_USER = frozenset({"auth_failed", "reauth_required"})


def may_sync(*, fetch_enabled: bool, status: str, protocol: str) -> bool:
    """auth_failed: no login until the settings change (they reset the status)."""
    return bool(fetch_enabled) and status not in NEEDS_THE_USER and protocol in SYNCED_PROTOCOLS


# A job that finds no room (its mail host, the worker's slots for syncs with work) or read settings
# that have changed since goes back on the queue, a bounded number of times: under lasting
# contention each tick would otherwise add a job per account that bounces for ever, and the queue
# grows without end. Dropping it loses nothing: the account stays in the due index, so the
# scheduler sends it a job again, and that sync finds whatever work was waiting (mail, CRM
# changes, an unfinished first sync) — at the account's next poll. A dropped job that someone
# waits for (a user's request, a CRM change, a first sync's next part) marks the account active
# (``left_to_the_schedule``), so that poll is the next tick at any hour, not up to 15 minutes
# later outside office hours; after a failure its backoff still comes first. A deferral (no
# Lambda time left) carries the count on. A scheduled job is dropped sooner: the next tick is near.
MAX_BOUNCES = 10  # 30 s apart (HOST_BUSY_DELAY_SECONDS): about five minutes
MAX_SCHEDULED_BOUNCES = 2


def requeue_busy(reason: str, bounces: int) -> bool:
    """Whether a job that could not run now goes back on the queue (``bounces``: how often it
    already did), or is dropped and left to the scheduler."""
    return bounces < (MAX_SCHEDULED_BOUNCES if reason == "schedule" else MAX_BOUNCES)


def left_to_the_schedule(reason: str) -> bool:
    """Whether a dropped job marks its account active, so the scheduler polls it every tick."""
    return reason != "schedule"


def duplicate_scheduled_job(reason: str, seconds_since_success: float | None) -> bool:
    return (
        reason == "schedule"
        and seconds_since_success is not None
        and seconds_since_success < MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS
    )


def defer_job(*, may_defer: bool, lambda_left: float | None, budget_seconds: float) -> bool:
    """A job whose Lambda has less than its whole budget plus the margin left does not start:
    it goes back on the queue for a fresh invocation — unless ``may_defer`` is false (the
    invocation's first job: were the budget longer than the Lambda's timeout, deferring it
    would bounce it between invocations for ever)."""
    return may_defer and lambda_left is not None and lambda_left < budget_seconds + LAMBDA_MARGIN_SECONDS


def hard_deadline_for(started: float, budget_seconds: float, lambda_deadline: float | None) -> float:
    """When the job's connection is cut: its budget, but never past the Lambda's own end (less
    the time the job needs afterwards to record its outcome)."""
    hard = started + budget_seconds
    if lambda_deadline is not None:
        hard = min(hard, lambda_deadline - LAMBDA_MARGIN_SECONDS)
    return hard


def soft_deadline_at(hard_deadline: float, budget_seconds: float) -> float:
    """When the engine stops after its current batch: the margin is at most a quarter of the
    budget, so a small budget still leaves most of it for work."""
    return hard_deadline - min(DEADLINE_MARGIN_SECONDS, budget_seconds / 4)


def job_deadline(
    lambda_deadline: Callable[[], bool],
    hard_deadline: float,
    budget_seconds: float,
    clock: Callable[[], float],
) -> Callable[[], bool]:
    """The engine's "stop after this batch" signal: the Lambda runs short, or the job's budget
    is nearly spent."""
    soft = soft_deadline_at(hard_deadline, budget_seconds)

    def tripped() -> bool:
        return lambda_deadline() or clock() >= soft

    return tripped


def retry_in_job(code: str, attempt: int, *, out_of_time: bool) -> bool:
    """Whether a failed connection is tried again within the job (then after
    ``retry_delay(attempt)``)."""
    return code not in NOT_RETRIED_IN_JOB and attempt < CONNECT_ATTEMPTS and not out_of_time


def renew_token_and_retry(code: str, *, renewed: bool) -> bool:
    """Whether a job whose access token the mail server refused gets a new one from the provider
    and logs in once more (once per job: a new token refused too is the provider's or the
    server's problem, not the cached token's)."""
    return code == "token_rejected" and not renewed


def retry_delay(attempt: int) -> float:
    return RETRY_BASE_DELAY_SECONDS * 2 ** (attempt - 1)


@dataclass(frozen=True)
class FailurePlan:
    """What a failed job records: the account's status and whether it stays due (with a
    backoff from ``backoff_base`` seconds) or leaves the schedule."""

    status: str
    stays_due: bool
    backoff_base: int
    sync_state: dict[str, Any]


def mailbox_failure(code: str, message: str, failures_before: int) -> FailurePlan:
    failures = failures_before + 1
    return FailurePlan(
        status=code,
        stays_due=code not in NEEDS_THE_USER,
        backoff_base=600 if code == "tls_failed" else 60,
        sync_state={"state": "failed", "last_error": message, "failures": failures},
    )


def internal_failure(failures_before: int) -> FailurePlan:
    """A bug, a poison message, AWS trouble: never ``syncing`` forever, never retried at once;
    the account's status (about reaching and logging in to the server) stays as it was."""
    failures = failures_before + 1
    return FailurePlan(
        status="",
        stays_due=True,
        backoff_base=60,
        sync_state={"state": "failed", "last_error": INTERNAL_ERROR, "failures": failures},
    )


def finished_state(*, complete: bool) -> dict[str, Any]:
    """The sync state a job that reached the server leaves (``last_success_at`` added by the
    caller for a complete sync); an incomplete one continues in a job it enqueues."""
    return {"state": "idle" if complete else "syncing", "last_error": None, "failures": 0}


def lease_held_elsewhere(*, lease_owner: str | None, lease_expires: int | None, owner: str, now: float) -> bool:
    """Whether another worker holds the account's lease (the lease write's own condition, read
    beforehand): then the job is ``busy`` without even logging in."""
    return lease_expires is not None and int(lease_expires) >= int(now) and lease_owner != owner


def status_to_record(*, account_status: str, next_sync_at: int | None) -> bool:
    """Whether a job that reached the server writes the account's status (``ok``) and puts it
    back in the schedule: after a failure, a backoff or before its first success."""
    return account_status != "ok" or bool(next_sync_at)


def stored_work(
    *,
    reason: str,
    account_status: str,
    next_sync_at: int | None,
    sync_state: str,
    failures: int,
    last_error: str | None,
    ops_pending: int,
) -> str | None:
    """Why the job needs the account's lease whatever the server's STATUS says; None when only
    STATUS can tell (see ``folders.checkpoint_work`` and ``folders.status_work``).

    A job without work writes nothing: no lease, no ``syncing``, no ``last_success_at``. So
    anything the job must write or clear is work: CRM changes to push, a first sync or a
    continuation on its way (``syncing``), a failure to clear, a status to record — and a sync
    the user asked for (``POST .../sync``, rare): it confirms itself with ``last_success_at``,
    which a CRM may watch for."""
    if reason == "continue":
        return "continuation"
    if reason == "user":
        return "requested"
    if ops_pending > 0:
        return "crm_changes"
    if sync_state != "idle":
        return f"state_{sync_state}"
    if failures or last_error:
        return "failure_to_clear"
    if status_to_record(account_status=account_status, next_sync_at=next_sync_at):
        return "status_to_record"
    return None


# What a sync acts on: a change to any of these after a job's read makes the read stale.
SYNC_SETTINGS = (
    "host",
    "port",
    "username",
    "security",
    "protocol",
    "auth",
    "provider",
    "password_ciphertext",
    "refresh_token_ciphertext",
    "settings_version",
    "fetch_enabled",
    "keep_copy",
    "remove_after_days",
    "incoming_confidential",
    "outgoing_confidential",
    "sync_window_days",
    "folder_map",
)


def settings_changed(read: Any, current: Any | None) -> bool:
    """Whether the account as a job read it (eventually consistent, or ahead of time) is no longer
    the stored one for anything a sync acts on; a deleted account (``current`` None) has changed."""
    return current is None or any(getattr(read, name) != getattr(current, name) for name in SYNC_SETTINGS)
