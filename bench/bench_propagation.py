"""How fast a change crosses over, on the local stack (API over HTTP, in-process worker) and Dovecot.

1. CRM -> server: ``PATCH /v1/messages/{id}`` ``{"seen": true}``, then time until another IMAP
   client sees ``\\Seen`` on the server (polled every 10 ms). The PATCH enqueues an immediate
   sync job; the local stack's worker long-polls the queue.
2. server -> CRM, on request: another IMAP client sets ``\\Seen``, then ``POST /v1/users/me/sync``;
   time until ``GET /v1/messages/{id}`` shows ``seen: true`` (polled every 50 ms).
3. server -> CRM, scheduled: the same without the POST: a ticker runs the stack's scheduler every
   ``--tick`` seconds (5; what ``LocalStack(schedule_seconds=5)`` does; the stack itself runs with
   a one-hour schedule so that parts 1 and 2 are not disturbed). A scheduled job for an account
   that finished a sync less than 20 s ago is skipped (``MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS``),
   so with a 5 s tick an account is effectively synced every ~20-25 s; in production the
   ``ScheduleRate`` (1 minute) dominates.

Median and p95 over the repetitions; each repetition uses a different message. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import benchlib
from benchlib import percentile, print_table, write_results

from devstack.dovecot import DovecotServer, make_message

POLL_LIMIT_SECONDS = 120


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None


def wait_for(check, interval: float, limit: float = POLL_LIMIT_SECONDS) -> float | None:
    """Poll ``check`` until true; seconds from now, or None after ``limit``."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if check():
            return time.perf_counter() - start
        time.sleep(interval)
    return None


def summarise(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "median_s": statistics.median(samples) if samples else float("nan"),
        "p95_s": percentile(samples, 95),
        "min_s": min(samples, default=float("nan")),
        "max_s": max(samples, default=float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="3 repetitions of parts 1 and 2, 1 of part 3")
    parser.add_argument("--reps", type=int, help="repetitions of parts 1 and 2 (default 15)")
    parser.add_argument("--scheduled-reps", type=int, help="repetitions of part 3 (default 6)")
    parser.add_argument("--tick", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    reps = args.reps or (3 if args.small else 15)
    sched_reps = args.scheduled_reps or (1 if args.small else 6)
    rng = random.Random(args.seed)

    for key, value in benchlib.aws_env().items():
        os.environ[key] = value
    from devstack.auth import make_token
    from devstack.run import LocalStack

    tmp = Path(tempfile.mkdtemp(prefix="mailsync-bench-propagation-"))
    stack = None
    stop_ticker = threading.Event()
    results: dict[str, Any] = {}
    try:
        with DovecotServer(tmp / "dovecot") as server:
            os.environ["MAILSYNC_EXTRA_CA_FILE"] = str(server.ca_file)
            user = server.add_user()
            total = 2 * reps + sched_reps
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            uids = {}
            with user.client() as imap:
                for i in range(total):
                    when = now - dt.timedelta(hours=1 + i)
                    uids[f"prop {i}"] = imap.append("INBOX", make_message(subject=f"prop {i}", date=when), [], when)
            stack = LocalStack(port=0, schedule_seconds=3600).start()
            from mailsync.observability import logger

            logger.setLevel("WARNING")
            api = Api(stack.api_url, make_token("prop", "bench"))
            settings = {
                "host": "127.0.0.1",
                "port": user.imaps_port,
                "username": user.username,
                "password": user.password,
                "security": "ssl",
            }
            assert api("PUT", "/v1/users/me/mail-settings", settings)[0] == 201
            assert api("PUT", "/v1/users/me/folder-map", {"inbox": "INBOX"})[0] == 200
            assert api("POST", "/v1/users/me/sync")[0] == 202

            def synced_all() -> bool:
                status, page = api("GET", "/v1/users/me/messages?limit=100")
                return status == 200 and len(page["messages"]) >= total

            if wait_for(synced_all, 0.2) is None:
                raise SystemExit("first sync did not finish")
            ids = {m["subject"]: m["id"] for m in api("GET", "/v1/users/me/messages?limit=100")[1]["messages"]}
            subjects = iter(sorted(ids, key=lambda s: int(s.split()[1])))
            watcher = user.client()
            other = user.client()

            def seen_on_server(uid: int) -> bool:
                return "\\Seen" in watcher.flags("INBOX", uid)

            def seen_in_api(message_id: str) -> bool:
                status, body = api("GET", f"/v1/messages/{message_id}")
                return status == 200 and body["seen"] is True

            crm_to_server, server_to_crm, scheduled = [], [], []
            print(f"1. CRM -> server, {reps} repetitions", flush=True)
            for _ in range(reps):
                subject = next(subjects)
                time.sleep(rng.uniform(0.5, 1.5))
                t0 = time.perf_counter()
                status, _ = api("PATCH", f"/v1/messages/{ids[subject]}", {"seen": True})
                assert status == 200, status
                if wait_for(lambda s=subject: seen_on_server(uids[s]), 0.01) is not None:
                    crm_to_server.append(time.perf_counter() - t0)
            print(f"2. server -> CRM with POST /sync, {reps} repetitions", flush=True)
            for _ in range(reps):
                subject = next(subjects)
                time.sleep(rng.uniform(0.5, 1.5))
                other.add_flags("INBOX", uids[subject], ["\\Seen"])
                t0 = time.perf_counter()
                assert api("POST", "/v1/users/me/sync")[0] == 202
                if wait_for(lambda s=subject: seen_in_api(ids[s]), 0.05) is not None:
                    server_to_crm.append(time.perf_counter() - t0)

            def ticker() -> None:
                while not stop_ticker.wait(args.tick):
                    stack.run_scheduler_once()

            threading.Thread(target=ticker, daemon=True).start()
            print(f"3. server -> CRM on the schedule (tick {args.tick:g} s), {sched_reps} repetitions", flush=True)
            for _ in range(sched_reps):
                subject = next(subjects)
                time.sleep(rng.uniform(0, args.tick))
                other.add_flags("INBOX", uids[subject], ["\\Seen"])
                t0 = time.perf_counter()
                if wait_for(lambda s=subject: seen_in_api(ids[s]), 0.05) is not None:
                    scheduled.append(time.perf_counter() - t0)
            stop_ticker.set()
            watcher.close()
            other.close()
            results = {
                "crm_to_server": summarise(crm_to_server),
                "server_to_crm_post_sync": summarise(server_to_crm),
                "server_to_crm_scheduled": summarise(scheduled),
                "samples": {"crm_to_server": crm_to_server, "post_sync": server_to_crm, "scheduled": scheduled},
            }
    finally:
        stop_ticker.set()
        if stack is not None:
            stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print("\nPropagation latency (local stack, moto server, Dovecot on loopback):")
    labels = {
        "crm_to_server": "PATCH seen -> \\Seen on server",
        "server_to_crm_post_sync": "server \\Seen -> API (POST /sync)",
        "server_to_crm_scheduled": f"server \\Seen -> API (tick {args.tick:g} s)",
    }
    print_table(
        ["change", "n", "median s", "p95 s", "min s", "max s"],
        [
            [labels[k], r["n"], r["median_s"], r["p95_s"], r["min_s"], r["max_s"]]
            for k, r in results.items()
            if k in labels
        ],
    )
    lost = {k: (2 * [reps] + [sched_reps])[i] - results[k]["n"] for i, k in enumerate(labels)}
    if any(lost.values()):
        print(f"not seen within {POLL_LIMIT_SECONDS} s: {lost}")
    write_results(
        "bench_propagation",
        {"reps": reps, "scheduled_reps": sched_reps, "tick_seconds": args.tick, "seed": args.seed, "small": args.small},
        results,
    )


if __name__ == "__main__":
    main()
