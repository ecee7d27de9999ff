"""Connecting a Google or Microsoft mailbox: the OAuth2 consent (authorization code + PKCE).

``start_consent`` (the CRM user, with their JWT) records the consent under a random nonce and
answers the provider's authorization URL. The provider sends the browser back to
``callback_location`` (no JWT): the signed, expiring ``state`` says which consent it is, and the
browser goes on to the consent's return URL with the code in the URL's fragment. The CRM
frontend there finishes the consent with ``finish_consent``, with its JWT: only the CRM user who
started a consent can finish it, so a consent completed in someone else's browser (a victim who
clicked an attacker's authorization link) connects nothing. See docs/operations.md "Which
browser finishes a consent".
"""

from __future__ import annotations

import time
import urllib.parse
from datetime import UTC, datetime

from mailsync import dal, oauth
from mailsync.config import Settings, get_settings
from mailsync.domain import Account, OAuthConsent
from mailsync.errors import Forbidden, ValidationFailed
from mailsync.identity import Principal
from mailsync.observability import logger
from mailsync.providers import PRESETS, PROVIDERS, ProviderName, endpoints
from mailsync.services import scheduling
from mailsync.services.accounts import mailbox_identity, settle_pending_ops, target_for
from mailsync.services.oauth_tokens import encrypt_refresh_token

CALLBACK_PATH = "/v1/oauth/callback"
RETURN_URL_MAX = 2048
CODE_MAX = 4096
# Microsoft's tenant of personal accounts (outlook.com, hotmail.com): not a Microsoft 365 mailbox.
MICROSOFT_PERSONAL_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
STATE_MESSAGE = "This connection link is not valid (expired, used already, or not issued here): start again"
NOT_YOURS_MESSAGE = "This connection was started by another user: nothing was connected"
# The return URL's fragment: never sent to a server, never in a Referer.
FRAGMENT_STATE = "oauth_state"
FRAGMENT_CODE = "oauth_code"


class _Refused(Exception):
    """The consent ends with ``?result=error&code=<code>`` at the return URL."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _origin(parts: urllib.parse.SplitResult) -> str:
    default = {"https": 443, "http": 80}[parts.scheme]
    port = parts.port if parts.port not in (None, default) else None
    return f"{parts.scheme}://{(parts.hostname or '').lower()}" + (f":{port}" if port else "")


def allowed_origins(settings: Settings) -> set[str]:
    out = set()
    for raw in settings.oauth_return_origins.split(","):
        raw = raw.strip().rstrip("/")
        if raw:
            try:
                out.add(_origin(urllib.parse.urlsplit(raw)))
            except (KeyError, ValueError):
                logger.warning("ignored return origin that is not scheme://host[:port]")
    return out


def check_return_url(return_url: str, settings: Settings) -> str:
    """The return URL if its origin is one of the deployment's (an exact origin, not a prefix:
    ``https://crm.example.com.evil.test`` starts like ``https://crm.example.com``)."""
    refused = ValidationFailed("return_url is not an address this deployment returns to", field="return_url")
    if len(return_url) > RETURN_URL_MAX or not return_url.isascii() or not return_url.isprintable():
        raise refused
    try:
        parts = urllib.parse.urlsplit(return_url)
        origin = _origin(parts)
    except (KeyError, ValueError):
        raise refused from None
    if parts.username is not None or parts.password is not None or not parts.hostname:
        raise refused
    if origin not in allowed_origins(settings):
        raise refused
    return return_url


def _with_result(return_url: str, result: dict[str, str]) -> str:
    parts = urllib.parse.urlsplit(return_url)
    query = "&".join(q for q in (parts.query, urllib.parse.urlencode(result)) if q)
    return urllib.parse.urlunsplit(parts._replace(query=query))


def redirect_uri(request_domain: str | None, settings: Settings) -> str:
    if settings.oauth_redirect_uri:
        return settings.oauth_redirect_uri
    if not request_domain:
        raise ValidationFailed("This deployment has no OAuth2 redirect URI configured", field="provider")
    return f"https://{request_domain}{CALLBACK_PATH}"


def _provider(provider: str, settings: Settings) -> ProviderName:
    if provider not in PROVIDERS:
        raise ValidationFailed(f"provider must be one of {', '.join(PROVIDERS)}", field="provider")
    name: ProviderName = provider  # type: ignore[assignment]
    if not endpoints(name, settings).client_id:
        raise ValidationFailed(f"'{provider}' mailboxes are not offered by this deployment", field="provider")
    return name


def _binding(consent: OAuthConsent) -> tuple[str, ...]:
    return (consent.tenant_id, consent.user_id, consent.caller_id, consent.provider, consent.return_url)


def start_consent(
    principal: Principal, user_id: str, provider: str, return_url: str, request_domain: str | None
) -> str:
    """The provider's authorization URL for a consent that connects ``user_id``'s mailbox."""
    settings = get_settings()
    target = target_for(principal, user_id)
    name = _provider(provider, settings)
    check_return_url(return_url, settings)
    verifier, challenge = oauth.pkce_pair()
    consent = OAuthConsent(
        nonce=oauth.new_nonce(),
        tenant_id=target.tenant_id,
        user_id=target.user_id,
        caller_id=principal.user_id,
        provider=name,
        code_verifier=verifier,
        redirect_uri=redirect_uri(request_domain, settings),
        return_url=return_url,
        expires_at=int(time.time()) + settings.oauth_state_ttl_seconds,
    )
    state = oauth.sign_state(consent.nonce, consent.expires_at, _binding(consent), settings)
    dal.save_consent(consent)
    logger.info("oauth consent started", extra={"user_id": target.user_id, "provider": name})
    return oauth.authorization_url(PRESETS[name], endpoints(name, settings), consent.redirect_uri, state, challenge)


def _parsed_state(state: str | None) -> oauth.ParsedState:
    parsed = oauth.parse_state(state or "")
    if parsed is None or parsed.expires_at < time.time():
        raise ValidationFailed(STATE_MESSAGE, field="state")
    return parsed


def _signed(parsed: oauth.ParsedState, consent: OAuthConsent, settings: Settings) -> bool:
    return consent.expires_at == parsed.expires_at and oauth.state_signature_valid(parsed, _binding(consent), settings)


def _checked_code(code: str | None) -> None:
    if code is not None and (len(code) > CODE_MAX or not code.isascii() or not code.isprintable()):
        raise ValidationFailed("code is not an authorization code", field="code")


def callback_location(code: str | None, state: str | None, error: str | None) -> str:
    """Where the browser goes from the provider: the consent's return URL.

    With a code: ``?result=confirm`` and, in the fragment, ``oauth_state`` and ``oauth_code`` for
    the CRM frontend to finish with (``finish_consent``); the consent stays until then. With an
    error from the provider: ``?result=error&code=...``, the consent spent. A state that is not
    one of ours is a 422 (there is no trusted address to send anyone to).
    """
    settings = get_settings()
    _checked_code(code)
    parsed = _parsed_state(state)
    if error is None and code:
        consent = dal.find_consent(parsed.nonce)
        if consent is None or not _signed(parsed, consent, settings):
            raise ValidationFailed(STATE_MESSAGE, field="state")
        location = urllib.parse.urlsplit(_with_result(consent.return_url, {"result": "confirm"}))
        fragment = urllib.parse.urlencode({FRAGMENT_STATE: state, FRAGMENT_CODE: code})
        return urllib.parse.urlunsplit(location._replace(fragment=fragment))
    # Taken (removed) before anything else: a state serves once, even when what follows fails.
    consent = dal.take_consent(parsed.nonce, lambda c: _signed(parsed, c, settings))
    if consent is None:
        raise ValidationFailed(STATE_MESSAGE, field="state")
    result = "consent_denied" if error == "access_denied" else "provider_error"
    logger.info(
        "oauth consent failed", extra={"user_id": consent.user_id, "provider": consent.provider, "result": result}
    )
    return _with_result(consent.return_url, {"result": "error", "code": result})


def finish_consent(principal: Principal, code: str, state: str) -> dict[str, str]:
    """Connect the mailbox of a consent the caller started: ``{"result": "connected"}`` or
    ``{"result": "error", "code": ...}`` (``token_exchange_failed``, ``wrong_account_type``,
    ``settings_changed``), the same results the return URL's query had before.

    A state that is not valid is a 422 on ``state``; one that ``principal`` did not start is a 403
    and leaves the consent alone (it can still be finished by its own user, with the code only
    their browser was given).
    """
    settings = get_settings()
    _checked_code(code)
    if not code:
        raise ValidationFailed("code is not an authorization code", field="code")
    parsed = _parsed_state(state)
    strangers: list[OAuthConsent] = []

    def proven(consent: OAuthConsent) -> bool:
        # Checked before the consent is removed: a forged state, or another user's browser,
        # must not spend the user's consent.
        if not _signed(parsed, consent, settings):
            return False
        if (consent.tenant_id, consent.caller_id) != (principal.tenant_id, principal.user_id):
            strangers.append(consent)
            return False
        return True

    consent = dal.take_consent(parsed.nonce, proven)
    if strangers:
        logger.warning(
            "oauth consent finished by another user refused",
            extra={"user_id": strangers[0].user_id, "provider": strangers[0].provider, "caller_id": principal.user_id},
        )
        raise Forbidden(NOT_YOURS_MESSAGE)
    if consent is None:
        raise ValidationFailed(STATE_MESSAGE, field="state")
    try:
        _connect(consent, code, settings)
    except _Refused as refused:
        logger.info(
            "oauth consent failed",
            extra={"user_id": consent.user_id, "provider": consent.provider, "result": refused.code},
        )
        return {"result": "error", "code": refused.code}
    logger.info("oauth consent connected", extra={"user_id": consent.user_id, "provider": consent.provider})
    return {"result": "connected"}


def _address(consent: OAuthConsent, tokens: oauth.Tokens, settings: Settings) -> str:
    """The mailbox address from the ID token (or the userinfo endpoint), checked for this client."""
    where = endpoints(consent.provider, settings)  # type: ignore[arg-type]
    claims = oauth.id_token_claims(tokens.id_token) if tokens.id_token else {}
    if claims:
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        issuer_host = urllib.parse.urlsplit(where.issuer).netloc
        if where.client_id not in audiences or urllib.parse.urlsplit(str(claims.get("iss", ""))).netloc != issuer_host:
            raise _Refused("token_exchange_failed")
        if consent.provider == "microsoft" and claims.get("tid") == MICROSOFT_PERSONAL_TENANT:
            raise _Refused("wrong_account_type")
        if claims.get("email_verified") is False:
            raise _Refused("wrong_account_type")
    address = claims.get("email")
    if not address and consent.provider == "microsoft":
        address = claims.get("preferred_username")
    if not address and where.userinfo_url:
        try:
            info = oauth.userinfo(where, tokens.access_token, settings.oauth_http_timeout_seconds)
        except (oauth.OAuthError, oauth.TokenEndpointUnavailable):
            raise _Refused("token_exchange_failed") from None
        if info.get("email_verified") is not False:
            address = info.get("email")
    if (
        not isinstance(address, str)
        or "@" not in address
        or len(address) > 254
        or not address.isprintable()
        or any(c.isspace() for c in address)
    ):
        raise _Refused("wrong_account_type")
    return address


def _connect(consent: OAuthConsent, code: str, settings: Settings) -> None:
    name: ProviderName = consent.provider  # type: ignore[assignment]
    where = endpoints(name, settings)
    try:
        tokens = oauth.exchange_code(
            where,
            oauth.client_secret(name, settings),
            code,
            consent.code_verifier,
            consent.redirect_uri,
            settings.oauth_http_timeout_seconds,
        )
    except (oauth.OAuthError, oauth.TokenEndpointUnavailable) as exc:
        logger.warning("oauth code exchange failed", extra={"provider": name, "error_type": type(exc).__name__})
        raise _Refused("token_exchange_failed") from None
    if not tokens.refresh_token:
        raise _Refused("token_exchange_failed")
    address = _address(consent, tokens, settings)
    _save(consent, address, tokens, settings)


def _save(consent: OAuthConsent, address: str, tokens: oauth.Tokens, settings: Settings) -> None:
    preset = PRESETS[consent.provider]  # type: ignore[index]
    where = endpoints(preset.name, settings)
    tenant_id, user_id = consent.tenant_id, consent.user_id
    assert tokens.refresh_token is not None
    values = {
        "host": where.imap_host,
        "port": where.imap_port,
        "username": address,
        "security": "ssl",
        "protocol": "imap",
        "password_ciphertext": None,
        "auth": "oauth2",
        "provider": preset.name,
        "oauth_scopes": tokens.scope or " ".join(preset.scopes),
        "connected_at": datetime.now(UTC),
        "refresh_token_ciphertext": encrypt_refresh_token(tokens.refresh_token, tenant_id, user_id, settings),
        "last_error": None,
    }
    existing = dal.get_account(tenant_id, user_id)
    if existing is None:
        state = dal.get_sync_state(tenant_id, user_id)
        settle_pending_ops(
            tenant_id, user_id, state.ops_server if state is not None else None, mailbox_identity(values)
        )
        # Like saved settings (accounts.put_settings): just changed by the user, polled soon at any hour.
        due = scheduling.due_fields(tenant_id, user_id, True, "pending", "imap", active=True)
        created = dal.create_account(
            Account(tenant_id=tenant_id, user_id=user_id, status="pending", settings_version=1, **values, **due)
        )
        if created is not None:
            return
        existing = dal.get_account(tenant_id, user_id)  # a concurrent create: the consent wins
        if existing is None:
            raise _Refused("settings_changed")
    settle_pending_ops(tenant_id, user_id, mailbox_identity(existing), mailbox_identity(values))
    status = "pending" if existing.fetch_enabled else "disabled"
    values.update(status=status, settings_version=int(existing.settings_version or 1) + 1)
    values.update(scheduling.due_fields(tenant_id, user_id, existing.fetch_enabled, status, "imap", active=True))
    dal.update_account(existing, values)
