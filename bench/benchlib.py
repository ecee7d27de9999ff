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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
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
    maxrss_mb: float
    stdout: str
    stderr: str

    def json_line(self) -> dict[str, Any]:
        """The last line of stdout that is a JSON object (what a child mode prints)."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"child printed no result (exit {self.returncode}):\n{self.stderr[-3000:]}")


def run_measured(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> Measured:
    """Run ``cmd`` and return its wall time and its own peak RSS (``wait4`` of that one child).

    ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the maximum over *all* children ever waited for,
    so a small run after a large one would read the large one; ``wait4`` gives this child's.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        timer = threading.Timer(timeout, lambda: _kill_session(proc.pid))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
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
        )


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
    """moto in server mode in its own process on 127.0.0.1 (fresh state per instance)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MotoServer:
        code = (
            "import logging,sys;logging.getLogger('werkzeug').setLevel(logging.WARNING);"
            "from moto.server import run_simple, DomainDispatcherApplication, create_backend_app;"
            f"run_simple('127.0.0.1', {self.port}, DomainDispatcherApplication(create_backend_app),"
            " threaded=True, use_reloader=False)"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=self._log, stderr=self._log, env=aws_env(), start_new_session=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError("moto server did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _kill_session(self.proc.pid)
            self.proc.wait(timeout=30)
        self._log.close()


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


@contextlib.contextmanager
def count_aws_calls() -> Iterator[Counter[str]]:
    """Counts every AWS API call as ``service:Operation``: boto3 clients and PynamoDB alike.

    Both end in ``botocore.client.BaseClient._make_api_call`` (PynamoDB keeps its own botocore
    session and clients, so a ``before-call`` handler on one session would miss them). Retries
    happen below this point: one count is one logical call.
    """
    from botocore.client import BaseClient

    counts: Counter[str] = Counter()
    original = BaseClient._make_api_call
    lock = threading.Lock()

    def counted(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        with lock:
            counts[f"{self.meta.service_model.service_name}:{operation_name}"] += 1
        return original(self, operation_name, api_params)

    BaseClient._make_api_call = counted  # type: ignore[method-assign]
    try:
        yield counts
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

    before = _rss_now_mb()
    start = time.perf_counter()
    result = run_until_synced(args.user_id, budget_seconds=args.budget)
    result["sync_seconds"] = time.perf_counter() - start
    result["rss_before_sync_mb"] = before
    print(json.dumps(result))


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
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    {"setup": _child_setup, "worker": _child_worker}[args.mode](args)


if __name__ == "__main__":
    main()
