"""Shared helpers of the bench scripts: machine facts, tables, JSON results, measured subprocesses,
a moto server per run, deterministic mail, AWS call counting, and the worker/setup child modes.

Not a benchmark itself. ``python bench/benchlib.py setup|worker ...`` are the child processes the
scripts start (setup: provision template.yaml into a moto server and save an account through the
API handler; worker: run ``run_job`` until the first sync is done), so that a worker's peak RSS
can be read from ``wait4`` without the harness, moto or the API code in it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
for _p in (str(ROOT / "layers" / "shared"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

TENANT = "bench"


# --------------------------------------------------------------------------- output


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                facts["mem_total_mb"] = int(line.split()[1]) // 1024
                break
    for tool in ("dovecot", "mbsync"):
        path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
        if path:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
                facts[f"{tool}_version"] = (out.stdout or out.stderr).strip().splitlines()[0]
    return facts


def results_path(name: str, small: bool = False) -> Path:
    """``bench/results/<name>.json``; ``--small`` smoke runs go to ``<name>-small.json`` so that
    they never overwrite the real figures."""
    return RESULTS_DIR / f"{name}{'-small' if small else ''}.json"


def write_results(name: str, parameters: dict[str, Any], results: Any) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = results_path(name, bool(parameters.get("small")))
    doc = {"benchmark": name, "machine": machine_facts(), "parameters": parameters, "results": results}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nresults written to {path.relative_to(ROOT)}")
    return path


def print_table(headers: list[str], rows: Iterable[Iterable[Any]]) -> None:
    text_rows = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in text_rows:
        print("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").replace("x", "").isdigit()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Measured:
    returncode: int
    wall_seconds: float
    maxrss_mb: float  # wait4's ru_maxrss: includes the harness's RSS at fork (see run_measured)
    stdout: str
    stderr: str
    peak_hwm_mb: float = float("nan")  # the process's own VmHWM (its memory since exec)
    cpu_seconds: float = float("nan")  # user + system CPU of the process (wait4)

    def json_line(self) -> dict[str, Any]:
        """The last line of stdout that is a JSON object (what a child mode prints)."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"child printed no result (exit {self.returncode}):\n{self.stderr[-3000:]}")


def run_measured(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> Measured:
    """Run ``cmd`` and return its wall time, CPU time and peak memory.

    ``wait4`` gives this one child's ``ru_maxrss`` (``RUSAGE_CHILDREN`` would be the maximum over
    all children so far), but Linux keeps the RSS the forked child had *before* exec in it, i.e.
    the harness's own memory. ``peak_hwm_mb`` is the process's VmHWM, which exec starts afresh:
    sampled from ``/proc/<pid>/status`` while it runs (a child of ours that reports its own
    VmHWM at exit is more exact: ``_child_worker`` does).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        timer = threading.Timer(timeout, lambda: _kill_session(proc.pid))
        timer.start()
        hwm = _HwmSampler(proc.pid)
        hwm.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            hwm.stop()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            proc.returncode,
            wall,
            usage.ru_maxrss / 1024,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            peak_hwm_mb=hwm.peak_mb,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
        )


class _HwmSampler:
    """Reads a running process's VmHWM every 20 ms (a high-water mark: the last reading is the
    peak up to then); stops when told or when the process is gone."""

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.peak_mb = float("nan")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = vm_hwm_mb(self.path)
            if value == value:  # not NaN: the process (or its zombie's status) is still readable
                self.peak_mb = value if self.peak_mb != self.peak_mb else max(self.peak_mb, value)
            self._stop.wait(0.02)


def vm_hwm_mb(status: Path = Path("/proc/self/status")) -> float:
    """VmHWM (peak resident set since exec) of a process, in MB; NaN when unreadable."""
    with contextlib.suppress(OSError, ValueError):
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def aws_env(endpoint: str | None = None) -> dict[str, str]:
    from devstack.run import local_defaults

    env = dict(os.environ)
    env.update(local_defaults())
    env["MAILSYNC_IMAP_TIMEOUT_SECONDS"] = "60"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "layers" / "shared")])
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    else:
        env.pop("AWS_ENDPOINT_URL", None)
    return env


class MotoServer:
    """moto in server mode in its own process on 127.0.0.1 (fresh state per instance).

    ``keepalive`` (the default) serves moto's WSGI app with waitress, which keeps HTTP/1.1
    connections open as AWS's endpoints do, so botocore reuses its pooled connections as it does
    on AWS. ``keepalive=False`` is the werkzeug development server moto's own ``moto_server``
    runs, which answers every request with ``Connection: close``: every AWS call then pays a TCP
    connect and close in the worker (about a quarter of a first sync's CPU; bench/README.md).
    """

    def __init__(self, keepalive: bool = True) -> None:
        self.port = free_port()
        self.keepalive = keepalive
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MotoServer:
        cmd = child_cmd("moto", str(self.port), *([] if self.keepalive else ["--close-connections"]))
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log, env=aws_env(), start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.05)
        self._log.seek(0)
        output = self._log.read().decode(errors="replace")[-3000:]
        self.__exit__(None, None, None)
        raise RuntimeError(f"moto server did not start:\n{output}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _kill_session(self.proc.pid)
            self.proc.wait(timeout=30)
        self._log.close()


def add_connections_option(parser: argparse.ArgumentParser) -> None:
    """``--close-connections``: the scripts that measure the worker's CPU can run against the
    old moto server that closes every connection, to show what that costs."""
    parser.add_argument(
        "--close-connections",
        action="store_true",
        help="serve moto with werkzeug's server, which closes the connection after every AWS call "
        "(default: keep-alive, as AWS's endpoints)",
    )


def serve_moto(port: int, keepalive: bool) -> None:
    """Serve moto's own WSGI app (what ``moto_server`` and ``ThreadedMotoServer`` serve) on
    127.0.0.1 until killed."""
    import logging

    from moto.server import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    if not keepalive:
        from werkzeug.serving import run_simple

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        run_simple("127.0.0.1", port, app, threaded=True, use_reloader=False)
        return
    import waitress

    # An idle keep-alive connection holds no thread (waitress multiplexes the sockets and hands
    # whole requests to its threads), so a few threads serve the worker's many pooled
    # connections; the connection limit is above what the worker's botocore and PynamoDB pools
    # can open (up to 160 each), since past it waitress stops accepting. poll(), not select():
    # no limit of 1,024 file descriptors.
    waitress.serve(
        app,
        host="127.0.0.1",
        port=port,
        threads=16,
        connection_limit=4000,
        asyncore_use_poll=True,
        ident="moto",
        _quiet=True,
    )


# --------------------------------------------------------------------------- mail


_WORDS = [
    "candidate",
    "interview",
    "offer",
    "salary",
    "position",
    "recruiter",
    "feedback",
    "schedule",
    "meeting",
    "call",
    "contract",
    "start",
    "date",
    "reference",
    "manager",
    "team",
    "project",
    "proposal",
    "agenda",
    "notes",
    "follow",
    "up",
    "thanks",
    "regards",
    "availability",
    "vacancy",
    "application",
    "resume",
    "portfolio",
    "senior",
    "junior",
    "remote",
    "office",
    "benefits",
]


def _text(rng: random.Random, size: int) -> str:
    out: list[str] = []
    length = 0
    line: list[str] = []
    while length < size:
        word = rng.choice(_WORDS)
        line.append(word)
        length += len(word) + 1
        if len(line) >= 12:
            out.append(" ".join(line))
            line = []
    out.append(" ".join(line))
    return "\n".join(out) + "\n"


def make_mail(rng: random.Random, index: int, date: dt.datetime, size: int, attachment: bool) -> bytes:
    """A deterministic message of about ``size`` bytes; with ``attachment`` most of it is a base64 part."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Sender {index % 97} <sender{index % 97}@example.com>"
    msg["To"] = "Bench User <bench@example.com>"
    if index % 5 == 0:
        msg["Cc"] = f"Colleague {index % 13} <colleague{index % 13}@example.com>"
    msg["Subject"] = f"bench message {index}: {rng.choice(_WORDS)} {rng.choice(_WORDS)}"
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = f"<bench-{index}-{rng.getrandbits(32):08x}@bench.mailsync.test>"
    if attachment:
        msg.set_content(_text(rng, 1500))
        payload = rng.randbytes(max(1, int(size * 0.74)))  # base64 grows it by a third
        msg.add_attachment(payload, maintype="application", subtype="pdf", filename=f"cv-{index}.pdf")
    else:
        msg.set_content(_text(rng, max(200, size - 600)))
    return msg.as_bytes()


def realistic_size(rng: random.Random, attachment_share: float) -> tuple[int, bool]:
    """Mostly 2-20 KB text; ``attachment_share`` of 100 KB-2 MB (log-uniform) with an attachment."""
    if rng.random() < attachment_share:
        return int(10 ** rng.uniform(5.0, 6.301)), True
    return int(10 ** rng.uniform(3.301, 4.301)), False


def append_all(user: Any, folder: str, messages: Iterable[tuple[bytes, dt.datetime, list[str]]]) -> int:
    """MULTIAPPEND in chunks of ~8 MB / 500 messages; returns bytes appended."""
    total = 0
    with user.client() as client:
        chunk: list[dict[str, Any]] = []
        size = 0
        for raw, date, flags in messages:
            chunk.append({"msg": raw, "date": date, "flags": flags})
            size += len(raw)
            total += len(raw)
            if size > 8 << 20 or len(chunk) >= 500:
                client.imap.multiappend(folder, chunk)
                chunk, size = [], 0
        if chunk:
            client.imap.multiappend(folder, chunk)
    return total


# --------------------------------------------------------------------------- counting


def count_aws_calls() -> contextlib.AbstractContextManager[Counter[str]]:
    """Every AWS call as ``service:Operation`` (one counter for the benchmarks and the tests)."""
    from devstack.aws_calls import count_aws_calls as counter

    return counter()


# --------------------------------------------------------------------------- write units


def _attr_size(value: dict[str, Any]) -> int:
    from devstack.item_size import attribute_size  # DynamoDB's rules, shared with the tests

    return attribute_size(value)


def item_size(item: dict[str, Any], names: Iterable[str] | None = None) -> int:
    from devstack.item_size import item_size as size

    return size(item, names)


def _units(size: int) -> int:
    return max(1, -(-size // 1024))


class WriteUnits:
    """Write capacity units of the DynamoDB writes made while counting, estimated from each
    written item's size and the tables' GSIs (key schema and projection, from DescribeTable):
    a put costs ceil(size / 1 KB) in the table and, for each GSI whose keys the item has,
    ceil(projected size / 1 KB) more; a delete 1 (+1 per GSI entry removed: unknown here, so
    not counted); an UpdateItem ceil(item size / 1 KB) of the item as it is afterwards, plus
    ceil(projected size / 1 KB) for each GSI the item is in whose keys or projected attributes
    the update sets (DynamoDB charges the larger of the item before and after; without the item,
    ``count_write_units`` outside a test double, the written values: a lower bound); a
    TransactWriteItems twice its parts. Moto reports no capacity of its own.
    """

    def __init__(self, indexes: dict[str, list[tuple[list[str], str, list[str]]]]) -> None:
        self.indexes = indexes  # table -> [(key attributes, projection type, non-key attributes)]
        self.by_kind: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.items = 0
        # The counting's own CPU (item sizes of every write), which the worker in AWS does not
        # spend: benches subtract it from the worker's CPU time.
        self.cpu_seconds = 0.0
        # Reads an item by table and key as it is now (set by ``count_write_units``).
        self.read_item: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_tables(cls, client: Any, tables: Iterable[str]) -> WriteUnits:
        indexes: dict[str, list[tuple[list[str], str, list[str]]]] = {}
        for name in tables:
            table = client.describe_table(TableName=name)["Table"]
            base = [k["AttributeName"] for k in table["KeySchema"]]
            indexes[name] = [
                (
                    [k["AttributeName"] for k in g["KeySchema"]] + base,
                    g["Projection"]["ProjectionType"],
                    list(g["Projection"].get("NonKeyAttributes", [])),
                )
                for g in table.get("GlobalSecondaryIndexes", [])
            ]
        return cls(indexes)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def _put(self, table: str, item: dict[str, Any]) -> int:
        units = _units(item_size(item))
        for keys, projection, extra in self.indexes.get(table, []):
            if all(k in item for k in keys):
                names = None if projection == "ALL" else keys + (extra if projection == "INCLUDE" else [])
                units += _units(item_size(item, names))
        return units

    def _one(self, operation: str, params: dict[str, Any]) -> tuple[int, int]:
        table = params.get("TableName", "")
        if operation == "PutItem":
            return self._put(table, params["Item"]), 1
        if operation == "DeleteItem":
            return 1, 1
        if operation == "UpdateItem":
            current = self.read_item(table, params["Key"]) if self.read_item is not None else None
            if current is None:
                values = params.get("ExpressionAttributeValues") or {}
                return _units(item_size(params["Key"]) + sum(_attr_size(v) for v in values.values())), 1
            aliases = params.get("ExpressionAttributeNames") or {}
            written = {aliases.get(n, n) for n in re.findall(r"#\w+", params.get("UpdateExpression", ""))}
            units = _units(item_size(current))
            for keys, projection, extra in self.indexes.get(table, []):
                if all(k in current for k in keys):
                    names = None if projection == "ALL" else keys + (extra if projection == "INCLUDE" else [])
                    if names is None or written & set(names):
                        units += _units(item_size(current, names))
            return units, 1
        if operation == "BatchWriteItem":
            units = items = 0
            for name, requests in params["RequestItems"].items():
                for request in requests:
                    items += 1
                    units += self._put(name, request["PutRequest"]["Item"]) if "PutRequest" in request else 1
            return units, items
        if operation == "TransactWriteItems":
            units = items = 0
            for part in params["TransactItems"]:
                ((kind, body),) = part.items()
                if kind == "ConditionCheck":
                    continue
                op = {"Put": "PutItem", "Delete": "DeleteItem", "Update": "UpdateItem"}[kind]
                u, n = self._one(op, body)
                units, items = units + 2 * u, items + n
            return units, items
        return 0, 0

    def record(self, operation: str, params: dict[str, Any]) -> None:
        started = time.thread_time()
        units, items = self._one(operation, params)
        with self._lock:
            if units:
                self.by_kind[operation] += units
                self.calls[operation] += 1
                self.items += items
            self.cpu_seconds += time.thread_time() - started

    def as_dict(self) -> dict[str, Any]:
        return {
            "wru": self.total,
            "items": self.items,
            "wru_by_operation": dict(self.by_kind),
            "calls": dict(self.calls),
        }


@contextlib.contextmanager
def count_write_units(units: WriteUnits) -> Iterator[WriteUnits]:
    """Feeds every DynamoDB write call made inside the block (any client) to ``units``."""
    from botocore.client import BaseClient

    original = BaseClient._make_api_call
    reader: list[Any] = []

    def read_item(table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        # Straight to the unpatched call: the counting's own reads are no one's usage.
        item = original(reader[0], "GetItem", {"TableName": table, "Key": key, "ConsistentRead": True})
        return item.get("Item")

    def counted(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        result = original(self, operation_name, api_params)
        if self.meta.service_model.service_name == "dynamodb":
            if not reader:
                reader.append(self)
            units.read_item = read_item
            units.record(operation_name, api_params)
        return result

    BaseClient._make_api_call = counted  # type: ignore[method-assign]
    try:
        yield units
    finally:
        BaseClient._make_api_call = original  # type: ignore[method-assign]


def by_service(counts: Counter[str]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for key, n in counts.items():
        out[key.split(":", 1)[0]] += n
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- in-process stack


def api_caller(user_id: str, tenant: str = TENANT) -> Any:
    """Call the API function in-process as API Gateway would (claims already verified)."""
    from devstack.lambda_runtime import LambdaContext, http_event, load_handler

    handler = load_handler("api")
    claims = {"sub": user_id, "tenant_id": tenant, "role": "user"}

    def call(method: str, path: str, body: Any = None, query: str = "") -> tuple[int, Any]:
        result = handler(http_event(method, path, body=body, query=query, claims=claims), LambdaContext())
        raw = result.get("body") or ""
        return result["statusCode"], (json.loads(raw) if raw else None)

    return call


def save_account(user_id: str, settings: dict[str, Any], folder_map: dict[str, str]) -> None:
    call = api_caller(user_id)
    status, body = call("PUT", "/v1/users/me/mail-settings", settings)
    if status not in (200, 201):
        raise RuntimeError(f"mail-settings: {status} {body}")
    status, body = call("PUT", "/v1/users/me/folder-map", folder_map)
    if status != 200:
        raise RuntimeError(f"folder-map: {status} {body}")


def reset_caches() -> None:
    from mailsync.aws import reset_clients
    from mailsync.config import get_settings

    get_settings.cache_clear()
    reset_clients()


def run_until_synced(
    user_id: str, budget_seconds: float = 240.0, max_invocations: int = 200, tenant: str = TENANT
) -> dict[str, Any]:
    """``run_job`` as the worker runs it, again and again (``reason: continue``) until complete.

    ``budget_seconds`` plays the Lambda's remaining time: the worker stops starting batches when
    less than 60 s of its 300 s are left, i.e. after 240 s.
    """
    from mailsync.services import sync_jobs

    totals: Counter[str] = Counter()
    invocations = 0
    status = "never"
    error = None
    reason = "user"
    commands = 0
    while invocations < max_invocations:
        invocations += 1
        started = time.monotonic()
        result = sync_jobs.run_job(
            sync_jobs.SyncJob(tenant_id=tenant, user_id=user_id, reason=reason),
            lambda s=started: time.monotonic() - s > budget_seconds,
        )
        status, error = result.status, result.error
        if result.outcome is not None:
            totals["created"] += result.outcome.created
            commands += result.outcome.imap_commands
        if status != "incomplete":
            break
        reason = "continue"
    return {
        "status": status,
        "error": error,
        "invocations": invocations,
        "created": totals["created"],
        "imap_commands": commands,
    }


# --------------------------------------------------------------------------- child modes


def _child_setup(args: argparse.Namespace) -> None:
    """Provision template.yaml into the moto server and save one account; print the environment."""
    from devstack.provision import load_template, provision
    from devstack.run import TEMPLATE

    resources = provision(load_template(TEMPLATE), endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    os.environ.update(resources)
    os.environ["MAILSYNC_ALLOW_PRIVATE_HOSTS"] = "true"
    os.environ["MAILSYNC_ALLOW_INSECURE"] = "true"
    reset_caches()
    save_account(args.user_id, json.loads(args.settings), json.loads(args.folder_map))
    print(json.dumps(resources))


def _child_worker(args: argparse.Namespace) -> None:
    """One worker process: import what the worker imports, sync until complete, report."""
    from devstack.lambda_runtime import ensure_layer_on_path

    ensure_layer_on_path()
    import mailsync.services.sync_jobs  # noqa: F401 - the worker's imports, before the clock starts
    from mailsync.aws import client
    from mailsync.config import get_settings

    settings = get_settings()
    units = WriteUnits.for_tables(client("dynamodb"), [settings.messages_table, settings.accounts_table])
    _warm_clients()
    profile_to = os.environ.get("MAILSYNC_BENCH_PROFILE")
    profiler = None
    if profile_to:
        import cProfile

        # Python 3.12's cProfile (sys.monitoring) sees every thread; times are wall-clock.
        profiler = cProfile.Profile()
    before = _rss_now_mb()
    hwm_before = vm_hwm_mb()
    cpu_before = time.process_time()
    start = time.perf_counter()
    with count_write_units(units):
        if profiler is not None:
            profiler.enable()
        result = run_until_synced(args.user_id, budget_seconds=args.budget)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_to)
    result["sync_seconds"] = time.perf_counter() - start
    # Process CPU time: every thread of the worker, whatever else runs on the machine; less the
    # write counting's own (measured on the threads that counted).
    result["sync_cpu_seconds"] = time.process_time() - cpu_before - units.cpu_seconds
    result["counting_cpu_seconds"] = units.cpu_seconds
    result["rss_before_sync_mb"] = before
    result["hwm_before_sync_mb"] = hwm_before
    result["peak_hwm_mb"] = vm_hwm_mb()
    result["dynamodb_writes"] = units.as_dict()
    print(json.dumps(result))


def _warm_clients() -> None:
    """The AWS clients a warm Lambda container already has (boto3's and PynamoDB's, one per
    model's connection): made before the clock, they are no per-message cost."""
    from mailsync.aws import client
    from mailsync.dal import _models

    for service in ("s3", "dynamodb", "events", "kms", "sqs"):
        client(service)
    for model in vars(_models).values():
        # The models of our two tables: their Meta reads the table name from the settings.
        if isinstance(model, type) and hasattr(getattr(model, "Meta", None), "setting"):
            model._get_connection().connection.client  # noqa: B018 - created on first access


def _rss_now_mb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_cmd(mode: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), mode, *args]


def setup_and_sync(
    endpoint: str,
    user_id: str,
    settings: dict[str, Any],
    folder_map: dict[str, str],
    ca_file: str,
    budget: float = 240.0,
) -> tuple[Measured, dict[str, Any]]:
    """Provision + save the account (one child), then sync in a fresh worker child; measured."""
    env = aws_env(endpoint)
    env["MAILSYNC_EXTRA_CA_FILE"] = ca_file
    env["MAILSYNC_ALLOW_PRIVATE_HOSTS"] = "true"
    setup = run_measured(
        child_cmd("setup", user_id, json.dumps(settings), json.dumps(folder_map)), env=env, timeout=300
    )
    if setup.returncode != 0:
        raise RuntimeError(f"setup failed:\n{setup.stderr[-3000:]}")
    env.update(setup.json_line())
    # The template's defaults are the deployed ones; the mail server here is on loopback.
    env["MAILSYNC_ALLOW_PRIVATE_HOSTS"] = "true"
    env["MAILSYNC_ALLOW_INSECURE"] = "true"
    env["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    worker = run_measured(child_cmd("worker", user_id, "--budget", str(budget)), env=env)
    if worker.returncode != 0:
        raise RuntimeError(f"worker failed:\n{worker.stderr[-3000:]}")
    return worker, worker.json_line()


def main() -> None:
    parser = argparse.ArgumentParser(description="child modes of the bench scripts")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("setup")
    p.add_argument("user_id")
    p.add_argument("settings")
    p.add_argument("folder_map")
    w = sub.add_parser("worker")
    w.add_argument("user_id")
    w.add_argument("--budget", type=float, default=240.0)
    m = sub.add_parser("moto")
    m.add_argument("port", type=int)
    add_connections_option(m)
    args = parser.parse_args()
    if args.mode == "moto":
        serve_moto(args.port, keepalive=not args.close_connections)
        return
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    {"setup": _child_setup, "worker": _child_worker}[args.mode](args)


if __name__ == "__main__":
    main()
