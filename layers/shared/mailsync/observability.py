"""The one Logger, Tracer and Metrics of the service; nobody else instantiates them."""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Callable

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

# Explicit defaults (the template sets the same through POWERTOOLS_* variables), so code that
# imports this before its environment is complete still names its metrics and logs correctly.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "mailsync"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "Mailsync"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


def with_log_keys[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` for another thread, with the log keys of the thread that wraps it: Powertools keeps
    an account's keys (tenant, user) in a ContextVar, which a new thread starts without, so the
    lines of a sync's helper threads named no account. Each call runs in its own copy: calls of
    one wrapper may run on several threads at once."""
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.copy().run(fn, *args, **kwargs)

    return run


# imapclient logs protocol traffic at DEBUG; keep it out of our logs whatever the level,
# since a protocol trace is the easiest way for a credential to leak.
logging.getLogger("imapclient").setLevel(logging.WARNING)


class InvocationMetrics:
    """One invocation's metrics, added up and handed to ``metrics`` once, at its end.

    An invocation that syncs many accounts then prints one EMF document, not one per account or
    per 100 values (Powertools flushes early when a metric reaches 100 values): CloudWatch Logs
    bills every byte, and the polling functions run for every account every minute. Counts are
    summed into one value; samples (durations, lags) keep their distribution in at most
    ``MAX_SAMPLES`` values that always include the minimum and the maximum (the lag alarm reads
    Maximum). Thread-safe: accounts of one invocation may be synced concurrently.
    """

    # Powertools flushes a metric set early when a metric reaches 100 values.
    MAX_SAMPLES = 99

    def __init__(self, target: Metrics) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._counts: dict[str, float] = {}
        self._samples: dict[str, tuple[MetricUnit, list[float]]] = {}

    def count(self, name: str, value: float = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + value

    def sample(self, name: str, unit: MetricUnit, value: float) -> None:
        with self._lock:
            self._samples.setdefault(name, (unit, []))[1].append(float(value))

    def publish(self) -> None:
        """Hand everything to ``metrics`` (whose ``log_metrics`` prints it) and start afresh."""
        with self._lock:
            counts, samples = self._counts, self._samples
            self._counts, self._samples = {}, {}
        for name, total in counts.items():
            self._target.add_metric(name=name, unit=MetricUnit.Count, value=total)
        for name, (unit, values) in samples.items():
            for value in spread(values, self.MAX_SAMPLES):
                self._target.add_metric(name=name, unit=unit, value=value)


def spread(values: list[float], limit: int) -> list[float]:
    """At most ``limit`` of ``values``, evenly spaced over their sorted order (first and last kept)."""
    if len(values) <= limit:
        return values
    ordered = sorted(values)
    return [ordered[round(i * (len(ordered) - 1) / (limit - 1))] for i in range(limit)]


# The sync worker's metrics; its handler publishes them once per invocation.
job_metrics = InvocationMetrics(metrics)
