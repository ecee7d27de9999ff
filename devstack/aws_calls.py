"""Counting AWS API calls, for the benchmarks and the tests that check a sync's cost."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def count_aws_calls(service: str | None = None) -> Iterator[Counter[str]]:
    """Counts every AWS API call as ``service:Operation``, from any thread: boto3 clients and
    PynamoDB alike. With ``service`` (e.g. ``"kms"``), only that service's calls, as ``Operation``.

    Both end in ``botocore.client.BaseClient._make_api_call`` (PynamoDB keeps its own botocore
    session and clients, so a ``before-call`` handler on one session would miss them). Retries
    happen below this point: one count is one logical call.
    """
    from botocore.client import BaseClient

    counts: Counter[str] = Counter()
    original = BaseClient._make_api_call
    lock = threading.Lock()

    def counted(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        name = self.meta.service_model.service_name
        if service is None or name == service:
            with lock:
                counts[operation_name if service else f"{name}:{operation_name}"] += 1
        return original(self, operation_name, api_params)

    BaseClient._make_api_call = counted  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        BaseClient._make_api_call = original  # type: ignore[method-assign]
