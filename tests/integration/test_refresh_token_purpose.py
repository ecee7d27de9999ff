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


@pytest.mark.parametrize("sealed_by", ["direct-kms-password", "envelope-password"])
def test_only_an_envelope_password_blob_is_migrated_to_a_refresh_token(
    settings: Any, monkeypatch: pytest.MonkeyPatch, sealed_by: str
) -> None:
    """Tokens were only ever sealed in an envelope: a direct-KMS blob in the token field is a
    password of an older build (e.g. a copy of the user's previous one), never sent as a token."""
    import boto3

    from mailsync import crypto, dal, oauth
    from mailsync.domain import Account
    from mailsync.services import oauth_tokens

    if sealed_by == "direct-kms-password":
        context = {"tenant_id": "acme", "user_id": "alice", "purpose": "mail-password"}
        blob = boto3.client("kms").encrypt(
            KeyId=settings.credentials_key_id, Plaintext=b"old mail password", EncryptionContext=context
        )["CiphertextBlob"]
    else:
        blob = crypto.encrypt_password("1//token sealed as a password", "acme", "alice", settings)
    account = Account(
        "acme",
        "alice",
        "imap.gmail.com",
        993,
        "alice@gmail.com",
        "ssl",
        auth="oauth2",
        provider="google",
        refresh_token_ciphertext=blob,
    )
    sent: list[str] = []
    migrated: list[dict[str, Any]] = []
    monkeypatch.setattr(oauth, "deployment_secret", lambda settings: {"google_client_secret": "g"})
    monkeypatch.setattr(
        oauth,
        "refresh",
        lambda where, secret, token, timeout: sent.append(token) or oauth.Tokens(access_token="a", expires_in=3600),
    )
    monkeypatch.setattr(dal, "update_account_if_version", lambda account, fields, *a, **k: migrated.append(fields))
    oauth_tokens.forget_all_access_tokens()
    if sealed_by == "direct-kms-password":
        with pytest.raises(crypto.PasswordUnreadable):
            oauth_tokens.access_token(account, settings)
        assert sent == [] and migrated == []
    else:
        assert oauth_tokens.access_token(account, settings) == "a"
        assert sent == ["1//token sealed as a password"] and len(migrated) == 1
    oauth_tokens.forget_all_access_tokens()
