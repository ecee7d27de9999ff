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
# Tenant ids are part of every key ("A#{tenant}#{user}"): no "#", bounded length.
TENANT_ID_PATTERN = r"^[A-Za-z0-9._@:+\-]{1,128}$"
_TENANT_ID_RE = re.compile(TENANT_ID_PATTERN)
# Claims that hold a list of groups/roles by nature (Cognito's ``cognito:groups``, ``groups``,
# ``roles``, namespaced ``https://example.com/roles``). Only for these is API Gateway's string
# rendering of an array claim, "[a b]", read as a list.
_LIST_CLAIM_LEAVES = frozenset({"groups", "roles"})


@dataclass(frozen=True)
class Principal:
    user_id: str
    tenant_id: str
    is_admin: bool


def is_list_claim(name: str) -> bool:
    """Whether the claim called ``name`` carries a list (groups, roles) rather than one role."""
    leaf = re.split(r"[:/]", name)[-1].lower()
    return leaf in _LIST_CLAIM_LEAVES


def has_role(raw: Any, claim_name: str, role: str) -> bool:
    """Whether the role claim grants ``role``. Exact matches only, never a substring or a split:
    "user admin", "sales,admin" or "admin assistant" are not "admin".

    - a string claim equal to ``role``;
    - a JSON list (the local stack passes claims as decoded JSON) containing ``role``;
    - for a list claim (see ``is_list_claim``) API Gateway's rendering "[a b]" of an array,
      split on single spaces, containing ``role``. For a single-valued claim such as ``role``,
      "[admin]" is just a strange string, not the admin role.
    """
    if isinstance(raw, list | tuple):
        return any(isinstance(item, str) and item == role for item in raw)
    if not isinstance(raw, str):
        return False
    if raw == role:
        return True
    if is_list_claim(claim_name) and len(raw) >= 2 and raw[0] == "[" and raw[-1] == "]":
        return role in raw[1:-1].split(" ")
    return False


def principal_from_claims(claims: Mapping[str, Any] | None, settings: Settings) -> Principal:
    """Build the caller from verified claims; a missing or malformed user or tenant id is a 401."""
    claims = claims or {}
    user_id = claims.get(settings.claim_user)
    tenant_id = claims.get(settings.claim_tenant)
    if not user_id or not tenant_id:
        raise Unauthorized(f"The access token lacks the '{settings.claim_user}' or '{settings.claim_tenant}' claim")
    if not isinstance(user_id, str | int) or not _USER_ID_RE.fullmatch(str(user_id)):
        raise Unauthorized("The access token's user id is not a valid user id")
    if not isinstance(tenant_id, str | int) or not _TENANT_ID_RE.fullmatch(str(tenant_id)):
        raise Unauthorized("The access token's tenant id is not a valid tenant id")
    is_admin = has_role(claims.get(settings.claim_role), settings.claim_role, settings.admin_role)
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
