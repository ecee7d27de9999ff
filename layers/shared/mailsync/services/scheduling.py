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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mailsync import dal, queue
from mailsync.config import get_settings
from mailsync.observability import logger

NOT_DUE_STATUSES = frozenset({"auth_failed", "disabled"})
MAX_BACKOFF_SECONDS = 3600
SYNCED_PROTOCOLS = frozenset({"imap"})
# SQS's limit on the bodies of one SendMessageBatch (and on one message).
BATCH_PAYLOAD_BYTES = 256 * 1024


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
    """A job for one account (user requests, continuations, retries): a group of one."""
    return json.dumps({"tenant_id": tenant_id, "user_id": user_id, "reason": reason})


def group_body(accounts: Sequence[tuple[str, str]], reason: str) -> str:
    """A job for several accounts, synced concurrently by one worker (``services.sync_groups``)."""
    return json.dumps({"accounts": [list(a) for a in accounts], "reason": reason})


def enqueue(tenant_id: str, user_id: str, reason: str, delay_seconds: int = 0) -> None:
    queue.send(job_body(tenant_id, user_id, reason), delay_seconds)


def enqueue_accounts(accounts: Sequence[tuple[str, str]], reason: str, delay_seconds: int = 0) -> None:
    """Jobs for ``accounts`` with one reason: one job alone, more in groups of ``sync_group_size``."""
    if len(accounts) == 1:
        enqueue(*accounts[0], reason, delay_seconds)
        return
    for group in split_groups(accounts, get_settings().sync_group_size):
        queue.send(group_body(group, reason), delay_seconds)


def split_groups(accounts: Sequence[tuple[str, str]], size: int) -> list[Sequence[tuple[str, str]]]:
    """As few groups of at most ``size`` as possible, of near-equal size: 250 accounts by 100 make
    84 + 83 + 83, not 100 + 100 + 50, so the workers that get them finish at about the same time."""
    if not accounts:
        return []
    count = -(-len(accounts) // size)
    base, extra = divmod(len(accounts), count)
    groups = []
    start = 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        groups.append(accounts[start:end])
        start = end
    return groups


def _batches(bodies: list[str]) -> list[list[int]]:
    """Positions of ``bodies`` per SendMessageBatch: at most ten, and within SQS's payload limit."""
    batches: list[list[int]] = []
    size = 0
    for i, body in enumerate(bodies):
        length = len(body.encode())
        if not batches or len(batches[-1]) == queue.BATCH_SIZE or size + length > BATCH_PAYLOAD_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(i)
        size += length
    return batches


def _send_batches(accounts: list[tuple[str, str]], reason: str) -> int:
    """One message per group; returns how many accounts were sent."""
    groups = split_groups(accounts, get_settings().sync_group_size)
    bodies = [group_body(group, reason) for group in groups]
    sent = 0
    for positions in _batches(bodies):
        failed = [positions[i] for i in queue.send_batch([bodies[p] for p in positions])]
        if failed:
            # Partial failures are retried once entry by entry; what still fails waits for the next tick.
            failed = [failed[i] for i in queue.send_batch([bodies[p] for p in failed])]
            logger.warning("sync jobs not enqueued", extra={"failed": sum(len(groups[p]) for p in failed)})
        sent += sum(len(groups[p]) for p in positions if p not in failed)
    return sent


def _shard(shard: int, now: int) -> int:
    accounts = list(dal.due_accounts(shard, now))
    return _send_batches(accounts, "schedule") if accounts else 0


def enqueue_due_accounts(now: int | None = None) -> int:
    """Send every due account a sync job, in groups of ``sync_group_size`` accounts of one shard
    (one SQS message each, ten to a SendMessageBatch); returns how many accounts were sent."""
    settings = get_settings()
    now = int(time.time()) if now is None else now
    with ThreadPoolExecutor(max_workers=min(8, settings.due_shards)) as pool:
        sent = sum(pool.map(lambda s: _shard(s, now), range(settings.due_shards)))
    logger.info("sync jobs enqueued", extra={"enqueued": sent})
    return sent


def worker_id() -> str:
    return uuid.uuid4().hex
