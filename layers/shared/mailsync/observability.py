"""The one Logger, Tracer and Metrics of the service; nobody else instantiates them."""

from __future__ import annotations

import logging
import os

from aws_lambda_powertools import Logger, Metrics, Tracer

# Explicit defaults (the template sets the same through POWERTOOLS_* variables), so code that
# imports this before its environment is complete still names its metrics and logs correctly.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "mailsync"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "Mailsync"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

# imapclient logs protocol traffic at DEBUG; keep it out of our logs whatever the level,
# since a protocol trace is the easiest way for a credential to leak.
logging.getLogger("imapclient").setLevel(logging.WARNING)
