"""Consents under way (``domain.OAuthConsent``): one item each in the idempotency table, whose
time-to-live attribute (``expiration``) removes the ones nobody finished."""

from __future__ import annotations

from collections.abc import Callable

from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import DeleteError, DoesNotExist
from pynamodb.models import Model

from mailsync.dal._items import conditional_failure
from mailsync.dal._models import _SettingsTable, _Timeouts
from mailsync.domain import OAuthConsent

# Powertools' idempotency records are "<function>.<name>#<hash>": this prefix meets none of them.
_PREFIX = "oauth-consent#"


class _IdempotencyTable(_Timeouts, metaclass=_SettingsTable):
    setting = "idempotency_table"


class ConsentModel(Model):
    Meta = _IdempotencyTable

    id = UnicodeAttribute(hash_key=True)
    tenant_id = UnicodeAttribute()
    user_id = UnicodeAttribute()
    caller_id = UnicodeAttribute()
    provider = UnicodeAttribute()
    code_verifier = UnicodeAttribute()
    redirect_uri = UnicodeAttribute()
    return_url = UnicodeAttribute()
    expiration = NumberAttribute()


def save_consent(consent: OAuthConsent) -> None:
    ConsentModel(
        _PREFIX + consent.nonce,
        tenant_id=consent.tenant_id,
        user_id=consent.user_id,
        caller_id=consent.caller_id,
        provider=consent.provider,
        code_verifier=consent.code_verifier,
        redirect_uri=consent.redirect_uri,
        return_url=consent.return_url,
        expiration=consent.expires_at,
    ).save(condition=ConsentModel.id.does_not_exist())


def _consent_from(nonce: str, item: ConsentModel) -> OAuthConsent:
    return OAuthConsent(
        nonce=nonce,
        tenant_id=item.tenant_id,
        user_id=item.user_id,
        caller_id=item.caller_id,
        provider=item.provider,
        code_verifier=item.code_verifier,
        redirect_uri=item.redirect_uri,
        return_url=item.return_url,
        expires_at=int(item.expiration),
    )


def find_consent(nonce: str) -> OAuthConsent | None:
    """The consent of ``nonce`` if it is still under way, left in place."""
    try:
        return _consent_from(nonce, ConsentModel.get(_PREFIX + nonce, consistent_read=True))
    except DoesNotExist:
        return None


def take_consent(nonce: str, valid: Callable[[OAuthConsent], bool] | None = None) -> OAuthConsent | None:
    """The consent of ``nonce``, removed so that it serves once: None when there is none (never
    saved, expired and removed, or already taken by a concurrent callback) or when ``valid``
    says the request does not prove it (then it stays, for the browser that holds the real state)."""
    try:
        item = ConsentModel.get(_PREFIX + nonce, consistent_read=True)
    except DoesNotExist:
        return None
    consent = _consent_from(nonce, item)
    if valid is not None and not valid(consent):
        return None
    try:
        item.delete(condition=ConsentModel.id.exists())
    except DeleteError as exc:
        if conditional_failure(exc):
            return None
        raise
    return consent
