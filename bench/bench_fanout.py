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
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import Counter

import benchlib
from benchlib import print_table, write_results

TENANTS = 50


def populate(due: int) -> dict[str, int]:
    from mailsync import dal
    from mailsync.domain import Account
    from mailsync.services import scheduling

    not_due_failed = due // 100
    backing_off = due // 50
    later = int(time.time()) + 3600
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
                sent = scheduling.enqueue_due_accounts()
                seconds = time.perf_counter() - t0
            runs.append({"round": r + 1, "seconds": seconds, "enqueued": sent, "calls": dict(sorted(calls.items()))})
            print(f"  round {r + 1}: {sent:,} jobs in {seconds:.2f} s", flush=True)
        settings = get_settings()

    calls = runs[-1]["calls"]
    queries = calls.get("dynamodb:Query", 0)
    batches = calls.get("sqs:SendMessageBatch", 0)
    item_bytes = 60  # keys-only index item: tenant_id, user_id, due_shard, next_sync_at
    per_shard_items = due / settings.due_shards
    rru = settings.due_shards * math.ceil(per_shard_items * item_bytes / 4096) * 0.5
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
    write_results(
        "bench_fanout",
        {
            "due_accounts": due,
            "population": population,
            "due_shards": settings.due_shards,
            "rounds": rounds,
            "small": args.small,
            "aws": "moto.mock_aws in-process",
            "rru_estimate": "keys-only items of ~60 bytes, eventually consistent Query, 0.5 RRU per 4 KB per shard",
        },
        {
            "median_seconds": median,
            "queries": queries,
            "send_message_batch": batches,
            "estimated_rru_per_tick": rru,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
