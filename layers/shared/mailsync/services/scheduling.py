"""Which accounts are due for a sync, and the fan-out to the sync queue.

Design (see README "Scheduling"): every account that should sync carries ``due_shard``
(hash of tenant/user modulo ``due_shards``) and ``next_sync_at`` (epoch seconds; 0 = now).
The sparse GSI ``due-index`` (due_shard, next_sync_at) holds only those accounts, so each tick
costs one Query per shard over the due accounts' keys, never a scan of the table. Accounts
with fetch disabled or in ``auth_failed`` have no ``due_shard`` and cost nothing. A failing
account backs off by moving its ``next_sync_at`` into the future.

Of the accounts the index returns, the tick polls those that ``sync.planner.polling`` picks:
all during their tenant's office hours (read once per tenant per tick), recently active ones
(``last_activity_at``, projected into the index) at any hour, the others on their slot of the
quiet interval. Nothing is written per poll: activity is recorded only with a change.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mailsync import dal, queue
from mailsync.config import get_settings
from mailsync.domain import Account, DueAccount, OfficeHours
from mailsync.observability import logger
from mailsync.sync.planner import polling
from mailsync.sync.planner.polling import Poll

if TYPE_CHECKING:
    from mailsync.sync.engine import SyncOutcome

NOT_DUE_STATUSES = frozenset({"auth_failed", "reauth_required", "disabled"})
MAX_BACKOFF_SECONDS = 3600
SYNCED_PROTOCOLS = frozenset({"imap", "pop3"})
# SQS's limit on the bodies of one SendMessageBatch (and on one message).
BATCH_PAYLOAD_BYTES = 256 * 1024


def shard_for(tenant_id: str, user_id: str, shards: int) -> int:
    digest = hashlib.sha256(f"{tenant_id}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % shards


def due_fields(
    tenant_id: str, user_id: str, fetch_enabled: bool, status: str, protocol: str = "imap", *, active: bool = False
) -> dict[str, Any]:
    """Index attributes for an account: due now, or absent from the due index. ``active``: a
    user just changed it, so it is polled at the next ticks at any hour (``last_activity_at``).

    Only accounts of a protocol that syncs (IMAP, POP3) are due: any other in the index would get
    a job every tick that does nothing."""
    fields: dict[str, Any] = {"last_activity_at": int(time.time())} if active else {}
    if not fetch_enabled or status in NOT_DUE_STATUSES or protocol not in SYNCED_PROTOCOLS:
        return fields | {"due_shard": None, "next_sync_at": None}
    return fields | {"due_shard": shard_for(tenant_id, user_id, get_settings().due_shards), "next_sync_at": 0}


def backoff_seconds(failures: int, base: int = 60) -> int:
    """Exponential backoff with jitter, capped: 1, 2, 4 ... 60 minutes."""
    delay = min(MAX_BACKOFF_SECONDS, base * (2 ** max(0, failures - 1)))
    return int(delay * random.uniform(0.8, 1.2))


def job_body(tenant_id: str, user_id: str, reason: str, bounces: int = 0) -> str:
    """A job for one account (user requests, continuations, retries): a group of one.
    ``bounces``: how often it went back on the queue for lack of room (``planner.jobs.requeue_busy``)."""
    body: dict[str, object] = {"tenant_id": tenant_id, "user_id": user_id, "reason": reason}
    if bounces:
        body["bounces"] = bounces
    return json.dumps(body)


def group_body(accounts: Sequence[tuple[str, str]], reason: str, bounces: int = 0) -> str:
    """A job for several accounts, synced concurrently by one worker (``services.sync_groups``)."""
    body: dict[str, object] = {"accounts": [list(a) for a in accounts], "reason": reason}
    if bounces:
        body["bounces"] = bounces
    return json.dumps(body)


def enqueue(tenant_id: str, user_id: str, reason: str, delay_seconds: int = 0, bounces: int = 0) -> None:
    queue.send(job_body(tenant_id, user_id, reason, bounces), delay_seconds)


def enqueue_accounts(
    accounts: Sequence[tuple[str, str]], reason: str, delay_seconds: int = 0, bounces: int = 0
) -> None:
    """Jobs for ``accounts`` with one reason: one job alone, more in groups of ``sync_group_size``."""
    if len(accounts) == 1:
        enqueue(*accounts[0], reason, delay_seconds, bounces)
        return
    for group in split_groups(accounts, get_settings().sync_group_size):
        queue.send(group_body(group, reason, bounces), delay_seconds)


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


def record_activity(account: Account, outcome: SyncOutcome) -> None:
    """After a sync: one that created, moved, flagged or pushed something keeps the account on
    every tick for a while (``planner.polling.ACTIVE_WINDOW_SECONDS``). Detachments do not
    count: messages aging out of the window are the passage of time, not activity. A no-op
    writes nothing, nor does a change while the activity on record is recent or while the
    tenant's office hours last the whole active window (``planner.polling.record_activity``;
    the office hours as the process read them at most a minute ago). Best effort: a failed write only leaves the account
    on its quiet slots, and must not turn the sync that just succeeded into a failure."""
    now = int(time.time())
    changed = outcome.created or outcome.relinked or outcome.flag_updates or outcome.pushed
    if not changed:
        return
    hours: OfficeHours | None
    try:
        hours = office_hours(account.tenant_id, max_age=dal.TENANT_SETTINGS_MAX_AGE_SECONDS)
    except Exception:  # noqa: BLE001 - unknown hours: the activity is written as if outside them
        logger.exception("office hours not read", extra={"user_id": account.user_id})
        hours = None
    if polling.record_activity(account.last_activity_at, now, hours):
        try:
            dal.record_activity(account.tenant_id, account.user_id, now)
        except Exception:  # noqa: BLE001 - see above
            logger.exception("activity not recorded", extra={"user_id": account.user_id})


def office_hours(tenant_id: str, *, max_age: float = 0.0) -> OfficeHours:
    """The tenant's office hours as saved, else the defaults (``max_age``: see ``dal.get_office_hours``)."""
    return dal.get_office_hours(tenant_id, max_age=max_age) or OfficeHours()


class _Tick:
    """One scheduler tick: which due accounts it polls (``planner.polling``), with each tenant's
    office hours read once though the shards run in parallel threads, and why it polled them."""

    def __init__(self, now: int, tick_seconds: int) -> None:
        self.now = now
        self.tick_seconds = tick_seconds
        self.why: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._hours: dict[str, Future[bool]] = {}

    def polls(self, account: DueAccount) -> bool:
        decision = polling.decide(
            account,
            now=self.now,
            tick_seconds=self.tick_seconds,
            office_hours_now=self._in_office_hours(account.tenant_id),
        )
        with self._lock:
            self.why[decision] += 1
        return decision is not Poll.WAIT

    def _in_office_hours(self, tenant_id: str) -> bool:
        with self._lock:
            answer = self._hours.get(tenant_id)
            first = answer is None
            if answer is None:
                answer = self._hours[tenant_id] = Future()
        if first:
            answer.set_result(self._read(tenant_id))
        return answer.result(timeout=120)

    def _read(self, tenant_id: str) -> bool:
        try:
            return polling.in_office_hours(office_hours(tenant_id), self.now)
        except Exception:  # noqa: BLE001 - one tenant's unreadable settings must not stop the tick
            logger.exception("office hours unreadable: polling as in office hours", extra={"tenant_id": tenant_id})
            return True


def _shard(shard: int, tick: _Tick) -> int:
    accounts = [(a.tenant_id, a.user_id) for a in dal.due_accounts(shard, tick.now) if tick.polls(a)]
    # New groups every tick: an account that crashes its worker (out of memory, say) fails the
    # whole group's message, and in a fixed order the same neighbours would never sync.
    random.shuffle(accounts)
    return _send_batches(accounts, "schedule") if accounts else 0


def enqueue_due_accounts(now: int | None = None) -> int:
    """Send every due account a sync job, in groups of ``sync_group_size`` accounts of one shard
    (one SQS message each, ten to a SendMessageBatch); returns how many accounts were sent."""
    settings = get_settings()
    tick = _Tick(int(time.time()) if now is None else now, polling.tick_seconds(settings.schedule_rate))
    with ThreadPoolExecutor(max_workers=min(8, settings.due_shards)) as pool:
        sent = sum(pool.map(lambda s: _shard(s, tick), range(settings.due_shards)))
    logger.info(
        "sync jobs enqueued", extra={"enqueued": sent, "decisions": {str(k): n for k, n in sorted(tick.why.items())}}
    )
    return sent


def worker_id() -> str:
    return uuid.uuid4().hex
