"""Sync worker function: every account of every SQS record in the batch, synced concurrently.

A record is a job for a group of accounts (the scheduler's fan-out) or for one (a user's
request, a continuation, a retry); ``services.sync_groups`` runs them all on one thread pool,
each account with its own budget and outcome. Mailbox problems (wrong password, server down)
and unexpected exceptions inside a job are handled per account — sync state ``failed``,
``last_error``, backoff, events, a ``SyncFailures_<code>`` metric (``internal_error`` for the
unexpected) — and never fail the record: the account's own backoff decides when it runs again.
Only a record that is not a job fails, so SQS retries it and, after ``maxReceiveCount``
attempts, parks it in the dead-letter queue.

Time: each job learns when the Lambda will be cut off and keeps its hard deadline before it;
accounts without room left for a whole job are put back on the queue (``Sync_deferred``) for the
next invocation, never started only to be killed.
"""

from __future__ import annotations

import time

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from mailsync.observability import job_metrics, logger, metrics, tracer
from mailsync.services import sync_groups
from mailsync.services.sync_jobs import SyncJob

processor = BatchProcessor(event_type=EventType.SQS)


def _lambda_deadline(lambda_context: LambdaContext | None) -> float | None:
    """The ``time.monotonic()`` instant this invocation is cut off, as of now (None outside Lambda)."""
    if lambda_context is None:
        return None
    return time.monotonic() + lambda_context.get_remaining_time_in_millis() / 1000


def record_handler(record: SQSRecord) -> list[SyncJob]:
    """A record's accounts; raising makes it a batch item failure (the body is not a job)."""
    sent = record.attributes.raw_event.get("SentTimestamp")  # ms; when the job was enqueued
    queued_at = int(sent) / 1000 if sent else None
    return [job.model_copy(update={"queued_at": queued_at}) for job in sync_groups.parse_group(record.body)]


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    deadline = _lambda_deadline(context)
    try:
        with processor(records=event["Records"], handler=record_handler):
            parsed = processor.process()
        jobs = [job for status, record_jobs, _ in parsed if status == "success" for job in record_jobs]
        sync_groups.run_jobs(jobs, lambda_deadline=deadline)
        return processor.response()
    finally:
        job_metrics.publish()  # before log_metrics prints: one EMF document per invocation
