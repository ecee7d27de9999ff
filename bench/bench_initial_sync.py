"""First sync of one mailbox: Mailsync's worker against mbsync (isync) pulling to a local Maildir.

The same Dovecot mailbox (default 5,000 messages, all within the 30-day window; mostly 2-20 KB
text, a few percent 100 KB-2 MB with an attachment; generated from a seeded RNG) is synced
alternately by (A) Mailsync and (B) mbsync, fresh state each run:

A  a worker process runs ``run_job`` until the first sync is complete (the Lambda deadline is
   played: stop starting batches after 240 s, re-run with ``reason: continue``). The AWS side is
   a moto server in its own process (a fresh one per run), provisioned from template.yaml; the
   account is saved through the API handler by a setup process before the clock starts.
B  ``mbsync`` with an mbsyncrc in a temp dir: IMAPS, the harness CA, ``Sync Pull``,
   ``Create Near``, INBOX only, into an empty Maildir.

Wall time is the sync only (A: inside the worker, imports and setup excluded; B: the mbsync
process). Peak RSS is each process's own VmHWM (wait4's ru_maxrss would keep the harness's
RSS at fork); A's excludes moto, which in AWS is remote. CPU is process CPU time (all threads);
DynamoDB write units are estimated from the items written (``benchlib.WriteUnits``), whose own
CPU (``counting_cpu_seconds``, ~5%) is taken off the worker's.
Not a test: no assertion about speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import MotoServer, print_table, run_measured, write_results

from devstack.dovecot import DovecotServer

MBSYNC = "/usr/bin/mbsync"


def generate(count: int, attachment_share: float, seed: int, window_days: int) -> list[tuple[bytes, dt.datetime]]:
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    out = []
    for i in range(count):
        size, attachment = benchlib.realistic_size(rng, attachment_share)
        # Spread over the window, well inside it (a day's margin on both ends).
        when = now - dt.timedelta(seconds=rng.uniform(3600, (window_days - 2) * 86400))
        out.append((benchlib.make_mail(rng, i, when, size, attachment), when))
    return out


def mbsync_version() -> tuple[int, ...]:
    out = subprocess.run([MBSYNC, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (1, 4)


def run_mbsync(user, work: Path) -> tuple[benchlib.Measured, int]:
    """One fresh mbsync pull of INBOX; returns the measurement and the messages in the Maildir."""
    tls_key = "TLSType" if mbsync_version() >= (1, 5) else "SSLType"
    mail = work / "mail"
    mail.mkdir(parents=True)
    rc = work / "mbsyncrc"
    rc.write_text(
        f"""IMAPAccount bench
Host localhost
Port {user.imaps_port}
User {user.username}
Pass {user.password}
{tls_key} IMAPS
CertificateFile {user.ca_file}

IMAPStore bench-remote
Account bench

MaildirStore bench-local
Path {mail}/
Inbox {mail}/INBOX

Channel bench
Far :bench-remote:
Near :bench-local:
Patterns INBOX
Sync Pull
Create Near
SyncState *
"""
    )
    rc.chmod(0o600)
    env = {"HOME": str(work), "PATH": "/usr/bin:/bin"}
    measured = run_measured([MBSYNC, "-c", str(rc), "-q", "bench"], env=env, timeout=1800)
    if measured.returncode != 0:
        raise RuntimeError(f"mbsync failed ({measured.returncode}): {measured.stderr[-2000:]}")
    got = sum(1 for sub in ("cur", "new") for _ in (mail / "INBOX" / sub).glob("*"))
    return measured, got


def run_mailsync(user, ca_file: Path, window_days: int, keepalive: bool) -> dict:
    settings = {
        "host": "127.0.0.1",
        "port": user.imaps_port,
        "username": user.username,
        "password": user.password,
        "security": "ssl",
        "sync_window_days": window_days,
    }
    with MotoServer(keepalive=keepalive) as moto:
        worker, result = benchlib.setup_and_sync(moto.endpoint, "initial", settings, {"inbox": "INBOX"}, str(ca_file))
    if result["status"] != "synced":
        raise RuntimeError(
            f"Mailsync first sync ended {result['status']} ({result['error']}):\n"
            f"{worker.stdout[-3000:]}{worker.stderr[-3000:]}"
        )
    writes = result["dynamodb_writes"]
    return {
        "seconds": result["sync_seconds"],
        "cpu_seconds": result["sync_cpu_seconds"],
        "counting_cpu_seconds": result["counting_cpu_seconds"],
        "process_seconds": worker.wall_seconds,
        "peak_rss_mb": result["peak_hwm_mb"],
        "rss_before_sync_mb": result["rss_before_sync_mb"],
        "messages": result["created"],
        "invocations": result["invocations"],
        "imap_commands": result["imap_commands"],
        "dynamodb_wru": writes["wru"],
        "dynamodb_items": writes["items"],
        "dynamodb_write_calls": writes["calls"],
        "dynamodb_wru_by_operation": writes["wru_by_operation"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="300 messages, 1 round: a smoke run")
    parser.add_argument("--messages", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--attachment-share", type=float, default=0.04)
    parser.add_argument("--seed", type=int, default=20260)
    benchlib.add_connections_option(parser)
    args = parser.parse_args()
    count = args.messages or (300 if args.small else 5000)
    rounds = args.rounds or (1 if args.small else 3)
    window = 30
    if not Path(MBSYNC).exists():
        sys.exit(f"{MBSYNC} is missing: apt-get install -y isync")

    tmp = Path(tempfile.mkdtemp(prefix="mailsync-bench-initial-"))
    try:
        with DovecotServer(tmp / "dovecot") as server:
            user = server.add_user()
            print(f"generating {count:,} messages (seed {args.seed}) ...", flush=True)
            mails = generate(count, args.attachment_share, args.seed, window)
            total_bytes = sum(len(raw) for raw, _ in mails)
            large = sum(1 for raw, _ in mails if len(raw) > 100_000)
            sizes = sorted(len(raw) for raw, _ in mails)
            started = time.perf_counter()
            benchlib.append_all(user, "INBOX", ((raw, when, []) for raw, when in mails))
            print(
                f"appended {count:,} messages, {total_bytes / 1e6:,.1f} MB ({large} over 100 KB, median "
                f"{statistics.median(sizes) / 1024:.1f} KB) in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            del mails
            # Warm-up (unmeasured): Dovecot's index/cache and the page cache, for both clients alike.
            warm, got = run_mbsync(user, tmp / "warmup")
            shutil.rmtree(tmp / "warmup")
            print(f"warm-up mbsync run: {warm.wall_seconds:.1f} s, {got} messages", flush=True)

            runs: list[dict] = []
            for r in range(rounds):
                a = run_mailsync(user, server.ca_file, window, keepalive=not args.close_connections)
                runs.append({"tool": "mailsync", "round": r + 1, **a})
                print(f"  round {r + 1} Mailsync {a['seconds']:.1f} s, {a['messages']} messages", flush=True)
                work = tmp / f"mbsync-{r}"
                measured, got = run_mbsync(user, work)
                shutil.rmtree(work)
                runs.append(
                    {
                        "tool": "mbsync",
                        "round": r + 1,
                        "seconds": measured.wall_seconds,
                        "cpu_seconds": measured.cpu_seconds,
                        "peak_rss_mb": measured.peak_hwm_mb,
                        "messages": got,
                    }
                )
                print(f"  round {r + 1} mbsync   {measured.wall_seconds:.1f} s, {got} messages", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {}
    for tool in ("mailsync", "mbsync"):
        mine = [r for r in runs if r["tool"] == tool]
        seconds = statistics.median(r["seconds"] for r in mine)
        summary[tool] = {
            "median_seconds": seconds,
            "min_seconds": min(r["seconds"] for r in mine),
            "max_seconds": max(r["seconds"] for r in mine),
            "messages_per_second": count / seconds,
            "mb_per_second": total_bytes / 1e6 / seconds,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "messages": mine[-1]["messages"],
            "cpu_ms_per_message": statistics.median(r["cpu_seconds"] for r in mine) * 1000 / count,
        }
    ratio = summary["mailsync"]["median_seconds"] / summary["mbsync"]["median_seconds"]
    mailsync_runs = [r for r in runs if r["tool"] == "mailsync"]
    created = mailsync_runs[-1]["messages"]
    worker_cpu_ms = statistics.median(r["cpu_seconds"] for r in mailsync_runs) * 1000 / created
    wru = statistics.median(r["dynamodb_wru"] for r in mailsync_runs) / created
    items = statistics.median(r["dynamodb_items"] for r in mailsync_runs) / created
    print(
        f"\nFirst sync of {count:,} messages ({total_bytes / 1e6:,.1f} MB, all within the {window}-day window), "
        f"{rounds} round(s) each, alternating; median wall time:"
    )
    rows = [
        [
            tool,
            s["messages"],
            s["median_seconds"],
            f"{s['min_seconds']:.1f}-{s['max_seconds']:.1f}",
            s["messages_per_second"],
            s["mb_per_second"],
            s["peak_rss_mb"],
        ]
        for tool, s in summary.items()
    ]
    print_table(["tool", "messages", "median s", "range s", "msg/s", "MB/s", "peak RSS MB"], rows)
    print(f"Mailsync / mbsync wall time: {ratio:.2f}x")
    print(
        f"Worker CPU {worker_cpu_ms:.2f} ms per message (mbsync {summary['mbsync']['cpu_ms_per_message']:.2f}); "
        f"DynamoDB {wru:.2f} WRU and {items:.2f} items per message (estimated from item sizes, see benchlib)"
    )
    print(
        "Mailsync also writes every message to S3 and its metadata, locations, match keys and dossier "
        "items to DynamoDB (here a local moto server); mbsync writes files."
    )
    write_results(
        "bench_initial_sync",
        {
            "messages": count,
            "bytes": total_bytes,
            "messages_over_100kb": large,
            "attachment_share": args.attachment_share,
            "seed": args.seed,
            "rounds": rounds,
            "window_days": window,
            "small": args.small,
            "aws": "moto server in its own process, fresh per Mailsync run",
            "aws_keepalive": not args.close_connections,
        },
        {
            "messages": created,
            "worker_cpu_ms_per_message": worker_cpu_ms,
            "wru_per_message": wru,
            "dynamodb_items_per_message": items,
            "mbsync": {
                "messages": summary["mbsync"]["messages"],
                "seconds": summary["mbsync"]["median_seconds"],
                "cpu_ms_per_message": summary["mbsync"]["cpu_ms_per_message"],
                "peak_rss_mb": summary["mbsync"]["peak_rss_mb"],
            },
            "summary": summary,
            "mailsync_over_mbsync": ratio,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
