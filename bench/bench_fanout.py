"""The scheduler's fan-out: AWS calls and time for one tick to enqueue N due accounts.

N due accounts (default 10,000; ``--small``: 1,000) are written straight into the accounts table
under ``moto.mock_aws`` (provisioned from template.yaml), with ``due_shard`` / ``next_sync_at``
as ``scheduling.due_fields`` computes them, spread over 50 tenants. Beside them, accounts that
are not due: 1% ``auth_failed`` (absent from the sparse due index) and 2% backing off
(``next_sync_at`` an hour ahead). Then ``enqueue_due_accounts()`` is timed ``--rounds`` times,
and its Query and SendMessageBatch calls are counted. moto's SQS keeps the jobs in a list and its
SendMessageBatch slows down as the queue fills (a 10,000-job tick did not finish in 10 minutes),
so moto's queue is made to discard what it receives (``Queue.add_message`` is a no-op here): the
calls still go through botocore and moto's request handling and are counted as usual.

Times are in-process moto's, not AWS's (moto's SQS alone takes tens of ms per SendMessageBatch):
what transfers to AWS is the call counts. The read capacity is
estimated from the keys-only index items (eventually consistent Query: 0.5 RRU per 4 KB).

The timed rounds tick on a Wednesday at 10:00 in Amsterdam: every tenant (default office hours)
is in office hours, so every due account is enqueued. Adaptive polling (README "Scheduling") is
then measured by the fraction of the due accounts that ticks enqueue: one tick in office hours,
``--quiet-ticks`` (15) consecutive one-minute ticks at night (03:00) and as many on a Saturday,
with how often each account was polled over them and the office-hours reads (GetItem) per tick.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import Counter
from datetime import datetime
from zoneinfo import ZoneInfo

import benchlib
from benchlib import print_table, write_results

TENANTS = 50
_AMSTERDAM = ZoneInfo("Europe/Amsterdam")
OFFICE_HOURS_TICK = int(datetime(2026, 12, 2, 10, 0, tzinfo=_AMSTERDAM).timestamp())  # a Wednesday
NIGHT_TICK = int(datetime(2026, 12, 3, 3, 0, tzinfo=_AMSTERDAM).timestamp())
WEEKEND_TICK = int(datetime(2026, 12, 5, 10, 0, tzinfo=_AMSTERDAM).timestamp())  # a Saturday


def populate(due: int) -> dict[str, int]:
    from mailsync import dal
    from mailsync.domain import Account
    from mailsync.services import scheduling

    not_due_failed = due // 100
    backing_off = due // 50
    later = max(OFFICE_HOURS_TICK, NIGHT_TICK, WEEKEND_TICK) + 24 * 3600  # backing off past every tick
    per_shard: Counter[int] = Counter()
    accounts = []
    for i in range(due + not_due_failed + backing_off):
        tenant, user = f"tenant-{i % TENANTS:03d}", f"user-{i:06d}"
        status = "auth_failed" if i >= due + backing_off else "ok"
        fields = scheduling.due_fields(tenant, user, True, status)
        if due <= i < due + backing_off:
            fields["next_sync_at"] = later
        if i < due:
            per_shard[fields["due_shard"]] += 1
        accounts.append(
            Account(
                tenant_id=tenant,
                user_id=user,
                host="imap.example.com",
                port=993,
                username=f"{user}@example.com",
                security="ssl",
                status=status,
                folder_map={"inbox": "INBOX"},
                **fields,
            )
        )
    dal.put_accounts(accounts)
    return {
        "due": due,
        "auth_failed": not_due_failed,
        "backing_off": backing_off,
        "shards": len(per_shard),
        "largest_shard": max(per_shard.values()),
        "smallest_shard": min(per_shard.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="1,000 due accounts")
    parser.add_argument("--accounts", type=int)
    parser.add_argument("--rounds", type=int, help="default 2 (--small: 1)")
    parser.add_argument("--quiet-ticks", type=int, default=15, help="consecutive ticks at night and at the weekend")
    args = parser.parse_args()
    due = args.accounts or (1000 if args.small else 10_000)
    rounds = args.rounds or (1 if args.small else 2)

    for key, value in benchlib.aws_env().items():
        os.environ[key] = value
    from moto import mock_aws

    from devstack.provision import provision_mock

    with mock_aws():
        os.environ.update(provision_mock())
        os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
        benchlib.reset_caches()
        from mailsync.config import get_settings
        from mailsync.services import scheduling

        started = time.perf_counter()
        population = populate(due)
        print(
            f"wrote {sum(population[k] for k in ('due', 'auth_failed', 'backing_off')):,} accounts "
            f"in {time.perf_counter() - started:.1f} s: {population}",
            flush=True,
        )
        runs = []
        from moto.sqs.models import Queue

        Queue.add_message = lambda self, message: None  # the jobs are counted, not kept
        for r in range(rounds):
            with benchlib.count_aws_calls() as calls:
                t0 = time.perf_counter()
                sent = scheduling.enqueue_due_accounts(OFFICE_HOURS_TICK)
                seconds = time.perf_counter() - t0
            runs.append({"round": r + 1, "seconds": seconds, "enqueued": sent, "calls": dict(sorted(calls.items()))})
            print(f"  round {r + 1}: {sent:,} jobs in {seconds:.2f} s", flush=True)
        polling = measure_polling(due, args.quiet_ticks)
        settings = get_settings()

    calls = runs[-1]["calls"]
    queries = calls.get("dynamodb:Query", 0)
    batches = calls.get("sqs:SendMessageBatch", 0)
    item_bytes = 60  # keys-only index item: tenant_id, user_id, due_shard, next_sync_at
    per_shard_items = due / settings.due_shards
    rru = (
        settings.due_shards * math.ceil(per_shard_items * item_bytes / 4096) * 0.5
        + calls.get("dynamodb:GetItem", 0) * 0.5
    )
    median = statistics.median(r["seconds"] for r in runs)
    print(f"\nScheduler tick for {due:,} due accounts over {settings.due_shards} shards (in-process moto):")
    print_table(
        ["due accounts", "enqueued", "Query", "SendMessageBatch", "other calls", "median s", "jobs/s", "est. RRU"],
        [
            [
                due,
                runs[-1]["enqueued"],
                queries,
                batches,
                sum(calls.values()) - queries - batches,
                median,
                due / median,
                rru,
            ]
        ],
    )
    print("\nAdaptive polling: fraction of the due accounts enqueued per tick")
    print_table(
        ["ticks", "count", "mean", "min", "max", "polls per account", "GetItem per tick"],
        [
            [
                name,
                m["ticks"],
                m["fraction_enqueued_mean"],
                m["fraction_enqueued_min"],
                m["fraction_enqueued_max"],
                " / ".join(f"{v:,} polled {k}x" for k, v in m["polls_per_account"].items()),
                m["office_hours_reads_per_tick"],
            ]
            for name, m in polling["ticks"].items()
        ],
    )
    print(
        f"model: {polling['model']['polls_per_account_per_week']:,} polls per account a week "
        f"({polling['model']['fraction_of_every_minute']:.0%} of polling every minute)"
    )
    write_results(
        "bench_fanout",
        {
            "due_accounts": due,
            "population": population,
            "due_shards": settings.due_shards,
            "rounds": rounds,
            "small": args.small,
            "aws": "moto.mock_aws in-process",
            "rru_estimate": "keys-only items of ~60 bytes, eventually consistent Query, 0.5 RRU per 4 KB per shard; "
            "plus one office-hours GetItem (0.5 RRU) per tenant with due accounts",
        },
        {
            "polling": polling,
            "median_seconds": median,
            "queries": queries,
            "send_message_batch": batches,
            "estimated_rru_per_tick": rru,
            "runs": runs,
        },
    )


def measure_polling(due: int, quiet_ticks: int) -> dict[str, object]:
    """Ticks in and out of office hours: what fraction of the due accounts each one enqueues."""
    from mailsync.services import scheduling
    from mailsync.sync.planner import polling

    def ticks(start: int, count: int, quiet: bool) -> dict[str, object]:
        fractions, reads = [], []
        for n in range(count):
            with benchlib.count_aws_calls() as calls:
                sent = scheduling.enqueue_due_accounts(start + 60 * n)
            fractions.append(sent / due)
            reads.append(calls.get("dynamodb:GetItem", 0))
        # Each account's polls over the ticks, from the rule itself (the jobs are not kept).
        per_account: Counter[int] = Counter({count: due})
        if quiet:
            per_account.clear()
            for i in range(due):
                offset = polling.quiet_offset(f"tenant-{i % TENANTS:03d}", f"user-{i:06d}")
                per_account[sum(polling.quiet_slot(offset, start + 60 * n, 60) for n in range(count))] += 1
        return {
            "ticks": count,
            "fraction_enqueued_mean": statistics.mean(fractions),
            "fraction_enqueued_min": min(fractions),
            "fraction_enqueued_max": max(fractions),
            "fraction_enqueued": fractions,
            "polls_per_account": dict(sorted(per_account.items())),
            "office_hours_reads_per_tick": max(reads),
        }

    measured = {
        "office_hours": ticks(OFFICE_HOURS_TICK, 1, quiet=False),
        "night": ticks(NIGHT_TICK, quiet_ticks, quiet=True),
        "weekend": ticks(WEEKEND_TICK, quiet_ticks, quiet=True),
    }
    # Per account with the default office hours (12 of 24 hours on 5 of 7 days) and no activity.
    quiet_per_hour = 3600 // polling.QUIET_INTERVAL_SECONDS
    weekday = 12 * 60 + 12 * quiet_per_hour
    weekend_day = 24 * quiet_per_hour
    week = 5 * weekday + 2 * weekend_day
    return {
        "ticks": measured,
        "model": {
            "polls_per_weekday": weekday,
            "polls_per_weekend_day": weekend_day,
            "polls_per_account_per_week": week,
            "polls_per_account_per_30_days": round(week * 30 / 7),
            "fraction_of_every_minute": week / (7 * 1440),
            "assumes": "default office hours (07:00-19:00 weekdays), 1-minute ticks, no activity",
        },
    }


if __name__ == "__main__":
    main()
