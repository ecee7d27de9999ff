"""The whole stack on one machine: ``make run``.

moto in server mode is the embedded AWS; the tables, bucket, queue, key and bus are created
from template.yaml; the API function is served over HTTP with a local JWT check; the
scheduler runs on a timer and the worker drains the queue in-process.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import warnings
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devstack import auth, webapp
from devstack.lambda_runtime import (
    ROOT,
    LambdaContext,
    ensure_layer_on_path,
    http_event,
    load_handler,
    scheduled_event,
    sqs_event,
)
from devstack.moto_atomic import make_dynamodb_atomic
from devstack.provision import ENDPOINT_VARIABLE, load_template

TEMPLATE = ROOT / "template.yaml"
# Metrics are disabled locally; Powertools still warns on every invocation.
warnings.filterwarnings("ignore", message="No application metrics to publish")
# The template's routes: the API under /v1 behind the JWT authorizer, Swagger UI and the OAuth2
# callback (the browser coming back from Google or Microsoft) without it.
# Anything else is API Gateway's 404 before any authorizer runs (a browser's /favicon.ico too).
API_PREFIX = "/v1/"
PUBLIC_PATHS = ("/swagger", "/v1/oauth/callback")
# Where make run and make demo write the files that sam local and make invoke read.
STATE_DIR = ROOT / ".aws-sam" / "local"
SAM_ENV_FILE = "env-vars.json"
STACK_FILE = "stack.json"
FUNCTION_TYPE = "AWS::Serverless::Function"
# Never written to the stack's files: a developer's shell may hold real ones (moto takes any).
CREDENTIAL_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})


class PortInUse(OSError):
    """The API port is taken; the message names it and the variable that moves it."""

    def __init__(self, port: int) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"port {port} on 127.0.0.1 is in use (another make run or make demo?): stop that, or choose "
            f"another port with MAILSYNC_PORT, e.g. MAILSYNC_PORT={port + 1} make run (or make demo)",
        )
        self.port = port

    def __str__(self) -> str:
        return self.strerror


def state_dir() -> Path:
    """The directory of the running stack's files (``MAILSYNC_LOCAL_STATE_DIR``, else .aws-sam/local)."""
    configured = os.environ.get("MAILSYNC_LOCAL_STATE_DIR")
    return Path(configured) if configured else STATE_DIR


def function_variables(template: dict[str, Any]) -> dict[str, list[str]]:
    """Each function's logical id -> the environment variables the template declares for it (the
    only ones sam local passes: Globals plus the function's own)."""
    globals_env = ((template.get("Globals") or {}).get("Function") or {}).get("Environment") or {}
    declared = list(globals_env.get("Variables") or {})
    out: dict[str, list[str]] = {}
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != FUNCTION_TYPE:
            continue
        own = ((resource.get("Properties") or {}).get("Environment") or {}).get("Variables") or {}
        out[logical_id] = declared + [name for name in own if name not in declared]
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The guards the local stack lowers, and the variable that keeps one up ("false") locally.
LOCAL_SWITCHES = {
    "MAILSYNC_ALLOW_PRIVATE_HOSTS": "MAILSYNC_LOCAL_ALLOW_PRIVATE_HOSTS",
    "MAILSYNC_ALLOW_INSECURE": "MAILSYNC_LOCAL_ALLOW_INSECURE",
}


def local_defaults() -> dict[str, str]:
    """Environment the local stack runs with unless the developer set it already."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-west-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_DEV": "false",
        # A developer's token survives reloads of the local Swagger UI (never in AWS: localStorage).
        "MAILSYNC_SWAGGER_PERSIST_AUTHORIZATION": "true",
        # Local development talks to mail servers on this machine (Dovecot, the demo).
        "MAILSYNC_ALLOW_PRIVATE_HOSTS": "true",
        "MAILSYNC_ALLOW_INSECURE": "true",
        # Relay addresses end in this; the SMTP listener (devstack/smtp.py) receives their mail.
        "MAILSYNC_RELAY_DOMAIN": "relay.localhost",
        # The template's ScheduleRate default: the quiet-hours slots of adaptive polling count in
        # its ticks (the local scheduler may tick faster; a slot then polls on each of its ticks).
        "MAILSYNC_SCHEDULE_RATE": "rate(1 minute)",
        # OAuth2 mailboxes need an app registered with Google or Microsoft (docs/operations.md):
        # off locally unless the developer sets these, as in a stack deployed without them.
        "MAILSYNC_OAUTH_GOOGLE_CLIENT_ID": "",
        "MAILSYNC_OAUTH_MICROSOFT_CLIENT_ID": "",
        "MAILSYNC_OAUTH_CLIENT_SECRET_ARN": "",
        "MAILSYNC_OAUTH_RETURN_ORIGINS": "",
    }


class _ApiRequestHandler(BaseHTTPRequestHandler):
    server: _ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.stack.verbose:
            sys.stderr.write("http: " + (format % args) + "\n")

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        claims = None
        app_answer = webapp.handle(self.command, url.path, raw, self.server.stack.app_login)
        if app_answer is not None:
            self._send(*app_answer)
            return
        if not url.path.startswith((API_PREFIX, *PUBLIC_PATHS)):
            self._send(HTTPStatus.NOT_FOUND, {"content-type": "application/json"}, b'{"message":"Not Found"}')
            return
        if not url.path.startswith(PUBLIC_PATHS):
            claims = auth.verify_bearer(self.headers.get("authorization"))
            if claims is None:
                # API Gateway's JWT authorizer answers exactly this before any Lambda runs.
                self._send(HTTPStatus.UNAUTHORIZED, {"content-type": "application/json"}, b'{"message":"Unauthorized"}')
                return
        try:
            body: str | None = raw.decode("utf-8") if raw else None
            encoded = False
        except UnicodeDecodeError:
            # API Gateway passes bodies that are not UTF-8 base64-encoded; so do we.
            body, encoded = base64.b64encode(raw).decode("ascii"), True
        event = http_event(
            self.command,
            url.path,
            body=body,
            query=url.query,
            headers=dict(self.headers.items()),
            claims=claims,
            source_ip=self.client_address[0],
        )
        event["isBase64Encoded"] = encoded
        # Lambda runs one request per instance; Powertools keeps the current event in globals, so
        # the threaded local server runs the handler one request at a time too.
        context = LambdaContext(function_name="ApiFunction", timeout_seconds=29)
        with self.server.stack.api_lock:
            result = self.server.stack.api_handler(event, context)
        body = result.get("body") or ""
        payload = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode("utf-8")
        headers = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
        self._send(int(result.get("statusCode", 200)), headers, payload, result.get("cookies") or [])

    def _send(self, status: int, headers: dict[str, str], payload: bytes, cookies: list[str] | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key not in ("content-length", "connection"):
                self.send_header(key, value)
        for cookie in cookies or []:
            self.send_header("set-cookie", cookie)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"content-type": "application/json"}, b'{"message":"Not Found"}')

    do_TRACE = do_CONNECT = do_QUERY = _not_allowed


class _ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], stack: LocalStack) -> None:
        self.stack = stack
        super().__init__(address, _ApiRequestHandler)


class LocalStack:
    """Start/stop the local stack in-process (``make run`` and the e2e tests use it)."""

    def __init__(
        self,
        *,
        port: int | None = None,
        moto_port: int | None = None,
        schedule_seconds: float | None = None,
        verbose: bool = False,
        state_dir: Path | None = None,
    ) -> None:
        """``state_dir``: where to write the files for sam local and make invoke (none if None)."""
        env = os.environ
        self.port = port if port is not None else int(env.get("MAILSYNC_PORT", "3000"))
        self.moto_port = moto_port if moto_port is not None else int(env.get("MAILSYNC_MOTO_PORT", "0"))
        self.schedule_seconds = (
            schedule_seconds if schedule_seconds is not None else float(env.get("MAILSYNC_SCHEDULE_SECONDS", "60"))
        )
        self.verbose = verbose
        self.state_dir = state_dir
        self.resources: dict[str, str] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._moto: Any = None
        self._http: _ApiServer | None = None
        self.smtp: Any = None
        # Who the web app's local sign-in form offers first (make demo: its demo user).
        self.app_login = ("alice", "acme")

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalStack:
        # The port first: a taken port fails at once, before moto and the provisioning.
        try:
            self._http = _ApiServer(("127.0.0.1", self.port), self)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(self.port) from exc
            raise
        self.port = self._http.server_address[1]
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> LocalStack:
        from moto.server import ThreadedMotoServer

        ensure_layer_on_path()
        make_dynamodb_atomic()
        if not self.verbose:
            # moto's embedded werkzeug logs every AWS call; only the developer's requests matter.
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        for key, value in local_defaults().items():
            os.environ.setdefault(key, value)
        if not self.moto_port:
            self.moto_port = _free_port()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self._moto.start()
        endpoint = f"http://127.0.0.1:{self.moto_port}"
        os.environ["AWS_ENDPOINT_URL"] = endpoint

        from devstack.provision import provision

        template = load_template(TEMPLATE)
        self.resources = provision(template, endpoint_url=endpoint)
        for key, value in self.resources.items():
            if key in local_defaults() and key in os.environ:
                continue
            os.environ[key] = value
        for key, local_key in LOCAL_SWITCHES.items():
            os.environ[key] = os.environ.get(local_key, local_defaults()[key])

        from mailsync.aws import reset_clients
        from mailsync.config import get_settings

        get_settings.cache_clear()
        reset_clients()
        self.api_handler = load_handler("api")
        self.api_lock = threading.Lock()
        self.scheduler_handler = load_handler("scheduler")
        self.worker_handler = load_handler("sync_worker")
        relay_domain = os.environ.get("MAILSYNC_RELAY_DOMAIN", "")
        if relay_domain:
            from devstack.smtp import RelaySmtp

            self.smtp = RelaySmtp(relay_domain, load_handler("relay_ingest")).start()

        if self.state_dir is not None:
            self._write_state(template)
        assert self._http is not None
        self._spawn("http", self._http.serve_forever)
        self._spawn("scheduler", self._schedule_loop)
        self._spawn("worker", self._drain_loop)
        return self

    def function_environment(self) -> dict[str, str]:
        """What an in-process function of this stack runs with: credentials, region, Powertools and
        Mailsync switches, the resources' names and the endpoint of moto."""
        prefixes = ("AWS_", "MAILSYNC_", "POWERTOOLS_")
        names = set(self.resources) | set(local_defaults())
        return {
            k: v
            for k, v in os.environ.items()
            if (k in names or k.startswith(prefixes)) and k not in CREDENTIAL_VARIABLES
        }

    def sam_env_vars(self, template: dict[str, Any]) -> dict[str, dict[str, str]]:
        """sam local's ``--env-vars`` document: per function, every variable the template declares
        for it, with this stack's value (moto's endpoint, the local names and switches)."""
        environment = self.function_environment()
        return {
            logical_id: {name: environment[name] for name in names if name in environment}
            for logical_id, names in function_variables(template).items()
        }

    def _write_state(self, template: dict[str, Any]) -> None:
        assert self.state_dir is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stack = {
            "pid": os.getpid(),
            "api_url": self.api_url,
            "endpoint_url": os.environ[ENDPOINT_VARIABLE],
            "environment": self.function_environment(),
        }
        (self.state_dir / SAM_ENV_FILE).write_text(json.dumps(self.sam_env_vars(template), indent=2) + "\n")
        (self.state_dir / STACK_FILE).write_text(json.dumps(stack, indent=2) + "\n")

    def _remove_state(self) -> None:
        if self.state_dir is None:
            return
        stack_file = self.state_dir / STACK_FILE
        try:
            owner = json.loads(stack_file.read_text()).get("pid")
        except (OSError, ValueError):
            return
        if owner != os.getpid():
            return  # another stack started since and wrote its own files
        for name in (STACK_FILE, SAM_ENV_FILE):
            (self.state_dir / name).unlink(missing_ok=True)

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=f"mailsync-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def run_scheduler_once(self) -> Any:
        return self.scheduler_handler(scheduled_event(), LambdaContext(function_name="SchedulerFunction"))

    def _schedule_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_scheduler_once()
            except Exception as exc:  # noqa: BLE001 - keep the local loop alive, like the real schedule
                print(f"scheduler failed: {exc}", file=sys.stderr)
            self._stop.wait(self.schedule_seconds)

    def drain_once(self, wait_seconds: int = 1) -> int:
        """Receive one batch from the sync queue and run the worker on it; returns records handled."""
        from mailsync.aws import client

        sqs = client("sqs")
        queue_url = os.environ["SYNC_QUEUE_URL"]
        got = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=5, WaitTimeSeconds=wait_seconds, AttributeNames=["All"]
        )
        messages = got.get("Messages", [])
        if not messages:
            return 0
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        result = self.worker_handler(sqs_event(messages, arn), LambdaContext(function_name="SyncWorkerFunction"))
        failed = {f["itemIdentifier"] for f in (result or {}).get("batchItemFailures", [])}
        for message in messages:
            if message["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        return len(messages)

    def _drain_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain_once()
            except Exception as exc:  # noqa: BLE001 - a bad batch must not stop the local worker
                print(f"worker failed: {exc}", file=sys.stderr)
                self._stop.wait(1)

    def stop(self) -> None:
        """Idempotent: stop serving, the loops and moto; remove the stack's files."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._remove_state()
        if self._http:
            if self._threads:
                self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.smtp:
            self.smtp.stop()
        if self._moto:
            self._moto.stop()

    def describe(self, extra: str = "", *, token_hint: bool = True) -> str:
        """The banner; ``token_hint`` adds how to get a token for any user (the demo shows its own)."""
        lines = [
            "Mailsync local stack is running.",
            f"  API           {self.api_url}   (Swagger UI: {self.api_url}/swagger)",
            f"  web app       {self.api_url}/app/   (local sign-in as any user)",
            f"  AWS (moto)    http://127.0.0.1:{self.moto_port}",
            f"  scheduler     every {self.schedule_seconds:g} s; worker drains the sync queue in-process",
            *([f"  SMTP relay    127.0.0.1:{self.smtp.port} for *@{self.smtp.domain} (as SES)"] if self.smtp else []),
            "  resources from template.yaml:",
        ]
        shown = {k: os.environ.get(k, v) for k, v in self.resources.items() if not k.startswith("POWERTOOLS")}
        lines += [f"    {k} = {v}" for k, v in sorted(shown.items())]
        if self.state_dir is not None:
            lines += [
                f"  sam local:    --env-vars {_shown_path(self.state_dir / SAM_ENV_FILE)} --docker-network host",
                "  in-process:   make invoke FN=SyncWorkerFunction EVENT=events/sync_worker.json",
            ]
        if token_hint:
            lines += [
                "  token:        make token USER=alice TENANT=acme ROLE=admin",
                '  try:          curl -H "Authorization: Bearer $(make -s token)" '
                f"{self.api_url}/v1/users/me/mail-settings",
            ]
        if extra:
            lines.append(extra)
        lines.append("Press Ctrl-C to stop.")
        return "\n".join(lines)


def _shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def serve_forever(stack: LocalStack, extra: str = "", *, token_hint: bool = True) -> None:
    """Print what runs, then block until Ctrl-C/SIGTERM."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(stack.describe(extra, token_hint=token_hint), flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping...", flush=True)
        stack.stop()


def main() -> None:
    stack = LocalStack(verbose=os.environ.get("MAILSYNC_VERBOSE") == "1", state_dir=state_dir())
    try:
        stack.start()
    except OSError as exc:
        print(f"could not start the local stack: {exc}", file=sys.stderr)
        sys.exit(1)
    serve_forever(stack)


if __name__ == "__main__":
    main()
