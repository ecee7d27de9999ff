"""DynamoDB applies each request atomically (a conditional write's check and write are one step,
and a read never trips over a concurrent write); moto's in-memory backend does not lock. Its
tables are plain dicts: two threads can both pass the same condition, and a Query walking the
items while another thread inserts one raised ``RuntimeError: dictionary changed size during
iteration``. The local stack and the tests run threads (API, worker, scheduler), so every
DynamoDB request to the local moto — reads and writes, including the response it serialises from
the live items — runs under one lock: the behaviour of the real peer, not a relaxation of it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

# Also locked at the backend, for code that calls moto's backend without a request.
_WRITES = ("update_item", "put_item", "delete_item", "transact_write_items", "batch_write_item")
_lock = threading.RLock()
_patched = False


def _locked(original: Callable[..., Any]) -> Callable[..., Any]:
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _lock:
            return original(self, *args, **kwargs)

    locked.__wrapped__ = original  # type: ignore[attr-defined]
    return locked


def make_dynamodb_atomic() -> None:
    """Idempotent: patch moto's DynamoDB request handler and backend once per process."""
    global _patched
    if _patched:
        return
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.responses import DynamoHandler

    # call_action runs one whole request: parsing, the backend call and the serialised answer.
    DynamoHandler.call_action = _locked(DynamoHandler.call_action)  # type: ignore[method-assign]
    for name in _WRITES:
        original = getattr(DynamoDBBackend, name, None)
        if original is not None:
            setattr(DynamoDBBackend, name, _locked(original))
    _patched = True
