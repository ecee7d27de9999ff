"""Mail passwords encrypted with KMS, bound to their tenant and user by encryption context.

The context means a ciphertext copied onto another user's item does not decrypt.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from mailsync.aws import client
from mailsync.config import Settings
from mailsync.errors import AuthFailed

# KMS's answers for a ciphertext that is not ours to decrypt: copied from another user's item
# (other encryption context), from another key, or damaged.
_UNREADABLE_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})


class PasswordUnreadable(AuthFailed):
    """The saved password does not decrypt for this user. Like a wrong password, nothing can log
    in until the user enters it again, so it is ``auth_failed`` with its own message."""

    def __init__(self) -> None:
        super().__init__("The saved mail password cannot be used any more: enter the password again", field="password")


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


def decrypt_saved_password(ciphertext: bytes, tenant_id: str, user_id: str, settings: Settings) -> str:
    """``decrypt_password`` for a login: an undecryptable ciphertext is ``PasswordUnreadable``."""
    try:
        return decrypt_password(ciphertext, tenant_id, user_id, settings)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _UNREADABLE_CODES:
            raise PasswordUnreadable() from None
        raise
    except UnicodeDecodeError:
        raise PasswordUnreadable() from None
