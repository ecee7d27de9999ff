"""The sync worker prints one EMF document per invocation, however many accounts it syncs, and logs
a job that found nothing to do at DEBUG (both: CloudWatch Logs bills every byte of every minute).

The jobs themselves are stubbed (``sync_jobs.run_job``): what is checked is what the handler prints."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from devstack.lambda_runtime import LambdaContext, load_handler, sqs_event
from mailsync import dal
from mailsync.observability import InvocationMetrics, metrics, spread
from mailsync.services import sync_jobs
from mailsync.sync.engine import SyncOutcome

QUEUE = "arn:aws:sqs:eu-west-1:123456789012:mailsync-SyncQueue"


@pytest.fixture
def emitting(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The test session disables metrics (pyproject); the worker's real behaviour is wanted here.
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setattr(metrics, "metrics_disabled", False, raising=False)
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def invoke(results: list[sync_jobs.JobResult], monkeypatch: pytest.MonkeyPatch) -> dict:
    """One worker invocation with one record per result; each record's job returns its result."""
    by_user = {f"user{i}": result for i, result in enumerate(results)}
    fake: Callable[..., sync_jobs.JobResult] = lambda job, **_: by_user[job.user_id]  # noqa: E731
    monkeypatch.setattr(sync_jobs, "run_job", fake)
    monkeypatch.setattr(dal, "open_connections", lambda: None)  # no DynamoDB in this test
    # Nor the group's read ahead (it would look for AWS credentials, seconds of retries).
    monkeypatch.setattr(
        dal, "get_accounts_and_sync_states", lambda accounts, **_: dict.fromkeys(accounts, (None, None))
    )
    records = [
        {"MessageId": user, "ReceiptHandle": user, "Body": json.dumps({"tenant_id": "acme", "user_id": user})}
        for user in by_user
    ]
    return load_handler("sync_worker")(sqs_event(records, QUEUE), LambdaContext(function_name="SyncWorkerFunction"))


def emf_documents(out: str) -> list[dict]:
    return [doc for line in out.splitlines() if line.startswith("{") and "_aws" in (doc := json.loads(line))]


def values(doc: dict, name: str) -> list[float]:
    value = doc[name]
    return value if isinstance(value, list) else [value]


def test_an_invocation_of_many_accounts_prints_one_emf_document(
    emitting: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 250 jobs: 150 no-op syncs (duration 1..150 ms, lag 60 s, one of 7,200 s), 100 auth failures
    results = [
        sync_jobs.JobResult(
            "synced", SyncOutcome(imap_commands=2), duration_ms=i + 1, lag_seconds=7200 if i == 77 else 60
        )
        for i in range(150)
    ] + [sync_jobs.JobResult("failed", error="auth_failed", duration_ms=5) for _ in range(100)]
    capsys.readouterr()
    # When one invocation runs them all
    assert invoke(results, monkeypatch) == {"batchItemFailures": []}
    # Then exactly one EMF document is printed, with every count summed
    (doc,) = emf_documents(capsys.readouterr().out)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Mailsync"
    assert doc["service"] == "mailsync"
    assert values(doc, "Sync_synced") == [150.0]
    assert values(doc, "Sync_failed") == [100.0]
    assert values(doc, "SyncFailures_auth_failed") == [100.0]
    assert values(doc, "ImapCommands") == [300.0]
    assert values(doc, "MessagesCreated") == [0.0]
    # and the samples keep their range in at most 99 values (the lag alarm reads Maximum)
    durations = values(doc, "SyncDuration")
    assert len(durations) == InvocationMetrics.MAX_SAMPLES
    assert (min(durations), max(durations)) == (1.0, 150.0)
    assert max(values(doc, "SyncLagSeconds")) == 7200.0
    # and the next invocation starts from zero
    invoke(results[:2], monkeypatch)
    (doc,) = emf_documents(capsys.readouterr().out)
    assert values(doc, "Sync_synced") == [2.0]


def test_a_job_that_found_nothing_logs_at_debug(
    emitting: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nothing = [sync_jobs.JobResult("synced", SyncOutcome(imap_commands=2)), sync_jobs.JobResult("skipped")]
    something = [sync_jobs.JobResult("synced", SyncOutcome(created=3)), sync_jobs.JobResult("failed", error="timeout")]
    with caplog.at_level(logging.DEBUG, logger="mailsync"):
        invoke(nothing + something, monkeypatch)
    levels = sorted((r.levelname, r.result) for r in caplog.records if r.getMessage() == "sync job done")
    assert levels == [("DEBUG", "skipped"), ("DEBUG", "synced"), ("INFO", "failed"), ("INFO", "synced")]


def test_spread_keeps_the_extremes_and_evenly_spaced_values_between() -> None:
    assert spread([3.0, 1.0], 99) == [3.0, 1.0]
    assert spread([float(v) for v in range(1000, 0, -1)], 5) == [1.0, 251.0, 501.0, 750.0, 1000.0]
    assert len(spread([1.0] * 500, 99)) == 99
