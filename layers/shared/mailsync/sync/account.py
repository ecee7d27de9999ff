"""One account's two-way sync over one open connection: push, pull, push.

CRM changes go first (they win conflicts on \\Seen), then the pull; ops whose message moved or
vanished on the server run again once the pull has found where it is (``last_chance``: a
complete pull ran, so an op that still cannot apply fails instead of guessing).
"""

from __future__ import annotations

from collections.abc import Callable

from mailsync import dal, events
from mailsync.domain import Account, SyncState
from mailsync.mailbox.connection import ImapConnection
from mailsync.sync.engine import AccountSync, SyncOutcome
from mailsync.sync.pusher import Pusher


def sync_account(
    account: Account,
    state: SyncState,
    conn: ImapConnection,
    *,
    owner: str,
    deadline: Callable[[], bool],
    hand_over_checkpoint: bool = False,
) -> SyncOutcome:
    """Push pending CRM ops, pull the server's changes, push what waited for the pull; the
    events of all three go out even when a step fails (what was done stays announced).
    ``hand_over_checkpoint``: the caller writes the last checkpoint (``SyncOutcome.checkpoint``)."""
    pusher = Pusher(account, conn)
    ops = dal.ops_waiting(account.tenant_id, account.user_id) if state.ops_pending > 0 else []
    engine: AccountSync | None = None
    try:
        waiting = pusher.run(ops)
        # What reached the server is announced before the pull, which may run long.
        events.publish(pusher.events)
        pusher.events = []
        engine = AccountSync(
            account,
            state,
            conn,
            owner=owner,
            deadline=deadline,
            revivable=pusher.revivable(waiting),
            # Only a pending move keeps a message's CRM folder when the pull relinks it.
            pending_moves=frozenset(op.id for op in waiting if op.kind == "move"),
            hand_over_checkpoint=hand_over_checkpoint,
        )
        outcome = engine.run()
        if waiting and outcome.complete:
            pusher.run(waiting, last_chance=True)
        outcome.pushed = pusher.applied
        return outcome
    finally:
        events.publish(pusher.events + (engine.events if engine is not None else []))
