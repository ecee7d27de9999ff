"""Gmail's labels in the CRM's terms (only for servers that advertise ``X-GM-EXT-1``).

Gmail shows every label as a folder: one message with the labels Inbox and "Clients" is listed
in INBOX *and* in "Clients", and always in "[Gmail]/All Mail". Mailsync keeps one CRM message
per Gmail message (identity by ``X-GM-MSGID``, thread by ``X-GM-THRID``); each mapped folder it
is listed in is one of its *copies* (a location record), and one of them is its *primary* copy:
the CRM folder shown is the one mapped to the primary copy. The rules, all decided here:

1. A copy appears in a mapped folder (a label was added): it becomes the primary when its folder
   ranks higher than the primary's (``rank``: inbox, sent, drafts, the other CRM folders, then
   archive, All Mail, trash); otherwise it is recorded and the CRM folder stays.
2. A copy that is not the primary disappears (a label was removed): it is forgotten; the message
   and its CRM folder stay.
3. The primary copy disappears: the highest-ranked copy still in a mapped folder becomes the
   primary (the CRM folder follows it); with none left the message leaves the sync as on any
   server (``moved_unmapped`` when Gmail still has it, e.g. archived to All Mail unmapped).
4. A CRM move is done the Gmail way (``crm_move``): MOVE from the primary copy's folder (the
   source label is removed, the target's added, other labels stay), except out of All Mail,
   where an expunge would delete or trash the message: there the target's label is added
   (``UID STORE +X-GM-LABELS``). A deletion is a MOVE to the Trash folder (``[Gmail]/Trash``),
   never an EXPUNGE from All Mail.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import Enum

MATCH_PREFIX = "gm:"

# CRM folders ranked for rule 1 and 3 (lower ranks first). Any other CRM folder ranks between
# drafts and archive; All Mail (whatever it is mapped to) and trash come last.
_RANKED = ("inbox", "sent", "drafts")
_RANK_OTHER = len(_RANKED)
_RANK_ARCHIVE = _RANK_OTHER + 1
_RANK_ALL_MAIL = _RANK_OTHER + 2
_RANK_TRASH = _RANK_OTHER + 3


def match_key(msgid: int) -> str:
    """How a Gmail message is recognised in every folder and after any label change."""
    return f"{MATCH_PREFIX}{int(msgid)}"


def msgid_of(key: str) -> int | None:
    """The X-GM-MSGID in a ``match_key``; None for any other key (Message-ID, content hash)."""
    if not key.startswith(MATCH_PREFIX):
        return None
    digits = key[len(MATCH_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def message_id(tenant_id: str, user_id: str, msgid: int) -> str:
    """Our id of a Gmail message: from its X-GM-MSGID, so every label copy of it (and a rerun
    after a crash) finds the same CRM message without a lookup table."""
    digest = hashlib.sha256(f"{tenant_id}\0{user_id}\0X-GM-MSGID\0{int(msgid)}".encode()).digest()
    return base64.b32encode(digest[:15]).decode().lower()


def thread_id(thrid: int) -> str:
    """The CRM thread of a Gmail message: Gmail's own conversation (X-GM-THRID)."""
    return f"gmthr:{int(thrid)}"


@dataclass(frozen=True)
class Copy:
    """A Gmail message as listed in one mapped folder."""

    server_folder: str
    crm_folder: str


def rank(copy: Copy, *, all_mail: str | None, trash_folders: Collection[str] = ("trash",)) -> tuple[int, str]:
    """Lower is preferred (rule 1 and 3); ties between other CRM folders go by name, so the
    choice never depends on the order the server or the sync saw the copies in."""
    if copy.crm_folder in trash_folders:
        return (_RANK_TRASH, copy.crm_folder)
    if all_mail is not None and copy.server_folder == all_mail:
        return (_RANK_ALL_MAIL, copy.crm_folder)
    if copy.crm_folder in _RANKED:
        return (_RANKED.index(copy.crm_folder), copy.crm_folder)
    if copy.crm_folder == "archive":
        return (_RANK_ARCHIVE, copy.crm_folder)
    return (_RANK_OTHER, copy.crm_folder)


class NewCopy(Enum):
    BECOMES_PRIMARY = "becomes_primary"  # the CRM folder changes to this copy's
    RECORDED = "recorded"  # kept as a further copy; nothing the CRM user sees changes


def on_new_copy(primary: Copy, new: Copy, *, all_mail: str | None) -> NewCopy:
    """Rule 1: a label added to a message the CRM already shows."""
    if new.server_folder == primary.server_folder:
        return NewCopy.RECORDED
    return (
        NewCopy.BECOMES_PRIMARY if rank(new, all_mail=all_mail) < rank(primary, all_mail=all_mail) else NewCopy.RECORDED
    )


def on_primary_gone(remaining: Iterable[Copy], *, all_mail: str | None) -> Copy | None:
    """Rule 3: where the message lives on when its primary copy's label was removed; None
    when it is in no mapped folder any more (it leaves the sync as on any other server)."""
    copies = list(remaining)
    return min(copies, key=lambda c: rank(c, all_mail=all_mail)) if copies else None


class MoveMethod(Enum):
    MOVE = "move"  # UID MOVE from the primary copy's folder
    ADD_LABEL = "add_label"  # UID STORE +X-GM-LABELS (target) on the copy in All Mail


def crm_move(source: str, target: str, *, all_mail: str | None, trash: str | None) -> MoveMethod:
    """Rule 4: how a CRM move (or deletion, a move to the trash folder) is done on Gmail.

    Gmail's MOVE out of a label folder removes that label and adds the target's; other labels
    stay. Out of All Mail a MOVE would expunge there, which Gmail takes as "delete": only a
    move to the trash folder may do that; anything else adds the target's label.
    """
    if all_mail is not None and source == all_mail and target != trash:
        return MoveMethod.ADD_LABEL
    return MoveMethod.MOVE
