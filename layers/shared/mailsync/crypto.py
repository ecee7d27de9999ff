"""Mail passwords encrypted with KMS, bound to their tenant and user by encryption context.

The context means a ciphertext copied onto another user's item does not decrypt.
"""

from __future__ import annotations

from mailsync.aws import client
from mailsync.config import Settings


def _context(tenant_id: str, user_id: str) -> dict[str, str]:
    return {"tenant_id": tenant_id, "user_id": user_id, "purpose": "mail-password"}


def encrypt_password(password: str, tenant_id: str, user_id: str, settings: Settings) -> bytes:
    response = client("kms").encrypt(
        KeyId=settings.credentials_key_id,
        Plaintext=password.encode("utf-8"),
        EncryptionContext=_context(tenant_id, user_id),
    )
    return response["CiphertextBlob"]


def decrypt_password(ciphertext: bytes, tenant_id: str, user_id: str, settings: Settings) -> str:
    response = client("kms").decrypt(
        KeyId=settings.credentials_key_id,
        CiphertextBlob=ciphertext,
        EncryptionContext=_context(tenant_id, user_id),
    )
    return response["Plaintext"].decode("utf-8")
