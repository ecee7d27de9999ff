"""A mailbox's OAuth2 grant: its refresh token encrypted like passwords, revoked on delete."""

from __future__ import annotations

import threading
import time

from mailsync import crypto, dal, oauth
from mailsync.config import Settings
from mailsync.domain import Account
from mailsync.errors import ReauthRequired
from mailsync.observability import logger
from mailsync.providers import PROVIDERS, endpoints


def encrypt_refresh_token(token: str, tenant_id: str, user_id: str, settings: Settings) -> bytes:
    """Same key and tenant/user binding as passwords, its own purpose (``crypto.REFRESH_TOKEN_PURPOSE``)."""
    return crypto.encrypt_refresh_token(token, tenant_id, user_id, settings)


def decrypt_refresh_token(account: Account, settings: Settings) -> str:
    """The refresh token in memory only, for one token request (``PasswordUnreadable`` when it
    no longer decrypts for this user: like a lost password, the user must connect again).

    Lazy migration: a token saved before tokens had their own purpose (sealed as a password,
    by builds before this one) is read once as such and sealed again for its purpose at once,
    over that very ciphertext. Only an envelope blob, as those builds sealed tokens (a direct-KMS
    blob there is an older password), and never the account's own password blob (a copy of it in
    the token field would send the password to the provider).
    """
    ciphertext = account.refresh_token_ciphertext
    assert ciphertext is not None
    try:
        return crypto.decrypt_refresh_token(ciphertext, account.tenant_id, account.user_id, settings)
    except crypto.PasswordUnreadable:
        if ciphertext == account.password_ciphertext:
            raise
        token = crypto.decrypt_envelope_password(ciphertext, account.tenant_id, account.user_id, settings)
    migrated = dal.update_account_if_version(
        account,
        {"refresh_token_ciphertext": encrypt_refresh_token(token, account.tenant_id, account.user_id, settings)},
        account.settings_version,
        refresh_token_ciphertext=ciphertext,
    )
    logger.info(
        "refresh token sealed for its purpose", extra={"user_id": account.user_id, "done": migrated is not None}
    )
    return token


def revoke_grant(account: Account, settings: Settings) -> None:
    """Revoke the saved refresh token at the provider where it offers revocation.

    Best effort: the credentials are destroyed next whatever the provider answers, and a user
    who deletes their settings must not be kept waiting on an unreachable provider.

    Not while another user of the tenant holds a grant for the same mailbox and provider (a
    shared mailbox both connected): Google revokes a grant, not one token, so revoking this
    user's token would cut the other user off too. Their token is dropped here all the same.
    """
    if account.auth != "oauth2" or account.refresh_token_ciphertext is None or account.provider not in PROVIDERS:
        return
    where = endpoints(account.provider, settings)  # type: ignore[arg-type]
    if not where.revoke_url:
        return
    sharing = [
        u
        for u in dal.oauth_grant_holders(account.tenant_id, account.provider, account.username)
        if u != account.user_id
    ]
    if sharing:
        logger.info(
            "refresh token not revoked: another user holds a grant for this mailbox",
            extra={"user_id": account.user_id, "provider": account.provider, "other_users": len(sharing)},
        )
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


# --- access tokens, cached per container ------------------------------------------------------

# Renewed this long before they expire: a sync job runs up to a few minutes on one login.
REFRESH_AHEAD_SECONDS = 300
_CACHE_MAX = 2_000
_cache_lock = threading.Lock()
# (tenant, user, refresh token ciphertext) -> (access token, monotonic expiry). A new consent
# has a new ciphertext, so it never gets the previous grant's token.
_cache: dict[tuple[str, str, bytes], tuple[str, float]] = {}
# One refresh per account at a time: by account, not by grant, as a rotated refresh token
# (Microsoft's, each refresh) would leave a lock behind per refresh.
_refreshing: dict[tuple[str, str], threading.Lock] = {}


def _key(account: Account) -> tuple[str, str, bytes]:
    return (account.tenant_id, account.user_id, account.refresh_token_ciphertext or b"")


def _cached(key: tuple[str, str, bytes], now: float) -> str | None:
    with _cache_lock:
        entry = _cache.get(key)
    if entry is not None and entry[1] - now > REFRESH_AHEAD_SECONDS:
        return entry[0]
    return None


def access_token(account: Account, settings: Settings, *, deadline: float | None = None) -> str:
    """A valid access token for ``account``'s OAuth2 grant: the cached one while it has more
    than ``REFRESH_AHEAD_SECONDS`` left, else a fresh one from the provider (one refresh per
    account at a time across the container's threads).

    ``ReauthRequired`` when the provider says ``invalid_grant``; ``TokenEndpointUnavailable``
    (transient) when it cannot be reached or misbehaves, or not by ``deadline`` (a
    ``time.monotonic()`` instant: the sync job's hard deadline).
    """
    key = _key(account)
    token = _cached(key, time.monotonic())
    if token is not None:
        return token
    with _cache_lock:
        if len(_refreshing) >= _CACHE_MAX:
            _refreshing.clear()  # a refresh under a dropped lock may run twice: the update keeps one
        lock = _refreshing.setdefault((account.tenant_id, account.user_id), threading.Lock())
    with lock:
        token = _cached(key, time.monotonic())
        if token is not None:
            return token
        tokens = _refresh(account, settings, deadline)
        with _cache_lock:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[key] = (tokens.access_token, time.monotonic() + tokens.expires_in)
    if tokens.refresh_token and account.refresh_token_ciphertext is not None:
        # Microsoft hands out a new refresh token with each refresh: keep the newest.
        ciphertext = encrypt_refresh_token(tokens.refresh_token, account.tenant_id, account.user_id, settings)
        # Only over the grant it renewed: a new consent, a switch to a password or a delete
        # meanwhile wins, and the provider's new token (for a grant no longer saved) is dropped.
        updated = dal.update_account_if_version(
            account,
            {"refresh_token_ciphertext": ciphertext},
            account.settings_version,
            refresh_token_ciphertext=account.refresh_token_ciphertext,
        )
        if updated is None:
            logger.info("rotated refresh token dropped: the settings changed", extra={"user_id": account.user_id})
            return tokens.access_token
        with _cache_lock:
            _cache[_key(updated)] = _cache.pop(key, (tokens.access_token, time.monotonic() + tokens.expires_in))
    return tokens.access_token


def _refresh(account: Account, settings: Settings, deadline: float | None = None) -> oauth.Tokens:
    provider = account.provider
    if provider not in PROVIDERS:
        raise ReauthRequired()
    where = endpoints(provider, settings)  # type: ignore[arg-type]
    timeout = settings.oauth_http_timeout_seconds
    if deadline is not None:
        timeout = min(timeout, deadline - time.monotonic())
        if timeout <= 0:
            raise oauth.TokenEndpointUnavailable("No time was left to renew access to the mailbox; it will be retried")
    try:
        return oauth.refresh(
            where,
            oauth.client_secret(provider, settings),
            decrypt_refresh_token(account, settings),
            timeout,
        )
    except oauth.OAuthError as exc:
        if exc.oauth_code == "invalid_grant":
            logger.info("oauth grant gone", extra={"user_id": account.user_id, "provider": provider})
            raise ReauthRequired() from None
        # invalid_client and the like: the deployment's configuration, not the user's grant.
        logger.warning("oauth refresh refused", extra={"provider": provider, "oauth_code": exc.oauth_code})
        raise oauth.TokenEndpointUnavailable(
            f"The mail provider refused to renew access ({exc.oauth_code}); it will be retried"
        ) from None


def forget_access_token(account: Account) -> None:
    """Drop ``account``'s cached access token (the mail server refused it)."""
    with _cache_lock:
        _cache.pop(_key(account), None)


def forget_all_access_tokens() -> None:
    with _cache_lock:
        _cache.clear()
        _refreshing.clear()
