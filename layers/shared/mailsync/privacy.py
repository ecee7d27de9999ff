"""Confidential mail: the rules that decide, when a message is first stored, whether only its
owner may see it (pure functions; the engine and the API supply the data).

Precedence: the owner's explicit decision for a thread (``PATCH confidential``, set or cleared)
wins; otherwise a message is confidential if any rule says so — a confidential keyword in the
subject, a thread that is confidential (a reply to a private message is private), a
confidential contact as sender (incoming) or recipient (outgoing), or the owner's default for
incoming/outgoing mail.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

DEFAULT_KEYWORDS = ("confidential", "vertrouwelijk")
OUTGOING_FOLDERS = frozenset({"sent", "drafts"})


@dataclass(frozen=True)
class TenantRules:
    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    contacts: frozenset[str] = field(default_factory=frozenset)  # lower-cased addresses


@dataclass(frozen=True)
class ThreadState:
    confidential: bool
    by_owner: bool  # True: the owner decided (PATCH); automatic rules no longer apply to it


@dataclass(frozen=True)
class MessageFacts:
    subject: str | None
    outgoing: bool
    senders: tuple[str, ...]  # From, Sender, Reply-To (lower-cased)
    recipients: tuple[str, ...]  # To, Cc, Bcc (lower-cased)


def _nfc(text: str) -> str:
    # "é" may arrive as e + combining accent; compare composed forms on both sides.
    return unicodedata.normalize("NFC", text)


@lru_cache(maxsize=256)
def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    words = [_nfc(k.strip()) for k in keywords if k and k.strip()]
    if not words:
        return None
    # Whole words, case-insensitive, Unicode-aware: "Re: Vertrouwelijk" matches,
    # "confidentiality" does not. Spaces inside a keyword match any run of white space.
    alternatives = "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in words)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def subject_is_confidential(subject: str | None, keywords: Iterable[str]) -> bool:
    pattern = _keyword_pattern(tuple(keywords))
    return bool(subject and pattern and pattern.search(_nfc(subject)))


def involves_confidential_contact(facts: MessageFacts, contacts: frozenset[str]) -> bool:
    addresses = facts.recipients if facts.outgoing else facts.senders
    return any(a.lower() in contacts for a in addresses)


def reasons(
    facts: MessageFacts,
    rules: TenantRules,
    *,
    thread: ThreadState | None,
    incoming_default: bool,
    outgoing_default: bool,
) -> list[str]:
    """Why a new message is confidential (empty: it is not). The owner's thread decision wins."""
    if thread is not None and thread.by_owner:
        return ["thread marked confidential by its owner"] if thread.confidential else []
    out = []
    if subject_is_confidential(facts.subject, rules.keywords):
        out.append("confidential keyword in the subject")
    if thread is not None and thread.confidential:
        out.append("reply in a confidential thread")
    if involves_confidential_contact(facts, rules.contacts):
        out.append("confidential contact")
    if outgoing_default if facts.outgoing else incoming_default:
        out.append("owner's default for " + ("outgoing" if facts.outgoing else "incoming") + " mail")
    return out


def is_outgoing(crm_folder: str) -> bool:
    return crm_folder in OUTGOING_FOLDERS
