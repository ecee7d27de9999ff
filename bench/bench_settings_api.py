"""Latency of the mail-settings API: handler-only calls (moto) and live calls to a local Dovecot.

Prints median and p95 per operation. Not a test: numbers, for comparing before and after a change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "shared")]

from moto import mock_aws  # noqa: E402

from devstack.dovecot import DovecotServer  # noqa: E402
from devstack.lambda_runtime import LambdaContext, http_event, load_handler  # noqa: E402
from devstack.provision import provision_mock  # noqa: E402
from devstack.run import local_defaults  # noqa: E402


def measure(name: str, rounds: int, call: Callable[[], int], expect: int) -> None:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        status = call()
        samples.append((time.perf_counter() - start) * 1000)
        if status != expect:
            raise SystemExit(f"{name}: got HTTP {status}, expected {expect}")
    samples.sort()
    p95 = samples[max(0, int(len(samples) * 0.95) - 1)]
    print(f"{name:<32} median {statistics.median(samples):7.2f} ms   p95 {p95:7.2f} ms   n={rounds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    for key, value in local_defaults().items():
        os.environ.setdefault(key, value)
    with tempfile.TemporaryDirectory() as tmp, DovecotServer(Path(tmp) / "dovecot") as server, mock_aws():
        user = server.add_user()
        os.environ.update(provision_mock())
        # As in the local stack: the mail server is on loopback.
        os.environ["MAILSYNC_ALLOW_PRIVATE_HOSTS"] = "true"
        os.environ["MAILSYNC_EXTRA_CA_FILE"] = str(server.ca_file)
        handler = load_handler("api")
        claims = {"sub": "bench", "tenant_id": "bench", "role": "user"}

        def call(method: str, path: str, body: object = None) -> int:
            event = http_event(method, path, body=body, claims=claims)
            return handler(event, LambdaContext())["statusCode"]

        settings = {
            "host": "127.0.0.1",
            "port": server.imaps_port,
            "username": user.username,
            "password": user.password,
            "security": "ssl",
        }
        assert call("PUT", "/v1/users/me/mail-settings", settings) == 201
        measure(
            "PUT mail-settings (KMS+Dynamo)",
            args.rounds,
            lambda: call("PUT", "/v1/users/me/mail-settings", settings),
            200,
        )
        measure("GET mail-settings", args.rounds, lambda: call("GET", "/v1/users/me/mail-settings"), 200)
        measure(
            "POST mail-settings/test (IMAPS)", args.rounds, lambda: call("POST", "/v1/users/me/mail-settings/test"), 200
        )
        measure("GET server-folders (IMAPS)", args.rounds, lambda: call("GET", "/v1/users/me/server-folders"), 200)
        folder_map = {"inbox": "INBOX", "sent": "Sent", "drafts": "Drafts"}
        measure("PUT folder-map (IMAPS)", args.rounds, lambda: call("PUT", "/v1/users/me/folder-map", folder_map), 200)


if __name__ == "__main__":
    main()
