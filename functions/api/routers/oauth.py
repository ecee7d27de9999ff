"""/v1/users/{user_id}/oauth/{provider}/start, /v1/oauth/callback and /v1/oauth/finish:
connecting a Google or Microsoft mailbox by consent instead of a password."""

from __future__ import annotations

from typing import Annotated, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query

from mailsync.schemas import OAuthFinishIn, OAuthFinishOut, OAuthStartIn, OAuthStartOut
from mailsync.services import oauth
from routers.common import CurrentPrincipal, UserIdPath, error_doc, responses

router = Router()

ProviderPath = Annotated[Literal["google", "microsoft"], Path(description="`google` or `microsoft`")]


@router.post(
    "/users/<user_id>/oauth/<provider>/start",
    tags=["Mail settings"],
    summary="Start connecting a Google or Microsoft mailbox (OAuth2 consent with PKCE)",
    responses=responses(),
)
def start_oauth(
    principal: CurrentPrincipal, user_id: UserIdPath, provider: ProviderPath, body: Annotated[OAuthStartIn, Body()]
) -> OAuthStartOut:
    domain = router.current_event.request_context.domain_name
    url = oauth.start_consent(principal, user_id, provider, body.return_url, domain)
    return OAuthStartOut(authorization_url=url)


@router.get(
    "/oauth/callback",
    tags=["Mail settings"],
    summary="Where the provider sends the browser back (no JWT: the state is the proof)",
    responses={
        302: {
            "description": "To the consent's `return_url` with `?result=confirm#oauth_state=...&oauth_code=...` "
            "(finish with `POST /v1/oauth/finish`) or `?result=error&code=...`"
        },
        422: error_doc("`validation_error` on `state` (invalid, expired or used) or `code`"),
    },
)
def oauth_callback(
    state: Annotated[str | None, Query(max_length=512)] = None,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
):
    # The return type stays unannotated: a bare Response has no body schema.
    location = oauth.callback_location(code, state, error)
    # The query of this request carries the code: the next page must not see it as a referrer.
    headers = {"Location": location, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return Response(status_code=302, headers=headers, body="")


@router.post(
    "/oauth/finish",
    tags=["Mail settings"],
    summary="Finish a consent: connect the mailbox (only the user who started the consent)",
    responses={
        **responses(),
        403: error_doc("`forbidden`: the consent was started by another user (nothing is connected)"),
        422: error_doc("`validation_error` on `state` (invalid, expired or used) or `code`"),
    },
)
def finish_oauth(principal: CurrentPrincipal, body: Annotated[OAuthFinishIn, Body()]) -> OAuthFinishOut:
    return OAuthFinishOut(**oauth.finish_consent(principal, body.code, body.state))
