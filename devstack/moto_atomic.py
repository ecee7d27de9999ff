"""DynamoDB applies each write atomically (a conditional write's check and write are one step);
moto's in-memory backend does not lock, so two threads can both pass the same condition. The
local stack and the tests run threads (API, worker, scheduler), so they get a lock around
moto's writes — the behaviour of the real peer, not a relaxation of it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

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
    """Idempotent: patch moto's DynamoDB backend once per process."""
    global _patched
    if _patched:
        return
    from moto.dynamodb.models import DynamoDBBackend

    for name in _WRITES:
        original = getattr(DynamoDBBackend, name, None)
        if original is not None:
            setattr(DynamoDBBackend, name, _locked(original))
    _patched = True
