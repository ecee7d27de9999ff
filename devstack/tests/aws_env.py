"""The fake-credentials environment for tests that provision template.yaml into moto (used by
devstack's own tests and by tests/integration/test_template_provision.py)."""

from __future__ import annotations

import pytest

REGION = "eu-west-1"


def use_fake_aws(monkeypatch: pytest.MonkeyPatch, region: str = REGION) -> None:
    """No real profile, endpoint or credentials file can leak in; moto accepts the rest."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    monkeypatch.setenv("AWS_REGION", region)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.setenv(name, "testing")
