"""Local stand-in for the HTTP API's JWT authorizer: HS256 tokens signed with a shared secret."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

# The documented local default secret is short; it signs throwaway local tokens only.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)

LOCAL_ISSUER = "mailsync-local"
LOCAL_AUDIENCE = "mailsync"
DEFAULT_SECRET = "local-dev-secret"  # noqa: S105 - the documented local-only default


def secret() -> str:
    return os.environ.get("MAILSYNC_LOCAL_JWT_SECRET") or DEFAULT_SECRET


def make_token(user: str, tenant: str, role: str = "user", ttl_seconds: int = 12 * 3600) -> str:
    now = int(time.time())
    claims = {
        "sub": user,
        "tenant_id": tenant,
        "role": role,
        "iss": LOCAL_ISSUER,
        "aud": LOCAL_AUDIENCE,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, secret(), algorithm="HS256")


def verify_bearer(authorization: str | None) -> dict[str, Any] | None:
    """Claims of a valid ``Bearer`` token, or None (the caller answers 401 like API Gateway)."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    token = authorization.split(" ", 1)[1].strip()
    try:
        return jwt.decode(token, secret(), algorithms=["HS256"], audience=LOCAL_AUDIENCE, issuer=LOCAL_ISSUER)
    except jwt.PyJWTError:
        return None
