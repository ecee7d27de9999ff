"""/v1/users/{user_id}/server-folders and /folder-map: linking CRM folders to server folders."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body

from mailsync.schemas import FolderMapOut, ServerFoldersOut
from mailsync.services import folder_maps
from routers.common import CurrentPrincipal, UserIdPath, error_doc, responses

router = Router()

# A POP3 mailbox has one inbox and no folders to list or map.
FOLDER_ROUTE_ERRORS = {
    **responses(mailbox=True),
    409: error_doc("`conflict` on `protocol`: the mailbox is POP3, which has no folders"),
}

FolderMapBody = Annotated[
    dict[str, Any],
    Body(
        description='CRM folder -> server folder, e.g. {"inbox": "INBOX", "sent": "Sent"} '
        '(also accepted wrapped as {"folders": {...}})',
    ),
]


@router.get(
    "/users/<user_id>/server-folders",
    tags=["Folders"],
    summary="The server's folders, live, with suggestions",
    responses=FOLDER_ROUTE_ERRORS,
)
def get_server_folders(principal: CurrentPrincipal, user_id: UserIdPath) -> ServerFoldersOut:
    return ServerFoldersOut(folders=folder_maps.list_server_folders(principal, user_id))


@router.get(
    "/users/<user_id>/folder-map",
    tags=["Folders"],
    summary="The saved folder map, or a suggestion",
    responses=FOLDER_ROUTE_ERRORS,
)
def get_folder_map(principal: CurrentPrincipal, user_id: UserIdPath) -> FolderMapOut:
    return folder_maps.get_folder_map(principal, user_id)


@router.put(
    "/users/<user_id>/folder-map",
    tags=["Folders"],
    summary="Save the folder map (checked live)",
    responses=FOLDER_ROUTE_ERRORS,
)
def put_folder_map(principal: CurrentPrincipal, user_id: UserIdPath, body: FolderMapBody) -> FolderMapOut:
    if isinstance(body.get("folders"), dict):
        body = body["folders"]
    return folder_maps.put_folder_map(principal, user_id, body)
