"""/v1/users/{user_id}/relay-address: the address mail can be forwarded to (Exchange's "Relay")."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.api_gateway import Router

from mailsync.schemas import RelayAddressOut
from mailsync.services import relay
from routers.common import CurrentPrincipal, UserIdPath, error_doc, responses

router = Router()

_RELAY_OFF = {409: error_doc("`conflict`: this deployment has no relay domain (RelayDomain is empty)")}


@router.get(
    "/users/<user_id>/relay-address",
    tags=["Relay address"],
    summary="The user's relay address (made on first read): mail sent to it lands in the CRM folder `inbox`",
    responses=responses({200: {"description": "OK"}, **_RELAY_OFF}),
)
def get_relay_address(principal: CurrentPrincipal, user_id: UserIdPath) -> RelayAddressOut:
    return relay.get_address(principal, user_id)


@router.post(
    "/users/<user_id>/relay-address/rotate",
    tags=["Relay address"],
    summary="Replace the relay address by a new one; mail to the old one is dropped from now on",
    responses=responses({200: {"description": "The new address"}, **_RELAY_OFF}),
)
def rotate_relay_address(principal: CurrentPrincipal, user_id: UserIdPath) -> RelayAddressOut:
    return relay.rotate_address(principal, user_id)
