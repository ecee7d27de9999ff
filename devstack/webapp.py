"""The reference web app (web/, built into web/dist by ``make web``) on the local stack: its files at
/app/, a config.json that turns on the local sign-in, and POST /local/token, which signs a local JWT
for any user. Only the local stack serves these; a deployment serves web/dist from a static host and
its users bring their CRM's token."""

from __future__ import annotations

import json
import mimetypes
import re
from http import HTTPStatus
from pathlib import Path

from devstack.auth import make_token
from devstack.lambda_runtime import ROOT

WEB_DIST = ROOT / "web" / "dist"
APP_PATH = "/app"
LOCAL_TOKEN_PATH = "/local/token"  # noqa: S105 - a path, not a secret
# The same shape as the API's user ids; a tenant id the same way.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_BODY = 4096

Answer = tuple[int, dict[str, str], bytes]


def _json(status: int, body: object) -> Answer:
    return status, {"content-type": "application/json", "cache-control": "no-store"}, json.dumps(body).encode()


def _refused(message: str, field: str) -> Answer:
    return _json(422, {"error": {"code": "validation_error", "message": message, "field": field}})


def local_token(raw: bytes) -> Answer:
    """``{"user", "tenant", "role"}`` -> ``{"token"}`` (what ``make token`` prints)."""
    try:
        body = json.loads(raw[:MAX_BODY] or b"{}") if len(raw) <= MAX_BODY else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _refused("send a JSON object {user, tenant, role}", "body")
    for field in ("user", "tenant"):
        value = body.get(field)
        if not isinstance(value, str) or not _NAME.match(value):
            return _refused("letters, digits and . _ @ - (at most 64)", field)
    role = body.get("role", "user")
    if role not in ("user", "admin"):
        return _refused("user or admin", "role")
    return _json(200, {"token": make_token(body["user"], body["tenant"], role)})


def handle(method: str, path: str, raw: bytes, login: tuple[str, str], dist: Path = WEB_DIST) -> Answer | None:
    """The answer for the web app's paths, or None for any other path (the API's)."""
    if path == LOCAL_TOKEN_PATH:
        if method != "POST":
            return _json(HTTPStatus.METHOD_NOT_ALLOWED, {"message": "POST only"})
        return local_token(raw)
    if path == APP_PATH:
        return HTTPStatus.MOVED_PERMANENTLY, {"location": APP_PATH + "/"}, b""
    if not path.startswith(APP_PATH + "/"):
        return None
    if method not in ("GET", "HEAD"):
        return _json(HTTPStatus.METHOD_NOT_ALLOWED, {"message": "GET only"})
    name = path[len(APP_PATH) + 1 :] or "index.html"
    if name == "config.json":
        user, tenant = login
        return _json(200, {"api": "", "localSignIn": True, "localUser": user, "localTenant": tenant})
    if not (dist / "index.html").is_file():
        text = b"web/dist is not built: run make web (make run and make demo build it when missing)\n"
        return HTTPStatus.NOT_FOUND, {"content-type": "text/plain; charset=utf-8"}, text
    file = (dist / name).resolve()
    if not file.is_relative_to(dist.resolve()) or not file.is_file():
        return HTTPStatus.NOT_FOUND, {"content-type": "text/plain; charset=utf-8"}, b"Not Found\n"
    kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    # Vite names assets by content hash: they never change; index.html must be fetched anew.
    cache = "public, max-age=31536000, immutable" if name.startswith("assets/") else "no-cache"
    return HTTPStatus.OK, {"content-type": kind, "cache-control": cache}, file.read_bytes()
