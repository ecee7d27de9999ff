"""Local log lines name the function that wrote them and carry only its own correlation id.

The local stack runs the API, scheduler and worker in one process with the one Powertools
Logger; in AWS each is its own process. These tests capture the JSON lines of real invocations
(the handlers loaded as the local stack loads them) and check every line's labels."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.lambda_runtime import LambdaContext, http_event, load_handler, sqs_event
from tests.conftest import Caller
from tests.integration.sync_support import LogLines, captured_log_lines

QUEUE_ARN = "arn:aws:sqs:eu-west-1:000000000000:mailsync-local-SyncQueue"
WAIT_SECONDS = 30  # budget for each hand-over between the two threads


@pytest.fixture
def log_lines(aws: dict[str, str]) -> Iterator[LogLines]:
    """Every JSON line the shared Logger has written so far in the test, parsed."""
    with captured_log_lines("api") as lines:
        yield lines


def settings_event(user: str) -> dict[str, Any]:
    body = {"host": "imap.example.com", "username": user, "password": "pw-123456"}
    return http_event("PUT", "/v1/users/me/mail-settings", body=body, claims=Caller(user).claims)


def worker_event(user: str) -> dict[str, Any]:
    # An account that does not exist: the job ends at once, and still logs its outcome.
    body = json.dumps({"tenant_id": "acme", "user_id": user})
    return sqs_event([{"MessageId": "m-1", "ReceiptHandle": "r-1", "Body": body}], QUEUE_ARN)


def by_message(log_lines: LogLines, message: str) -> list[dict[str, Any]]:
    lines = log_lines()
    found = [line for line in lines if line["message"] == message]
    assert found, f"no {message!r} line in {[line['message'] for line in lines]}"
    return found


def assert_worker_line(line: dict[str, Any], request_id: str) -> None:
    assert line["function_name"] == "SyncWorkerFunction", line
    assert line["function_arn"].endswith(":function:SyncWorkerFunction"), line
    assert line["function_request_id"] == request_id, line
    assert "correlation_id" not in line or line["correlation_id"] is None, line
    assert "caller_id" not in line, line


def test_worker_after_an_api_call_logs_as_the_worker(log_lines: LogLines) -> None:
    api, worker = load_handler("api"), load_handler("sync_worker")
    event = settings_event("alice")
    api_context = LambdaContext(function_name="ApiFunction")
    assert api(event, api_context)["statusCode"] == 201
    worker_context = LambdaContext(function_name="SyncWorkerFunction")
    assert worker(worker_event("nobody"), worker_context) == {"batchItemFailures": []}

    (saved,) = by_message(log_lines, "mail settings saved")
    assert saved["function_name"] == "ApiFunction"
    assert saved["function_arn"].endswith(":function:ApiFunction")
    assert saved["correlation_id"] == event["requestContext"]["requestId"]
    for line in by_message(log_lines, "sync job done"):
        assert_worker_line(line, worker_context.aws_request_id)


def test_concurrent_api_call_does_not_relabel_the_running_worker(
    log_lines: LogLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local stack's worker thread runs a job while an HTTP thread serves a request."""
    from mailsync.observability import logger
    from mailsync.services import sync_jobs

    api, worker = load_handler("api"), load_handler("sync_worker")
    job_running, api_done = threading.Event(), threading.Event()
    real_run_job = sync_jobs.run_job

    def run_job_around_an_api_call(*args: Any, **kwargs: Any) -> Any:
        logger.info("job started")
        job_running.set()
        assert api_done.wait(WAIT_SECONDS), "the API call did not finish"
        logger.info("job continues")
        return real_run_job(*args, **kwargs)

    monkeypatch.setattr(sync_jobs, "run_job", run_job_around_an_api_call)
    worker_context = LambdaContext(function_name="SyncWorkerFunction")
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(worker(worker_event("nobody"), worker_context)))
    thread.start()
    try:
        assert job_running.wait(WAIT_SECONDS), "the worker did not start its job"
        event = settings_event("alice")
        assert api(event, LambdaContext(function_name="ApiFunction"))["statusCode"] == 201
    finally:
        api_done.set()
        thread.join(WAIT_SECONDS)
    assert not thread.is_alive()
    assert results == [{"batchItemFailures": []}]

    (saved,) = by_message(log_lines, "mail settings saved")
    assert saved["function_name"] == "ApiFunction"
    assert saved["correlation_id"] == event["requestContext"]["requestId"]
    for message in ("job started", "job continues", "sync job done"):
        for line in by_message(log_lines, message):
            assert_worker_line(line, worker_context.aws_request_id)
