"""What every route needs: the caller, taken from the verified JWT claims of the event."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from mailsync.config import get_settings
from mailsync.identity import USER_ID_PATTERN, Principal, principal_from_claims

UserIdPath = Annotated[
    str,
    Path(pattern=USER_ID_PATTERN, description="A user id of the caller's tenant, or `me`"),
]


def principal(event: APIGatewayProxyEventV2) -> Principal:
    authorizer = event.request_context.authorizer
    claims = authorizer.jwt_claim if authorizer else None
    return principal_from_claims(claims, get_settings())
