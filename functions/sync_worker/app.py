"""Sync worker function: one SQS record is one account to sync; failures are reported per record.

Mailbox problems (wrong password, server down) are handled by the job itself — status, backoff,
events — and do not fail the record. Anything unexpected does, so SQS retries it and, after
``maxReceiveCount`` attempts, parks it in the dead-letter queue.
"""

from __future__ import annotations

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from mailsync.observability import logger, metrics, tracer
from mailsync.services import sync_jobs

processor = BatchProcessor(event_type=EventType.SQS)
# Stop starting new batches when less than this is left; the job re-enqueues itself.
SAFETY_MARGIN_MS = 60_000
_context: LambdaContext | None = None


def _deadline() -> bool:
    return _context is not None and _context.get_remaining_time_in_millis() < SAFETY_MARGIN_MS


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    job = sync_jobs.parse_job(record.body)
    logger.append_keys(tenant_id=job.tenant_id, user_id=job.user_id)
    result = sync_jobs.run_job(job, _deadline)
    metrics.add_metric(name=f"Sync_{result.status}", unit=MetricUnit.Count, value=1)
    if result.outcome is not None:
        metrics.add_metric(name="MessagesCreated", unit=MetricUnit.Count, value=result.outcome.created)
        metrics.add_metric(name="ImapCommands", unit=MetricUnit.Count, value=result.outcome.imap_commands)
    logger.info("sync job done", extra={"result": result.status, "error": result.error})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    global _context
    _context = context
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
