"""Start the local stack (and the demo) as a developer would, in a subprocess, and talk HTTP to it."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "Press Ctrl-C to stop."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Running:
    process: subprocess.Popen
    url: str
    output: list[str] = field(default_factory=list)
    ready: bool = False

    def request(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode("utf-8", "replace")


def start(target: str, env: dict[str, str], timeout: float = 90.0) -> Running:
    """Run ``make <target>`` as a developer would and wait for its ready line (or fail with its output).

    A port found free can be taken by another process before the stack binds it (other tests
    run alongside): a stack that says its port is in use is started again on another."""
    for _ in range(2):
        running = _start(target, env, timeout)
        if running.ready or not any("is in use" in line for line in running.output):
            break
        env = {**env, "MAILSYNC_PORT": str(free_port())}
    if not running.ready:
        pytest.fail(f"make {target} did not start:\n" + "\n".join(running.output[-40:]))
    return running


def _start(target: str, env: dict[str, str], timeout: float) -> Running:
    port = int(env["MAILSYNC_PORT"])
    process = subprocess.Popen(
        ["make", "-s", target],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    running = Running(process, f"http://127.0.0.1:{port}")
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            break
        running.output.append(line)
        if READY_LINE in line:
            running.ready = True
            return running
    stop(running)
    return running


def stop(running: Running) -> None:
    if running.process.poll() is None:
        os.killpg(running.process.pid, signal.SIGINT)
        try:
            running.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(running.process.pid, signal.SIGKILL)
            running.process.wait()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MAILSYNC_"))}
    env = {k: v for k, v in env.items() if not k.startswith("MAKE")}
    env.update(
        {
            "MAILSYNC_PORT": str(free_port()),
            "MAILSYNC_SCHEDULE_SECONDS": "3600",
            # The stack's files for make invoke and sam local: never a developer's own in .aws-sam/local.
            "MAILSYNC_LOCAL_STATE_DIR": str(Path(tempfile.gettempdir()) / f"mailsync-e2e-{os.getpid()}"),
            "PYTHONPATH": "",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def local_stack(dovecot) -> Iterator[Running]:
    running = start("run", base_env(MAILSYNC_EXTRA_CA_FILE=str(dovecot.ca_file)))
    try:
        yield running
    finally:
        stop(running)


def make_token(user: str, tenant: str, role: str = "user") -> str:
    """The token a developer gets from `make token USER=... TENANT=... ROLE=...`."""
    out = subprocess.run(
        ["make", "-s", "token", f"USER={user}", f"TENANT={tenant}", f"ROLE={role}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
    )
    return out.stdout.strip()


def wait_for_sync(running: Running, token: str, after: str = "", timeout: float = 60.0) -> dict:
    """Poll sync-status as a CRM would until a sync that started after ``after`` (ISO time) has
    succeeded (bounded; fails with the last status)."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        code, status = running.request("GET", "/v1/users/me/sync-status", token)
        assert code == 200, status
        if status["state"] == "idle" and (status["last_success_at"] or "") > after:
            return status
        if status["state"] == "failed":
            pytest.fail(f"sync failed: {status}")
        time.sleep(0.2)
    pytest.fail(f"no successful sync within {timeout} s: {status}\n" + "\n".join(running.output[-20:]))
