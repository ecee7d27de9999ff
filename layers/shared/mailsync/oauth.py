"""OAuth2 with the mail providers: PKCE, the signed consent ``state``, and the token endpoint
(code exchange, refresh, revocation, userinfo). Protocol only: what is stored is the services'
business. No response body, token or secret is ever logged here.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import http.client
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from mailsync.aws import client
from mailsync.config import Settings, get_settings
from mailsync.errors import MailboxError, MailsyncError
from mailsync.providers import Endpoints, Preset

# A token endpoint answers with a few kilobytes; anything near this is not a token response.
_MAX_RESPONSE_BYTES = 256 * 1024
_SECRET_CACHE_SECONDS = 300.0
NONCE_BYTES = 32


class OAuthError(MailsyncError):
    """The provider refused (``code`` is its OAuth2 error code, e.g. ``invalid_grant``)."""

    code = "oauth_error"
    status = 502

    def __init__(self, oauth_code: str, message: str = "The identity provider refused the request") -> None:
        super().__init__(message)
        self.oauth_code = oauth_code


class TokenEndpointUnavailable(MailboxError):
    """The token endpoint could not be reached or failed (5xx, 429, timeout): transient, the
    account backs off like for a busy mail server."""

    code = "provider_unavailable"
    status = 503


class NotConfigured(MailsyncError):
    """This deployment has no client id or secret for the provider."""

    code = "validation_error"
    status = 422


@dataclass(frozen=True)
class Tokens:
    access_token: str
    expires_in: int
    refresh_token: str | None = None
    id_token: str | None = None
    scope: str | None = None

    def __repr__(self) -> str:  # never print a token, whoever logs this value
        return f"Tokens(expires_in={self.expires_in}, scope={self.scope!r})"


# --- the deployment's secret (client secrets, state key) -------------------------------------------

_secret_lock = threading.Lock()
_secret_cache: dict[str, tuple[float, dict[str, str]]] = {}


def deployment_secret(settings: Settings) -> dict[str, str]:
    """The Secrets Manager secret of ``oauth_client_secret_arn`` (cached a few minutes per
    container, so that a rotation reaches running containers without a redeploy)."""
    arn = settings.oauth_client_secret_arn
    if not arn:
        raise NotConfigured("OAuth2 mailboxes are not configured in this deployment", field="provider")
    now = time.monotonic()
    with _secret_lock:
        cached = _secret_cache.get(arn)
        if cached is not None and now - cached[0] < _SECRET_CACHE_SECONDS:
            return cached[1]
    raw = client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    value = json.loads(raw)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise NotConfigured("The OAuth2 secret must be a JSON object of strings", field="provider")
    with _secret_lock:
        _secret_cache[arn] = (now, value)
    return value


def forget_secret() -> None:
    """Drop the cached secret (tests; a container that saw it rotate)."""
    with _secret_lock:
        _secret_cache.clear()


def client_secret(provider: str, settings: Settings) -> str:
    secret = deployment_secret(settings).get(f"{provider}_client_secret", "")
    if not secret:
        raise NotConfigured(f"No client secret for '{provider}' in this deployment", field="provider")
    return secret


def _state_key(settings: Settings) -> bytes:
    key = deployment_secret(settings).get("state_key", "")
    if len(key) < 32:
        raise NotConfigured("The OAuth2 secret needs a state_key of at least 32 characters", field="provider")
    return key.encode("utf-8")


# --- PKCE and state --------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636."""
    verifier = _b64(secrets.token_bytes(48))
    return verifier, _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def new_nonce() -> str:
    return _b64(secrets.token_bytes(NONCE_BYTES))


def _signature(key: bytes, nonce: str, expires_at: int, binding: tuple[str, ...]) -> str:
    message = "\n".join((nonce, str(expires_at), *binding)).encode("utf-8")
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def sign_state(nonce: str, expires_at: int, binding: tuple[str, ...], settings: Settings) -> str:
    """``nonce.expires_at.signature``: the signature covers the tenant, user, caller and
    provider (``binding``) that only the server-side record of ``nonce`` holds."""
    return f"{nonce}.{expires_at}.{_signature(_state_key(settings), nonce, expires_at, binding)}"


@dataclass(frozen=True)
class ParsedState:
    nonce: str
    expires_at: int
    signature: str


_STATE_MAX = 200
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def parse_state(state: str) -> ParsedState | None:
    """The parts of a well-formed state, else None (nothing is looked up for a malformed one)."""
    if not state or len(state) > _STATE_MAX or not state.isascii():
        return None
    parts = state.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
        return None
    nonce, expires, signature = parts
    if not nonce or not signature or not set(nonce + signature) <= _B64_CHARS:
        return None
    return ParsedState(nonce, int(expires), signature)


def state_signature_valid(parsed: ParsedState, binding: tuple[str, ...], settings: Settings) -> bool:
    expected = _signature(_state_key(settings), parsed.nonce, parsed.expires_at, binding)
    return hmac.compare_digest(expected, parsed.signature)


def authorization_url(preset: Preset, endpoints: Endpoints, redirect_uri: str, state: str, code_challenge: str) -> str:
    params = {
        "response_type": "code",
        "client_id": endpoints.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(preset.scopes),
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
        **dict(preset.authorize_params),
    }
    separator = "&" if "?" in endpoints.authorize_url else "?"
    return endpoints.authorize_url + separator + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


# --- the token endpoint ----------------------------------------------------------------------------


def _post(url: str, form: dict[str, str], timeout: float) -> tuple[int, dict[str, Any]]:
    data = urllib.parse.urlencode(form).encode("ascii")
    return _send(
        url, data, {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}, timeout
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_url(url: str) -> urllib.parse.SplitResult:
    """The configured endpoint's address, https only: the request carries the client secret, a
    refresh token or an access token. Plain http only to a loopback host where the deployment
    allows private hosts (the tests' local authorization server)."""
    parts = urllib.parse.urlsplit(url)
    local = parts.scheme == "http" and _is_loopback(parts.hostname or "") and get_settings().allow_private_hosts
    if not parts.hostname or (parts.scheme != "https" and not local):
        raise TokenEndpointUnavailable("The identity provider's address in this deployment is not an https:// URL")
    return parts


def _cut(connection: http.client.HTTPConnection) -> None:
    """Unblock a read the per-socket timeout would let a trickling server stretch for ever."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@functools.cache
def _https_context() -> ssl.SSLContext:
    # What HTTPSConnection makes by default (certificates and host names verified), made once:
    # loading the CA bundle again cost ~18 ms of CPU a request.
    return ssl.create_default_context()


def _send(url: str, data: bytes | None, headers: dict[str, str], timeout: float) -> tuple[int, dict[str, Any]]:
    """One request with ``timeout`` as its total deadline (connect, answer and body together),
    never following a redirect: the request's credentials must not reach another host."""
    parts = _checked_url(url)
    deadline = time.monotonic() + timeout
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname,  # type: ignore[arg-type]
            parts.port,
            timeout=timeout,
            context=_https_context(),
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)  # type: ignore[arg-type]
    watchdog = threading.Timer(timeout, _cut, (connection,))
    watchdog.daemon = True
    watchdog.start()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST" if data is not None else "GET", target, body=data, headers=headers)
        response = connection.getresponse()
        status = response.status
        if 300 <= status < 400:
            raise TokenEndpointUnavailable(f"The identity provider answered HTTP {status} (redirects are not followed)")
        body = bytearray()
        while chunk := response.read1(16 * 1024):
            body += chunk
            if len(body) > _MAX_RESPONSE_BYTES:
                raise TokenEndpointUnavailable("The identity provider's answer is too large")
            if time.monotonic() >= deadline:
                raise TokenEndpointUnavailable("The identity provider did not answer in time")
        if time.monotonic() >= deadline:  # the watchdog cut the answer short
            raise TokenEndpointUnavailable("The identity provider did not answer in time")
    except (http.client.HTTPException, OSError) as exc:
        if time.monotonic() >= deadline:
            raise TokenEndpointUnavailable("The identity provider did not answer in time") from None
        raise TokenEndpointUnavailable(f"The identity provider could not be reached ({type(exc).__name__})") from None
    finally:
        watchdog.cancel()
        connection.close()
    if status >= 500 or status == 429:
        raise TokenEndpointUnavailable(f"The identity provider answered HTTP {status}")
    if not body.strip():
        return status, {}
    try:
        parsed = json.loads(body)
    except ValueError:
        raise TokenEndpointUnavailable(f"The identity provider answered HTTP {status} without JSON") from None
    return status, parsed if isinstance(parsed, dict) else {}


EXPIRES_IN_DEFAULT, EXPIRES_IN_MIN, EXPIRES_IN_MAX = 3600, 60, 86400


def _expires_in(raw: object) -> int:
    """The access token's lifetime: an integer or ASCII digits (``"²".isdigit()`` is true too),
    clamped so that neither a tiny nor a huge value breaks the cache's arithmetic."""
    seconds = EXPIRES_IN_DEFAULT
    if isinstance(raw, int) and not isinstance(raw, bool):
        seconds = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 6:
        seconds = int(raw)
    return min(max(seconds, EXPIRES_IN_MIN), EXPIRES_IN_MAX)


def _tokens(status: int, body: dict[str, Any]) -> Tokens:
    if status != 200 or not isinstance(body.get("access_token"), str):
        code = body.get("error") if isinstance(body.get("error"), str) else "invalid_response"
        raise OAuthError(code[:64])
    return Tokens(
        access_token=body["access_token"],
        expires_in=_expires_in(body.get("expires_in")),
        refresh_token=body.get("refresh_token") if isinstance(body.get("refresh_token"), str) else None,
        id_token=body.get("id_token") if isinstance(body.get("id_token"), str) else None,
        scope=body.get("scope") if isinstance(body.get("scope"), str) else None,
    )


def exchange_code(
    endpoints: Endpoints, secret: str, code: str, code_verifier: str, redirect_uri: str, timeout: float
) -> Tokens:
    status, body = _post(
        endpoints.token_url,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": endpoints.client_id,
            "client_secret": secret,
            "code_verifier": code_verifier,
        },
        timeout,
    )
    return _tokens(status, body)


def refresh(endpoints: Endpoints, secret: str, refresh_token: str, timeout: float) -> Tokens:
    """A fresh access token; ``OAuthError`` with ``oauth_code == "invalid_grant"`` when the
    grant is gone (consent revoked, password changed, admin policy)."""
    status, body = _post(
        endpoints.token_url,
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": endpoints.client_id,
            "client_secret": secret,
        },
        timeout,
    )
    return _tokens(status, body)


def revoke(endpoints: Endpoints, secret: str, token: str, timeout: float) -> bool:
    """Revoke ``token`` where the provider offers it (RFC 7009); False where it does not."""
    if not endpoints.revoke_url:
        return False
    status, _ = _post(
        endpoints.revoke_url,
        {"token": token, "token_type_hint": "refresh_token", "client_id": endpoints.client_id, "client_secret": secret},
        timeout,
    )
    # 400 invalid_token: already revoked or expired, which is what was wanted.
    return status in (200, 400)


def userinfo(endpoints: Endpoints, access_token: str, timeout: float) -> dict[str, Any]:
    status, body = _send(
        endpoints.userinfo_url, None, {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}, timeout
    )
    if status != 200:
        raise OAuthError(str(body.get("error") or "userinfo_failed")[:64])
    return body


def id_token_claims(id_token: str) -> dict[str, Any]:
    """The claims of an ID token that came straight from the token endpoint over TLS.

    OpenID Connect Core 3.1.3.7: a token received in direct communication with the token
    endpoint may rely on TLS instead of its signature; the caller still checks ``aud``/``iss``.
    """
    parts = id_token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError):
        return {}
    return claims if isinstance(claims, dict) else {}
