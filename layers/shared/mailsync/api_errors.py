"""The HTTP shape of errors, shared by every API route: {"error": {"code", "message", "field"?}}."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools.event_handler import Response

from mailsync.errors import MailsyncError


def error_response(exc: MailsyncError) -> Response:
    return Response(
        status_code=exc.status,
        content_type="application/json",
        body=json.dumps({"error": exc.to_dict()}),
    )


def _field(loc: Sequence[Any]) -> str | None:
    # Powertools prefixes the source ("body", "path", "query"); the client wants the field.
    parts = [str(p) for p in loc if p not in ("body", "path", "query", "header")]
    return ".".join(parts) or None


def validation_error_response(errors: Sequence[dict[str, Any]]) -> Response:
    """First validation error as a 422. The submitted value is never echoed (it may be a password)."""
    first = errors[0] if errors else {}
    field = _field(first.get("loc", ()))
    msg = str(first.get("msg", "Invalid request"))
    if first.get("type") == "missing":
        message = f"{field} is required" if field else "Request body is required"
    elif first.get("type") == "extra_forbidden":
        message = f"{field} is not a known field"
    else:
        message = f"{field}: {msg}" if field else msg
    body: dict[str, Any] = {"code": "validation_error", "message": message}
    if field:
        body["field"] = field
    return Response(status_code=422, content_type="application/json", body=json.dumps({"error": body}))


_BODY_METHODS = frozenset({"PUT", "POST", "PATCH"})


def non_json_body_response(event: dict[str, Any]) -> dict[str, Any] | None:
    """A 415 for a request whose body is declared as something other than JSON.

    Checked before routing because the event handler's request validation tries to parse such
    bodies itself (multipart without a boundary raises a bare ValueError there).
    """
    method = ((event.get("requestContext") or {}).get("http") or {}).get("method", "")
    if method.upper() not in _BODY_METHODS or not event.get("body"):
        return None
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    media_type = (headers.get("content-type") or "application/json").split(";", 1)[0].strip().lower()
    if media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json")):
        return None
    error = {
        "code": "unsupported_media_type",
        "message": "Send the request body as JSON (Content-Type: application/json)",
    }
    return {
        "statusCode": 415,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"error": error}),
        "isBase64Encoded": False,
    }


# Deeper JSON than any request of this API needs; Python's parser recurses, so a body nested
# 100,000 deep must be refused before anything parses it.
MAX_JSON_DEPTH = 32
# A JSON string (with escapes) or one bracket: enough to measure nesting without parsing.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]+|\\.)*"|[\[\]{}]')


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body`` (brackets inside strings ignored)."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot be too deep: the common case costs two C-speed counts
    depth = deepest = 0
    for match in _JSON_TOKENS.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _error_event_response(status: int, code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error = {"code": code, "message": message} | ({"field": field} if field else {})
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"error": error}),
        "isBase64Encoded": False,
    }


def unparseable_body_response(event: dict[str, Any]) -> dict[str, Any] | None:
    """A 422 for a JSON body that no route could use: not UTF-8, or nested too deeply.

    Checked before routing, so the body parser never meets them (a deep body would end in a
    RecursionError, which is no client's fault to see as a 500).
    """
    raw = event.get("body")
    if not raw:
        return None
    try:
        body = base64.b64decode(raw, validate=False) if event.get("isBase64Encoded") else raw.encode("utf-8")
        body.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError):
        return _error_event_response(422, "validation_error", "The request body is not valid UTF-8 JSON", "body")
    if json_depth(body) > MAX_JSON_DEPTH:
        return _error_event_response(
            422, "validation_error", f"The request body is nested deeper than {MAX_JSON_DEPTH} levels", "body"
        )
    return None
