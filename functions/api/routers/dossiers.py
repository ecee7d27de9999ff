"""/v1/contacts/{address}/messages (the dossier) and /v1/tenant/settings (privacy settings, office hours)."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query

from mailsync.schemas import DossierPageOut, TenantSettingsIn, TenantSettingsOut
from mailsync.services import confidentiality, messages
from routers.common import CurrentPrincipal, responses

router = Router()

AddressPath = Annotated[
    str, Path(pattern=r"^[^@\s/]{1,64}@[^@\s/]{1,255}$", description="An e-mail address (case-insensitive)")
]


@router.get(
    "/contacts/<address>/messages",
    tags=["Dossiers"],
    summary="Every message of the tenant involving this address (From, To, Cc) that you may see, newest first",
    responses=responses(),
)
def contact_messages(
    principal: CurrentPrincipal,
    address: AddressPath,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> DossierPageOut:
    return messages.contact_messages(principal, address, limit, cursor)


@router.get(
    "/tenant/settings", tags=["Tenant"], summary="Privacy settings and office hours (admins)", responses=responses()
)
def get_tenant_settings(principal: CurrentPrincipal) -> TenantSettingsOut:
    return confidentiality.get_tenant_settings(principal)


@router.put(
    "/tenant/settings",
    tags=["Tenant"],
    summary="Change privacy settings and office hours (admins)",
    responses=responses(),
)
def put_tenant_settings(principal: CurrentPrincipal, body: Annotated[TenantSettingsIn, Body()]) -> TenantSettingsOut:
    return confidentiality.put_tenant_settings(principal, body)
