"""Applying the privacy rules: classifying new messages, the owner's thread decision, tenant settings."""

from __future__ import annotations

from mailsync import dal
from mailsync.errors import Forbidden
from mailsync.identity import Principal
from mailsync.privacy import DEFAULT_KEYWORDS, MessageFacts, TenantRules, ThreadState, is_outgoing, reasons
from mailsync.schemas import TenantSettingsIn, TenantSettingsOut


def tenant_rules(tenant_id: str) -> TenantRules:
    item = dal.get_tenant_settings(tenant_id)
    if item is None:
        return TenantRules()
    keywords = tuple(item.confidential_keywords) if item.confidential_keywords is not None else DEFAULT_KEYWORDS
    return TenantRules(keywords=keywords, contacts=frozenset(c.lower() for c in item.confidential_contacts or []))


def _emails(values: list[dal.AddressMap]) -> tuple[str, ...]:
    return tuple(v.email.lower() for v in values or [])


def facts(message: dal.MessageModel) -> MessageFacts:
    return MessageFacts(
        subject=message.subject,
        outgoing=is_outgoing(message.folder),
        senders=_emails(message.from_) + _emails(message.reply_to),
        recipients=_emails(message.to) + _emails(message.cc) + _emails(message.bcc),
    )


def classify_new(account: dal.AccountModel, messages: list[dal.MessageModel], rules: TenantRules | None = None) -> None:
    """Set ``confidential`` on messages about to be stored for the first time; a message that
    becomes confidential makes its thread confidential, so later replies follow."""
    if not messages:
        return
    rules = rules or tenant_rules(account.tenant_id)
    threads = dal.get_threads(account.tenant_id, account.user_id, (m.thread_id for m in messages))
    newly_confidential: set[str] = set()
    for message in sorted(messages, key=lambda m: m.internal_date):
        thread = threads.get(message.thread_id)
        state = ThreadState(bool(thread.confidential), bool(thread.by_owner)) if thread is not None else None
        if state is None and message.thread_id in newly_confidential:
            state = ThreadState(True, False)
        why = reasons(
            facts(message),
            rules,
            thread=state,
            incoming_default=bool(account.incoming_confidential),
            outgoing_default=bool(account.outgoing_confidential),
        )
        message.confidential = bool(why)
        message.confidential_reasons = why
        if why and (thread is None or not (thread.by_owner or thread.confidential)):
            newly_confidential.add(message.thread_id)
    for thread_id in newly_confidential:
        dal.mark_thread(account.tenant_id, account.user_id, thread_id, True, by_owner=False)


def set_thread_confidential(message: dal.MessageModel, confidential: bool) -> None:
    """The owner's decision for the whole thread, kept for replies that arrive later."""
    dal.mark_thread(message.tenant_id, message.user_id, message.thread_id, confidential, by_owner=True)
    why = ["thread marked confidential by its owner"] if confidential else []
    members = set(dal.thread_member_ids(message.tenant_id, message.user_id, message.thread_id)) | {message.id}
    for member in dal.batch_get_messages(members).values():
        if bool(member.confidential) != confidential or member.id == message.id:
            dal.set_confidential(member, confidential, why)


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("Only an admin can read or change the tenant's settings")


def get_tenant_settings(principal: Principal) -> TenantSettingsOut:
    _require_admin(principal)
    rules = tenant_rules(principal.tenant_id)
    return TenantSettingsOut(confidential_keywords=list(rules.keywords), confidential_contacts=sorted(rules.contacts))


def put_tenant_settings(principal: Principal, body: TenantSettingsIn) -> TenantSettingsOut:
    _require_admin(principal)
    keywords = list(dict.fromkeys(k.strip() for k in body.confidential_keywords if k.strip()))
    contacts = sorted({str(c).lower() for c in body.confidential_contacts})
    dal.save_tenant_settings(principal.tenant_id, keywords, contacts)
    return TenantSettingsOut(confidential_keywords=keywords, confidential_contacts=contacts)
