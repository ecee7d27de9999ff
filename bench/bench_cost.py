"""What 1,000 users cost a month on AWS: polling (every account every minute) and mail (50 messages
a user a day of 75 KB), line by line, from the other benchmarks' measured figures and list prices.

Not a measurement itself: arithmetic on ``bench/results/*.json`` (no-op sync, initial sync,
throughput, fan-out) and on the eu-west-1 list prices in ``PRICES``. Every input names its source:
a bench JSON field, or, when that field is missing (an older JSON, a benchmark not run), a
documented fallback. A message costs what a poll that finds one new message costs beyond a
no-op (the steady state: 50 a day polled every minute come one to a sync), or, without that
figure, a first sync's per-message figures. Runs last in ``run_all.py``. Writes ``bench/results/bench_cost.json`` and
then regenerates the cost section of the docs (``cost_section.py``, the block between
``<!-- cost:begin -->`` and ``<!-- cost:end -->``); ``--small`` reads and writes the ``-small``
JSONs and leaves the docs alone.

How CPU becomes Lambda cost: Lambda gives a function one vCPU per 1,769 MB, so a CPU-second costs
1,769/1,024 = 1.73 GB-s whatever the memory size, divided by how busy the CPU is over the billed
time (``CPU_UTILISATION``). The CPU figures are this machine's (x86_64) and are taken as they are
for Graviton.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import cost_section
from benchlib import ROOT, print_table, results_path, write_results  # benchlib puts the repo on sys.path

# ------------------------------------------------------------------ prices (eu-west-1, USD)
PRICES_AS_OF = "2026-12-01"
PRICES_NOTE = (
    "eu-west-1 (Ireland) on-demand list prices as known on the date given, not fetched from the AWS "
    "Price List API; free tiers ignored. Check the current price pages before quoting."
)
PRICES: dict[str, dict[str, Any]] = {
    "lambda_arm64_gb_second": {"usd": 0.0000133334, "per": "GB-second (arm64)"},
    "lambda_request": {"usd": 0.20 / 1e6, "per": "request"},
    "dynamodb_wru": {"usd": 0.7068 / 1e6, "per": "write request unit (on-demand)"},
    "dynamodb_rru": {"usd": 0.1415 / 1e6, "per": "read request unit (on-demand)"},
    "kms_request": {"usd": 0.03 / 1e4, "per": "request"},
    "sqs_request": {"usd": 0.40 / 1e6, "per": "request (standard queue, 64 KB chunk)"},
    "s3_put": {"usd": 0.005 / 1e3, "per": "PUT request (S3 Standard)"},
    "s3_storage_gb_month": {"usd": 0.023, "per": "GB-month (S3 Standard, first 50 TB)"},
    "eventbridge_event": {"usd": 1.00 / 1e6, "per": "custom event (64 KB chunk)"},
    "logs_ingestion_gb": {"usd": 0.57, "per": "GB ingested (CloudWatch Logs standard)"},
    "logs_storage_gb_month": {"usd": 0.03, "per": "GB-month stored (CloudWatch Logs)"},
    "metric_month": {"usd": 0.30, "per": "custom metric a month (first 10,000)"},
    "alarm_month": {"usd": 0.10, "per": "standard-resolution alarm a month"},
    "xray_trace": {"usd": 5.00 / 1e6, "per": "trace recorded"},
    "nat_gateway_hour": {"usd": 0.048, "per": "NAT gateway hour"},
    "nat_gateway_gb": {"usd": 0.048, "per": "GB processed by a NAT gateway"},
    "public_ipv4_hour": {"usd": 0.005, "per": "public IPv4 address hour (an Elastic IP)"},
}

# ------------------------------------------------------------------ the model's fixed assumptions
DAYS = 30
HOURS_PER_MONTH = 730
USERS = 1000  # the figures are per 1,000 users
GB = 1024**3
LAMBDA_GB_SECONDS_PER_CPU_SECOND = 1769 / 1024  # one vCPU per 1,769 MB
CPU_UTILISATION = 0.5  # CPU-busy share of an invocation's billed time (the rest waits on mail servers and AWS)
LOG_BYTES_PER_INVOCATION = 1700  # START + END + REPORT lines (~400 B) and the one EMF document (~1,300 B)
LOG_BYTES_PER_CHANGED_SYNC = 450  # the worker's INFO "sync job done" line (no-op syncs log at DEBUG)
METRICS_PER_DEPLOYMENT = 16  # Sync_<outcome>, SyncDuration, SyncLagSeconds, the six counters, a few failure codes
ALARMS_PER_DEPLOYMENT = 4
SCHEDULER_GB_SECONDS_PER_TICK = 0.5  # 512 MB for ~1 s (its queries and SendMessageBatch calls run in parallel)
ESM_EMPTY_RECEIVES_PER_MONTH = 5 * 3 * 60 * 24 * DAYS  # the SQS event source's 5 pollers, 20 s long polls
NAT_GATEWAYS = 2
TLS_HANDSHAKE_BYTES = 6000  # certificate chain and key exchange of one IMAPS connection, both ways
EVENTS_PER_MESSAGE = 1  # one mail event on EventBridge per new message


class Inputs:
    """The model's inputs, each with where it came from."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def set(self, name: str, value: float, source: str) -> float:
        self.values[name] = {"value": value, "source": source}
        return value

    def __getitem__(self, name: str) -> float:
        return self.values[name]["value"]


def load_result(name: str, small: bool) -> dict[str, Any] | None:
    """A bench JSON: the ``-small`` one for a smoke run when it exists, else the real one."""
    for path in ([results_path(name, True)] if small else []) + [results_path(name)]:
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _find(value: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere in ``value`` (a JSON document), outermost first."""
    found: list[Any] = []
    if isinstance(value, dict):
        if key in value:
            found.append(value[key])
        for child in value.values():
            found.extend(_find(child, key))
    elif isinstance(value, list):
        for child in value:
            found.extend(_find(child, key))
    return found


def _numbers(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def _sizes(results: Any) -> list[dict[str, Any]]:
    """The per-mailbox-size entries of the no-op bench: a list of them, or a dict holding such a
    list, or a dict of them by size."""
    if isinstance(results, list):
        return [r for r in results if isinstance(r, dict)]
    if isinstance(results, dict):
        for value in results.values():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                return value
        return [v for v in results.values() if isinstance(v, dict)]
    return []


def noop_inputs(inputs: Inputs, doc: dict[str, Any] | None) -> None:
    """Per poll: CPU, DynamoDB, KMS and wire bytes of a no-op sync; the largest over the mailbox sizes."""
    name = "bench_noop_sync.json"
    sizes = _sizes(doc["results"]) if doc else []

    def measured(key: str) -> float | None:
        found = [v for size in sizes for v in _numbers(_find(size, key))[:1]]
        return max(found) if found else None

    def calls(prefix: str, operations: tuple[str, ...] | None = None) -> float | None:
        per_size = []
        for size in sizes:
            counts = (_find(size, "aws_calls") or [None])[0]
            if isinstance(counts, dict):
                per_size.append(
                    sum(
                        n
                        for op, n in counts.items()
                        if op.startswith(prefix) and (operations is None or op.split(":", 1)[1] in operations)
                    )
                )
        return float(max(per_size)) if per_size else None

    cpu = measured("cpu_ms")
    if cpu is not None:
        inputs.set("noop_cpu_ms", cpu, f"{name}: cpu_ms (largest mailbox)")
    else:
        inputs.set("noop_cpu_ms", 64.0, "fallback, no cpu_ms in the JSON: issue 11's measured no-op CPU, 64 ms")

    writes = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
    for key, prefix, ops, fallback, why in (
        ("dynamodb_wru", "dynamodb:", writes, 4.0, "1 WRU per write call, items up to 1 KB"),
        (
            "dynamodb_rru",
            "dynamodb:",
            ("GetItem", "Query", "BatchGetItem"),
            1.0,
            "1 RRU per read call, items up to 4 KB",
        ),
        ("kms_calls", "kms:", None, 1.0, "one Decrypt per sync"),
    ):
        value = measured(key)
        if value is not None:
            inputs.set(f"noop_{key}", value, f"{name}: {key} (largest mailbox)")
        elif (counted := calls(prefix, ops)) is not None:
            inputs.set(f"noop_{key}", counted, f"{name}: aws_calls, {why}")
        else:
            inputs.set(f"noop_{key}", fallback, f"fallback, no {name}: {why}")

    wire = [
        max(_numbers(_find(size, "bytes_up"))[:1] or [0]) + max(_numbers(_find(size, "bytes_down"))[:1] or [0])
        for size in sizes
    ]
    if wire and max(wire) > 0:
        inputs.set("noop_wire_bytes", max(wire), f"{name}: bytes_up + bytes_down, plain IMAP")
    else:
        inputs.set("noop_wire_bytes", 1800.0, "fallback: the v2 no-op's 1.8 KB on the wire")


def throughput_inputs(inputs: Inputs, doc: dict[str, Any] | None) -> None:
    """CPU per polled account: the throughput bench's accounts per CPU-second when present (many
    accounts per invocation, all overheads), else the single no-op sync's CPU; and the worker's
    memory, threads and the throughput model's assumptions (see ``poll_gb_seconds``)."""
    name = "bench_throughput.json"
    found = _numbers(_find(doc["results"], "accounts_per_cpu_second")) if doc else []
    if found and found[0] > 0:
        inputs.set("poll_cpu_seconds", 1 / found[0], f"{name}: 1 / accounts_per_cpu_second")
    else:
        inputs.set("poll_cpu_seconds", inputs["noop_cpu_ms"] / 1000, "noop_cpu_ms, no bench_throughput.json")
    model_doc = (_find(doc["results"], "model") or [{}])[0] if doc else {}
    model_doc = model_doc if isinstance(model_doc, dict) else {}
    for key, field, fallback, why in (
        ("worker_memory_mb", "memory_mb", 1769.0, "template.yaml's worker MemorySize"),
        ("worker_threads", "threads", 16.0, "config.py's worker_threads default"),
        ("poll_wall_seconds", "wall_per_account_s_assumed", 0.5, "assumed: TLS, LOGIN, STATUS, LOGOUT remote"),
        ("lambda_cpu_slowdown", "lambda_cpu_slowdown_assumed", 2.0, "assumed: a Lambda vCPU against this core"),
    ):
        value = _numbers([model_doc.get(field)])
        if value:
            inputs.set(key, value[0], f"{name}: model.{field}")
        else:
            inputs.set(key, fallback, f"fallback: {why}")


def fanout_inputs(inputs: Inputs, doc: dict[str, Any] | None, template: dict[str, Any]) -> None:
    """SQS sends and scheduler reads per due account, and how many accounts one worker invocation syncs."""
    name = "bench_fanout.json"
    results = doc["results"] if doc else {}
    due = float(doc["parameters"].get("due_accounts", 0)) if doc else 0.0
    batches = _numbers(_find(results, "send_message_batch"))
    rru = _numbers(_find(results, "estimated_rru_per_tick"))
    if due and batches:
        inputs.set("send_batches_per_account", batches[0] / due, f"{name}: send_message_batch / due_accounts")
    else:
        inputs.set("send_batches_per_account", 0.1, "fallback: one SendMessageBatch per 10 accounts")
    if due and rru:
        inputs.set("scheduler_rru_per_account", rru[0] / due, f"{name}: estimated_rru_per_tick / due_accounts")
    else:
        inputs.set("scheduler_rru_per_account", 0.008, "fallback: keys-only due index, 80 RRU per 10,000")

    per_job = _numbers(_find(results, "accounts_per_job"))
    jobs = _numbers(_find(results, "jobs"))
    if per_job:
        inputs.set("accounts_per_job", per_job[0], f"{name}: accounts_per_job")
    elif due and jobs:
        inputs.set("accounts_per_job", due / jobs[0], f"{name}: due_accounts / jobs")
    elif due and batches:
        # A SendMessageBatch carries at most 10 jobs: at least this many accounts share a job.
        inputs.set(
            "accounts_per_job",
            max(1.0, due / min(due, batches[0] * 10)),
            f"{name}: due_accounts / (10 x send_message_batch), at least 1",
        )
    else:
        inputs.set("accounts_per_job", 1.0, "fallback: one account per job")

    worker = template["Resources"]["SyncWorkerFunction"]["Properties"]
    batch_size = next(
        (e["Properties"].get("BatchSize", 10) for e in worker.get("Events", {}).values() if e.get("Type") == "SQS"),
        10,
    )
    batch_size = float(batch_size) if isinstance(batch_size, int | float) else 10.0
    inputs.set("jobs_per_invocation", batch_size, "template.yaml: the worker's SQS BatchSize, batches taken as full")
    inputs.set(
        "accounts_per_invocation",
        inputs["accounts_per_job"] * batch_size,
        "accounts_per_job x jobs_per_invocation",
    )


# Mail that arrives outside the tenant's office hours (or at their end) makes the sync record the
# account's activity too (``planner.polling.record_activity``): one write more.
MESSAGES_OUTSIDE_OFFICE_HOURS = 0.2


def steady_message_inputs(inputs: Inputs, noop_doc: dict[str, Any] | None) -> bool:
    """Per stored message at the steady state: 50 messages a day polled every minute come one
    to a sync, so a message costs what a poll that finds one new message costs beyond a no-op
    (``bench_noop_sync.json``'s ``one_message_sync``; its CPU is process time, the no-op's the
    thread's). False when the JSON has none (then the first sync's figures are used)."""
    name = "bench_noop_sync.json"
    sizes = _sizes(noop_doc["results"]) if noop_doc else []
    found = [(size, size["one_message_sync"]) for size in sizes if isinstance(size.get("one_message_sync"), dict)]
    if not found:
        return False
    size, one = max(found, key=lambda pair: float(pair[1].get("cpu_ms", 0)))
    outside = one.get("outside_office_hours") if isinstance(one.get("outside_office_hours"), dict) else one
    share = MESSAGES_OUTSIDE_OFFICE_HOURS
    why = f"{share:.0%} outside office hours (assumed), where the sync also records the account's activity"

    def weighted(key: str) -> float:
        return (1 - share) * float(one[key]) + share * float(outside[key])

    inputs.set(
        "worker_cpu_ms_per_message",
        max(0.0, weighted("cpu_ms") - float(size.get("cpu_ms", 0))),
        f"{name}: one_message_sync cpu_ms - cpu_ms (a poll that finds one message, beyond a no-op); {why}",
    )
    inputs.set("wru_per_message", weighted("dynamodb_wru"), f"{name}: one_message_sync dynamodb_wru; {why}")
    inputs.set(
        "rru_per_message",
        max(0.0, weighted("dynamodb_rru") - float(size.get("dynamodb_rru", 0))),
        f"{name}: one_message_sync dynamodb_rru - dynamodb_rru; {why}",
    )
    return True


def message_inputs(inputs: Inputs, doc: dict[str, Any] | None) -> None:
    """Per stored message in a first sync: worker CPU, DynamoDB writes and reads."""
    name = "bench_initial_sync.json"
    results = doc["results"] if doc else {}
    cpu = _numbers(_find(results, "worker_cpu_ms_per_message"))
    if cpu:
        inputs.set("worker_cpu_ms_per_message", cpu[0], f"{name}: worker_cpu_ms_per_message")
    else:
        runs = [run for runs in _find(results, "runs")[:1] for run in runs if run.get("tool") == "mailsync"]
        per = sorted(r["process_seconds"] * 1000 / r["messages"] for r in runs if r.get("process_seconds"))
        if per:
            inputs.set("worker_cpu_ms_per_message", per[len(per) // 2], f"{name}: median process_seconds / messages")
        else:
            inputs.set("worker_cpu_ms_per_message", 7.2, "fallback: issue 11's profiled 7.2 ms")
    wru = _numbers(_find(results, "wru_per_message"))
    if wru:
        inputs.set("wru_per_message", wru[0], f"{name}: wru_per_message")
    else:
        inputs.set("wru_per_message", 12.2, "fallback: issue 11's measured 12.2 WRU, gsi1 and gsi2 projecting ALL")
    rru = _numbers(_find(results, "rru_per_message"))
    if rru:
        inputs.set("rru_per_message", rru[0], f"{name}: rru_per_message")
    else:
        inputs.set("rru_per_message", 1.0, "assumption: about one read per message, for duplicate checks and relinks")


def item(name: str, quantity: float, price: str, note: str = "") -> dict[str, Any]:
    unit_price = PRICES[price]["usd"]
    return {
        "item": name,
        "price": price,
        "quantity": quantity,
        "unit": PRICES[price]["per"],
        "unit_price_usd": unit_price,
        "usd": quantity * unit_price,
        "note": note,
    }


def lambda_gb_seconds(cpu_seconds: float) -> float:
    return cpu_seconds * LAMBDA_GB_SECONDS_PER_CPU_SECOND / CPU_UTILISATION


def poll_rate(inputs: Inputs, memory_mb: float, threads: float) -> tuple[float, str]:
    """Polls a second one invocation makes, and what bounds it, by the throughput bench's model:
    its vCPU share (CPU per poll x the Lambda slowdown) or its threads (each waits
    ``poll_wall_seconds`` on a mail server), whichever allows fewer."""
    cpu_bound = min(1.0, memory_mb / 1769) / (inputs["poll_cpu_seconds"] * inputs["lambda_cpu_slowdown"])
    thread_bound = threads / inputs["poll_wall_seconds"]
    return (cpu_bound, "CPU") if cpu_bound <= thread_bound else (thread_bound, "threads")


def poll_gb_seconds(inputs: Inputs, memory_mb: float | None = None, threads: float | None = None) -> float:
    """Billed GB-seconds per poll: the invocation is billed its memory for all of its wall time,
    so threads waiting on mail servers cost as much as a busy CPU."""
    memory_mb = inputs["worker_memory_mb"] if memory_mb is None else memory_mb
    threads = inputs["worker_threads"] if threads is None else threads
    return (memory_mb / 1024) / poll_rate(inputs, memory_mb, threads)[0]


# Worker settings the cost model also prices (MemorySize, WorkerThreads), for choosing them.
LAMBDA_OPTIONS = [(512, 16), (1024, 16), (1769, 16), (1024, 32), (1769, 32), (1769, 64)]


def model(inputs: Inputs, polls_per_user: float, messages_per_user_day: float, message_kb: float, users: int) -> dict:
    polls = USERS * polls_per_user
    rate, bound = poll_rate(inputs, inputs["worker_memory_mb"], inputs["worker_threads"])
    per_invocation = inputs["accounts_per_invocation"]
    invocations = polls / per_invocation
    log_gb = (invocations * LOG_BYTES_PER_INVOCATION) / GB
    polling = [
        item(
            "Lambda duration, worker",
            polls * poll_gb_seconds(inputs),
            "lambda_arm64_gb_second",
            f"{inputs['worker_memory_mb']:,.0f} MB and {inputs['worker_threads']:g} threads an invocation: "
            f"{rate:.0f} polls a second, {bound}-bound",
        ),
        item("Lambda requests, worker", invocations, "lambda_request", f"{per_invocation:g} accounts per invocation"),
        item("DynamoDB writes", polls * inputs["noop_dynamodb_wru"], "dynamodb_wru"),
        item("DynamoDB reads", polls * inputs["noop_dynamodb_rru"], "dynamodb_rru"),
        item(
            "DynamoDB reads, the scheduler's due queries", polls * inputs["scheduler_rru_per_account"], "dynamodb_rru"
        ),
        item("KMS", polls * inputs["noop_kms_calls"], "kms_request"),
        item(
            "SQS",
            polls * inputs["send_batches_per_account"] + 2 * invocations,
            "sqs_request",
            "SendMessageBatch, plus one receive and one delete batch per invocation",
        ),
        item("CloudWatch Logs ingestion", log_gb, "logs_ingestion_gb", "no-op syncs log at DEBUG"),
        item("CloudWatch Logs storage", log_gb, "logs_storage_gb_month", "30-day retention"),
        item("X-Ray", 0, "xray_trace", "PollerTracing is PassThrough by default"),
    ]

    messages = USERS * messages_per_user_day * DAYS
    mail_gb = messages * message_kb * 1000 / GB
    message_log_gb = messages * LOG_BYTES_PER_CHANGED_SYNC / GB
    mail = [
        item(
            "Lambda duration, worker",
            lambda_gb_seconds(messages * inputs["worker_cpu_ms_per_message"] / 1000),
            "lambda_arm64_gb_second",
        ),
        item("DynamoDB writes", messages * inputs["wru_per_message"], "dynamodb_wru"),
        item("DynamoDB reads", messages * inputs["rru_per_message"], "dynamodb_rru"),
        item("S3 PUT", messages, "s3_put", "the raw message"),
        item(
            "S3 storage",
            mail_gb / 2,
            "s3_storage_gb_month",
            f"the month's {mail_gb:.0f} GB, half a month on average; "
            f"every month it is kept adds ${mail_gb * PRICES['s3_storage_gb_month']['usd']:.2f}",
        ),
        item("KMS", 0, "kms_request", "the bucket key spares a call per object"),
        item("EventBridge events", messages * EVENTS_PER_MESSAGE, "eventbridge_event"),
        item(
            "CloudWatch Logs ingestion", message_log_gb, "logs_ingestion_gb", "one INFO line per sync that stored mail"
        ),
        item("CloudWatch Logs storage", message_log_gb, "logs_storage_gb_month"),
    ]

    ticks = DAYS * 24 * 60
    fixed = [
        item("Lambda duration, scheduler", ticks * SCHEDULER_GB_SECONDS_PER_TICK, "lambda_arm64_gb_second"),
        item("Lambda requests, scheduler", ticks, "lambda_request"),
        item("SQS, the event source's empty receives", ESM_EMPTY_RECEIVES_PER_MONTH, "sqs_request"),
        item("CloudWatch custom metrics", METRICS_PER_DEPLOYMENT, "metric_month"),
        item("CloudWatch alarms", ALARMS_PER_DEPLOYMENT, "alarm_month"),
    ]
    fixed_usd = sum(i["usd"] for i in fixed)
    polling_usd = sum(i["usd"] for i in polling) + fixed_usd * USERS / users

    # FixedEgressIps (off by default, not in the totals): two NAT gateways with their addresses,
    # and every byte to and from the mail servers through them.
    poll_bytes = polls * (inputs["noop_wire_bytes"] + TLS_HANDSHAKE_BYTES)
    fixed_egress = [
        item("NAT gateways", NAT_GATEWAYS * HOURS_PER_MONTH, "nat_gateway_hour", "one per availability zone"),
        item("Elastic IPs", NAT_GATEWAYS * HOURS_PER_MONTH, "public_ipv4_hour"),
        item(
            "NAT data, polling, per 1,000 users",
            poll_bytes / GB,
            "nat_gateway_gb",
            "IMAPS no-op with its TLS handshake",
        ),
        item("NAT data, mail, per 1,000 users", mail_gb, "nat_gateway_gb"),
    ]
    return {
        "polling_usd_per_1000_users_month": polling_usd,
        "messages_usd_per_1000_users_month": sum(i["usd"] for i in mail),
        "polling_items": polling,
        "messages_items": mail,
        "fixed_items": fixed,
        "fixed_usd_per_month": fixed_usd,
        "fixed_usd_in_polling_per_1000_users": fixed_usd * USERS / users,
        "fixed_egress_items": fixed_egress,
        "fixed_egress_usd_per_month": sum(i["usd"] for i in fixed_egress[:2]),
        "polls_per_1000_users_month": polls,
        "messages_per_1000_users_month": messages,
    }


def adaptive_polls_per_day(doc: dict[str, Any] | None) -> float:
    """Polls a user a day under adaptive polling as bench_fanout.py modelled it (the default office
    hours, no activity); every minute around the clock (1,440) without that figure."""
    try:
        return doc["results"]["polling"]["model"]["polls_per_account_per_30_days"] / 30  # type: ignore[index]
    except (KeyError, TypeError):
        return 24 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="read the -small bench JSONs, write bench_cost-small.json")
    parser.add_argument(
        "--polls-per-user-day",
        type=float,
        default=None,
        help="default: adaptive polling's figure from bench_fanout.json (office hours every minute, "
        "quiet hours every 15), else 1,440: every minute, around the clock",
    )
    parser.add_argument("--messages-per-user-day", type=float, default=50)
    parser.add_argument("--message-kb", type=float, default=75)
    parser.add_argument(
        "--deployment-users",
        type=int,
        default=10_000,
        help="users sharing the deployment's fixed costs (scheduler, metrics, alarms); default 10,000",
    )
    args = parser.parse_args()

    from devstack.provision import load_template

    template = load_template(ROOT / "template.yaml")
    inputs = Inputs()
    noop_inputs(inputs, load_result("bench_noop_sync", args.small))
    throughput_inputs(inputs, load_result("bench_throughput", args.small))
    fanout_inputs(inputs, load_result("bench_fanout", args.small), template)
    if not steady_message_inputs(inputs, load_result("bench_noop_sync", args.small)):
        message_inputs(inputs, load_result("bench_initial_sync", args.small))
    if args.polls_per_user_day is None:
        args.polls_per_user_day = adaptive_polls_per_day(load_result("bench_fanout", args.small))

    results = model(
        inputs, args.polls_per_user_day * DAYS, args.messages_per_user_day, args.message_kb, args.deployment_users
    )
    results["lambda_options"] = [
        {
            "memory_mb": memory,
            "threads": threads,
            "polls_per_second_per_invocation": poll_rate(inputs, memory, threads)[0],
            "bound_by": poll_rate(inputs, memory, threads)[1],
            "polling_lambda_usd_per_1000_users_month": USERS
            * args.polls_per_user_day
            * DAYS
            * poll_gb_seconds(inputs, memory, threads)
            * PRICES["lambda_arm64_gb_second"]["usd"],
        }
        for memory, threads in LAMBDA_OPTIONS
    ]
    results["inputs"] = inputs.values
    results["assumptions"] = {
        "days_per_month": DAYS,
        "lambda_gb_seconds_per_cpu_second": LAMBDA_GB_SECONDS_PER_CPU_SECOND,
        "cpu_utilisation": CPU_UTILISATION,
        "log_bytes_per_invocation": LOG_BYTES_PER_INVOCATION,
        "log_bytes_per_changed_sync": LOG_BYTES_PER_CHANGED_SYNC,
        "metrics_per_deployment": METRICS_PER_DEPLOYMENT,
        "alarms_per_deployment": ALARMS_PER_DEPLOYMENT,
        "scheduler_gb_seconds_per_tick": SCHEDULER_GB_SECONDS_PER_TICK,
        "esm_empty_receives_per_month": ESM_EMPTY_RECEIVES_PER_MONTH,
        "tls_handshake_bytes": TLS_HANDSHAKE_BYTES,
        "events_per_message": EVENTS_PER_MESSAGE,
        "cpu": "this machine's CPU time, taken as is for Graviton (arm64)",
    }
    results["prices"] = {"region": "eu-west-1", "as_of": PRICES_AS_OF, "note": PRICES_NOTE, "items": PRICES}
    parameters = {
        "users": USERS,
        "polls_per_user_day": args.polls_per_user_day,
        "messages_per_user_day": args.messages_per_user_day,
        "message_kb": args.message_kb,
        "deployment_users": args.deployment_users,
        "small": args.small,
    }

    for title, key in (("polling", "polling_items"), ("mail", "messages_items"), ("fixed", "fixed_items")):
        print(f"\n{title}, per month" + ("" if key == "fixed_items" else " per 1,000 users"))
        print_table(["item", "quantity", "USD"], [[i["item"], i["quantity"], round(i["usd"], 2)] for i in results[key]])
    print(
        f"\npolling ${results['polling_usd_per_1000_users_month']:.2f} "
        f"(with ${results['fixed_usd_in_polling_per_1000_users']:.2f} of the fixed costs), "
        f"mail ${results['messages_usd_per_1000_users_month']:.2f} per 1,000 users a month"
    )
    for name, value in inputs.values.items():
        print(f"  {name} = {value['value']:.4g}  ({value['source']})")
    write_results("bench_cost", parameters, results)
    if not args.small:
        cost_section.main([])


if __name__ == "__main__":
    main()
