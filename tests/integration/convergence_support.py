"""What the two convergence tests share: the CRM user's random change through the API."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from typing import Any

from devstack.dovecot import make_message
from tests.conftest import ApiResponse
from tests.integration.sync_support import Account, days_ago


def crm_change(
    account: Account,
    rng: random.Random,
    messages: list[dict[str, Any]],
    mapped: dict[str, str],
    new_subject: Callable[[], str],
) -> tuple[str, str, dict[str, Any] | None, ApiResponse]:
    """One random CRM change: send a new message, or mark one of ``messages`` (un)read or move it
    to another of the ``mapped`` folders. Returns (kind, subject, PATCH body or None, the answer).

    The random draws stay in this order: a seed replays the same run.
    """
    kind = rng.choice(["seen", "seen", "move", "send"] if messages else ["send"])
    if kind == "send":
        subject = new_subject()
        raw = make_message(subject=subject, date=days_ago(rng.uniform(0, 3)))
        response = account.api(
            "POST", "/v1/users/me/messages", {"raw": base64.b64encode(raw).decode()}, caller=account.caller
        )
        return kind, subject, None, response
    target = rng.choice(messages)
    body = {"seen": not target["seen"]} if kind == "seen" else {"folder": rng.choice(list(mapped))}
    response = account.api("PATCH", f"/v1/messages/{target['id']}", body, caller=account.caller)
    return kind, target["subject"], body, response
