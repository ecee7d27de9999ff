"""Syncing many accounts in one worker invocation, concurrently.

A sync job (one SQS message) carries a group of accounts: the scheduler sends the due accounts of
a shard in groups of ``sync_group_size``; a body with ``tenant_id``/``user_id`` (a user's request,
a continuation, a retry) is a group of one. The worker hands every account of its batch to
``run_jobs``, which syncs them on ``worker_threads`` threads, each through ``sync_jobs.run_job``
with its own time budget, lease, outcome and log keys:

- a slow or hostile account holds one thread for at most its own budget, never the others;
- an exception in one account's job is that account's ``failed`` (``internal_error``) result;
- an account that a thread reaches when the Lambda no longer has time for a whole job is not
  started but re-enqueued (``deferred``), and with it every account not started yet (time only
  runs out), in groups; nothing was written for them, so none is left ``syncing``. The
  invocation's first account always runs (see ``planner.jobs.defer_job``).

Metrics are added up by the calling thread once the pool is done (``observability.job_metrics``;
the handler publishes them once per invocation); each account's log lines carry its
``tenant_id``/``user_id`` through the Logger's thread-local keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mailsync import dal
from mailsync.config import get_settings
from mailsync.domain import Account, SyncState
from mailsync.observability import job_metrics, logger
from mailsync.services import scheduling, sync_jobs
from mailsync.services.sync_jobs import JobResult, SyncJob
from mailsync.sync.planner import jobs as policy

# Scheduled jobs' accounts read per request, as the pool threads reach them: one BatchGetItem
# (two keys each, 100 at most) instead of one per account, and read at most a few seconds
# before their job runs.
PREFETCH_ACCOUNTS = 50
# A prefetched read older than this is not used (the job reads its own): with threads busy on
# slow mail servers, the 50th job of a read may start long after it.
PREFETCH_MAX_AGE_SECONDS = 2.0

# The largest group a job may carry (the scheduler's ``sync_group_size`` is at most this).
MAX_GROUP_ACCOUNTS = 500


class SyncGroup(BaseModel):
    """A job's body: ``{"accounts": [[tenant, user], ...], "reason": ...}``, or one account's
    ``{"tenant_id", "user_id", "reason"}`` (every body sent before groups existed)."""

    model_config = ConfigDict(extra="ignore")

    accounts: list[tuple[str, str]] = Field(min_length=1, max_length=MAX_GROUP_ACCOUNTS)
    reason: str = "schedule"
    bounces: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _one_account(cls, data: Any) -> Any:
        if isinstance(data, dict) and "accounts" not in data:
            one = (data.get("tenant_id"), data.get("user_id"))
            rest = {key: data[key] for key in ("reason", "bounces") if key in data}
            return {"accounts": [one], **rest}
        return data

    def jobs(self) -> list[SyncJob]:
        return [SyncJob(tenant_id=t, user_id=u, reason=self.reason, bounces=self.bounces) for t, u in self.accounts]


def parse_group(body: str) -> list[SyncJob]:
    """The accounts of one job; raises ``pydantic.ValidationError`` for a body that is not a job."""
    return SyncGroup.model_validate_json(body).jobs()


def run_jobs(
    jobs: Sequence[SyncJob], *, lambda_deadline: float | None = None, threads: int | None = None
) -> list[JobResult]:
    """Sync ``jobs`` concurrently; one result per job, in order. Never raises for one account.

    ``lambda_deadline`` is the ``time.monotonic()`` instant the invocation is cut off (None
    outside Lambda); ``threads`` defaults to the ``worker_threads`` setting.
    """
    if not jobs:
        return []
    threads = max(1, min(threads or get_settings().worker_threads, len(jobs)))
    # Clients created here, once, rather than by several threads at the same moment.
    dal.open_connections()
    # Pool threads log with the invocation's keys as they are now (a runtime may keep those per
    # thread, as the local stack does) plus their account's.
    invocation_keys = dict(logger.get_current_keys())
    work = _Work(jobs, lambda_deadline, get_settings().job_budget_seconds)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sync") as pool:
        drains = [pool.submit(_drain, work, lambda_deadline, invocation_keys) for _ in range(threads)]
    for drain in drains:
        drain.result()  # only re-enqueueing deferred jobs can raise: SQS then retries the batch
    results = work.results()
    for result in results:
        record_metrics(result)
    return results


class _Work:
    """The jobs of an invocation, handed to the pool threads one at a time, and their results.

    Once the Lambda has no time left for a whole job, the next ``take`` hands back every job not
    started yet, at once, to be deferred together: time only runs out."""

    def __init__(self, jobs: Sequence[SyncJob], lambda_deadline: float | None, budget_seconds: float) -> None:
        self.jobs = list(jobs)
        self._results: list[JobResult | None] = [None] * len(self.jobs)
        self._deadline = lambda_deadline
        self._budget = budget_seconds
        self._next = 0
        self._lock = threading.Lock()
        self._reads: dict[int, tuple[float, tuple[Account | None, SyncState | None]]] = {}
        self._read_lock = threading.Lock()
        self._read_failed = False

    def take(self) -> tuple[int | None, list[int]]:
        """The next job to run, or None and the jobs to defer (empty when all are handed out)."""
        with self._lock:
            index = self._next
            if index >= len(self.jobs):
                return None, []
            left = None if self._deadline is None else self._deadline - time.monotonic()
            # The invocation's first job always runs (see planner.jobs.defer_job).
            if policy.defer_job(may_defer=index > 0, lambda_left=left, budget_seconds=self._budget):
                self._next = len(self.jobs)
                return None, list(range(index, len(self.jobs)))
            self._next += 1
            return index, []

    def read_for(self, index: int) -> tuple[Account | None, SyncState | None] | None:
        """A scheduled job's account and sync state, read with the next ``PREFETCH_ACCOUNTS``
        scheduled jobs' in one request (eventually consistent, as ``run_job`` reads a scheduled
        job alone); None: the job reads its own (not scheduled, or a batch read of this
        invocation failed)."""
        if self.jobs[index].reason != "schedule" or self._read_failed:
            return None
        with self._read_lock:
            if index not in self._reads:
                later = range(index, len(self.jobs))
                chunk = [i for i in later if self.jobs[i].reason == "schedule" and i not in self._reads]
                chunk = chunk[:PREFETCH_ACCOUNTS]
                try:
                    read = dal.get_accounts_and_sync_states(
                        [(self.jobs[i].tenant_id, self.jobs[i].user_id) for i in chunk], consistent=False
                    )
                except Exception:  # noqa: BLE001 - each job then reads its own, and meets its own failure
                    logger.exception("reading a group's accounts failed")
                    self._read_failed = True  # once: the invocation's other jobs read their own
                    return None
                read_at = time.monotonic()
                for i in chunk:
                    self._reads[i] = (read_at, read[(self.jobs[i].tenant_id, self.jobs[i].user_id)])
            read_at, read_then = self._reads.pop(index)
        return read_then if time.monotonic() - read_at <= PREFETCH_MAX_AGE_SECONDS else None

    def done(self, index: int, result: JobResult) -> None:
        self._results[index] = result

    def results(self) -> list[JobResult]:
        return [result or JobResult("deferred") for result in self._results]


def _drain(work: _Work, lambda_deadline: float | None, log_keys: dict[str, Any]) -> None:
    """A pool thread: run jobs until none is left, or defer the rest when time is up."""
    logger.thread_safe_clear_keys()  # a pool thread may have served another invocation
    logger.thread_safe_append_keys(**log_keys)
    try:
        while True:
            index, deferred = work.take()
            if deferred:
                for i in deferred:
                    work.done(i, JobResult("deferred"))
                _defer([work.jobs[i] for i in deferred])
            if index is None:
                return
            work.done(index, _run_one(work, index, lambda_deadline))
    finally:
        logger.thread_safe_clear_keys()


def _run_one(work: _Work, index: int, lambda_deadline: float | None) -> JobResult:
    """One account, on a pool thread; whatever happens stays this account's result."""
    job = work.jobs[index]
    logger.thread_safe_append_keys(tenant_id=job.tenant_id, user_id=job.user_id)
    try:
        # Deferring was decided by _Work.take, so that deferred accounts go back in groups.
        result = sync_jobs.run_job(
            job,
            lambda_deadline=lambda_deadline,
            may_defer=False,
            queued_at=job.queued_at,
            read=work.read_for(index),
        )
    except Exception:  # noqa: BLE001 - one account's failure must not reach the others
        # run_job keeps its own failures; this is what escaped it (storage down while it
        # recorded its outcome): the lease expires, the account stays due and is retried.
        logger.exception("sync job raised")
        result = JobResult("failed", error="internal_error")
    try:
        # Most jobs find nothing to do (every account, every minute): those are DEBUG, not log volume.
        log = logger.debug if result.no_op else logger.info
        outcome = result.outcome
        log(
            "sync job done",
            extra={
                "result": result.status,
                "error": result.error,
                "duration_ms": result.duration_ms,
                "messages_created": outcome.created if outcome is not None else 0,
            },
        )
    finally:
        # The thread's next account sets its own.
        logger.thread_safe_remove_keys(["tenant_id", "user_id"])
    return result


def _defer(jobs: Sequence[SyncJob]) -> None:
    """Back on the queue for a fresh invocation, in groups by reason (and by how often they
    bounced: deferring is no bounce, but must not reset the count either)."""
    by_kind: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for job in jobs:
        by_kind.setdefault((job.reason, job.bounces), []).append((job.tenant_id, job.user_id))
    for (reason, bounces), accounts in by_kind.items():
        scheduling.enqueue_accounts(accounts, reason, delay_seconds=sync_jobs.DEFERRED_DELAY_SECONDS, bounces=bounces)
    logger.info("sync jobs deferred", extra={"deferred": len(jobs)})


def record_metrics(result: JobResult) -> None:
    """One metric per outcome, summed over the invocation (published once, at its end); the alarms in
    template.yaml watch SyncFailures_auth_failed and SyncLagSeconds (how long a job waited on the
    queue: a no-op writes no ``last_success_at`` to measure from)."""
    job_metrics.count(f"Sync_{result.status}")
    if result.error:
        job_metrics.count(f"SyncFailures_{result.error}")
    if result.status in ("synced", "incomplete", "failed"):
        job_metrics.sample("SyncDuration", MetricUnit.Milliseconds, result.duration_ms)
    if result.lag_seconds is not None:
        job_metrics.sample("SyncLagSeconds", MetricUnit.Seconds, result.lag_seconds)
    outcome = result.outcome
    if outcome is not None:
        for name, value in (
            ("MessagesCreated", outcome.created),
            ("MessagesMoved", outcome.relinked),
            ("MessagesDetached", outcome.detached),
            ("FlagUpdates", outcome.flag_updates),
            ("CrmChangesPushed", outcome.pushed),
            ("ImapCommands", outcome.imap_commands),
        ):
            job_metrics.count(name, value)
