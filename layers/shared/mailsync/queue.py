"""The sync queue (SQS): one job per account to sync, sent alone or in batches."""

from __future__ import annotations

from collections.abc import Sequence

from mailsync.aws import client
from mailsync.config import get_settings

MAX_DELAY_SECONDS = 900  # SQS's own limit
BATCH_SIZE = 10  # SendMessageBatch's limit


def send(body: str, delay_seconds: int = 0) -> None:
    client("sqs").send_message(
        QueueUrl=get_settings().sync_queue_url,
        MessageBody=body,
        DelaySeconds=max(0, min(MAX_DELAY_SECONDS, delay_seconds)),
    )


def send_batch(bodies: Sequence[str]) -> list[int]:
    """Send up to ``BATCH_SIZE`` bodies in one request; returns the positions that failed."""
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
    response = client("sqs").send_message_batch(QueueUrl=get_settings().sync_queue_url, Entries=entries)
    return sorted(int(f["Id"]) for f in response.get("Failed", []))
