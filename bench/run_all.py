"""Run every benchmark in turn (``--small`` is passed through), then print a short summary.

Each script writes ``bench/results/<name>.json``; the summary is read from those files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_initial_sync",
    "bench_noop_sync",
    "bench_propagation",
    "bench_fanout",
    "bench_memory",
    "bench_settings_api",
    "bench_throughput",
    "bench_cost",  # last: arithmetic on the JSONs the others just wrote
]


def summary_line(name: str, doc: dict) -> str:
    r = doc["results"]
    if name == "bench_initial_sync":
        s = r["summary"]
        return (
            f"{doc['parameters']['messages']:,} messages: Mailsync {s['mailsync']['median_seconds']:.1f} s "
            f"({s['mailsync']['messages_per_second']:.0f} msg/s, peak {s['mailsync']['peak_rss_mb']:.0f} MB), "
            f"mbsync {s['mbsync']['median_seconds']:.1f} s ({s['mbsync']['peak_rss_mb']:.0f} MB): "
            f"{r['mailsync_over_mbsync']:.2f}x"
        )
    if name == "bench_noop_sync":
        parts = []
        for size in r:
            n = size["noop"]
            parts.append(
                f"{size['messages_on_server']:,} on server: {n['imap_commands_wire']} IMAP cmds, "
                f"{n['aws_by_service'].get('dynamodb', 0)} DynamoDB ({size.get('dynamodb_write_calls')} writes), "
                f"{size.get('kms_calls')} KMS, {size.get('cpu_ms', float('nan')):.1f} ms CPU"
            )
        return "; ".join(parts)
    if name == "bench_propagation":
        return "; ".join(
            f"{k} median {v['median_s']:.2f} s p95 {v['p95_s']:.2f} s"
            for k, v in r.items()
            if isinstance(v, dict) and "median_s" in v
        )
    if name == "bench_fanout":
        return (
            f"{doc['parameters']['due_accounts']:,} due: {r['queries']} Query, {r['send_message_batch']} "
            f"SendMessageBatch, {r['median_seconds']:.1f} s (moto)"
            + (
                f"; enqueued per tick: {p['office_hours']['fraction_enqueued_mean']:.0%} in office hours, "
                f"{p['night']['fraction_enqueued_mean']:.1%} at night"
                if (p := r.get("polling", {}).get("ticks"))
                else ""
            )
        )
    if name == "bench_memory":
        s = r["summary"]
        return (
            f"peak RSS small {s['small']['peak_rss_mb']:.0f} MB, with a {doc['parameters']['large_mb']:g} MB "
            f"message {s['large']['peak_rss_mb']:.0f} MB (+{r['extra_peak_mb']:.0f} MB)"
        )
    if name == "bench_throughput":
        m = r["model"]
        return (
            f"{r['accounts']:,} accounts: {r['accounts_per_cpu_second']:.1f} per CPU-second "
            f"({r['steady_state']['cpu_ms_per_account']:.1f} ms each); modelled "
            f"{r['modelled_accounts_per_minute']:,} a minute ({m['lambda_concurrency']} x "
            f"{m['threads']} threads, {m['bound_by']}-bound)"
        )
    if name == "bench_cost":
        return (
            f"per 1,000 users a month: polling ${r['polling_usd_per_1000_users_month']:.2f}, "
            f"mail ${r['messages_usd_per_1000_users_month']:.2f}"
        )
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="smoke sizes: each script finishes in under a minute")
    parser.add_argument("--only", nargs="*", help="script names to run (default: all)")
    args = parser.parse_args()
    failed = []
    timings = {}
    for name in args.only or SCRIPTS:
        argv = [sys.executable, str(BENCH / f"{name}.py")]
        if name == "bench_settings_api":
            argv += ["--rounds", "5" if args.small else "30"]
        elif args.small:
            argv.append("--small")
        print(f"\n=== {name} {' '.join(argv[2:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(argv, check=False).returncode
        timings[name] = time.perf_counter() - start
        if code:
            failed.append(name)
    print("\n=== summary")
    for name in args.only or SCRIPTS:
        status = "FAILED" if name in failed else "ok"
        line = ""
        path = BENCH / "results" / f"{name}{'-small' if args.small else ''}.json"
        if status == "ok" and path.exists():
            line = summary_line(name, json.loads(path.read_text()))
        print(f"{name:<20} {status:<6} {timings[name]:6.1f} s  {line}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
