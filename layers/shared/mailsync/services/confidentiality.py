"""Applying the privacy rules: classifying new messages, the owner's thread decision, tenant
settings (with the office hours the scheduler polls by, ``services.scheduling``)."""

from __future__ import annotations

import dataclasses

from mailsync import dal, privacy
from mailsync.domain import Account, Message
from mailsync.errors import Forbidden
from mailsync.identity import Principal
from mailsync.privacy import TenantRules
from mailsync.schemas import OfficeHoursBody, TenantSettingsIn, TenantSettingsOut
from mailsync.services import scheduling


def tenant_rules(tenant_id: str) -> TenantRules:
    return privacy.rules_from(dal.get_tenant_settings(tenant_id))


def classify_new(account: Account, messages: list[Message], rules: TenantRules | None = None) -> list[Message]:
    """``messages`` (about to be stored for the first time) with ``confidential`` decided; the
    threads they make confidential are marked, so later replies follow."""
    if not messages:
        return []
    rules = rules or tenant_rules(account.tenant_id)
    threads = dal.thread_marks(account.tenant_id, account.user_id, {m.thread_id for m in messages})
    result = privacy.classify_new(account, messages, rules, threads)
    dal.mark_threads(account.tenant_id, account.user_id, result.threads_to_mark, confidential=True, by_owner=False)
    return [_decided(m, result.reasons[m.id]) for m in messages]


def _decided(message: Message, reasons: list[str]) -> Message:
    return dataclasses.replace(message, confidential=bool(reasons), confidential_reasons=tuple(reasons))


def set_thread_confidential(message: Message, confidential: bool) -> None:
    """The owner's decision for the whole thread, kept for replies that arrive later."""
    dal.mark_threads(message.tenant_id, message.user_id, [message.thread_id], confidential=confidential, by_owner=True)
    why = [privacy.OWNER_MARKED] if confidential else []
    members = set(dal.thread_member_ids(message.tenant_id, message.user_id, message.thread_id)) | {message.id}
    for member in dal.find_messages(members).values():
        if member.confidential != confidential or member.id == message.id:
            dal.set_confidential(member, confidential, why)


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("Only an admin can read or change the tenant's settings")


def get_tenant_settings(principal: Principal) -> TenantSettingsOut:
    _require_admin(principal)
    rules = tenant_rules(principal.tenant_id)
    return TenantSettingsOut(
        confidential_keywords=list(rules.keywords),
        confidential_contacts=sorted(rules.contacts),
        office_hours=OfficeHoursBody.of(scheduling.office_hours(principal.tenant_id)),
    )


def put_tenant_settings(principal: Principal, body: TenantSettingsIn) -> TenantSettingsOut:
    _require_admin(principal)
    keywords = list(dict.fromkeys(k.strip() for k in body.confidential_keywords if k.strip()))
    contacts = sorted({str(c).lower() for c in body.confidential_contacts})
    dal.save_tenant_settings(principal.tenant_id, keywords, contacts)
    if body.office_hours is not None:
        hours = dal.save_office_hours(principal.tenant_id, body.office_hours.to_domain())
    else:
        hours = scheduling.office_hours(principal.tenant_id)
    return TenantSettingsOut(
        confidential_keywords=keywords, confidential_contacts=contacts, office_hours=OfficeHoursBody.of(hours)
    )
