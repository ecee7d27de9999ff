"""Envelope encryption of mail passwords (``mailsync.crypto``) against moto's KMS: AES-GCM under a
cached data key, bound to tenant and user; older direct-KMS ciphertexts still decrypt."""

from __future__ import annotations

from collections import Counter
from contextlib import AbstractContextManager
from typing import Any

import boto3
import pytest

from devstack.aws_calls import count_aws_calls


@pytest.fixture
def settings(aws: dict[str, str]) -> Any:
    from mailsync.config import get_settings

    return get_settings()


def kms_calls() -> AbstractContextManager[Counter[str]]:
    return count_aws_calls("kms")


def test_round_trip_with_one_data_key_and_no_kms_call_when_warm(settings: Any) -> None:
    from mailsync import crypto

    with kms_calls() as calls:
        blobs = {user: crypto.encrypt_password(f"secret of {user} ✓", "acme", user, settings) for user in ("a", "b")}
        assert {user: crypto.decrypt_password(blob, "acme", user, settings) for user, blob in blobs.items()} == {
            "a": "secret of a ✓",
            "b": "secret of b ✓",
        }
    # One data key for both, and decrypting needed no KMS call: the key is cached.
    assert calls == {"GenerateDataKey": 1}
    assert all(blob.startswith(crypto.MAGIC) for blob in blobs.values())
    # Equal passwords never give equal ciphertexts (a fresh nonce each time).
    assert crypto.encrypt_password("same", "acme", "a", settings) != crypto.encrypt_password(
        "same", "acme", "a", settings
    )


def test_a_new_container_unwraps_each_data_key_once(settings: Any) -> None:
    from mailsync import crypto

    blob = crypto.encrypt_password("pw", "acme", "alice", settings)
    crypto.reset_caches()
    with kms_calls() as calls:
        for _ in range(5):
            assert crypto.decrypt_password(blob, "acme", "alice", settings) == "pw"
    assert calls == {"Decrypt": 1}


def test_the_data_key_is_unwrapped_only_with_its_purpose(settings: Any) -> None:
    from mailsync import crypto

    blob = crypto.encrypt_password("pw", "acme", "alice", settings)
    length = int.from_bytes(blob[4:6], "big")
    wrapped = blob[6 : 6 + length]
    kms = boto3.client("kms")
    assert kms.decrypt(CiphertextBlob=wrapped, EncryptionContext=crypto.DATA_KEY_CONTEXT)["Plaintext"]
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=wrapped)


@pytest.mark.parametrize(("tenant", "user"), [("acme", "bob"), ("globex", "alice")])
def test_a_ciphertext_copied_to_another_user_does_not_decrypt(settings: Any, tenant: str, user: str) -> None:
    from mailsync import crypto

    blob = crypto.encrypt_password("alice's password", "acme", "alice", settings)
    with pytest.raises(crypto.PasswordUnreadable):
        crypto.decrypt_password(blob, tenant, user, settings)


def _tampered(blob: bytes) -> dict[str, bytes]:
    length = int.from_bytes(blob[4:6], "big")
    nonce_at = 6 + length

    def flip(at: int) -> bytes:
        return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]

    return {
        # Past the key's id (a blob naming no key of ours is AccessDenied: a deployment error,
        # not the user's password, so it is left an error).
        "wrapped key": flip(nonce_at - 5),
        "nonce": flip(nonce_at),
        "ciphertext": flip(nonce_at + 12),
        "tag": flip(len(blob) - 1),
        "truncated": blob[: nonce_at + 5],
        "length": blob[:4] + (length + 200).to_bytes(2, "big") + blob[6:],
        "header only": blob[:5],
    }


@pytest.mark.parametrize("part", list(_tampered(b"MSE1" + (40).to_bytes(2, "big") + bytes(40 + 12 + 20))))
def test_a_tampered_ciphertext_is_unreadable(settings: Any, part: str) -> None:
    from mailsync import crypto

    blob = crypto.encrypt_password("pw", "acme", "alice", settings)
    with pytest.raises(crypto.PasswordUnreadable):
        crypto.decrypt_password(_tampered(blob)[part], "acme", "alice", settings)


def test_older_direct_kms_ciphertexts_still_decrypt_for_their_owner_only(settings: Any) -> None:
    from mailsync import crypto

    context = {"tenant_id": "acme", "user_id": "alice", "purpose": "mail-password"}
    legacy = boto3.client("kms").encrypt(
        KeyId=settings.credentials_key_id, Plaintext="old pässword".encode(), EncryptionContext=context
    )["CiphertextBlob"]
    assert crypto.decrypt_password(legacy, "acme", "alice", settings) == "old pässword"
    with pytest.raises(crypto.PasswordUnreadable):
        crypto.decrypt_password(legacy, "acme", "bob", settings)


def test_data_key_reuse_is_bounded_by_count_and_age(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsync import crypto

    monkeypatch.setattr(crypto, "DATA_KEY_MAX_USES", 3)
    with kms_calls() as calls:
        blobs = [crypto.encrypt_password(f"pw{i}", "acme", "alice", settings) for i in range(7)]
    assert calls == {"GenerateDataKey": 3}  # 3 + 3 + 1
    assert len({blob[6 : 6 + int.from_bytes(blob[4:6], "big")] for blob in blobs}) == 3
    monkeypatch.setattr(crypto, "DATA_KEY_MAX_USES", 1000)
    monkeypatch.setattr(crypto, "DATA_KEY_MAX_AGE_SECONDS", 0)
    with kms_calls() as calls:
        for i in range(2):
            crypto.encrypt_password(f"pw{i}", "acme", "alice", settings)
    assert calls == {"GenerateDataKey": 2}
    # Every blob still decrypts, whichever key sealed it.
    assert [crypto.decrypt_password(b, "acme", "alice", settings) for b in blobs] == [f"pw{i}" for i in range(7)]
