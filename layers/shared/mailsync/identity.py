"""Who is calling (from JWT claims) and which user they may act on.

In AWS the HTTP API's JWT authorizer has verified the token and passes its claims in
``requestContext.authorizer.jwt.claims``; the local stack verifies HS256 tokens and fills
the same place, so this module never sees a token, only claims.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mailsync.config import Settings
from mailsync.errors import Forbidden, NotFound, Unauthorized

ME = "me"
USER_ID_PATTERN = r"^[A-Za-z0-9._@:+\-]{1,128}$"
_USER_ID_RE = re.compile(USER_ID_PATTERN)


@dataclass(frozen=True)
class Principal:
    user_id: str
    tenant_id: str
    is_admin: bool


def _roles(raw: Any) -> set[str]:
    # API Gateway renders array claims as "[a b]"; Cognito groups arrive that way.
    if raw is None:
        return set()
    if isinstance(raw, list | tuple | set):
        return {str(r) for r in raw}
    text = str(raw).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return {part for part in re.split(r"[\s,]+", text) if part}


def principal_from_claims(claims: Mapping[str, Any] | None, settings: Settings) -> Principal:
    """Build the caller from verified claims; missing user or tenant is a 401."""
    claims = claims or {}
    user_id = claims.get(settings.claim_user)
    tenant_id = claims.get(settings.claim_tenant)
    if not user_id or not tenant_id:
        raise Unauthorized(f"The access token lacks the '{settings.claim_user}' or '{settings.claim_tenant}' claim")
    if not _USER_ID_RE.match(str(user_id)):
        raise Unauthorized("The access token's user id is not a valid user id")
    is_admin = settings.admin_role in _roles(claims.get(settings.claim_role))
    return Principal(user_id=str(user_id), tenant_id=str(tenant_id), is_admin=is_admin)


def resolve_target_user(principal: Principal, user_id: str, user_exists: Callable[[str, str], bool]) -> str:
    """The user id a request acts on.

    Users act on themselves (``me`` or their own id); admins on any user of their tenant.
    Users only exist within a tenant, so another tenant's user can never be reached: it is
    simply not found. A non-admin naming a colleague that exists gets 403.
    """
    if user_id in (ME, principal.user_id):
        return principal.user_id
    if principal.is_admin:
        return user_id
    if user_exists(principal.tenant_id, user_id):
        raise Forbidden("You may only act on your own mailbox")
    raise NotFound(f"User '{user_id}' not found")
