"""Relay ingest function: SES received mail for a relay address (raw message already in the bucket
under ``relay/``); store it for the address's user. Invoked asynchronously by the SES receipt
rule's Lambda action (locally by the SMTP listener, with the same event).

Nothing here raises for a message that cannot be stored: an unknown or rotated address, a virus
verdict or a record that is not SES's is dropped and counted (``Relay_*`` metrics); only storage
failing raises, so Lambda's asynchronous retries run it again (storing is idempotent).
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from mailsync.observability import job_metrics, logger, metrics, tracer
from mailsync.services import relay


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    outcome = relay.Received()
    records = event.get("Records") if isinstance(event, dict) else None
    for record in records if isinstance(records, list) else []:
        notice = relay.parse_notice(record)
        if notice is None:
            outcome.malformed_event += 1
            continue
        relay.receive(notice, outcome)
    counts = vars(outcome)
    for name, value in counts.items():
        if value:
            job_metrics.count(f"Relay_{name}", value)
    job_metrics.publish()
    logger.info("relayed mail", extra=counts)
    return counts
