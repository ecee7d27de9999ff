"""How many accounts one worker polls per CPU-second, and what that makes of a deployment.

On the local stack: a moto server in its own process (provisioned from template.yaml), one Dovecot
(in its high-performance login mode, so TLS sessions resume as with the big providers; the steady
state's ``tls_handshakes_resumed`` counts them) with ``--accounts`` users (a generated user file;
each an empty INBOX, IMAPS), every account saved through the API handler. A worker child process
then does what the deployed worker does, through its real handler: the scheduler's tick sends the
due accounts in groups (``sync_group_size``), and the worker handler is invoked with SQS events of
up to ``BatchSize`` (10) records, syncing every account of a batch on ``worker_threads`` threads.
The first pass is each account's first sync; after 21 s (a scheduled job within 20 s of a sync is
skipped as a duplicate) the second pass is the steady state — every account polled, nothing new —
and only that pass is measured:

- the worker process's CPU time (``time.process_time``: every thread of the process, user + system;
  moto and Dovecot are other processes), hence CPU per account and accounts per CPU-second;
- wall time per account (each ``run_job`` call, timed around it) and per invocation;
- AWS calls per account.

The model extrapolates to Lambda (README "Scaling and cost", bench/README.md):
``accounts per minute = concurrency x 60 / max(wall per account / threads, CPU per account x
slowdown / vCPU share)`` with the vCPU share of the worker's memory size (1,769 MB = 1 vCPU; one
Python process uses at most one), the worker's defaults from template.yaml and config.py, an
assumed wall time per account against real mail servers, and an assumed Lambda CPU slowdown
against this machine. Every input is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import benchlib
from benchlib import ROOT, MotoServer, aws_env, print_table, run_measured, write_results

from devstack.dovecot import DovecotServer

TENANT = "bench"
BATCH_SIZE = 10  # records per worker invocation (template.yaml, SyncWorkerFunction's SQS event)
DUPLICATE_WINDOW_SECONDS = 21  # just over planner.jobs.MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS
LAMBDA_VCPU_MB = 1769  # Lambda gives one vCPU at 1,769 MB, proportionally less below
# Assumptions of the model (not measured here; see bench/README.md):
ASSUMED_WALL_PER_ACCOUNT_S = 0.5  # TLS + LOGIN + LIST-STATUS + LOGOUT to a remote server, AWS calls
ASSUMED_LAMBDA_CPU_SLOWDOWN = 2.0  # a Lambda vCPU against one core of the bench machine


def user_name(i: int) -> str:
    return f"tp{i:05d}"


# --------------------------------------------------------------------------- child modes


def _child_setup(args: argparse.Namespace) -> None:
    """Provision template.yaml into the moto server and save every account through the API."""
    from devstack.provision import load_template, provision
    from devstack.run import TEMPLATE

    resources = provision(load_template(TEMPLATE), endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    os.environ.update(resources)
    # The template's defaults are the deployed ones; the mail server here is on loopback.
    os.environ["MAILSYNC_ALLOW_PRIVATE_HOSTS"] = "true"
    benchlib.reset_caches()
    users = json.loads(Path(args.users_file).read_text())
    for user, password in users.items():
        call = benchlib.api_caller(user, TENANT)
        settings = {
            "host": "127.0.0.1",
            "port": args.port,
            "username": user,
            "password": password,
            "security": "ssl",
        }
        status, body = call("PUT", "/v1/users/me/mail-settings", settings)
        if status != 201:
            raise RuntimeError(f"mail-settings of {user}: {status} {body}")
    print(json.dumps(resources))


def _receive_all(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message on the queue, received and deleted (the event source's work, not the worker's)."""
    messages = []
    while got := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
        for m in got:
            messages.append(m)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return messages


def _child_worker(args: argparse.Namespace) -> None:
    """The worker: a tick, the first syncs, a wait, a tick, the measured polls."""
    from devstack.lambda_runtime import LambdaContext, load_handler, sqs_event
    from mailsync.aws import client
    from mailsync.config import get_settings
    from mailsync.mailbox.transport import tls_session_cache_stats
    from mailsync.services import scheduling, sync_jobs

    handler = load_handler("sync_worker")
    settings = get_settings()
    sqs = client("sqs")
    queue_url = settings.sync_queue_url
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    lock = threading.Lock()
    walls: list[float] = []
    statuses: Counter[str] = Counter()
    real_run_job = sync_jobs.run_job

    def timed_run_job(*a: Any, **kw: Any) -> Any:
        started = time.monotonic()
        result = real_run_job(*a, **kw)
        with lock:
            walls.append(time.monotonic() - started)
            statuses[result.status] += 1
        return result

    sync_jobs.run_job = timed_run_job

    def one_pass() -> dict[str, Any]:
        enqueued = scheduling.enqueue_due_accounts()
        messages = _receive_all(sqs, queue_url)
        events = [sqs_event(messages[i : i + BATCH_SIZE], arn) for i in range(0, len(messages), BATCH_SIZE)]
        walls.clear()
        statuses.clear()
        tls_before = tls_session_cache_stats()
        with benchlib.count_aws_calls() as calls:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            invocation_walls = []
            for event in events:
                started = time.perf_counter()
                result = handler(event, LambdaContext(function_name="SyncWorkerFunction", timeout_seconds=300))
                invocation_walls.append(time.perf_counter() - started)
                if result.get("batchItemFailures"):
                    raise RuntimeError(f"records failed: {result}")
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        return {
            "enqueued": enqueued,
            "messages": len(messages),
            "invocations": len(events),
            "statuses": dict(statuses),
            "cpu_seconds": cpu,
            "wall_seconds": wall,
            "run_job_wall_median_s": statistics.median(walls) if walls else None,
            "run_job_wall_p95_s": benchlib.percentile(walls, 95) if walls else None,
            "invocation_wall_median_s": statistics.median(invocation_walls) if invocation_walls else None,
            "aws_calls": dict(sorted(calls.items())),
            "tls_handshakes_offered_a_session": tls_session_cache_stats().offered - tls_before.offered,
            "tls_handshakes_resumed": tls_session_cache_stats().resumed - tls_before.resumed,
        }

    first = one_pass()
    time.sleep(DUPLICATE_WINDOW_SECONDS)
    steady = one_pass()
    print(json.dumps({"first": first, "steady": steady}))


# --------------------------------------------------------------------------- parent


def model(cpu_per_account_s: float, threads: int, memory_mb: int, concurrency: int) -> dict[str, Any]:
    vcpu_share = min(1.0, memory_mb / LAMBDA_VCPU_MB)
    lambda_cpu_per_account = cpu_per_account_s * ASSUMED_LAMBDA_CPU_SLOWDOWN
    cpu_bound = vcpu_share / lambda_cpu_per_account  # accounts/s one invocation's CPU allows
    wait_bound = threads / ASSUMED_WALL_PER_ACCOUNT_S  # accounts/s its threads allow
    per_lambda = min(cpu_bound, wait_bound)
    return {
        "lambda_concurrency": concurrency,
        "threads": threads,
        "memory_mb": memory_mb,
        "vcpu_share": round(vcpu_share, 3),
        "cpu_per_account_ms_measured": round(cpu_per_account_s * 1000, 2),
        "lambda_cpu_slowdown_assumed": ASSUMED_LAMBDA_CPU_SLOWDOWN,
        "cpu_per_account_ms_on_lambda": round(lambda_cpu_per_account * 1000, 2),
        "wall_per_account_s_assumed": ASSUMED_WALL_PER_ACCOUNT_S,
        "accounts_per_second_per_lambda_cpu_bound": round(cpu_bound, 1),
        "accounts_per_second_per_lambda_thread_bound": round(wait_bound, 1),
        "accounts_per_second_per_lambda": round(per_lambda, 1),
        "bound_by": "cpu" if cpu_bound <= wait_bound else "threads",
        "modelled_accounts_per_minute": int(concurrency * 60 * per_lambda),
    }


def template_defaults() -> dict[str, int]:
    """The worker's deployed defaults: MemorySize and the WorkerMaximumConcurrency parameter."""
    text = (ROOT / "template.yaml").read_text()
    concurrency = re.search(r"WorkerMaximumConcurrency:\n\s+Type: Number\n\s+Default: (\d+)", text)
    worker = text[text.index("SyncWorkerFunction:") :]
    memory = re.search(r"MemorySize: (\d+)", worker)
    batch = re.search(r"BatchSize: (\d+)", worker)
    if not (concurrency and memory and batch):
        raise RuntimeError("template.yaml: worker defaults not found")
    return {"concurrency": int(concurrency[1]), "memory_mb": int(memory[1]), "batch_size": int(batch[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--threads", type=int, help="worker threads (default: config.py's worker_threads)")
    parser.add_argument("--group-size", type=int, help="accounts per job (default: config.py's sync_group_size)")
    parser.add_argument("--small", action="store_true", help="20 accounts: finishes in under a minute")
    benchlib.add_connections_option(parser)
    args = parser.parse_args()
    if args.small:
        args.accounts = 20
    keepalive = not args.close_connections

    from mailsync.config import Settings

    defaults = Settings()
    threads = args.threads or defaults.worker_threads
    group_size = args.group_size or defaults.sync_group_size
    deployed = template_defaults()
    users = {user_name(i): secrets.token_urlsafe(12) for i in range(args.accounts)}

    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        users_file = Path(tmp) / "users.json"
        users_file.write_text(json.dumps(users))
        # High-performance login mode: TLS sessions resume, as with the big providers.
        with (
            DovecotServer(Path(tmp) / "dovecot", users=users, login_reuse=True) as dovecot,
            MotoServer(keepalive) as moto,
        ):
            env = aws_env(moto.endpoint)
            env["MAILSYNC_EXTRA_CA_FILE"] = str(dovecot.ca_file)
            started = time.perf_counter()
            setup = run_measured(
                [sys.executable, __file__, "setup", str(users_file), "--port", str(dovecot.imaps_port)],
                env=env,
                timeout=1800,
            )
            if setup.returncode != 0:
                raise RuntimeError(f"setup failed:\n{setup.stderr[-3000:]}")
            env.update(setup.json_line())
            setup_seconds = time.perf_counter() - started
            env.update(
                {
                    "MAILSYNC_ALLOW_PRIVATE_HOSTS": "true",
                    "MAILSYNC_WORKER_THREADS": str(threads),
                    "MAILSYNC_SYNC_GROUP_SIZE": str(group_size),
                    # One Dovecot is every account's host here; in production the mail-host limit
                    # applies per provider. It must not be what this measures.
                    "MAILSYNC_HOST_CONCURRENCY": str(max(threads, 5)),
                    "POWERTOOLS_LOG_LEVEL": "WARNING",
                    "POWERTOOLS_METRICS_DISABLED": "false",  # as deployed: metrics cost CPU too
                }
            )
            worker = run_measured([sys.executable, __file__, "worker"], env=env, timeout=3600)
            if worker.returncode != 0:
                raise RuntimeError(f"worker failed:\n{worker.stderr[-3000:]}")
            passes = worker.json_line()

    steady = passes["steady"]
    polled = sum(steady["statuses"].values())
    if steady["statuses"].get("synced", 0) != args.accounts:
        print(f"warning: not every account was polled as a sync: {steady['statuses']}", file=sys.stderr)
    cpu_per_account = steady["cpu_seconds"] / polled
    modelled = model(cpu_per_account, threads, deployed["memory_mb"], deployed["concurrency"])
    aws_per_account = {k: round(v / polled, 2) for k, v in steady["aws_calls"].items()}
    results = {
        "accounts": args.accounts,
        "accounts_per_cpu_second": round(polled / steady["cpu_seconds"], 1),
        "modelled_accounts_per_minute": modelled["modelled_accounts_per_minute"],
        "model": modelled,
        "steady_state": {
            **{k: v for k, v in steady.items() if k != "aws_calls"},
            "cpu_ms_per_account": round(cpu_per_account * 1000, 2),
            "accounts_per_wall_second": round(polled / steady["wall_seconds"], 1),
            "aws_calls_per_account": aws_per_account,
        },
        "first_sync_pass": {k: v for k, v in passes["first"].items() if k != "aws_calls"},
        "setup_seconds": round(setup_seconds, 1),
    }
    print_table(
        ["pass", "accounts", "messages", "invocations", "CPU s", "wall s", "CPU ms/account", "run_job wall median"],
        [
            [
                name,
                sum(p["statuses"].values()),
                p["messages"],
                p["invocations"],
                p["cpu_seconds"],
                p["wall_seconds"],
                p["cpu_seconds"] / max(1, sum(p["statuses"].values())) * 1000,
                p["run_job_wall_median_s"],
            ]
            for name, p in (("first sync", passes["first"]), ("steady poll", steady))
        ],
    )
    print(
        f"\n{results['accounts_per_cpu_second']} accounts per CPU-second; modelled "
        f"{results['modelled_accounts_per_minute']:,} accounts a minute "
        f"({modelled['lambda_concurrency']} x {modelled['accounts_per_second_per_lambda']}/s, "
        f"{modelled['bound_by']}-bound)"
    )
    parameters = {
        "small": args.small,
        "accounts": args.accounts,
        "threads": threads,
        "group_size": group_size,
        "batch_size": BATCH_SIZE,
        "template_worker_batch_size": deployed["batch_size"],
        "host_concurrency": max(threads, 5),
        "security": "ssl",
        "folders": "INBOX (empty)",
        "aws_keepalive": keepalive,
    }
    write_results("bench_throughput", parameters, results)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("setup", "worker"):
        child = argparse.ArgumentParser()
        child.add_argument("mode")
        child.add_argument("users_file", nargs="?")
        child.add_argument("--port", type=int)
        child_args = child.parse_args()
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        {"setup": _child_setup, "worker": _child_worker}[child_args.mode](child_args)
    else:
        main()
