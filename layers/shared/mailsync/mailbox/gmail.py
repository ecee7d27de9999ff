"""Gmail's IMAP extensions on the wire (``X-GM-EXT-1``): the FETCH attributes X-GM-MSGID,
X-GM-THRID and X-GM-LABELS as imapclient's parser returns them, and labels as command arguments.

Labels come as atoms (``Important``), quoted strings (``"Muy Importante"``) or literals, in
modified UTF-7 like folder names, and Gmail's system labels with a backslash (``\\Inbox``,
``\\Sent``); imapclient gives each as bytes (a quoted string without its quotes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailsync.mailbox.imap import folder_name, mailbox_arg

# In CAPABILITY: the server offers Gmail's extensions (labels as folders, X-GM-MSGID, X-GM-THRID).
CAPABILITY = "X-GM-EXT-1"
FETCH_ITEMS = "X-GM-MSGID X-GM-THRID X-GM-LABELS"
# Gmail's ids are unsigned 64-bit numbers.
_MAX_ID = 2**64 - 1
# Bounds against a hostile server: labels per message and bytes per label.
MAX_LABELS = 200
MAX_LABEL_BYTES = 1000


@dataclass(frozen=True)
class GmailAttributes:
    msgid: int
    thrid: int | None
    labels: tuple[str, ...]  # decoded; system labels as ``\\Inbox``; in the server's order


def _id(value: Any) -> int | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_ID:
        return value
    return None


def parse_labels(value: Any) -> tuple[str, ...]:
    """An X-GM-LABELS value (a parenthesised list) as label names; malformed entries are left out.

    A system label keeps its backslash; others are decoded from modified UTF-7 as folder names
    are (a label that is not valid modified UTF-7 is taken as sent).
    """
    if value is None:
        return ()
    items = value if isinstance(value, (tuple, list)) else (value,)
    labels: list[str] = []
    for item in items[:MAX_LABELS]:
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)  # an all-digit label is parsed as a number
        if isinstance(item, str):
            item = item.encode("utf-8", "surrogateescape")
        if not isinstance(item, bytes) or not item or len(item) > MAX_LABEL_BYTES:
            continue
        labels.append(item.decode("ascii") if item.startswith(b"\\") and item.isascii() else folder_name(item))
    return tuple(labels)


def parse_attributes(attrs: Mapping[bytes, Any]) -> GmailAttributes | None:
    """Gmail's attributes of one FETCH response; None without a usable X-GM-MSGID (then the
    message is recognised as on any server)."""
    msgid = _id(attrs.get(b"X-GM-MSGID"))
    if msgid is None:
        return None
    return GmailAttributes(
        msgid=msgid, thrid=_id(attrs.get(b"X-GM-THRID")), labels=parse_labels(attrs.get(b"X-GM-LABELS"))
    )


def label_arg(label: str) -> str:
    """A label as a STORE X-GM-LABELS argument: a system label as its atom, any other quoted
    in modified UTF-7."""
    if label.startswith("\\") and label[1:].isalpha() and label.isascii():
        return label
    return mailbox_arg(label)


# Gmail's system labels, as X-GM-LABELS spells them, by the SPECIAL-USE flag of their folder.
_SYSTEM_LABELS = {
    "\\Sent": "\\Sent",
    "\\Drafts": "\\Draft",
    "\\Important": "\\Important",
    "\\Flagged": "\\Starred",
    "\\Junk": "\\Spam",
    "\\Trash": "\\Trash",
}


def label_for(folder: str, special_use: str | None) -> str:
    """The X-GM-LABELS label that puts a message into ``folder``: INBOX is ``\\Inbox``, Gmail's
    system folders their system label, any other folder its own name (a label)."""
    if folder.upper() == "INBOX":
        return "\\Inbox"
    if special_use in _SYSTEM_LABELS:
        return _SYSTEM_LABELS[special_use]
    return folder
