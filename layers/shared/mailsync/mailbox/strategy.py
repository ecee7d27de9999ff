"""Which IMAP extensions a session uses, chosen once from the server's capabilities at login.

Pure: no I/O, so the choice is unit-tested from capability lists. The connection carries out
whatever was chosen; its methods do not look at capabilities themselves.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import Enum


class MoveMethod(Enum):
    MOVE = "move"  # UID MOVE (RFC 6851): atomic
    COPY_THEN_EXPUNGE = "copy"  # UID COPY, \Deleted, then the session's ExpungeMethod


class ExpungeMethod(Enum):
    UID_EXPUNGE = "uid-expunge"  # UID EXPUNGE of exactly one message (UIDPLUS, RFC 4315)
    # Plain EXPUNGE removes every \Deleted message: others' \Deleted marks are lifted around it.
    EXPUNGE_SPARING_OTHERS = "expunge"


class NewUidMethod(Enum):
    """How the UID of a copied, moved or appended message is learnt."""

    REPORTED = "reported"  # COPYUID/APPENDUID response codes (UIDPLUS)
    # UIDNEXT read before, then the new messages' Message-ID (or content hash) compared after.
    SEARCHED = "searched"


class ChangeTracking(Enum):
    QRESYNC = "qresync"  # flag changes and expunges since a mod-sequence (RFC 7162)
    CONDSTORE = "condstore"  # flag changes since a mod-sequence; expunges need a full scan
    NONE = "none"  # full flag scans


@dataclass(frozen=True)
class Strategy:
    move: MoveMethod
    expunge: ExpungeMethod
    new_uid: NewUidMethod
    changes: ChangeTracking
    list_status: bool  # LIST ... RETURN (STATUS ...) for many folders in one command
    special_use: bool  # LIST ... RETURN (SPECIAL-USE) for \Sent, \Trash, ...
    unselect: bool  # leave a selection without CLOSE's implicit expunge

    @classmethod
    def choose(cls, capabilities: Iterable[str], *, ignore: Collection[str] = ()) -> Strategy:
        """The strategy for a server advertising ``capabilities``, never using those in ``ignore``
        (a client may always use less than advertised)."""
        skipped = {name.upper() for name in ignore}
        caps = {name.upper() for name in capabilities} - skipped
        uidplus = "UIDPLUS" in caps
        if "QRESYNC" in caps and "ENABLE" in caps:
            changes = ChangeTracking.QRESYNC
        # QRESYNC implies CONDSTORE (RFC 7162 3.2), though some servers only list QRESYNC.
        elif caps & {"CONDSTORE", "QRESYNC"}:
            changes = ChangeTracking.CONDSTORE
        else:
            changes = ChangeTracking.NONE
        return cls(
            move=MoveMethod.MOVE if "MOVE" in caps else MoveMethod.COPY_THEN_EXPUNGE,
            expunge=ExpungeMethod.UID_EXPUNGE if uidplus else ExpungeMethod.EXPUNGE_SPARING_OTHERS,
            new_uid=NewUidMethod.REPORTED if uidplus else NewUidMethod.SEARCHED,
            changes=changes,
            list_status="LIST-STATUS" in caps,
            special_use="SPECIAL-USE" in caps,
            unselect="UNSELECT" in caps,
        )
