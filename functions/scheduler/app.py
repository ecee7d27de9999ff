"""Scheduler function: on each EventBridge tick, enqueue the due accounts in sync jobs of up to 100 accounts."""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from mailsync.observability import logger, metrics, tracer
from mailsync.services import scheduling


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    enqueued = scheduling.enqueue_due_accounts()
    return {"enqueued": enqueued}
