"""boto3 clients, created once per process (Lambda reuses them across invocations)."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20)


@cache
def client(service: str) -> Any:
    """A shared client; honours AWS_ENDPOINT_URL so the local stack reaches moto."""
    return boto3.session.Session().client(service, config=_CONFIG)


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints and mocks)."""
    client.cache_clear()
