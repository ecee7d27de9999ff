"""Which accounts are due for a sync, and the fan-out to the sync queue.

The due-time index (``due-index`` on the accounts table) is declared in template.yaml;
the query over it arrives with the sync engine. Until then no account is ever due.
"""

from __future__ import annotations

from mailsync.observability import logger


def enqueue_due_accounts() -> int:
    """Send one sync job per due account; returns how many were sent."""
    logger.debug("no sync engine yet: nothing is due")
    return 0
