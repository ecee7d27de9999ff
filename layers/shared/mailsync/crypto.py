"""Mail passwords, envelope-encrypted: AES-GCM under a KMS data key, bound to tenant and user.

Stored (``password_ciphertext``)::

    b"MSE1" | len(wrapped key), 2 bytes | wrapped key | nonce, 12 bytes | AES-GCM ciphertext + tag

The data key comes from KMS ``GenerateDataKey`` (encryption context ``{"purpose":
"mail-password-key"}``: the same for every tenant, so the key policy can scope the key to this use)
and encrypts many passwords: a new one after ``DATA_KEY_MAX_USES`` encryptions or
``DATA_KEY_MAX_AGE_SECONDS``, whichever comes first. The password's associated data binds the
blob to its tenant and user, so a ciphertext copied onto another user's item does not decrypt
(``PasswordUnreadable``), exactly like the encryption context of the older format.

Decrypting unwraps the data key with KMS ``Decrypt`` once per container: the plaintext keys are
kept by wrapped-key bytes in a bounded, thread-safe LRU, so a warm worker decrypts a password
with no KMS call at all. Blobs of the older format (a direct KMS ``Encrypt`` with the context
tenant, user and purpose) still decrypt, with one KMS call each, and are replaced when the user
saves the password again.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailsync.aws import client
from mailsync.config import Settings
from mailsync.errors import AuthFailed

# KMS's answers for a ciphertext that is not ours to decrypt: copied from another user's item
# (other encryption context), from another key, or damaged.
_UNREADABLE_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})

MAGIC = b"MSE1"  # never the start of a KMS ciphertext blob (KMS: 0x01 0x02..., moto: a hex key id)
PURPOSE = "mail-password"
# OAuth2 refresh tokens: the same envelope and data keys, another purpose in the associated data,
# so a password's blob never decrypts as a token (it would be sent to the provider) nor back.
REFRESH_TOKEN_PURPOSE = "oauth-refresh-token"  # noqa: S105 (a label, not a secret)
DATA_KEY_CONTEXT = {"purpose": "mail-password-key"}
NONCE_BYTES = 12
# Random 96-bit nonces stay far from collision at this many messages per key (NIST SP 800-38D
# allows 2**32); the age bound keeps a leaked key's reach to a few minutes of saved passwords.
DATA_KEY_MAX_USES = 10_000
DATA_KEY_MAX_AGE_SECONDS = 15 * 60
UNWRAPPED_KEYS_CACHED = 1024


class PasswordUnreadable(AuthFailed):
    """The saved password does not decrypt for this user. Like a wrong password, nothing can log
    in until the user enters it again, so it is ``auth_failed`` with its own message."""

    def __init__(self) -> None:
        super().__init__("The saved mail password cannot be used any more: enter the password again", field="password")


@dataclass
class _DataKey:
    key_id: str
    plaintext: bytes
    wrapped: bytes
    created: float
    uses: int = 0


_lock = threading.Lock()
_current: _DataKey | None = None
_unwrapped: OrderedDict[bytes, bytes] = OrderedDict()


def reset_caches() -> None:
    """Forget every data key (tests switch KMS mocks)."""
    global _current
    with _lock:
        _current = None
        _unwrapped.clear()


def _legacy_context(tenant_id: str, user_id: str) -> dict[str, str]:
    return {"tenant_id": tenant_id, "user_id": user_id, "purpose": PURPOSE}


def _associated_data(tenant_id: str, user_id: str, purpose: str = PURPOSE) -> bytes:
    # JSON: unambiguous whatever the ids contain; the magic binds the format version too.
    return MAGIC + json.dumps([purpose, tenant_id, user_id]).encode("utf-8")


def _remember(wrapped: bytes, plaintext: bytes) -> None:
    with _lock:
        _unwrapped[wrapped] = plaintext
        _unwrapped.move_to_end(wrapped)
        while len(_unwrapped) > UNWRAPPED_KEYS_CACHED:
            _unwrapped.popitem(last=False)


def _data_key(settings: Settings) -> _DataKey:
    """The container's current data key, a new one when it is used up, old or for another key."""
    global _current
    with _lock:
        key = _current
        fresh = (
            key is not None
            and key.key_id == settings.credentials_key_id
            and key.uses < DATA_KEY_MAX_USES
            and time.monotonic() - key.created < DATA_KEY_MAX_AGE_SECONDS
        )
        if fresh:
            assert key is not None
            key.uses += 1
            return key
    response = client("kms").generate_data_key(
        KeyId=settings.credentials_key_id, KeySpec="AES_256", EncryptionContext=DATA_KEY_CONTEXT
    )
    key = _DataKey(settings.credentials_key_id, response["Plaintext"], response["CiphertextBlob"], time.monotonic(), 1)
    _remember(key.wrapped, key.plaintext)
    with _lock:
        _current = key
    return key


def _seal(secret: str, tenant_id: str, user_id: str, settings: Settings, purpose: str) -> bytes:
    key = _data_key(settings)
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key.plaintext).encrypt(nonce, secret.encode("utf-8"), _associated_data(tenant_id, user_id, purpose))
    return MAGIC + struct.pack(">H", len(key.wrapped)) + key.wrapped + nonce + sealed


def encrypt_password(password: str, tenant_id: str, user_id: str, settings: Settings) -> bytes:
    return _seal(password, tenant_id, user_id, settings, PURPOSE)


def encrypt_refresh_token(token: str, tenant_id: str, user_id: str, settings: Settings) -> bytes:
    """An OAuth2 refresh token, sealed like a password but for its own purpose (see above)."""
    return _seal(token, tenant_id, user_id, settings, REFRESH_TOKEN_PURPOSE)


def _unwrap(wrapped: bytes, settings: Settings) -> bytes:
    with _lock:
        plaintext = _unwrapped.get(wrapped)
        if plaintext is not None:
            _unwrapped.move_to_end(wrapped)
            return plaintext
    # Outside the lock: two threads may unwrap one key at once, which costs a call, not a wait.
    response = client("kms").decrypt(
        KeyId=settings.credentials_key_id, CiphertextBlob=wrapped, EncryptionContext=DATA_KEY_CONTEXT
    )
    plaintext = response["Plaintext"]
    _remember(wrapped, plaintext)
    return plaintext


def _decrypt_envelope(blob: bytes, tenant_id: str, user_id: str, settings: Settings, purpose: str = PURPOSE) -> str:
    start = len(MAGIC) + 2
    if len(blob) < start:
        raise PasswordUnreadable()
    (length,) = struct.unpack(">H", blob[len(MAGIC) : start])
    wrapped, rest = blob[start : start + length], blob[start + length :]
    if len(wrapped) != length or len(rest) <= NONCE_BYTES:
        raise PasswordUnreadable()
    key = _unwrap(wrapped, settings)
    try:
        plain = AESGCM(key).decrypt(
            rest[:NONCE_BYTES], rest[NONCE_BYTES:], _associated_data(tenant_id, user_id, purpose)
        )
    except InvalidTag:
        raise PasswordUnreadable() from None
    return plain.decode("utf-8")


def _decrypt_legacy(blob: bytes, tenant_id: str, user_id: str, settings: Settings) -> str:
    response = client("kms").decrypt(
        KeyId=settings.credentials_key_id, CiphertextBlob=blob, EncryptionContext=_legacy_context(tenant_id, user_id)
    )
    return response["Plaintext"].decode("utf-8")


@contextmanager
def _unreadable_blobs() -> Iterator[None]:
    """KMS refusing the blob, or plaintext that is not text: ``PasswordUnreadable`` (the blob is
    not this user's, damaged, or of another key); other AWS errors pass."""
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _UNREADABLE_CODES:
            raise PasswordUnreadable() from None
        raise
    except UnicodeDecodeError:
        raise PasswordUnreadable() from None


def decrypt_password(ciphertext: bytes, tenant_id: str, user_id: str, settings: Settings) -> str:
    """The password saved for this tenant and user; ``PasswordUnreadable`` when the blob is not
    theirs (copied from another user's item), damaged, or of another key."""
    with _unreadable_blobs():
        if ciphertext.startswith(MAGIC):
            return _decrypt_envelope(ciphertext, tenant_id, user_id, settings)
        return _decrypt_legacy(ciphertext, tenant_id, user_id, settings)


def decrypt_saved_password(ciphertext: bytes, tenant_id: str, user_id: str, settings: Settings) -> str:
    """``decrypt_password`` for a login (the name the services call)."""
    return decrypt_password(ciphertext, tenant_id, user_id, settings)


def decrypt_envelope_password(ciphertext: bytes, tenant_id: str, user_id: str, settings: Settings) -> str:
    """``decrypt_password`` for envelope blobs only: a refresh token sealed as a password (builds
    before ``REFRESH_TOKEN_PURPOSE``) was always in an envelope, so a direct-KMS blob where a token
    is expected can only be a password, and is ``PasswordUnreadable`` there."""
    if not ciphertext.startswith(MAGIC):
        raise PasswordUnreadable()
    return decrypt_password(ciphertext, tenant_id, user_id, settings)


def decrypt_refresh_token(ciphertext: bytes, tenant_id: str, user_id: str, settings: Settings) -> str:
    """A refresh token sealed by ``encrypt_refresh_token`` for this tenant and user;
    ``PasswordUnreadable`` for anything else, a password's blob of the same user included."""
    if not ciphertext.startswith(MAGIC):
        raise PasswordUnreadable()  # tokens were never sealed by KMS directly
    with _unreadable_blobs():
        return _decrypt_envelope(ciphertext, tenant_id, user_id, settings, REFRESH_TOKEN_PURPOSE)
