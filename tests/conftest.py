"""Shared fixtures: the embedded AWS (moto, provisioned from template.yaml) and the API handler."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from moto import mock_aws

from devstack.lambda_runtime import LambdaContext, http_event, load_handler
from devstack.moto_atomic import make_dynamodb_atomic
from devstack.run import local_defaults

pytest_plugins = ["tests.fixtures.dovecot", "tests.fixtures.other_servers"]

# The local stack's AWS defaults, but the deployed defaults for Mailsync's own guards.
FAKE_AWS = {k: v for k, v in local_defaults().items() if not k.startswith("MAILSYNC_")} | {
    "POWERTOOLS_SERVICE_NAME": "mailsync",
    "POWERTOOLS_METRICS_NAMESPACE": "Mailsync",
    # Flag changes on servers without CONDSTORE show at the next sync (the interval itself has
    # its own tests: test_sync_engine.py::test_without_condstore_flags_are_scanned_*).
    "MAILSYNC_FLAG_SCAN_MINUTES": "0",
}


def _reset_caches() -> None:
    from mailsync import crypto, dal
    from mailsync.aws import reset_clients
    from mailsync.config import get_settings

    get_settings.cache_clear()
    reset_clients()
    crypto.reset_caches()  # data keys of the previous test's KMS mock
    dal.forget_tenant_settings()  # tenants of the previous test's tables


# The functions' boto3 clients of earlier tests' mocks, by AWS endpoint and region (see ``aws``).
_MOCK_CLIENTS: dict[tuple[str | None, ...], dict[str, Any]] = {}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """moto with every resource of template.yaml; yields the functions' environment.

    The functions' clients are handed from one test's mock to the next: a client costs tens of
    milliseconds of CPU to build, several a test, and moto's mock intercepts requests as they
    are sent, so a client serves every ``mock_aws``. Outside the mock no test sees them (they
    would send to AWS)."""
    from mailsync import aws as shared_aws

    for key, value in FAKE_AWS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("MAILSYNC_EXTRA_CA_FILE", raising=False)
    make_dynamodb_atomic()
    _symmetric_keys_without_rsa(monkeypatch)
    with mock_aws():
        from devstack.provision import provision_mock

        env = provision_mock()
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        _reset_caches()
        endpoint = tuple(os.environ.get(name) for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION"))
        shared_aws._clients.update(_MOCK_CLIENTS.get(endpoint, {}))
        try:
            yield env
        finally:
            # Only clients of AWS's own endpoints: a test may point one at a moto server.
            _MOCK_CLIENTS[endpoint] = {
                service: made
                for service, made in shared_aws._clients.items()
                if (urlsplit(made.meta.endpoint_url).hostname or "").endswith(".amazonaws.com")
                and made.meta.region_name == (endpoint[1] or endpoint[2])
            }
    _reset_caches()


def _symmetric_keys_without_rsa(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto generates a 2048-bit RSA key for every KMS key, symmetric ones too, where nothing
    uses it: about 12 ms of CPU a key, three keys a test. Symmetric keys share one here."""
    from moto.kms import models

    generate = models.generate_private_key

    def generate_private_key(key_spec: str) -> Any:
        if key_spec != "SYMMETRIC_DEFAULT":
            return generate(key_spec)
        if not _SYMMETRIC_KEYS_RSA:
            _SYMMETRIC_KEYS_RSA.append(generate(key_spec))
        return _SYMMETRIC_KEYS_RSA[0]

    monkeypatch.setattr(models, "generate_private_key", generate_private_key)


_SYMMETRIC_KEYS_RSA: list[Any] = []


@dataclass
class ApiResponse:
    status: int
    body: Any
    headers: dict[str, str]
    raw: str


@dataclass(frozen=True)
class Caller:
    user: str = "alice"
    tenant: str = "acme"
    role: str = "user"

    @property
    def claims(self) -> dict[str, str]:
        return {"sub": self.user, "tenant_id": self.tenant, "role": self.role}


ApiCall = Callable[..., ApiResponse]


def api_response(result: dict[str, Any]) -> ApiResponse:
    """The API handler's answer as a test reads it (a body that is not JSON stays in ``raw``)."""
    raw = result.get("body") or ""
    try:
        parsed = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        parsed = None
    return ApiResponse(result["statusCode"], parsed, result.get("headers") or {}, raw)


@pytest.fixture
def api(aws: dict[str, str]) -> ApiCall:
    """Call the API function as API Gateway would, after its JWT authorizer let the caller in."""
    handler = load_handler("api")

    def call(method: str, path: str, body: Any = None, *, caller: Caller | None = None, query: str = "") -> ApiResponse:
        caller = caller or Caller()
        event = http_event(method, path, body=body, query=query, claims=caller.claims)
        return api_response(handler(event, LambdaContext(function_name="ApiFunction")))

    return call


@pytest.fixture
def local_mail_env(monkeypatch: pytest.MonkeyPatch, aws: dict[str, str], dovecot: Any) -> Any:
    """The settings a developer's local stack has: mail hosts on loopback allowed, the test CA trusted."""
    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "true")
    monkeypatch.setenv("MAILSYNC_EXTRA_CA_FILE", str(dovecot.ca_file))
    monkeypatch.setenv("MAILSYNC_IMAP_TIMEOUT_SECONDS", "10")
    from mailsync.config import get_settings

    get_settings.cache_clear()  # only settings: the clients the aws fixture handed on stay
    return dovecot
