"""A mailbox's OAuth2 grant: its refresh token encrypted like passwords, revoked on delete."""

from __future__ import annotations

from mailsync import crypto, oauth
from mailsync.config import Settings
from mailsync.domain import Account
from mailsync.observability import logger
from mailsync.providers import PROVIDERS, endpoints


def encrypt_refresh_token(token: str, tenant_id: str, user_id: str, settings: Settings) -> bytes:
    """Through the password encryption's public API: same key, same tenant/user binding."""
    return crypto.encrypt_password(token, tenant_id, user_id, settings)


def decrypt_refresh_token(account: Account, settings: Settings) -> str:
    """The refresh token in memory only, for one token request (``PasswordUnreadable`` when it
    no longer decrypts for this user: like a lost password, the user must connect again)."""
    assert account.refresh_token_ciphertext is not None
    return crypto.decrypt_saved_password(account.refresh_token_ciphertext, account.tenant_id, account.user_id, settings)


def revoke_grant(account: Account, settings: Settings) -> None:
    """Revoke the saved refresh token at the provider where it offers revocation.

    Best effort: the credentials are destroyed next whatever the provider answers, and a user
    who deletes their settings must not be kept waiting on an unreachable provider.
    """
    if account.auth != "oauth2" or account.refresh_token_ciphertext is None or account.provider not in PROVIDERS:
        return
    where = endpoints(account.provider, settings)  # type: ignore[arg-type]
    if not where.revoke_url:
        return
    try:
        token = decrypt_refresh_token(account, settings)
        revoked = oauth.revoke(
            where, oauth.client_secret(account.provider, settings), token, settings.oauth_http_timeout_seconds
        )
    except Exception as exc:  # noqa: BLE001 (best effort, see above)
        logger.warning(
            "refresh token not revoked", extra={"user_id": account.user_id, "error_type": type(exc).__name__}
        )
        return
    logger.info("refresh token revoked", extra={"user_id": account.user_id, "revoked": revoked})
