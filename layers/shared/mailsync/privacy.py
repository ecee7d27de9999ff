"""Confidential mail: the rules that decide, when a message is first stored, whether only its
owner may see it (pure functions; the engine and the API supply the data).

Precedence: the owner's explicit decision for a thread (``PATCH confidential``, set or cleared)
wins; otherwise a message is confidential if any rule says so — a confidential keyword in the
subject, a thread that is confidential (a reply to a private message is private), a
confidential contact as sender (incoming) or recipient (outgoing), or the owner's default for
incoming/outgoing mail.

No I/O here: ``classify_new`` is fed by reads its caller makes (``dal.get_tenant_settings`` through
``rules_from``, ``dal.thread_marks``) and the caller writes what it returns.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Protocol

from mailsync.domain import Address, TenantSettings, ThreadMark

DEFAULT_KEYWORDS = ("confidential", "vertrouwelijk")
OUTGOING_FOLDERS = frozenset({"sent", "drafts"})


@dataclass(frozen=True)
class TenantRules:
    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    contacts: frozenset[str] = field(default_factory=frozenset)  # lower-cased addresses


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
    thread: ThreadMark | None,
    incoming_default: bool,
    outgoing_default: bool,
) -> list[str]:
    """Why a new message is confidential (empty: it is not). The owner's thread decision wins."""
    if thread is not None and thread.by_owner:
        return [OWNER_MARKED] if thread.confidential else []
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


OWNER_MARKED = "thread marked confidential by its owner"


def rules_from(settings: TenantSettings | None) -> TenantRules:
    """The tenant's rules from its saved settings (defaults before any save)."""
    if settings is None:
        return TenantRules()
    keywords = settings.confidential_keywords
    return TenantRules(
        keywords=tuple(keywords) if keywords is not None else DEFAULT_KEYWORDS,
        contacts=frozenset(c.lower() for c in settings.confidential_contacts),
    )


class OwnerDefaults(Protocol):
    """The owner's defaults (``domain.Account`` has them)."""

    incoming_confidential: bool
    outgoing_confidential: bool


class NewMessage(Protocol):
    """What classification reads of a message (``domain.Message`` has it)."""

    id: str
    folder: str
    thread_id: str
    subject: str | None
    internal_date: datetime
    from_: Sequence[Address]
    reply_to: Sequence[Address]
    to: Sequence[Address]
    cc: Sequence[Address]
    bcc: Sequence[Address]


@dataclass(frozen=True)
class Classification:
    reasons: dict[str, list[str]]  # message id -> why it is confidential (empty: it is not)
    # Threads the batch made confidential: mark them (``by_owner=False``) so later replies follow.
    threads_to_mark: frozenset[str]


def _emails(values: Iterable[Address] | None) -> tuple[str, ...]:
    return tuple(v.email.lower() for v in values or ())


def facts(message: NewMessage) -> MessageFacts:
    return MessageFacts(
        subject=message.subject,
        outgoing=is_outgoing(message.folder),
        senders=_emails(message.from_) + _emails(message.reply_to),
        recipients=_emails(message.to) + _emails(message.cc) + _emails(message.bcc),
    )


def classify_new(
    owner: OwnerDefaults,
    messages: Sequence[NewMessage],
    rules: TenantRules,
    threads: Mapping[str, ThreadMark],
) -> Classification:
    """Whether each message about to be stored for the first time is confidential.

    ``threads`` are the stored marks of the messages' threads. Oldest first, a message that
    becomes confidential makes its (unmarked) thread confidential for the later ones.
    """
    out: dict[str, list[str]] = {}
    newly: set[str] = set()
    for message in sorted(messages, key=lambda m: m.internal_date):
        stored = threads.get(message.thread_id)
        thread = stored
        if thread is None and message.thread_id in newly:
            thread = ThreadMark(confidential=True, by_owner=False)
        why = reasons(
            facts(message),
            rules,
            thread=thread,
            incoming_default=bool(owner.incoming_confidential),
            outgoing_default=bool(owner.outgoing_confidential),
        )
        out[message.id] = why
        if why and (stored is None or not (stored.by_owner or stored.confidential)):
            newly.add(message.thread_id)
    return Classification(reasons=out, threads_to_mark=frozenset(newly))
