"""The verifying TLS context is built once per process and CA file, not per connection."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from mailsync.config import Settings
from mailsync.mailbox.base import client_ssl_context

SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")


def test_given_the_same_settings_when_asked_twice_then_one_context_serves_both() -> None:
    first = client_ssl_context(Settings(extra_ca_file=None))
    assert client_ssl_context(Settings(extra_ca_file=None)) is first
    assert first.verify_mode is ssl.CERT_REQUIRED and first.check_hostname
    assert first.minimum_version is ssl.TLSVersion.TLSv1_2


@pytest.mark.skipif(not SYSTEM_CAS.exists(), reason="needs a CA bundle file to load")
def test_given_another_ca_file_when_asked_then_a_context_that_trusts_it() -> None:
    plain = client_ssl_context(Settings(extra_ca_file=None))
    extra = client_ssl_context(Settings(extra_ca_file=str(SYSTEM_CAS)))
    assert extra is not plain
    assert extra is client_ssl_context(Settings(extra_ca_file=str(SYSTEM_CAS)))
    assert extra.cert_store_stats()["x509_ca"] > 0
