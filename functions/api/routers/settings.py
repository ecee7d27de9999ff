"""/v1/users/{user_id}/mail-settings: the "E-mail settings" screen."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body

from mailsync.schemas import ConnectionTestOut, MailSettingsIn, MailSettingsOut, MailSettingsTestIn
from mailsync.services import accounts
from routers.common import CurrentPrincipal, UserIdPath, error_doc, responses

router = Router()


@router.get(
    "/users/<user_id>/mail-settings",
    tags=["Mail settings"],
    summary="Read mail settings (no password)",
    responses=responses(),
)
def get_mail_settings(principal: CurrentPrincipal, user_id: UserIdPath) -> MailSettingsOut:
    return accounts.get_settings_for(principal, user_id)


@router.put(
    "/users/<user_id>/mail-settings",
    tags=["Mail settings"],
    summary="Create or replace mail settings",
    responses=responses(
        {
            200: {"description": "Updated"},
            201: {"description": "Created"},
            409: error_doc(
                "`conflict`: the settings changed (or were created) meanwhile; reload and try again. "
                "404 when they were deleted meanwhile"
            ),
        }
    ),
)
def put_mail_settings(
    principal: CurrentPrincipal, user_id: UserIdPath, body: Annotated[MailSettingsIn, Body()]
) -> Response[MailSettingsOut]:
    out, created = accounts.put_settings(principal, user_id, body)
    return Response(status_code=201 if created else 200, content_type="application/json", body=out)


@router.delete(
    "/users/<user_id>/mail-settings",
    tags=["Mail settings"],
    summary="Stop syncing, destroy credentials",
    responses=responses({204: {"description": "Deleted"}}),
)
def delete_mail_settings(principal: CurrentPrincipal, user_id: UserIdPath):
    # The return type stays unannotated: Response[None] would serialise "null".
    accounts.delete_settings(principal, user_id)
    return Response(status_code=204, content_type="application/json", body="")


@router.post(
    "/users/<user_id>/mail-settings/test",
    tags=["Mail settings"],
    summary="Log in to the mailbox for real (saved settings, optionally overridden by the body)",
    responses=responses(mailbox=True),
)
def test_mail_settings(
    principal: CurrentPrincipal,
    user_id: UserIdPath,
    body: Annotated[MailSettingsTestIn | None, Body()] = None,
) -> ConnectionTestOut:
    check = accounts.test_connection(principal, user_id, body)
    return ConnectionTestOut(protocol=check.protocol, capabilities=check.capabilities)
