"""Refresh tokens and passwords are sealed for different purposes (``mailsync.crypto``, against
moto's KMS): the same key and envelope, but neither blob decrypts as the other."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def settings(aws: dict[str, str]) -> Any:
    from mailsync.config import get_settings

    return get_settings()


def test_a_refresh_token_round_trips_bound_to_its_tenant_and_user(settings: Any) -> None:
    from mailsync import crypto

    blob = crypto.encrypt_refresh_token("1//token ✓", "acme", "alice", settings)
    assert blob.startswith(crypto.MAGIC)
    assert crypto.decrypt_refresh_token(blob, "acme", "alice", settings) == "1//token ✓"
    for tenant, user in (("acme", "bob"), ("other", "alice")):
        with pytest.raises(crypto.PasswordUnreadable):
            crypto.decrypt_refresh_token(blob, tenant, user, settings)


def test_a_password_blob_is_no_refresh_token_and_a_token_blob_no_password(settings: Any) -> None:
    from mailsync import crypto

    password = crypto.encrypt_password("mail password", "acme", "alice", settings)
    token = crypto.encrypt_refresh_token("1//token", "acme", "alice", settings)
    with pytest.raises(crypto.PasswordUnreadable):
        crypto.decrypt_refresh_token(password, "acme", "alice", settings)
    with pytest.raises(crypto.PasswordUnreadable):
        crypto.decrypt_saved_password(token, "acme", "alice", settings)
    # Passwords sealed before this change (same purpose in the associated data) still decrypt
    assert crypto.decrypt_saved_password(password, "acme", "alice", settings) == "mail password"


def test_a_direct_kms_blob_is_never_a_refresh_token(settings: Any) -> None:
    from mailsync import crypto

    with pytest.raises(crypto.PasswordUnreadable):
        crypto.decrypt_refresh_token(b"\x01\x02\x03 not an envelope", "acme", "alice", settings)
