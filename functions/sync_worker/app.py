"""Sync worker function: one SQS record is one account to sync; failures are reported per record.

Mailbox problems (wrong password, server down) and unexpected exceptions inside a job are handled
by the job itself — sync state ``failed``, ``last_error``, backoff, events, a ``SyncFailures_<code>``
metric (``internal_error`` for the unexpected) — and do not fail the record: the account's own
backoff decides when it runs again. Only a record that is not a job (or storage failing while the
job records its outcome) fails, so SQS retries it and, after ``maxReceiveCount`` attempts, parks it
in the dead-letter queue.

Time: records run one after another in one invocation. Each job learns when the Lambda will be
cut off and keeps its hard deadline before it; a record without room left for a whole job is put
back on the queue (``Sync_deferred``) for the next invocation, never started only to be killed.
"""

from __future__ import annotations

import time

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from mailsync.observability import job_metrics, logger, metrics, tracer
from mailsync.services import sync_jobs

processor = BatchProcessor(event_type=EventType.SQS)
_records_seen = 0  # in this invocation; its first record always starts (see sync_jobs.run_job)


def _lambda_deadline(lambda_context: LambdaContext | None) -> float | None:
    """The ``time.monotonic()`` instant this invocation is cut off, as of now (None outside Lambda)."""
    if lambda_context is None:
        return None
    return time.monotonic() + lambda_context.get_remaining_time_in_millis() / 1000


@tracer.capture_method
def record_handler(record: SQSRecord, lambda_context: LambdaContext | None = None) -> None:
    """One job; the BatchProcessor passes ``lambda_context`` because this signature names it."""
    global _records_seen
    _records_seen += 1
    job = sync_jobs.parse_job(record.body)
    logger.append_keys(tenant_id=job.tenant_id, user_id=job.user_id)
    sent = record.attributes.raw_event.get("SentTimestamp")  # ms; when the job was enqueued
    result = sync_jobs.run_job(
        job,
        lambda_deadline=_lambda_deadline(lambda_context),
        may_defer=_records_seen > 1,
        queued_at=int(sent) / 1000 if sent else None,
    )
    record_metrics(result)
    # Most jobs find nothing to do (every account, every minute): those are DEBUG, not log volume.
    log = logger.debug if result.no_op else logger.info
    log("sync job done", extra={"result": result.status, "error": result.error, "duration_ms": result.duration_ms})


def record_metrics(result: sync_jobs.JobResult) -> None:
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


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    global _records_seen
    _records_seen = 0
    try:
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    finally:
        job_metrics.publish()  # before log_metrics prints: one EMF document per invocation
