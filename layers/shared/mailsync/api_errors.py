"""The HTTP shape of errors, shared by every API route: {"error": {"code", "message", "field"?}}."""

from __future__ import annotations

import json
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
