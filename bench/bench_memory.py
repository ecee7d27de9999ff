"""Peak memory of a sync worker: a mailbox with one 40 MB message against the same without it.

Two Dovecot mailboxes: "small" holds 5 small messages (2-20 KB); "large" the same 5 plus one
40 MB message (a base64 attachment; ``--large-mb``). Each is synced by a fresh worker process
(``run_job`` until complete, as in bench_initial_sync) against a fresh moto server in its own
process, so the raw copy stored in "S3" is not counted in the worker. Peak memory is the
worker's own VmHWM, read by the worker from /proc/self/status when it is done (wait4's
ru_maxrss would also hold the harness's RSS at fork, which exec does not reset); "before sync"
is its RSS after importing the worker's code. Not a test: no assertion about memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import tempfile
from pathlib import Path

import benchlib
from benchlib import MotoServer, print_table, write_results

from devstack.dovecot import DovecotServer


def fill(user, large_bytes: int | None, seed: int) -> int:
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    mails = []
    for i in range(5):
        when = now - dt.timedelta(days=1 + i)
        size, _ = benchlib.realistic_size(rng, 0.0)
        mails.append((benchlib.make_mail(rng, i, when, size, False), when, []))
    if large_bytes:
        when = now - dt.timedelta(hours=3)
        mails.append((benchlib.make_mail(rng, 99, when, large_bytes, True), when, []))
    return benchlib.append_all(user, "INBOX", mails)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="1 round")
    parser.add_argument("--rounds", type=int, help="default 2 (--small: 1)")
    parser.add_argument("--large-mb", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.small else 2)

    tmp = Path(tempfile.mkdtemp(prefix="mailsync-bench-memory-"))
    runs = []
    try:
        with DovecotServer(tmp / "dovecot") as server:
            users = {}
            for name, large in (("small", None), ("large", int(args.large_mb * 1e6))):
                user = server.add_user()
                users[name] = (user, fill(user, large, args.seed))
                print(f"mailbox {name}: {users[name][1] / 1e6:.1f} MB", flush=True)
            for r in range(rounds):
                for name, (user, size) in users.items():
                    settings = {
                        "host": "127.0.0.1",
                        "port": user.imaps_port,
                        "username": user.username,
                        "password": user.password,
                        "security": "ssl",
                    }
                    with MotoServer() as moto:
                        worker, result = benchlib.setup_and_sync(
                            moto.endpoint, f"memory-{name}", settings, {"inbox": "INBOX"}, str(server.ca_file)
                        )
                    if result["status"] != "synced":
                        raise RuntimeError(f"{name}: sync ended {result}")
                    runs.append(
                        {
                            "mailbox": name,
                            "round": r + 1,
                            "mailbox_mb": size / 1e6,
                            "messages": result["created"],
                            "peak_rss_mb": result["peak_hwm_mb"],
                            "rss_before_sync_mb": result["rss_before_sync_mb"],
                            "wait4_maxrss_mb": worker.maxrss_mb,
                            "sync_seconds": result["sync_seconds"],
                        }
                    )
                    print(f"  round {r + 1} {name}: peak RSS (VmHWM) {result['peak_hwm_mb']:.1f} MB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {}
    for name in ("small", "large"):
        mine = [r for r in runs if r["mailbox"] == name]
        summary[name] = {
            "mailbox_mb": mine[0]["mailbox_mb"],
            "messages": mine[0]["messages"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "rss_before_sync_mb": max(r["rss_before_sync_mb"] for r in mine),
            "sync_seconds": min(r["sync_seconds"] for r in mine),
        }
    extra = summary["large"]["peak_rss_mb"] - summary["small"]["peak_rss_mb"]
    print(f"\nWorker peak RSS, its own VmHWM (max of {rounds} round(s)):")
    print_table(
        ["mailbox", "MB on server", "messages", "RSS before sync MB", "peak RSS MB", "sync s"],
        [
            [n, s["mailbox_mb"], s["messages"], s["rss_before_sync_mb"], s["peak_rss_mb"], s["sync_seconds"]]
            for n, s in summary.items()
        ],
    )
    print(
        f"The {args.large_mb:g} MB message adds {extra:.1f} MB to the worker's peak "
        f"({extra / args.large_mb:.1f}x its size)."
    )
    write_results(
        "bench_memory",
        {"large_mb": args.large_mb, "small_messages": 5, "rounds": rounds, "seed": args.seed, "small": args.small},
        {
            "summary": summary,
            "peak_measure": "VmHWM of the worker process, read by itself at the end",
            "baseline_peak_mb": summary["small"]["peak_rss_mb"],
            "large_peak_mb": summary["large"]["peak_rss_mb"],
            "extra_peak_mb": extra,
            "extra_over_message_size": extra / args.large_mb,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
