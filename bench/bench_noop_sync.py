"""The cost of a sync that finds nothing new, for a small and a large mailbox.

An account with 5 mapped folders (INBOX, Sent, Drafts, Trash, Archive), each holding N messages
on the server (default N = 200 and N = 20,000; ``--small``: 200 and 2,000). To keep the first
sync affordable only the newest ``--in-window`` messages of each folder (default 200) are inside
the 30-day window; the rest are older, so both accounts sync the same number of messages while
the server-side mailbox differs a hundredfold. After the first sync and ``--warmup`` no-ops (a
warm container: modules loaded, the SSLContext and the password's data key cached), ``--noops``
no-op syncs are run and measured, per size:

- ``imap_commands_after_login``: tagged command lines after LOGIN, seen on the wire by a loopback
  TCP proxy in front of Dovecot's plain IMAP port (that account uses ``security: none`` so the
  commands are readable; they are the same under TLS), and the session's own counter;
- ``dynamodb_write_calls``, ``kms_calls`` and every AWS call by service and operation (boto3
  clients and PynamoDB alike, counted at ``botocore.client.BaseClient._make_api_call``);
- ``dynamodb_rru`` / ``dynamodb_wru``: capacity units computed from the items read and written
  (DynamoDB's item size rules: 4 KB per RRU, halved for eventually consistent reads; 1 KB per
  WRU, per item written — for an update or delete the item sent, a lower bound);
- ``cpu_ms``: the worker's own CPU for one no-op (median), on a second account of the same
  mailbox over TLS straight to Dovecot, as in production. Dovecot runs in its high-performance
  login mode (long-lived login processes), as the big providers run their servers: a TLS session
  is resumed on the next connection; ``tls_session_reused`` says whether every measured no-op's
  connection resumed one; ``cpu_ms_full_handshake``: the same no-op with a full TLS handshake
  (no cached session), interleaved with the others. AWS is a moto server in its own
  process and the proxy's threads are not on the worker's thread, so this is
  ``time.thread_time()`` of the thread running ``run_job`` (the no-op starts no threads).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import gc
import math
import os
import random
import re
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import benchlib
from benchlib import MotoServer, print_table, write_results

from devstack.dovecot import DovecotServer

FOLDERS = {"inbox": "INBOX", "sent": "Sent", "drafts": "Drafts", "trash": "Trash", "archive": "Archive"}
DYNAMODB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
_TAGGED = re.compile(rb"^([A-Za-z0-9]+) ([A-Za-z]+)(?: ([A-Za-z]+))?")


class CountingProxy:
    """A loopback TCP proxy that counts the client's tagged IMAP command lines and bytes."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.commands: Counter[str] = Counter()
        self.sequence: list[str] = []  # the command verbs in order
        self.bytes_up = 0
        self.bytes_down = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self.lock:
            self.commands = Counter()
            self.sequence = []
            self.bytes_up = self.bytes_down = 0

    def _accept(self) -> None:
        self.listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.target, timeout=30)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        pending = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                with self.lock:
                    if upstream:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
                if upstream:
                    pending += data
                    *lines, pending = pending.split(b"\r\n")
                    for line in lines:
                        match = _TAGGED.match(line)
                        if match:
                            verb = match.group(2).upper().decode()
                            if verb == "UID" and match.group(3):
                                verb += " " + match.group(3).upper().decode()
                            with self.lock:
                                self.commands[verb] += 1
                                self.sequence.append(verb)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)


def _raw(subject: str, when: dt.datetime, message_id: str) -> bytes:
    """A small plain-text message, formatted directly (100,000 of them through email.message is slow)."""
    body = f"{subject}: nothing new here.\r\n" * 8
    return (
        "From: Alice Example <alice@example.com>\r\nTo: Bench User <bench@example.com>\r\n"
        f"Subject: {subject}\r\nDate: {format_datetime(when)}\r\nMessage-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
    ).encode()


def fill(user, per_folder: int, in_window: int) -> float:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    started = time.perf_counter()
    for f_index, folder in enumerate(FOLDERS.values()):

        def messages(folder=folder, f_index=f_index):
            for i in range(per_folder):
                # The newest in_window messages are 1-20 days old, the rest 40-400 days.
                age = 1 + (i % 20) if i < in_window else 40 + (i % 360)
                when = now - dt.timedelta(days=age, seconds=i % 3600)
                raw = _raw(f"{folder} {i}", when, f"<noop-{f_index}-{i}@bench.mailsync.test>")
                yield raw, when, (["\\Seen"] if i % 3 else [])

        benchlib.append_all(user, folder, messages())
    return time.perf_counter() - started


def item_bytes(item: dict[str, Any]) -> int:
    """An item's size by DynamoDB's rules: attribute names plus values (low-level JSON form)."""
    return sum(len(name.encode()) + _value_bytes(value) for name, value in item.items())


def _value_bytes(value: dict[str, Any]) -> int:
    ((kind, raw),) = value.items()
    if kind == "S":
        return len(raw.encode())
    if kind == "N":
        return (len(raw.strip("-").lstrip("0").replace(".", "")) + 1) // 2 + 1
    if kind == "B":
        return len(raw) if isinstance(raw, bytes) else len(base64.b64decode(raw))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + _value_bytes(v) for v in raw)
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + _value_bytes(v) for k, v in raw.items())
    if kind in ("SS", "NS", "BS"):
        return sum(_value_bytes({kind[0]: v}) for v in raw)
    return 0


@dataclass
class AwsUsage:
    calls: Counter[str] = field(default_factory=Counter)
    rru: float = 0.0
    wru: float = 0.0


@contextlib.contextmanager
def count_aws_usage() -> Iterator[AwsUsage]:
    """Every AWS call as ``service:Operation`` plus DynamoDB capacity units from the items."""
    from botocore.client import BaseClient

    usage = AwsUsage()
    original = BaseClient._make_api_call
    lock = threading.Lock()

    def counted(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        response = original(self, operation_name, api_params)
        service = self.meta.service_model.service_name
        rru = wru = 0.0
        if service == "dynamodb":
            rru, wru = _capacity(operation_name, api_params, response)
        with lock:
            usage.calls[f"{service}:{operation_name}"] += 1
            usage.rru += rru
            usage.wru += wru
        return response

    BaseClient._make_api_call = counted  # type: ignore[method-assign]
    try:
        yield usage
    finally:
        BaseClient._make_api_call = original  # type: ignore[method-assign]


def _capacity(operation: str, params: dict[str, Any], response: dict[str, Any]) -> tuple[float, float]:
    def read_units(size: int, consistent: bool) -> float:
        units = max(1, math.ceil(size / 4096))
        return float(units) if consistent else units / 2

    if operation == "GetItem":
        return read_units(item_bytes(response.get("Item") or {}), bool(params.get("ConsistentRead"))), 0.0
    if operation in ("Query", "Scan"):
        size = sum(item_bytes(i) for i in response.get("Items", []))
        return read_units(size, bool(params.get("ConsistentRead"))), 0.0
    if operation == "BatchGetItem":
        consistent = {t: bool(spec.get("ConsistentRead")) for t, spec in params.get("RequestItems", {}).items()}
        found = response.get("Responses", {})
        return sum(
            read_units(item_bytes(i), consistent.get(t, False)) for t, items in found.items() for i in items
        ), 0.0
    if operation == "PutItem":
        return 0.0, float(max(1, math.ceil(item_bytes(params["Item"]) / 1024)))
    if operation in ("UpdateItem", "DeleteItem"):
        return 0.0, 1.0
    if operation == "BatchWriteItem":
        writes = [w for table in params.get("RequestItems", {}).values() for w in table]
        return 0.0, float(
            sum(max(1, math.ceil(item_bytes(w.get("PutRequest", {}).get("Item", {})) / 1024)) for w in writes)
        )
    if operation == "TransactWriteItems":
        return 0.0, 2.0 * len(params.get("TransactItems", []))
    return 0.0, 0.0


def after_login(sequence: list[str]) -> int:
    """Commands after the last LOGIN/AUTHENTICATE of the session."""
    logins = [i for i, verb in enumerate(sequence) if verb in ("LOGIN", "AUTHENTICATE")]
    return len(sequence) - (logins[-1] + 1) if logins else len(sequence)


def measure(server: DovecotServer, per_folder: int, in_window: int, noops: int, warmup: int) -> dict:
    from mailsync.mailbox.transport import clear_tls_sessions, tls_session_cache_stats
    from mailsync.services import sync_jobs
    from mailsync.sync.planner import jobs as policy

    user = server.add_user()
    fill_seconds = fill(user, per_folder, in_window)
    proxy = CountingProxy(server.imap_port)
    who, who_tls = f"noop-{per_folder}", f"noop-{per_folder}-tls"

    def run(user_id: str) -> Any:
        # A scheduled poll: a sync the user asks for (reason "user") always confirms itself with a write.
        result = sync_jobs.run_job(sync_jobs.SyncJob(tenant_id=benchlib.TENANT, user_id=user_id, reason="schedule"))
        if result.status != "synced" or result.outcome is None or not result.no_op:
            raise RuntimeError(f"no-op sync ended {result.status} {result.outcome}")
        return result

    try:
        login = {"host": "127.0.0.1", "username": user.username, "password": user.password}
        benchlib.save_account(who, {**login, "port": proxy.port, "security": "none"}, FOLDERS)
        benchlib.save_account(who_tls, {**login, "port": server.imaps_port, "security": "ssl"}, FOLDERS)
        started = time.perf_counter()
        first = benchlib.run_until_synced(who)
        first_seconds = time.perf_counter() - started
        if first["status"] != "synced":
            raise RuntimeError(f"first sync ended {first}")
        if benchlib.run_until_synced(who_tls)["status"] != "synced":
            raise RuntimeError("first sync of the TLS account did not complete")
        # A scheduled job right after a success is skipped as a duplicate (MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS):
        # polls come a minute apart in production, so wait that rule out once.
        time.sleep(policy.MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS + 1)
        for _ in range(warmup):
            run(who)
            run(who_tls)
        samples = []
        for _ in range(noops):
            proxy.reset()
            with count_aws_usage() as usage:
                t0 = time.perf_counter()
                result = run(who)
                seconds = time.perf_counter() - t0
            time.sleep(0.2)  # let the proxy threads see the LOGOUT exchange close
            with proxy.lock:
                wire = dict(proxy.commands)
                sequence = list(proxy.sequence)
                up, down = proxy.bytes_up, proxy.bytes_down
            calls = dict(sorted(usage.calls.items()))
            samples.append(
                {
                    "seconds": seconds,
                    "imap_commands_session": result.outcome.imap_commands,
                    "imap_commands_wire": sum(wire.values()),
                    "imap_commands_after_login": after_login(sequence),
                    "wire_commands": sequence,
                    "bytes_up": up,
                    "bytes_down": down,
                    "aws_calls": calls,
                    "aws_by_service": benchlib.by_service(usage.calls),
                    "dynamodb_write_calls": sum(
                        n
                        for op, n in calls.items()
                        if op.split(":")[1] in DYNAMODB_WRITES and op.startswith("dynamodb:")
                    ),
                    "dynamodb_rru": usage.rru,
                    "dynamodb_wru": usage.wru,
                    "kms_calls": sum(n for op, n in calls.items() if op.startswith("kms:")),
                }
            )
        cpu_ms = []
        process_ms = []
        full_handshake_ms = []
        resumed = 0
        for _ in range(noops):
            gc.collect()
            before = tls_session_cache_stats().resumed
            t0, p0 = time.thread_time(), time.process_time()
            run(who_tls)
            cpu_ms.append((time.thread_time() - t0) * 1000)
            process_ms.append((time.process_time() - p0) * 1000)
            resumed += tls_session_cache_stats().resumed - before
            # The same no-op with a full handshake, interleaved so that both see the same load.
            clear_tls_sessions()
            gc.collect()
            t0 = time.thread_time()
            run(who_tls)
            full_handshake_ms.append((time.thread_time() - t0) * 1000)
        one_message = one_message_syncs(user, who_tls, noops)
    finally:
        proxy.close()
    last = samples[-1]
    return {
        "messages_per_folder_on_server": per_folder,
        "messages_on_server": per_folder * len(FOLDERS),
        "in_window_per_folder": min(in_window, per_folder),
        # The figures of issue 11 (the last sample; noop_samples_identical says whether all agree).
        "imap_commands_after_login": last["imap_commands_after_login"],
        "dynamodb_write_calls": last["dynamodb_write_calls"],
        "dynamodb_wru": last["dynamodb_wru"],
        "dynamodb_rru": last["dynamodb_rru"],
        "kms_calls": last["kms_calls"],
        "cpu_ms": statistics.median(cpu_ms),
        "cpu_ms_samples": cpu_ms,
        "tls_session_reused": resumed == noops,
        "tls_handshakes_resumed": resumed,
        "cpu_ms_full_handshake": statistics.median(full_handshake_ms),
        "cpu_ms_full_handshake_samples": full_handshake_ms,
        "process_cpu_ms_samples": process_ms,
        "one_message_sync": one_message,
        "synced_by_first_sync": first["created"],
        "fill_seconds": fill_seconds,
        "first_sync_seconds": first_seconds,
        "first_sync_imap_commands": first["imap_commands"],
        "noop_median_seconds": statistics.median(s["seconds"] for s in samples),
        "noop_samples_identical": all(
            (s["wire_commands"], s["aws_calls"]) == (last["wire_commands"], last["aws_calls"]) for s in samples
        ),
        "noop": last,
        "noop_samples": samples,
    }


def one_message_syncs(user: Any, user_id: str, count: int) -> dict[str, Any]:
    """Scheduled polls that each find one new message in INBOX: the steady state of a mailbox
    (50 messages a day polled every minute come one to a sync), so these are the figures a
    message costs then, all writes of the sync included (lease, checkpoint, S3, events).
    ``cpu_ms`` is process CPU time (such a sync stores on pool threads; the counting proxy is
    idle: this account goes straight to Dovecot), less the write counting's own.

    Messages come ~15 minutes apart (50 in 12 office hours), so each sample starts with the
    account's last activity 15 minutes back. Whether the sync records activity depends on the
    tenant's office hours (``planner.polling.record_activity``): samples alternate between
    office hours all day (the top-level figures) and none (``outside_office_hours``)."""
    from mailsync import dal
    from mailsync.aws import client
    from mailsync.config import get_settings
    from mailsync.domain import WEEKDAYS, OfficeHours
    from mailsync.services import sync_jobs
    from mailsync.sync.planner import jobs as policy

    always = OfficeHours(time_zone="UTC", days=WEEKDAYS, start="00:00", end="00:00")
    never = OfficeHours(time_zone="UTC", days=(), start="00:00", end="00:00")

    settings = get_settings()
    units = benchlib.WriteUnits.for_tables(client("dynamodb"), [settings.messages_table, settings.accounts_table])
    rng = random.Random(11)
    samples = []
    # Polls come a minute apart in production; the duplicate rule would skip these.
    spacing, policy.MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS = policy.MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS, 0
    try:
        for i in range(2 * count):
            outside = i % 2 == 1
            dal.save_office_hours(benchlib.TENANT, never if outside else always)
            dal.record_activity(benchlib.TENANT, user_id, int(time.time()) - 15 * 60)
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            size, attachment = benchlib.realistic_size(rng, 0.04)
            raw = benchlib.make_mail(rng, 100_000 + i, now, size, attachment)
            benchlib.append_all(user, "INBOX", [(raw, now, [])])
            gc.collect()
            before_wru, before_cpu = units.total, units.cpu_seconds
            # Write units outermost: their own item reads bypass the usage count inside.
            with benchlib.count_write_units(units), count_aws_usage() as usage:
                p0 = time.process_time()
                result = sync_jobs.run_job(
                    sync_jobs.SyncJob(tenant_id=benchlib.TENANT, user_id=user_id, reason="schedule")
                )
                cpu = time.process_time() - p0 - (units.cpu_seconds - before_cpu)
            if result.status != "synced" or result.outcome is None or result.outcome.created != 1:
                raise RuntimeError(f"one-message sync ended {result.status} {result.outcome}")
            calls = dict(sorted(usage.calls.items()))
            samples.append(
                {
                    "outside_office_hours": outside,
                    "bytes": len(raw),
                    "cpu_ms": cpu * 1000,
                    "dynamodb_wru": units.total - before_wru,
                    "dynamodb_rru": usage.rru,
                    "dynamodb_write_calls": sum(
                        n
                        for op, n in calls.items()
                        if op.startswith("dynamodb:") and op.split(":")[1] in DYNAMODB_WRITES
                    ),
                    "aws_calls": calls,
                }
            )
    finally:
        policy.MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS = spacing
        dal.save_office_hours(benchlib.TENANT, OfficeHours())

    def medians(of: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "syncs": len(of),
            "cpu_ms": statistics.median(s["cpu_ms"] for s in of),
            "dynamodb_wru": statistics.median(s["dynamodb_wru"] for s in of),
            "dynamodb_rru": statistics.median(s["dynamodb_rru"] for s in of),
            "dynamodb_write_calls": statistics.median(s["dynamodb_write_calls"] for s in of),
        }

    return {
        **medians([s for s in samples if not s["outside_office_hours"]]),
        "outside_office_hours": medians([s for s in samples if s["outside_office_hours"]]),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="200 and 2,000 per folder, 20 in the window")
    parser.add_argument("--sizes", help="messages per folder, comma-separated (default 200,20000)")
    parser.add_argument("--in-window", type=int, help="messages per folder inside the window (default 200)")
    parser.add_argument("--noops", type=int, default=7, help="measured no-ops per size (median of these)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured no-ops first (a warm container)")
    benchlib.add_connections_option(parser)
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("200,2000" if args.small else "200,20000")).split(",")]
    in_window = args.in_window or (20 if args.small else 200)

    tmp = Path(tempfile.mkdtemp(prefix="mailsync-bench-noop-"))
    results = []
    try:
        # High-performance login mode: TLS sessions resume, as with the big providers.
        with (
            DovecotServer(tmp / "dovecot", login_reuse=True) as server,
            MotoServer(keepalive=not args.close_connections) as moto,
        ):
            os.environ.update(benchlib.aws_env(moto.endpoint))
            from devstack.provision import load_template, provision
            from devstack.run import TEMPLATE

            os.environ.update(provision(load_template(TEMPLATE), endpoint_url=moto.endpoint))
            os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
            os.environ["MAILSYNC_ALLOW_PRIVATE_HOSTS"] = "true"
            os.environ["MAILSYNC_ALLOW_INSECURE"] = "true"
            os.environ["MAILSYNC_EXTRA_CA_FILE"] = str(server.ca_file)
            benchlib.reset_caches()
            for per_folder in sizes:
                print(f"{len(FOLDERS)} folders x {per_folder:,} messages ...", flush=True)
                results.append(measure(server, per_folder, in_window, args.noops, args.warmup))
                r = results[-1]
                print(
                    f"  filled in {r['fill_seconds']:.1f} s; first sync {r['synced_by_first_sync']} messages "
                    f"in {r['first_sync_seconds']:.1f} s",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nNo-op sync (after the first sync), {len(FOLDERS)} mapped folders; only {in_window} messages per folder "
        "are within the 30-day window, the rest are older (what varies is the server-side mailbox size):"
    )
    rows = []
    for r in results:
        n = r["noop"]
        rows.append(
            [
                r["messages_on_server"],
                r["synced_by_first_sync"],
                r["imap_commands_after_login"],
                n["imap_commands_wire"],
                n["bytes_up"] + n["bytes_down"],
                r["dynamodb_write_calls"],
                r["dynamodb_wru"],
                r["dynamodb_rru"],
                r["kms_calls"],
                sum(n["aws_by_service"].values()),
                r["cpu_ms"],
                r["cpu_ms_full_handshake"],
                r["tls_session_reused"],
            ]
        )
    print_table(
        [
            "on server",
            "synced",
            "IMAP after login",
            "IMAP (wire)",
            "wire bytes",
            "DDB writes",
            "WRU",
            "RRU",
            "KMS",
            "all AWS",
            "worker CPU ms",
            "CPU ms, full handshake",
            "TLS resumed",
        ],
        rows,
    )
    for r in results:
        n = r["noop"]
        aws = ", ".join(f"{k} {v}" for k, v in n["aws_calls"].items())
        print(f"  {r['messages_on_server']:>7,}: wire: {' '.join(n['wire_commands'])}")
        print(f"           AWS: {aws}")
        print(f"           worker CPU ms: {', '.join(f'{c:.1f}' for c in r['cpu_ms_samples'])}")
        one = r["one_message_sync"]
        for label, figures in (("in office hours", one), ("outside them", one["outside_office_hours"])):
            print(
                f"           a poll finding one new message, {label} (median of {figures['syncs']}): "
                f"{figures['cpu_ms']:.1f} ms of CPU, {figures['dynamodb_wru']:g} WRU in "
                f"{figures['dynamodb_write_calls']:g} write calls, {figures['dynamodb_rru']:g} RRU"
            )
    write_results(
        "bench_noop_sync",
        {
            "folders": list(FOLDERS.values()),
            "messages_per_folder": sizes,
            "in_window_per_folder": in_window,
            "noops": args.noops,
            "warmup": args.warmup,
            "small": args.small,
            "aws": "moto server in its own process",
            "aws_keepalive": not args.close_connections,
            "transport": "counts: plain IMAP through a counting loopback proxy (security: none); "
            "cpu_ms: IMAPS straight to Dovecot",
            "cpu_ms": "time.thread_time() of the thread running run_job, median of the no-ops",
            "dovecot_login_mode": "high-performance (service_count = 0): TLS sessions resume",
        },
        results,
    )


if __name__ == "__main__":
    main()
