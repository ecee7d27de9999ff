"""HTTP API function: routes under /v1, Swagger UI at /swagger."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

import mailsync
from mailsync.api_errors import (
    error_response,
    non_json_body_response,
    unparseable_body_response,
    validation_error_response,
)
from mailsync.config import Settings
from mailsync.errors import (
    MailboxError,
    MailsyncError,
    NotFound,
    ServerMisbehaving,
    UnsupportedMediaType,
    ValidationFailed,
)
from mailsync.observability import logger, metrics, tracer
from routers import deployment, dossiers, folders, messages, oauth, relay, settings, users

app = APIGatewayHttpResolver(enable_validation=True)
app.enable_swagger(
    path="/swagger",
    title="Mailsync API",
    version=mailsync.__version__,
    description="Mail settings, folder maps and messages for the CRM. Errors are "
    '`{"error": {"code", "message", "field"?}}`.',
    security_schemes={"bearer": HTTPBearer(bearerFormat="JWT")},
    security=[{"bearer": []}],
    # Read at import (the page is built once); get_settings() stays uncached until a request.
    persist_authorization=Settings().swagger_persist_authorization,
)
app.include_router(settings.router, prefix="/v1")
app.include_router(folders.router, prefix="/v1")
app.include_router(messages.router, prefix="/v1")
app.include_router(dossiers.router, prefix="/v1")
app.include_router(oauth.router, prefix="/v1")
app.include_router(relay.router, prefix="/v1")
app.include_router(deployment.router, prefix="/v1")
app.include_router(users.router, prefix="/v1")


@app.exception_handler(RequestValidationError)
def _invalid_request(exc: RequestValidationError) -> Response:
    return validation_error_response(exc.errors())


@app.exception_handler(RequestUnsupportedContentType)
def _unsupported_content_type(exc: RequestUnsupportedContentType) -> Response:
    return error_response(UnsupportedMediaType("Send the request body as JSON (Content-Type: application/json)"))


@app.exception_handler(UnicodeDecodeError)
def _undecodable(exc: UnicodeDecodeError) -> Response:
    # Request bodies are checked before routing (unparseable_body_response), so text that does
    # not decode here came from the mail server, not from the client.
    logger.warning("undecodable text from the mail server", extra={"encoding": exc.encoding})
    return error_response(ServerMisbehaving("The mail server sent text that is not valid in its declared encoding"))


@app.exception_handler(RecursionError)
def _too_deep(exc: RecursionError) -> Response:
    # Backstop for a nesting that slipped past the depth check (a parameter, not the body).
    return error_response(ValidationFailed("The request is nested too deeply", field="body"))


@app.exception_handler(MailsyncError)
def _domain_error(exc: MailsyncError) -> Response:
    if isinstance(exc, MailboxError):
        metrics.add_metric(name=f"Mailbox_{exc.code}", unit=MetricUnit.Count, value=1)
    return error_response(exc)


@app.not_found
def _no_route(_: NotFoundError) -> Response:
    return error_response(NotFound("No such resource"))


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return error_response(MailsyncError("Internal error; it has been logged"))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
# Not its answers: they carry OAuth codes and states (the callback's redirect), and X-Ray keeps
# trace metadata outside the tenant's data.
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return non_json_body_response(event) or unparseable_body_response(event) or app.resolve(event, context)
