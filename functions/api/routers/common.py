"""What every route needs: the caller (``CurrentPrincipal``, from the verified JWT claims of the event)."""

from __future__ import annotations

from typing import Annotated, cast

from aws_lambda_powertools.event_handler import Depends
from aws_lambda_powertools.event_handler.api_gateway import BaseRouter
from aws_lambda_powertools.event_handler.openapi.params import Path
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from mailsync.config import get_settings
from mailsync.identity import USER_ID_PATTERN, Principal, principal_from_claims
from mailsync.observability import logger
from mailsync.schemas import ErrorOut

UserIdPath = Annotated[
    str,
    Path(pattern=USER_ID_PATTERN, description="A user id of the caller's tenant, or `me`"),
]


def current_principal() -> Principal:
    """The caller; a route asks for it with a ``CurrentPrincipal`` parameter (resolved once per request)."""
    # The event being resolved now (what router.current_event reads), not a Depends ``Request``: the resolver
    # keeps that for the whole request, so a request resolved inside another one (tests interleave two
    # requests in one thread) would get the outer request's caller. The API's resolver is
    # APIGatewayHttpResolver, so the event is an HTTP API (v2) event.
    event = cast(APIGatewayProxyEventV2, BaseRouter.current_event)
    authorizer = event.request_context.authorizer
    claims = authorizer.jwt_claim if authorizer else None
    caller = principal_from_claims(claims, get_settings())
    # Every log line of this request carries who asked (never what they sent).
    logger.append_keys(tenant_id=caller.tenant_id, caller_id=caller.user_id)
    return caller


# Not a request parameter: Powertools resolves it after validating the request, and leaves it out of OpenAPI.
CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def error_doc(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"model": ErrorOut}}}


# Every route documents the one error shape the API returns.
ERRORS: dict[int, dict] = {
    401: error_doc("Missing or unusable identity claims"),
    403: error_doc(
        "`forbidden`: acting on a colleague without the admin role, or (admins too) changing or adding "
        "messages in a colleague's mailbox"
    ),
    404: error_doc("`not_found`"),
    415: error_doc("`unsupported_media_type`: the body must be JSON"),
    422: error_doc("`validation_error`, with `field` naming the offending field"),
}
MAILBOX_ERRORS: dict[int, dict] = {
    **ERRORS,
    502: error_doc(
        "`auth_failed`, `connect_failed`, `tls_failed`, `protocol_mismatch` or `server_misbehaving` "
        "from the mail server"
    ),
    503: error_doc("`server_busy`: the mail server turned us away for now (throttling, too many connections)"),
    504: error_doc("`timeout`: the mail server did not answer in time"),
}


def responses(ok: dict[int, dict] | None = None, *, mailbox: bool = False) -> dict[int, dict]:
    """The route's success response(s) (the body schema comes from its return type) and errors."""
    return {**(ok or {200: {"description": "OK"}}), **(MAILBOX_ERRORS if mailbox else ERRORS)}
