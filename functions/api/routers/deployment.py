"""/v1/deployment: what this deployment accepts, for a settings screen to offer only that."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.api_gateway import Router

from mailsync.schemas import DeploymentOut
from mailsync.services import deployment
from routers.common import CurrentPrincipal, responses

router = Router()


@router.get(
    "/deployment",
    tags=["Mail settings"],
    summary="What this deployment offers: security choices, OAuth2 providers, relay addresses",
    responses=responses(),
)
def get_deployment(principal: CurrentPrincipal) -> DeploymentOut:
    return deployment.describe(principal)
