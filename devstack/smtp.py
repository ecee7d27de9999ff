"""The local stack's stand-in for SES receiving the relay domain's mail: an SMTP listener on
loopback (``MAILSYNC_SMTP_PORT``; unset, a free port: the banner shows it).

For each message it does what the template's receipt rule does in AWS: the raw message (with
the trace lines SES puts in front) goes to the raw mail bucket under ``relay/{message id}``, then
the relay ingest function runs with an SES Lambda-action event. It runs before the SMTP answer,
so a message is in the API as soon as the sender's ``sendmail`` returns. Recipients outside the
relay domain are refused at RCPT, as SES refuses a domain it has no rule for. No spam or virus
scanning happens locally: the verdicts say ``DISABLED``.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from devstack.lambda_runtime import LambdaContext

PORT_VARIABLE = "MAILSYNC_SMTP_PORT"
MAX_MESSAGE_BYTES = 40 * 1024 * 1024  # SES's limit for received mail
LOCAL_VERDICT = "DISABLED"


class SmtpPortInUse(OSError):
    def __init__(self, port: int) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"SMTP port {port} on 127.0.0.1 is in use: choose another with {PORT_VARIABLE}, "
            f"e.g. {PORT_VARIABLE}={port + 1} make run",
        )


def ses_event(ses_message_id: str, recipients: list[str], source: str, verdict: str = LOCAL_VERDICT) -> dict[str, Any]:
    """SES's event for a receipt rule's Lambda action (the fields the ingest function reads, and more)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    status = {"status": verdict}
    return {
        "Records": [
            {
                "eventSource": "aws:ses",
                "eventVersion": "1.0",
                "ses": {
                    "mail": {
                        "timestamp": now,
                        "source": source,
                        "messageId": ses_message_id,
                        "destination": recipients,
                        "headersTruncated": False,
                    },
                    "receipt": {
                        "timestamp": now,
                        "recipients": recipients,
                        "spamVerdict": status,
                        "virusVerdict": status,
                        "spfVerdict": status,
                        "dkimVerdict": status,
                        "dmarcVerdict": status,
                        "action": {"type": "Lambda", "invocationType": "Event"},
                    },
                },
            }
        ]
    }


class _RelayHandler:
    def __init__(self, domain: str, ingest: Callable[[dict, Any], Any]) -> None:
        self.domain = domain.lower()
        self.ingest = ingest

    # aiosmtpd finds its hooks by these names.
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.rpartition("@")[2].lower() != self.domain:
            return f"550 5.1.2 This server only receives mail for {self.domain}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        from mailsync.aws import client
        from mailsync.config import get_settings
        from mailsync.services.relay import raw_key

        ses_id = uuid.uuid4().hex
        sender = envelope.mail_from or ""
        content = envelope.original_content or b""
        trace = (
            f"Return-Path: <{sender}>\r\nReceived: from {session.host_name or 'localhost'} by mailsync-local-smtp\r\n"
        )
        client("s3").put_object(
            Bucket=get_settings().raw_mail_bucket, Key=raw_key(ses_id), Body=trace.encode() + content
        )
        self.ingest(
            ses_event(ses_id, list(envelope.rcpt_tos), sender), LambdaContext(function_name="RelayIngestFunction")
        )
        return "250 OK"


class RelaySmtp:
    """Start and stop the listener (in its own thread, aiosmtpd's ``Controller``)."""

    def __init__(self, domain: str, ingest: Callable[[dict, Any], Any], port: int | None = None) -> None:
        self.port = port if port is not None else int(os.environ.get(PORT_VARIABLE) or 0)
        self.domain = domain
        self._controller = Controller(
            _RelayHandler(domain, ingest),
            hostname="127.0.0.1",
            port=self.port or _free_port(),
            data_size_limit=MAX_MESSAGE_BYTES,
            ready_timeout=10,
        )

    def start(self) -> RelaySmtp:
        try:
            self._controller.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE or "in use" in str(exc):
                raise SmtpPortInUse(self._controller.port) from exc
            raise
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        self._controller.stop(no_assert=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
