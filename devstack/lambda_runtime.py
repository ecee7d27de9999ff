"""Just enough of the Lambda runtime to run our handlers in-process (local stack and tests):
loading a handler from its folder, a context object, and API Gateway HTTP API (v2) events.

In AWS each function is its own process with its own Logger state. Here the three functions share
one process and the one Powertools Logger of ``mailsync.observability``, and the local stack runs
them on concurrent threads (HTTP requests, scheduler, worker). The Logger keeps an invocation's
keys (function name, request id, correlation id, tenant) in one dict shared by every thread, so
a worker line logged while an API request ran carried the API's name and correlation id. The
local runtime therefore gives that dict one copy per thread (``isolate_log_state``)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

ROOT = Path(__file__).resolve().parent.parent
LAYER_DIR = ROOT / "layers" / "shared"
FUNCTIONS_DIR = ROOT / "functions"

Handler = Callable[[dict, Any], Any]


def _ensure_path(path: Path) -> None:
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def ensure_layer_on_path() -> None:
    """Make ``import mailsync`` work as it does in Lambda, where the layer is on sys.path."""
    _ensure_path(LAYER_DIR)


def load_handler(function: str) -> Handler:
    """Import ``functions/<function>/app.py`` under a unique module name (all are called app.py)."""
    ensure_layer_on_path()
    function_dir = FUNCTIONS_DIR / function
    _ensure_path(function_dir)
    name = f"mailsync_fn_{function}"
    module: ModuleType | None = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, function_dir / "app.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    isolate_log_state()
    return module.lambda_handler


class _PerThreadLogFormat:
    """Stands in for the formatter's ``log_format`` attribute: each thread reads and replaces its
    own dict, starting from the keys every line carries (service, level, ...)."""

    def __init__(self, base: dict[str, Any]) -> None:
        self._base = dict(base)
        self._local = threading.local()

    def __get__(self, formatter: Any, owner: type | None = None) -> Any:
        if formatter is None:
            return self
        keys = getattr(self._local, "keys", None)
        if keys is None:
            keys = self._local.keys = dict(self._base)
        return keys

    def __set__(self, formatter: Any, keys: dict[str, Any]) -> None:
        self._local.keys = keys


_isolate_lock = threading.Lock()
# Set by Powertools' inject_lambda_context from the context and the event.
_INVOCATION_KEYS = frozenset(
    {"cold_start", "function_name", "function_memory_size", "function_arn", "function_request_id", "correlation_id"}
)


def isolate_log_state() -> None:
    """Idempotent: give the shared Logger's per-invocation keys one copy per thread.

    Each invocation's ``inject_lambda_context(clear_state=True)`` then resets and fills only its
    own thread's keys, as a separate Lambda process would; nothing changes in AWS."""
    from mailsync.observability import logger

    formatter = logger.registered_formatter
    with _isolate_lock:
        if isinstance(type(formatter).__dict__.get("log_format"), _PerThreadLogFormat):
            return
        # What a new thread starts from: the keys of every line, never an invocation's own.
        base = {k: v for k, v in formatter.log_format.items() if k not in _INVOCATION_KEYS}
        cls = type(formatter)
        formatter.__class__ = type(f"PerThread{cls.__name__}", (cls,), {"log_format": _PerThreadLogFormat(base)})


@dataclass
class LambdaContext:
    function_name: str = "local"
    memory_limit_in_mb: int = 512
    timeout_seconds: float = 900.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = ""
    _start: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        # Log lines carry the ARN too; it names the function that runs, not a shared "local".
        if not self.invoked_function_arn:
            self.invoked_function_arn = f"arn:aws:lambda:eu-west-1:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - (time.monotonic() - self._start)) * 1000))


def _stringify_claim(value: Any) -> str:
    # API Gateway passes every JWT claim as a string; arrays look like "[a b]".
    if isinstance(value, list | tuple):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value)


def http_event(
    method: str,
    path: str,
    *,
    body: Any = None,
    query: str = "",
    headers: Mapping[str, str] | None = None,
    claims: Mapping[str, Any] | None = None,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """An API Gateway HTTP API payload v2.0 event, as the JWT authorizer would pass it."""
    if body is not None and not isinstance(body, str | bytes):
        body = json.dumps(body)
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if body is not None:
        hdrs.setdefault("content-type", "application/json")
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": hdrs,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": "127.0.0.1",
            "http": {
                "method": method.upper(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": hdrs.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": body,
        "isBase64Encoded": False,
    }
    if params:
        event["queryStringParameters"] = params
    if claims is not None:
        event["requestContext"]["authorizer"] = {
            "jwt": {"claims": {k: _stringify_claim(v) for k, v in claims.items()}, "scopes": None}
        }
    return event


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """An SQS event from ``receive_message`` results."""
    records = []
    for message in messages:
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "messageAttributes": message.get("MessageAttributes", {}),
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": queue_arn.split(":")[3] if queue_arn.count(":") >= 5 else "eu-west-1",
            }
        )
    return {"Records": records}


def scheduled_event() -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:000000000000:rule/local-schedule"],
        "detail": {},
    }
