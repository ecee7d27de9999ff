"""Running one sync job: lease, mail-host slot, one IMAP connection, the engine, the outcome.

Failure policy (mail servers lock accounts after repeated failed logins):
- wrong password: ``auth_failed``, a human ``last_error``, an ``account.auth_failed`` event, and
  the account leaves the due index until its settings change — no further login attempts;
- certificate failure: ``tls_failed``, retried with long backoff (someone may fix the server);
- network trouble: the connection is retried a few times with backoff inside the job, then the
  account backs off exponentially (``next_sync_at``) and ``account.sync_failed`` is published;
- a hostile or broken server (``server_misbehaving``, ``protocol_mismatch``): no retry within the
  job (it would only spend the budget again), backoff;
- a busy or throttling server (``server_busy``: BYE, NO [UNAVAILABLE]/[LIMIT] at login): no retry
  within the job — repeated logins get accounts locked — straight to the account's backoff;
- anything unexpected (a bug, a poison message, AWS trouble): the same backoff, sync state
  ``failed`` with a human ``last_error`` (no internals), the ``SyncFailures_internal_error``
  metric, and the lease released: never ``syncing`` forever;
- one CRM operation the server refuses fails alone (see ``sync.pusher``): it never fails the job.

Time: a job has ``job_budget_seconds`` of wall time from its start, and never more than the
Lambda has left less ``LAMBDA_MARGIN_SECONDS`` (time to record the outcome, release the lease and
re-enqueue after the connection is cut). The IMAP connection gets that as a hard deadline; the
engine's soft deadline trips ``DEADLINE_MARGIN_SECONDS`` before it, so the job checkpoints and
re-enqueues itself before the hard cut. A job whose Lambda has
less than its whole budget plus that margin left does not start: it goes back on the queue
(``deferred``) for a fresh invocation, so a batch of slow accounts never runs a worker into its
timeout with an account left ``syncing``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from mailsync import dal, events
from mailsync.config import Settings, get_settings
from mailsync.errors import (
    AuthFailed,
    MailboxError,
    MailTimeout,
    NotFound,
    ProtocolMismatch,
    ServerBusy,
    ServerMisbehaving,
    TlsFailed,
)
from mailsync.mailbox.base import ServerParams
from mailsync.mailbox.connection import ImapConnection, open_imap
from mailsync.observability import logger
from mailsync.services import scheduling
from mailsync.services.accounts import server_params
from mailsync.sync.engine import AccountSync, InjectedCrash, SyncOutcome
from mailsync.sync.engine import faults as engine_faults
from mailsync.sync.pusher import Pusher

LEASE_SECONDS = 300 + 60  # the worker's Lambda timeout plus a margin: a crashed worker's lease expires
CONNECT_ATTEMPTS = 3
RETRY_BASE_DELAY_SECONDS = 1.0
# A scheduled job for an account that finished a sync this recently is a duplicate (queue
# backlog, two ticks): skip it without logging in. User-requested syncs always run.
MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS = 20
HOST_BUSY_DELAY_SECONDS = 30
# The soft deadline trips this long before the job's budget ends: time to finish the current
# batch, checkpoint and re-enqueue before the connection's hard deadline cuts it.
DEADLINE_MARGIN_SECONDS = 15.0
# Kept free at the end of the worker Lambda: after the connection's hard deadline the job still
# writes its outcome, releases its lease and may re-enqueue (a few DynamoDB/SQS requests).
LAMBDA_MARGIN_SECONDS = 10.0
# A job deferred for lack of Lambda time waits this long on the queue: enough for the current
# invocation to finish its batch, short enough that the sync is barely late.
DEFERRED_DELAY_SECONDS = 5
INTERNAL_ERROR = "Syncing this mailbox failed because of an internal error; it will be retried"


class SyncJob(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tenant_id: str
    user_id: str
    reason: str = "schedule"  # schedule | user | continue | retry


@dataclass
class JobResult:
    status: str  # synced | incomplete | skipped | busy | failed | gone | deferred
    outcome: SyncOutcome | None = None
    error: str | None = None
    duration_ms: int = 0
    lag_seconds: int | None = None  # since the previous successful sync, at the start of this one


def parse_job(body: str) -> SyncJob:
    return SyncJob.model_validate_json(body)


def run_job(
    job: SyncJob,
    deadline: Callable[[], bool] = lambda: False,
    *,
    owner: str | None = None,
    reader_factory: Callable[[ImapConnection], ImapConnection] = lambda session: session,
    lambda_deadline: float | None = None,
    may_defer: bool = True,
) -> JobResult:
    """Sync one account if it should be synced now; never raises for mailbox problems.

    ``lambda_deadline`` is the ``time.monotonic()`` instant the invoking Lambda is cut off (None
    outside Lambda): the job's hard deadline stays ``LAMBDA_MARGIN_SECONDS`` before it, and a job
    without room for its whole budget is put back on the queue instead of started — unless
    ``may_defer`` is false (the invocation's first job: were the budget set longer than the
    Lambda's timeout, deferring it would bounce it between invocations for ever).
    """
    settings = get_settings()
    if (
        may_defer
        and lambda_deadline is not None
        and lambda_deadline - time.monotonic() < settings.job_budget_seconds + LAMBDA_MARGIN_SECONDS
    ):
        # Re-enqueued rather than reported as a batch item failure: SQS would hide a failed record
        # for the whole visibility timeout and count it towards the dead-letter queue, though
        # nothing is wrong with it. Nothing was written for the account: it never shows "syncing".
        scheduling.enqueue(job.tenant_id, job.user_id, job.reason, delay_seconds=DEFERRED_DELAY_SECONDS)
        return JobResult("deferred")
    owner = owner or scheduling.worker_id()
    account = dal.get_account(job.tenant_id, job.user_id)
    if account is None:
        return JobResult("gone")
    if not account.fetch_enabled or account.status == "auth_failed" or account.protocol != "imap":
        # auth_failed: no login until the settings change (they reset the status).
        if account.due_shard is not None:
            # Still in the due index (saved before POP3 accounts were kept out of it): leave it,
            # or the scheduler sends it a job that does nothing every tick.
            with contextlib.suppress(NotFound):
                dal.update_account(account, {"due_shard": None, "next_sync_at": None})
        return JobResult("skipped")
    # Marking the account "syncing" rides on the lease write: one request, not two.
    state = dal.acquire_lease(
        job.tenant_id, job.user_id, owner, LEASE_SECONDS, {"state": "syncing", "last_started_at": dal.utcnow()}
    )
    if state is None:
        return JobResult("busy")
    final: dict[str, Any] = {}
    started = time.monotonic()
    try:
        recent = state.last_success_at is not None and (
            time.time() - state.last_success_at.timestamp() < MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS
        )
        if job.reason == "schedule" and recent:
            final = {"state": "idle"}  # it succeeded moments ago
            return JobResult("skipped")
        slot = dal.acquire_host_slot(account.host, owner, settings.host_concurrency, LEASE_SECONDS)
        if slot is None:
            scheduling.enqueue(job.tenant_id, job.user_id, job.reason, delay_seconds=HOST_BUSY_DELAY_SECONDS)
            final = {"state": "idle"}  # waiting for room on the host, not syncing
            return JobResult("busy")
        try:
            result, final = _sync(account, state, owner, deadline, reader_factory, started, lambda_deadline)
            result.duration_ms = int((time.monotonic() - started) * 1000)
            if state.last_success_at is not None:
                result.lag_seconds = int(time.time() - state.last_success_at.timestamp())
            return result
        finally:
            dal.release_host_slot(account.host, slot, owner)
    except InjectedCrash:
        raise  # the tests' stand-in for a worker dying mid-job: nothing would catch that
    except Exception:  # noqa: BLE001 - the job's last line of defence, see the module docstring
        # Whatever it was, the account must not look "syncing" forever nor be retried at once.
        logger.exception("sync job failed unexpectedly", extra={"user_id": job.user_id})
        final = _record_internal_failure(account, state)
        return JobResult("failed", error="internal_error", duration_ms=int((time.monotonic() - started) * 1000))
    finally:
        # The final state is written with the lease release, in one request.
        dal.release_lease(state, owner, final)


def _sync(
    account: dal.AccountModel,
    state: dal.SyncStateModel,
    owner: str,
    deadline: Callable[[], bool],
    reader_factory: Callable[[ImapConnection], ImapConnection],
    started: float,
    lambda_deadline: float | None = None,
) -> tuple[JobResult, dict[str, Any]]:
    settings = get_settings()
    hard_deadline = hard_deadline_for(started, settings.job_budget_seconds, lambda_deadline)
    soft_deadline = job_deadline(deadline, hard_deadline, settings.job_budget_seconds)
    try:
        params = server_params(account, settings)
        outcome = _with_connect_retries(
            lambda: _run_engine(account, state, owner, soft_deadline, params, settings, reader_factory, hard_deadline),
            # The budget alone: the Lambda's deadline callable is the engine's to ask.
            job_deadline(lambda: False, hard_deadline, settings.job_budget_seconds),
        )
    except AuthFailed as exc:
        final = _record_failure(account, state, exc, due=False)
        events.publish(
            [events.Event(events.ACCOUNT_AUTH_FAILED, account.tenant_id, account.user_id, {"error": exc.message})]
        )
        return JobResult("failed", error=exc.code), final
    except MailboxError as exc:
        final = _record_failure(account, state, exc, due=True)
        events.publish(
            [
                events.Event(
                    events.ACCOUNT_SYNC_FAILED,
                    account.tenant_id,
                    account.user_id,
                    {"error": exc.message, "code": exc.code},
                )
            ]
        )
        return JobResult("failed", error=exc.code), final
    final: dict[str, Any] = {"state": "idle" if outcome.complete else "syncing", "last_error": None, "failures": 0}
    if outcome.complete:
        final["last_success_at"] = dal.utcnow()
    if account.status != "ok" or account.next_sync_at:
        due = scheduling.due_fields(account.tenant_id, account.user_id, account.fetch_enabled, "ok")
        dal.update_account_status(account, "ok", None, extra=due)
    if not outcome.complete:
        scheduling.enqueue(account.tenant_id, account.user_id, "continue")
        return JobResult("incomplete", outcome), final
    return JobResult("synced", outcome), final


def _run_engine(
    account: dal.AccountModel,
    state: dal.SyncStateModel,
    owner: str,
    deadline: Callable[[], bool],
    params: ServerParams,
    settings: Settings,
    reader_factory: Callable[[ImapConnection], ImapConnection],
    hard_deadline: float,
) -> SyncOutcome:
    with open_imap(params, settings, deadline=hard_deadline) as session:
        reader = reader_factory(session)
        pusher = Pusher(account, reader, session, faults=engine_faults)
        ops = dal.pending_ops(account.tenant_id, account.user_id) if int(state.ops_pending or 0) > 0 else []
        engine: AccountSync | None = None
        try:
            # CRM changes first (they win conflicts on \Seen), then the pull; ops whose message
            # moved or vanished on the server run again once the pull has found where it is.
            waiting = pusher.run(ops)
            engine = AccountSync(
                account,
                state,
                reader,
                owner=owner,
                deadline=deadline,
                revivable=pusher.revivable(waiting),
                # Only a pending move keeps a message's CRM folder when the pull relinks it.
                pending_moves=frozenset(op.message_id for op in waiting if op.kind == "move"),
            )
            outcome = engine.run()
            if waiting and outcome.complete:
                pusher.run(waiting, last_chance=True)
            outcome.pushed = pusher.applied
            return outcome
        finally:
            events.publish(pusher.events + (engine.events if engine is not None else []))


def hard_deadline_for(started: float, budget_seconds: float, lambda_deadline: float | None) -> float:
    """When the job's connection is cut: its budget, but never past the Lambda's own end (less
    the time the job needs afterwards to record its outcome)."""
    hard = started + budget_seconds
    if lambda_deadline is not None:
        hard = min(hard, lambda_deadline - LAMBDA_MARGIN_SECONDS)
    return hard


def job_deadline(
    lambda_deadline: Callable[[], bool],
    hard_deadline: float,
    budget_seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], bool]:
    """The engine's "stop after this batch" signal: the Lambda runs short, or the job's budget
    is nearly spent. The margin is at most a quarter of the budget, so a small budget still
    leaves most of it for work (a margin as large as the budget would never let a job start)."""
    margin = min(DEADLINE_MARGIN_SECONDS, budget_seconds / 4)

    def tripped() -> bool:
        return lambda_deadline() or clock() >= hard_deadline - margin

    return tripped


def _with_connect_retries(
    action: Callable[[], SyncOutcome], out_of_time: Callable[[], bool] = lambda: False
) -> SyncOutcome:
    """Retry transient network failures (not auth, not TLS, not a misbehaving server) with
    backoff inside one job, while its time lasts."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return action()
        except (AuthFailed, TlsFailed, ServerMisbehaving, ProtocolMismatch, ServerBusy):
            # ServerBusy: a throttled login retried within seconds is how mail servers come to
            # lock accounts; the account's backoff spaces the next attempt instead.
            raise
        except MailboxError as exc:
            if attempt == CONNECT_ATTEMPTS or out_of_time():
                raise
            delay = RETRY_BASE_DELAY_SECONDS * 2 ** (attempt - 1)
            logger.info(
                "mail server unreachable, retrying", extra={"attempt": attempt, "code": exc.code, "delay": delay}
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _record_failure(
    account: dal.AccountModel, state: dal.SyncStateModel, exc: MailboxError, *, due: bool
) -> dict[str, Any]:
    failures = int(state.failures or 0) + 1
    final = {"state": "failed", "last_error": exc.message, "failures": failures}
    if due:
        base = 600 if isinstance(exc, TlsFailed) else 60
        delay = scheduling.backoff_seconds(failures, base=base)
        extra = {"next_sync_at": int(time.time()) + delay}
    else:
        extra = {"due_shard": None, "next_sync_at": None}
    status = exc.code if not isinstance(exc, MailTimeout) else "timeout"
    dal.update_account_status(account, status, exc.message, extra=extra)
    logger.warning("sync failed", extra={"code": exc.code, "failures": failures, "user_id": account.user_id})
    return final


def _record_internal_failure(account: dal.AccountModel, state: dal.SyncStateModel) -> dict[str, Any]:
    """Backoff and a human error after an unexpected exception; the account's status (about
    reaching and logging in to the server) stays as it was. Best effort: if storage is what
    failed, the lease still goes back (the caller's ``finally``) and expires otherwise."""
    failures = int(state.failures or 0) + 1
    final = {"state": "failed", "last_error": INTERNAL_ERROR, "failures": failures}
    try:
        delay = scheduling.backoff_seconds(failures)
        if account.fetch_enabled and account.status != "auth_failed":
            dal.update_account_status(
                account, account.status, INTERNAL_ERROR, extra={"next_sync_at": int(time.time()) + delay}
            )
    except Exception:  # noqa: BLE001 - already failing; the sync state below still says so
        logger.exception("recording the failure failed", extra={"user_id": account.user_id})
    return final
