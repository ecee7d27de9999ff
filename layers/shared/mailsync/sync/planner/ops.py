"""CRM operation decisions: per pending op, apply / wait / fail, and what the CRM shows after.

Rules (three-way against the last agreed state, see README "Conflict rules"):
- an op on a message the pull detached (removed from the server) fails with the reason;
- stored UIDs are used only under the UIDVALIDITY they were seen with: after a reset the op
  waits for the pull to find the message again, and fails if a complete pull did not;
- a move to an unmapped CRM folder fails; a move to where the message already is completes;
- a seen/move of a message whose append has not run yet waits for it;
- transient trouble is retried by later jobs and fails the op after ``OP_ATTEMPTS``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

DROPPED_REMOVED = "The message was removed from the mail server before this change could be applied"
DROPPED_UNMAPPED = "The target folder is no longer mapped to a server folder"
NOT_ON_SERVER = "The message is not on the mail server (adding it there failed)"
NOT_FOUND_AFTER_REBUILD = "The folder was rebuilt on the mail server and the message was not found in it again"
# Transient failures of one op (over several jobs) before it fails for good.
OP_ATTEMPTS = 5


class Action(Enum):
    APPEND = "append"  # put the CRM-written message on the server (or link the copy there)
    SEEN = "seen"  # +FLAGS/-FLAGS \Seen
    MOVE = "move"  # move on the server, then relink
    ALREADY_THERE = "already_there"  # a move to where the message is: complete, show the folder
    DONE = "done"  # nothing to do (the message is gone from the CRM, or an unknown kind)
    WAIT = "wait"  # runs again after the pull (or in the next job)
    FAIL = "fail"  # remove the op, show the server's truth, say why
    CHECK_UIDVALIDITY = "check_uidvalidity"  # ask the server, then decide with it


@dataclass(frozen=True)
class OpFacts:
    kind: str  # seen | move | append
    target_server_folder: str | None  # a move's mapped target (None: unmapped)


@dataclass(frozen=True)
class MessageFacts:
    state: str  # synced | detached
    server_folder: str | None
    uidvalidity: int | None
    uid: int | None
    last_op_error: str | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str | None = None
    code: str | None = None


def decide_op(
    op: OpFacts,
    message: MessageFacts | None,
    *,
    append_waiting: bool,
    folder_uidvalidity: int | None = None,
    last_chance: bool = False,
) -> Decision:
    """What to do with one pending op now.

    ``folder_uidvalidity`` is the server's UIDVALIDITY of the message's folder; without it a
    decision that depends on it comes back as ``CHECK_UIDVALIDITY`` (the caller asks the server,
    once per folder and run, and decides again). ``last_chance``: a complete pull ran since the
    op last waited.
    """
    if message is None:
        return Decision(Action.DONE)
    if message.state != "synced":
        return Decision(Action.FAIL, DROPPED_REMOVED, "removed")
    if op.kind == "append":
        return Decision(Action.APPEND)
    if message.uid is None:
        if append_waiting:
            return Decision(Action.WAIT)  # its append comes first
        return Decision(Action.FAIL, message.last_op_error or NOT_ON_SERVER, "not_on_server")
    if op.kind not in ("seen", "move"):
        return Decision(Action.DONE)
    if op.kind == "move" and op.target_server_folder is None:
        return Decision(Action.FAIL, DROPPED_UNMAPPED, "unmapped")
    if op.kind == "move" and op.target_server_folder == message.server_folder:
        return Decision(Action.ALREADY_THERE)
    if folder_uidvalidity is None:
        return Decision(Action.CHECK_UIDVALIDITY)
    if int(message.uidvalidity or 0) != folder_uidvalidity:
        # The folder was rebuilt: the stored UID may now be another message. The pull finds
        # this one again (or detaches it); the op runs after that — never a guess.
        if last_chance:
            return Decision(Action.FAIL, NOT_FOUND_AFTER_REBUILD, "uidvalidity_changed")
        return Decision(Action.WAIT)
    return Decision(Action.SEEN if op.kind == "seen" else Action.MOVE)


def after_transient_failure(attempts: int) -> bool:
    """Whether an op that failed for a transient reason (connection lost, timeout, busy) now
    fails for good; until then the job retries it (a later job, after reconnecting)."""
    return attempts >= OP_ATTEMPTS


def existing_copy(candidates: Iterable[int], taken: set[int]) -> int | None:
    """Of the server copies that match a message (Message-ID or content), the one to link: the
    newest that no other CRM message owns (ours, appended before a crash, is the newest)."""
    free = [u for u in candidates if u not in taken]
    return max(free) if free else None


def keeps_crm_folder(*, move_later_in_run: bool, pending_ops: int, ops_known_in_run: int) -> bool:
    """Whether the CRM folder keeps showing the CRM's wish instead of where the server has the
    message: a move of ours is still to run, or the message counts more pending ops than this
    run knows of (one recorded since the job started may be a move)."""
    return move_later_in_run or pending_ops > ops_known_in_run


@dataclass(frozen=True)
class FailedView:
    """What a message shows after its op failed: the server's truth again."""

    flags: tuple[str, ...] | None = None  # the agreed flags (None: leave the flags)
    seen: bool | None = None
    show_server_folder: bool = False


def failed_op_view(
    kind: str, *, message_synced: bool, seen_later: bool, keeps_folder: bool, agreed: Iterable[str] | None
) -> FailedView:
    if not message_synced:
        return FailedView()
    flags = tuple(sorted(agreed)) if kind == "seen" and not seen_later and agreed is not None else None
    return FailedView(
        flags=flags,
        seen=None if flags is None else "\\Seen" in flags,
        show_server_folder=kind == "move" and not keeps_folder,
    )
