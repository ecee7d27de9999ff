"""boto3 clients, created once per process (Lambda reuses them across invocations).

The sync worker uses them from many threads at once. A botocore client is safe to share once it
exists, but creating one is not (and costs tens of milliseconds of CPU), so creation is
serialised and each service gets exactly one client.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

# A pool per client larger than the worker's threads (64 at most) and the parallel S3 uploads of
# its syncs with work (sync_jobs.SYNCS_WITH_WORK x blobstore.UPLOAD_WORKERS): a full pool opens
# throwaway connections (and urllib3 warns about each).
MAX_POOL_CONNECTIONS = 160
_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=20,
    max_pool_connections=MAX_POOL_CONNECTIONS,
)

_clients: dict[str, Any] = {}
_lock = threading.Lock()


def client(service: str) -> Any:
    """A shared client; honours AWS_ENDPOINT_URL so the local stack reaches moto."""
    found = _clients.get(service)
    if found is not None:
        return found
    with _lock:
        if service not in _clients:
            _clients[service] = boto3.session.Session().client(service, config=_CONFIG)
        return _clients[service]


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints and mocks)."""
    with _lock:
        _clients.clear()
