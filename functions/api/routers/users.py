"""/v1/users: the tenant's users an administrator can pick (those with mail settings)."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from mailsync.schemas import UserPageOut
from mailsync.services import accounts
from routers.common import CurrentPrincipal, error_doc, responses

router = Router()


@router.get(
    "/users",
    tags=["Mail settings"],
    summary="List the users of the caller's tenant that have mail settings (admins only)",
    responses={**responses(), 403: error_doc("`forbidden`: the caller does not have the admin role")},
)
def list_users(
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    cursor: Annotated[str | None, Query(max_length=2048, description="`next_cursor` of the previous page")] = None,
) -> UserPageOut:
    return accounts.list_users(principal, limit, cursor)
