"""/v1/users/{user_id}/messages, /v1/messages/{id}, sync requests and sync status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query

from mailsync.schemas import (
    MessageOut,
    MessagePageOut,
    MessagePatchIn,
    MessageSendIn,
    RawLinkOut,
    SyncRequestOut,
    SyncStatusOut,
)
from mailsync.services import messages
from routers.common import CurrentPrincipal, UserIdPath, error_doc, responses

router = Router()

MessageIdPath = Annotated[
    str, Path(pattern=r"^[a-z2-7]{8,64}$", description="Mailsync's id of the message (not its Message-ID)")
]
CRM_FOLDER = r"^[a-z0-9_-]{1,40}$"


@router.get(
    "/users/<user_id>/messages",
    tags=["Messages"],
    summary="A user's messages, newest first",
    responses=responses(),
)
def list_messages(
    principal: CurrentPrincipal,
    user_id: UserIdPath,
    folder: Annotated[str | None, Query(pattern=CRM_FOLDER, description="CRM folder, e.g. inbox")] = None,
    seen: Annotated[bool | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="Only messages received at or after this time")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=2048, description="`next_cursor` of the previous page")] = None,
) -> MessagePageOut:
    return messages.list_messages(
        principal,
        user_id,
        folder=folder,
        seen=seen,
        since=since,
        limit=limit,
        cursor=cursor,
    )


@router.get("/messages/<id>", tags=["Messages"], summary="One message's metadata", responses=responses())
def get_message(principal: CurrentPrincipal, id: MessageIdPath) -> MessageOut:
    return messages.get_message(principal, id)


@router.get(
    "/messages/<id>/raw",
    tags=["Messages"],
    summary="A short-lived URL of the raw RFC 822 message",
    responses=responses(),
)
def get_raw(principal: CurrentPrincipal, id: MessageIdPath) -> RawLinkOut:
    return messages.raw_link(principal, id)


@router.post(
    "/users/<user_id>/sync",
    tags=["Sync"],
    summary="Sync this mailbox now",
    responses=responses({202: {"description": "Enqueued"}}),
)
def post_sync(principal: CurrentPrincipal, user_id: UserIdPath) -> Response[SyncRequestOut]:
    messages.request_sync(principal, user_id)
    return Response(status_code=202, content_type="application/json", body=SyncRequestOut(enqueued=True))


@router.get(
    "/users/<user_id>/sync-status",
    tags=["Sync"],
    summary="Sync state, last success and error, per-folder counts and first-sync progress",
    responses=responses(),
)
def get_sync_status(principal: CurrentPrincipal, user_id: UserIdPath) -> SyncStatusOut:
    return messages.sync_status(principal, user_id)


@router.patch(
    "/messages/<id>",
    tags=["Messages"],
    summary="Mark read/unread and/or move; applied to the mail server within seconds",
    responses=responses(
        {200: {"description": "OK"}, 409: error_doc("`conflict`: the message is no longer on the server")}
    ),
)
def patch_message(
    principal: CurrentPrincipal, id: MessageIdPath, body: Annotated[MessagePatchIn, Body()]
) -> MessageOut:
    return messages.patch_message(principal, id, body)


@router.delete(
    "/messages/<id>",
    tags=["Messages"],
    summary="Move to the mapped trash folder",
    responses=responses({202: {"description": "Pending"}, 409: error_doc("`conflict`: no trash mapped")}),
)
def delete_message(principal: CurrentPrincipal, id: MessageIdPath) -> Response[MessageOut]:
    out = messages.delete_message(principal, id)
    return Response(status_code=202, content_type="application/json", body=out)


@router.post(
    "/users/<user_id>/messages",
    tags=["Messages"],
    summary="Place a message written in the CRM in the mapped server folder (Sent by default)",
    responses=responses(
        {
            201: {
                "description": "Stored; the append is pending. A retry (same Idempotency-Key, else same Message-ID, "
                "else same folder and raw bytes) returns the first answer"
            },
            409: error_doc(
                "`conflict`: the Idempotency-Key or Message-ID was already used for a different "
                "message, or the same message is being stored right now"
            ),
        }
    ),
)
def send_message(
    principal: CurrentPrincipal,
    user_id: UserIdPath,
    body: Annotated[MessageSendIn, Body()],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=r"^[\x21-\x7e]{1,255}$",
            description="Makes retries safe: a repeated request with the same key returns the first answer and "
            "stores nothing new (else the message's Message-ID is the key, else the folder and raw bytes)",
        ),
    ] = None,
) -> Response[MessageOut]:
    out = messages.send_message(
        principal,
        user_id,
        body,
        idempotency_key=idempotency_key,
        lambda_context=router.lambda_context,
    )
    return Response(status_code=201, content_type="application/json", body=out)
