"""Running one sync job: a connection slot, one IMAP connection, the lease when there is work,
the engine, the outcome.

Every decision — whether the job runs, whether it has work, its deadlines, what its outcome
records and the failure policy — is in ``sync.planner`` (``jobs``, and ``folders`` for the STATUS
comparison); this module carries them out: room for the connection in this process
(``mailbox.limits``), the connection (retried while the policy says so), the account's lease —
taken only once the stored state or the folders' STATUS shows work, so a job that finds nothing
writes nothing — ``sync.account.sync_account``, and the outcome with its events. Nothing
escapes: an unexpected exception leaves sync state ``failed`` with a human ``last_error``, the
``SyncFailures_internal_error`` metric and the lease released. Thread-safe: no module state but
the process's connection limits and password keys, both locked.

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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mailsync import dal, events
from mailsync.config import Settings, get_settings
from mailsync.domain import Account, SyncState
from mailsync.errors import AuthFailed, MailboxError, NotFound
from mailsync.mailbox.base import ServerParams
from mailsync.mailbox.connection import ImapConnection, open_imap
from mailsync.mailbox.limits import LIMITS, HostBusy, host_limit
from mailsync.mailbox.pop import open_pop3
from mailsync.observability import logger
from mailsync.services import scheduling
from mailsync.services.accounts import server_params
from mailsync.services.oauth_tokens import forget_access_token
from mailsync.sync.account import sync_account
from mailsync.sync.engine import SyncOutcome, pending_work
from mailsync.sync.planner import jobs as policy
from mailsync.sync.pop import sync_pop3

LEASE_SECONDS = 300 + 60  # the worker's Lambda timeout plus a margin: a crashed worker's lease expires
HOST_BUSY_DELAY_SECONDS = 30
# How long a job waits for room on its mail host (mailbox.limits) before it goes back on the queue.
HOST_WAIT_SECONDS = 30.0
# Syncs with work (mail to download and store, changes to push) one worker process runs at once,
# whatever its thread count: such a sync holds mail in memory (two batches of engine.BATCH_BYTES,
# or a message up to max_message_bytes), a poll that finds nothing a few KB. So the worker can run
# many more threads than its memory holds syncs with work, for polls that mostly wait on mail
# servers (they are what an invocation is billed for). 16: the threads 1,769 MB held before.
SYNCS_WITH_WORK = 16
_WORK_SLOTS = threading.BoundedSemaphore(SYNCS_WITH_WORK)
# A job deferred for lack of Lambda time waits this long on the queue: enough for the current
# invocation to finish its batch, short enough that the sync is barely late.
DEFERRED_DELAY_SECONDS = 5


class SyncJob(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tenant_id: str
    user_id: str
    reason: str = "schedule"  # schedule | user | continue | retry
    bounces: int = Field(default=0, ge=0)  # times it went back on the queue (planner.jobs.requeue_busy)
    # Not from the body: the worker sets it from SQS's SentTimestamp (SyncLagSeconds).
    queued_at: float | None = Field(default=None, exclude=True)


@dataclass
class JobResult:
    status: str  # synced | incomplete | skipped | busy | dropped | failed | gone | deferred
    outcome: SyncOutcome | None = None
    error: str | None = None
    duration_ms: int = 0
    lag_seconds: int | None = None  # how long the job waited on the queue (None: not known)

    @property
    def no_op(self) -> bool:
        """Skipped, or synced with nothing changed on either side."""
        if self.status == "skipped":
            return True
        o = self.outcome
        changed = o is None or any((o.created, o.relinked, o.detached, o.flag_updates, o.pushed, o.folder_errors))
        return self.status == "synced" and not changed


def parse_job(body: str) -> SyncJob:
    return SyncJob.model_validate_json(body)


def run_job(
    job: SyncJob,
    deadline: Callable[[], bool] = lambda: False,
    *,
    owner: str | None = None,
    connection_factory: Callable[[ImapConnection], ImapConnection] = lambda conn: conn,
    lambda_deadline: float | None = None,
    may_defer: bool = True,
    queued_at: float | None = None,
    read: tuple[Account | None, SyncState | None] | None = None,
) -> JobResult:
    """Sync one account if it should be synced now; never raises for mailbox problems.

    ``lambda_deadline`` is the ``time.monotonic()`` instant the invoking Lambda is cut off (None
    outside Lambda); ``may_defer`` is false for the invocation's first job (see
    ``planner.jobs.defer_job``); ``queued_at`` (epoch seconds) is when the job was sent, for
    ``lag_seconds``; ``read`` is the account and its sync state as already read for this job
    (a group's scheduled jobs are read together, see ``sync_groups``). Thread-safe: the worker
    may run many accounts' jobs at once.
    """
    settings = get_settings()
    lambda_left = None if lambda_deadline is None else lambda_deadline - time.monotonic()
    if policy.defer_job(may_defer=may_defer, lambda_left=lambda_left, budget_seconds=settings.job_budget_seconds):
        # Re-enqueued rather than reported as a batch item failure: SQS would hide a failed record
        # for the whole visibility timeout and count it towards the dead-letter queue, though
        # nothing is wrong with it. Nothing was written for the account: it never shows "syncing".
        scheduling.enqueue(
            job.tenant_id, job.user_id, job.reason, delay_seconds=DEFERRED_DELAY_SECONDS, bounces=job.bounces
        )
        return JobResult("deferred")
    lag = None if queued_at is None else max(0, int(time.time() - queued_at))
    owner = owner or scheduling.worker_id()
    # One request for both; read without the lease: most jobs find nothing to do and then
    # write nothing at all.
    # A scheduled poll reads eventually consistent (half the read units): see
    # dal.get_accounts_and_sync_states for why a stale read is safe there.
    # A scheduled job's account is read eventually consistent, or with its group ahead of time:
    # once there is work, the lease checks it against a consistent read before anything happens.
    read_may_be_stale = read is not None or job.reason == "schedule"
    if read is None:
        read = dal.get_account_and_sync_state(job.tenant_id, job.user_id, consistent=job.reason != "schedule")
    account, stored = read
    if account is None:
        return JobResult("gone")
    if not policy.may_sync(fetch_enabled=account.fetch_enabled, status=account.status, protocol=account.protocol):
        if account.due_shard is not None and read_may_be_stale:
            # Out of the due index only on what is stored now: a stale read of a mailbox the
            # user has just repaired would take it out of the schedule for good.
            account = dal.get_account(job.tenant_id, job.user_id) or account
            if policy.may_sync(fetch_enabled=account.fetch_enabled, status=account.status, protocol=account.protocol):
                return _requeue_busy(job)
        if account.due_shard is not None:
            # Still in the due index though it may not sync (fetch off, a login that needs the
            # user): leave it, or the scheduler sends it a job that does nothing every tick.
            with contextlib.suppress(NotFound):
                dal.update_account(account, {"due_shard": None, "next_sync_at": None})
        return JobResult("skipped")
    state = stored or SyncState()
    since_success = None if state.last_success_at is None else time.time() - state.last_success_at.timestamp()
    if policy.duplicate_scheduled_job(job.reason, since_success):
        return JobResult("skipped", lag_seconds=lag)  # it succeeded moments ago
    if policy.lease_held_elsewhere(
        lease_owner=state.lease_owner, lease_expires=state.lease_expires, owner=owner, now=time.time()
    ):
        return JobResult("busy")  # another worker syncs it now
    lease = _Lease(job.tenant_id, job.user_id, owner, read_account=account if read_may_be_stale else None)
    slot = _JobSlot()
    final: dict[str, Any] = {}
    started = time.monotonic()
    try:
        try:
            with LIMITS.slot(
                account.host,
                account.username,
                limit=host_limit(account.host, settings),
                wait_seconds=min(HOST_WAIT_SECONDS, settings.job_budget_seconds / 4),
            ):
                result, final = _sync(
                    account, state, lease, slot, job.reason, deadline, connection_factory, started, lambda_deadline
                )
        except _StaleRead:
            # The settings changed after this job's read: nothing was done with them; the state
            # goes back to what it was, and the job runs again on a fresh read.
            final = {"state": state.state}
            return _requeue_busy(job)
        except (HostBusy, _NoWorkSlot):
            # Waiting for room on the host (or for this process's other job of the same mailbox),
            # or for one of the process's slots for syncs with work.
            return _requeue_busy(job)
        result.duration_ms = int((time.monotonic() - started) * 1000)
        result.lag_seconds = lag
        return result
    except Exception:  # noqa: BLE001 - the job's last line of defence, see the module docstring
        # Whatever it was, the account must not look "syncing" forever nor be retried at once.
        logger.exception("sync job failed unexpectedly", extra={"user_id": job.user_id})
        leased = lease.take(check_account=False)
        if leased is not None:  # else another worker syncs it now and records its own outcome
            final = _record_internal_failure(account, leased)
        return JobResult("failed", error="internal_error", duration_ms=int((time.monotonic() - started) * 1000))
    finally:
        # The final state is written with the lease release, in one request; the slot is the
        # process's, so it goes back whatever that write does.
        try:
            lease.give_back(final)
        finally:
            slot.release()


class _LeaseBusy(Exception):
    """Another worker holds the account's lease."""


class _NoWorkSlot(Exception):
    """The process runs ``SYNCS_WITH_WORK`` syncs with work already (and did for the whole wait)."""


class _StaleRead(Exception):
    """The account's settings changed after the job read them (seen once the lease is held)."""


class _JobSlot:
    """One of the process's ``SYNCS_WITH_WORK`` slots, taken at most once by a job, before its
    lease, and held until the job ends: a connect retry after the lease never waits again."""

    def __init__(self) -> None:
        self.held = False

    def take(self, settings: Settings, hard_deadline: float) -> None:
        if self.held:
            return
        # Never past the job's hard deadline: a slot found then would start a sync with no time.
        wait = min(HOST_WAIT_SECONDS, settings.job_budget_seconds / 4, hard_deadline - time.monotonic())
        if not _WORK_SLOTS.acquire(timeout=max(0.0, wait)):
            raise _NoWorkSlot()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            _WORK_SLOTS.release()


class _Lease:
    """The account's lease, taken only once the job knows it has work (or an outcome to record).
    With ``read_account`` (read eventually consistent or ahead of time), taking it also reads the
    account consistently: settings changed since are ``_StaleRead``, so no sync, deletion or
    failure record ever acts on settings the user already changed or deleted."""

    def __init__(self, tenant_id: str, user_id: str, owner: str, read_account: Account | None = None) -> None:
        self.tenant_id, self.user_id, self.owner = tenant_id, user_id, owner
        self.read_account = read_account
        self.state: SyncState | None = None  # as read by the lease write; None: not held

    def take(self, *, check_account: bool = True) -> SyncState | None:
        """The sync state read by taking the lease (already held: as read then); None if busy."""
        if self.state is None:
            # Marking the account "syncing" rides on the lease write: one request, not two.
            self.state = dal.take_lease(
                self.tenant_id, self.user_id, self.owner, LEASE_SECONDS, state="syncing", last_started_at=dal.utcnow()
            )
            if self.state is not None and check_account and self.read_account is not None:
                current = dal.get_account(self.tenant_id, self.user_id)
                if policy.settings_changed(self.read_account, current):
                    raise _StaleRead()
                self.read_account = None  # checked: later takes return the held state
        return self.state

    def give_back(self, final: dict[str, Any]) -> None:
        if self.state is not None:
            dal.give_back_lease(self.tenant_id, self.user_id, self.owner, **final)


def _sync(
    account: Account,
    read: SyncState,
    lease: _Lease,
    slot: _JobSlot,
    reason: str,
    deadline: Callable[[], bool],
    connection_factory: Callable[[ImapConnection], ImapConnection],
    started: float,
    lambda_deadline: float | None = None,
) -> tuple[JobResult, dict[str, Any]]:
    settings = get_settings()
    budget = settings.job_budget_seconds
    hard_deadline = policy.hard_deadline_for(started, budget, lambda_deadline)
    soft_deadline = policy.job_deadline(deadline, hard_deadline, budget, time.monotonic)
    # Work the stored state alone shows; otherwise the folders' STATUS decides, before the lease.
    known_work = policy.stored_work(
        reason=reason,
        account_status=account.status,
        next_sync_at=account.next_sync_at,
        sync_state=read.state,
        failures=read.failures,
        last_error=read.last_error,
        ops_pending=read.ops_pending,
    )

    def connect_and_run() -> SyncOutcome | int:
        # Params (with an OAuth2 access token) are built once per try, outside the connect
        # retries: a transient network retry reuses them, a refused token never.
        params = server_params(account, settings, deadline=hard_deadline)
        run = _run_pop3 if account.protocol == "pop3" else _run_engine
        return _with_connect_retries(
            lambda: run(
                account,
                read if known_work is None else None,
                lease,
                slot,
                soft_deadline,
                params,
                settings,
                connection_factory,
                hard_deadline,
            ),
            # The budget alone: the Lambda's deadline callable is the engine's to ask.
            policy.job_deadline(lambda: False, hard_deadline, budget, time.monotonic),
        )

    try:
        try:
            outcome = connect_and_run()
        except MailboxError as exc:
            if not policy.renew_token_and_retry(exc.code, renewed=False):
                raise
            # The mail server refused the cached access token: forget it, so the params are
            # rebuilt with a refreshed one (or the provider says the grant is gone).
            forget_access_token(account)
            logger.info("access token refused, renewing it", extra={"user_id": account.user_id})
            outcome = connect_and_run()
    except _LeaseBusy:
        return JobResult("busy"), {}
    except MailboxError as exc:
        # A failure is recorded, so it needs the lease too (another worker holding it records its own).
        state = lease.take()
        if state is None:
            return JobResult("busy"), {}
        final = _record_failure(account, state, exc)
        kind = events.ACCOUNT_AUTH_FAILED if isinstance(exc, AuthFailed) else events.ACCOUNT_SYNC_FAILED
        if exc.code == "reauth_required":
            kind = events.ACCOUNT_REAUTH_REQUIRED
        if exc.code == "token_rejected":
            forget_access_token(account)
        detail = {"error": exc.message} if isinstance(exc, AuthFailed) else {"error": exc.message, "code": exc.code}
        events.publish([events.Event(kind, account.tenant_id, account.user_id, detail)])
        return JobResult("failed", error=exc.code), final
    if isinstance(outcome, int):
        # Nothing to do: nothing written, no lease taken (see README "No-op syncs").
        return JobResult("synced", SyncOutcome(imap_commands=outcome)), {}
    # The sync's last checkpoint rides on the lease release (``_Lease.give_back``).
    final = {"checkpoint": outcome.checkpoint, **policy.finished_state(complete=outcome.complete)}
    outcome.checkpoint = None
    scheduling.record_activity(account, outcome)  # adaptive polling: only a sync that changed something writes
    if outcome.complete:
        final["last_success_at"] = dal.utcnow()
    if policy.status_to_record(account_status=account.status, next_sync_at=account.next_sync_at):
        due = scheduling.due_fields(account.tenant_id, account.user_id, account.fetch_enabled, "ok")
        dal.update_account_status(account, "ok", None, extra=due)
    if not outcome.complete:
        scheduling.enqueue(account.tenant_id, account.user_id, "continue")
        return JobResult("incomplete", outcome), final
    return JobResult("synced", outcome), final


def _requeue_busy(job: SyncJob) -> JobResult:
    """A job that cannot run now goes back on the queue, or is dropped once it bounced often
    enough (``planner.jobs.requeue_busy``: the scheduler sends the account a job again)."""
    if policy.requeue_busy(job.reason, job.bounces):
        scheduling.enqueue(
            job.tenant_id, job.user_id, job.reason, delay_seconds=HOST_BUSY_DELAY_SECONDS, bounces=job.bounces + 1
        )
        return JobResult("busy")
    logger.warning(
        "sync job dropped: no room for it after several tries, the schedule brings it back",
        extra={"user_id": job.user_id, "reason": job.reason, "bounces": job.bounces},
    )
    if policy.left_to_the_schedule(job.reason):
        try:
            dal.record_activity(job.tenant_id, job.user_id, int(time.time()))
        except Exception:  # noqa: BLE001 - best effort: without it the account waits for its slot
            logger.exception("activity not recorded", extra={"user_id": job.user_id})
    return JobResult("dropped")


def _take_work(lease: _Lease, slot: _JobSlot, settings: Settings, hard_deadline: float) -> SyncState:
    """What a sync with work takes, IMAP or POP3: one of the process's slots, then the lease (a
    job waiting for a slot holds no lease); ``_LeaseBusy`` when another worker holds it."""
    slot.take(settings, hard_deadline)
    state = lease.take()
    if state is None:
        raise _LeaseBusy()
    return state


def _run_engine(
    account: Account,
    unleased: SyncState | None,
    lease: _Lease,
    slot: _JobSlot,
    deadline: Callable[[], bool],
    params: ServerParams,
    settings: Settings,
    connection_factory: Callable[[ImapConnection], ImapConnection],
    hard_deadline: float,
) -> SyncOutcome | int:
    """The sync over one connection; without a lease yet and with ``unleased`` (the state read
    without it), first the folders' STATUS: when it shows no work, the IMAP commands it took
    (an ``int``) and nothing else. Otherwise the lease is taken and the engine runs as usual
    on the state read by the lease write."""
    with open_imap(params, settings, deadline=hard_deadline) as opened:
        conn = connection_factory(opened)
        if lease.state is None and unleased is not None:
            why = pending_work(account, unleased, conn)
            if why is None:
                return conn.command_count
            logger.debug("sync has work", extra={"reason": why})
        state = _take_work(lease, slot, settings, hard_deadline)
        return sync_account(account, state, conn, owner=lease.owner, deadline=deadline, hand_over_checkpoint=True)


def _run_pop3(
    account: Account,
    unleased: SyncState | None,
    lease: _Lease,
    slot: _JobSlot,
    deadline: Callable[[], bool],
    params: ServerParams,
    settings: Settings,
    connection_factory: Callable[[ImapConnection], ImapConnection],
    hard_deadline: float,
) -> SyncOutcome | int:
    """A POP3 account's sync over one connection (``sync.pop``): the maildrop's listing decides
    whether there is work before the lease, as STATUS does for IMAP."""

    def take_lease() -> SyncState:
        return _take_work(lease, slot, settings, hard_deadline)

    with open_pop3(params, settings, deadline=hard_deadline) as conn:
        return sync_pop3(
            account,
            conn,
            owner=lease.owner,
            take_lease=take_lease,
            deadline=deadline,
            unleased=unleased if lease.state is None else None,
        )


def _with_connect_retries(
    action: Callable[[], SyncOutcome], out_of_time: Callable[[], bool] = lambda: False
) -> SyncOutcome:
    """Retry transient network failures with backoff inside one job while the policy says so."""
    attempt = 1
    while True:
        try:
            return action()
        except MailboxError as exc:
            if not policy.retry_in_job(exc.code, attempt, out_of_time=out_of_time()):
                raise
            delay = policy.retry_delay(attempt)
            logger.info(
                "mail server unreachable, retrying", extra={"attempt": attempt, "code": exc.code, "delay": delay}
            )
            time.sleep(delay)
            attempt += 1


def _record_failure(account: Account, state: SyncState, exc: MailboxError) -> dict[str, Any]:
    plan = policy.mailbox_failure(exc.code, exc.message, state.failures)
    failures = plan.sync_state["failures"]
    if plan.stays_due:
        extra = {"next_sync_at": int(time.time()) + scheduling.backoff_seconds(failures, base=plan.backoff_base)}
    else:
        extra = {"due_shard": None, "next_sync_at": None}
    dal.update_account_status(account, plan.status, exc.message, extra=extra)
    logger.warning("sync failed", extra={"code": exc.code, "failures": failures, "user_id": account.user_id})
    return plan.sync_state


def _record_internal_failure(account: Account, state: SyncState) -> dict[str, Any]:
    """Backoff and a human error after an unexpected exception; the account's status stays as it
    was. Best effort: if storage is what failed, the lease still goes back (the caller's
    ``finally``) and expires otherwise."""
    plan = policy.internal_failure(state.failures)
    try:
        delay = scheduling.backoff_seconds(plan.sync_state["failures"], base=plan.backoff_base)
        if account.fetch_enabled and account.status != "auth_failed":
            dal.update_account_status(
                account, account.status, policy.INTERNAL_ERROR, extra={"next_sync_at": int(time.time()) + delay}
            )
    except Exception:  # noqa: BLE001 - already failing; the sync state below still says so
        logger.exception("recording the failure failed", extra={"user_id": account.user_id})
    return plan.sync_state
