"""Running one sync job: lease, mail-host slot, one IMAP connection, the engine, the outcome.

Failure policy (mail servers lock accounts after repeated failed logins):
- wrong password: ``auth_failed``, a human ``last_error``, an ``account.auth_failed`` event, and
  the account leaves the due index until its settings change — no further login attempts;
- certificate failure: ``tls_failed``, retried with long backoff (someone may fix the server);
- network trouble: the connection is retried a few times with backoff inside the job, then the
  account backs off exponentially (``next_sync_at``) and ``account.sync_failed`` is published.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from mailsync import dal, events
from mailsync.config import Settings, get_settings
from mailsync.errors import AuthFailed, MailboxError, MailTimeout, TlsFailed
from mailsync.mailbox.base import ServerParams
from mailsync.mailbox.imap import open_imap
from mailsync.mailbox.reader import MailboxReader
from mailsync.mailbox.writer import MailboxWriter
from mailsync.observability import logger
from mailsync.services import scheduling
from mailsync.services.accounts import server_params
from mailsync.sync.engine import AccountSync, SyncOutcome
from mailsync.sync.engine import faults as engine_faults
from mailsync.sync.pusher import Pusher

LEASE_SECONDS = 300 + 60  # the worker's Lambda timeout plus a margin: a crashed worker's lease expires
CONNECT_ATTEMPTS = 3
RETRY_BASE_DELAY_SECONDS = 1.0
# A scheduled job for an account that finished a sync this recently is a duplicate (queue
# backlog, two ticks): skip it without logging in. User-requested syncs always run.
MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS = 20
HOST_BUSY_DELAY_SECONDS = 30


class SyncJob(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tenant_id: str
    user_id: str
    reason: str = "schedule"  # schedule | user | continue | retry


@dataclass
class JobResult:
    status: str  # synced | incomplete | skipped | busy | failed | gone
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
    reader_factory: Callable[..., MailboxReader] = MailboxReader,
) -> JobResult:
    """Sync one account if it should be synced now; never raises for mailbox problems."""
    owner = owner or scheduling.worker_id()
    account = dal.get_account(job.tenant_id, job.user_id)
    if account is None:
        return JobResult("gone")
    if not account.fetch_enabled or account.status == "auth_failed" or account.protocol != "imap":
        # auth_failed: no login until the settings change (they reset the status).
        return JobResult("skipped")
    # Marking the account "syncing" rides on the lease write: one request, not two.
    state = dal.acquire_lease(
        job.tenant_id, job.user_id, owner, LEASE_SECONDS, {"state": "syncing", "last_started_at": dal.utcnow()}
    )
    if state is None:
        return JobResult("busy")
    final: dict[str, Any] = {}
    try:
        recent = state.last_success_at is not None and (
            time.time() - state.last_success_at.timestamp() < MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS
        )
        if job.reason == "schedule" and recent:
            final = {"state": "idle"}  # it succeeded moments ago
            return JobResult("skipped")
        settings = get_settings()
        slot = dal.acquire_host_slot(account.host, owner, settings.host_concurrency, LEASE_SECONDS)
        if slot is None:
            scheduling.enqueue(job.tenant_id, job.user_id, job.reason, delay_seconds=HOST_BUSY_DELAY_SECONDS)
            final = {"state": "idle"}  # waiting for room on the host, not syncing
            return JobResult("busy")
        try:
            started = time.monotonic()
            result, final = _sync(account, state, owner, deadline, reader_factory)
            result.duration_ms = int((time.monotonic() - started) * 1000)
            if state.last_success_at is not None:
                result.lag_seconds = int(time.time() - state.last_success_at.timestamp())
            return result
        finally:
            dal.release_host_slot(account.host, slot, owner)
    finally:
        # The final state is written with the lease release, in one request.
        dal.release_lease(state, owner, final)


def _sync(
    account: dal.AccountModel,
    state: dal.SyncStateModel,
    owner: str,
    deadline: Callable[[], bool],
    reader_factory: Callable[..., MailboxReader],
) -> tuple[JobResult, dict[str, Any]]:
    settings = get_settings()
    try:
        params = server_params(account, settings)
        outcome = _with_connect_retries(
            lambda: _run_engine(account, state, owner, deadline, params, settings, reader_factory)
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
    reader_factory: Callable[..., MailboxReader],
) -> SyncOutcome:
    with open_imap(params, settings) as session:
        reader = reader_factory(session)
        pusher = Pusher(account, reader, MailboxWriter(session), faults=engine_faults)
        ops = dal.pending_ops(account.tenant_id, account.user_id) if int(state.ops_pending or 0) > 0 else []
        engine: AccountSync | None = None
        try:
            # CRM changes first (they win conflicts on \Seen), then the pull; ops whose message
            # moved or vanished on the server run again once the pull has found where it is.
            waiting = pusher.run(ops)
            engine = AccountSync(
                account, state, reader, owner=owner, deadline=deadline, revivable=pusher.revivable(waiting)
            )
            outcome = engine.run()
            if waiting and outcome.complete:
                pusher.run(waiting, last_chance=True)
            outcome.pushed = pusher.applied
            return outcome
        finally:
            events.publish(pusher.events + (engine.events if engine is not None else []))


def _with_connect_retries(action: Callable[[], SyncOutcome]) -> SyncOutcome:
    """Retry transient network failures (not auth, not TLS) with backoff inside one job."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return action()
        except (AuthFailed, TlsFailed):
            raise
        except MailboxError as exc:
            if attempt == CONNECT_ATTEMPTS:
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
