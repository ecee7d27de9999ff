"""The one Logger, Tracer and Metrics of the service; nobody else instantiates them."""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
tracer = Tracer()
metrics = Metrics()

# imapclient logs protocol traffic at DEBUG; keep it out of our logs whatever the level,
# since a protocol trace is the easiest way for a credential to leak.
logging.getLogger("imapclient").setLevel(logging.WARNING)
