"""Which accounts are due for a sync, and the fan-out to the sync queue.

Design (see README "Scheduling"): every account that should sync carries ``due_shard``
(hash of tenant/user modulo ``due_shards``) and ``next_sync_at`` (epoch seconds; 0 = now).
The sparse GSI ``due-index`` (due_shard, next_sync_at) holds only those accounts, so each tick
costs one Query per shard over the due accounts' keys, never a scan of the table. Accounts
with fetch disabled or in ``auth_failed`` have no ``due_shard`` and cost nothing. A failing
account backs off by moving its ``next_sync_at`` into the future.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mailsync import dal, queue
from mailsync.config import get_settings
from mailsync.observability import logger

NOT_DUE_STATUSES = frozenset({"auth_failed", "reauth_required", "disabled"})
MAX_BACKOFF_SECONDS = 3600
SYNCED_PROTOCOLS = frozenset({"imap"})


def shard_for(tenant_id: str, user_id: str, shards: int) -> int:
    digest = hashlib.sha256(f"{tenant_id}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % shards


def due_fields(
    tenant_id: str, user_id: str, fetch_enabled: bool, status: str, protocol: str = "imap"
) -> dict[str, Any]:
    """Index attributes for an account: due now, or absent from the due index.

    Only IMAP accounts sync (POP3 ones can be saved and tested): a POP3 account in the index
    would get a job every tick that does nothing."""
    if not fetch_enabled or status in NOT_DUE_STATUSES or protocol not in SYNCED_PROTOCOLS:
        return {"due_shard": None, "next_sync_at": None}
    return {"due_shard": shard_for(tenant_id, user_id, get_settings().due_shards), "next_sync_at": 0}


def backoff_seconds(failures: int, base: int = 60) -> int:
    """Exponential backoff with jitter, capped: 1, 2, 4 ... 60 minutes."""
    delay = min(MAX_BACKOFF_SECONDS, base * (2 ** max(0, failures - 1)))
    return int(delay * random.uniform(0.8, 1.2))


def job_body(tenant_id: str, user_id: str, reason: str) -> str:
    return json.dumps({"tenant_id": tenant_id, "user_id": user_id, "reason": reason})


def enqueue(tenant_id: str, user_id: str, reason: str, delay_seconds: int = 0) -> None:
    queue.send(job_body(tenant_id, user_id, reason), delay_seconds)


def _send_batches(accounts: list[tuple[str, str]], reason: str) -> int:
    sent = 0
    for start in range(0, len(accounts), queue.BATCH_SIZE):
        bodies = [job_body(tenant, user, reason) for tenant, user in accounts[start : start + queue.BATCH_SIZE]]
        failed = queue.send_batch(bodies)
        if failed:
            # Partial failures are retried once entry by entry; what still fails waits for the next tick.
            failed = [failed[i] for i in queue.send_batch([bodies[i] for i in failed])]
            logger.warning("sync jobs not enqueued", extra={"failed": len(failed)})
        sent += len(bodies) - len(failed)
    return sent


def _shard(shard: int, now: int) -> int:
    accounts = list(dal.due_accounts(shard, now))
    return _send_batches(accounts, "schedule") if accounts else 0


def enqueue_due_accounts(now: int | None = None) -> int:
    """Send one sync job per due account (SendMessageBatch); returns how many were sent."""
    settings = get_settings()
    now = int(time.time()) if now is None else now
    with ThreadPoolExecutor(max_workers=min(8, settings.due_shards)) as pool:
        sent = sum(pool.map(lambda s: _shard(s, now), range(settings.due_shards)))
    logger.info("sync jobs enqueued", extra={"enqueued": sent})
    return sent


def worker_id() -> str:
    return uuid.uuid4().hex
