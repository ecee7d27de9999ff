"""Privacy rules as the services apply them (``mailsync.services.confidentiality``): tenant
settings (admins only), and classification of new mail with thread marks."""

from __future__ import annotations

import dataclasses

import pytest

from mailsync.domain import Account, Message
from mailsync.errors import Forbidden
from mailsync.identity import Principal
from mailsync.privacy import DEFAULT_KEYWORDS
from mailsync.schemas import TenantSettingsIn
from mailsync.services import confidentiality
from tests.unit.fake_dal import WHEN, Fakes, a_message

ALICE = Principal(user_id="alice", tenant_id="acme", is_admin=False)
ADMIN = Principal(user_id="root", tenant_id="acme", is_admin=True)
OTHER_ADMIN = Principal(user_id="root", tenant_id="globex", is_admin=True)
ACCOUNT = Account(tenant_id="acme", user_id="alice", host="imap.example.com", port=993, username="a", security="ssl")


def test_only_an_admin_reads_or_changes_the_tenant_settings(fake_dal: Fakes) -> None:
    body = TenantSettingsIn(confidential_keywords=["salary"], confidential_contacts=[])
    with pytest.raises(Forbidden):
        confidentiality.get_tenant_settings(ALICE)
    with pytest.raises(Forbidden):
        confidentiality.put_tenant_settings(ALICE, body)
    assert fake_dal.dal.tenants == {}


def test_saved_settings_are_normalised_and_stay_within_the_tenant(fake_dal: Fakes) -> None:
    # Given the defaults before any save,
    assert confidentiality.get_tenant_settings(ADMIN).confidential_keywords == list(DEFAULT_KEYWORDS)

    # When an admin saves keywords with blanks and repeats, and contacts in mixed case,
    body = TenantSettingsIn(
        confidential_keywords=[" salary ", "salary", "  ", "Offer"],
        confidential_contacts=["HR@acme.example", "boss@acme.example", "hr@acme.example"],
    )
    out = confidentiality.put_tenant_settings(ADMIN, body)

    # Then they are saved trimmed, once each, contacts lower-cased and sorted,
    assert out.confidential_keywords == ["salary", "Offer"]
    assert out.confidential_contacts == ["boss@acme.example", "hr@acme.example"]
    assert confidentiality.get_tenant_settings(ADMIN) == out
    # and another tenant still has the defaults.
    assert confidentiality.get_tenant_settings(OTHER_ADMIN).confidential_keywords == list(DEFAULT_KEYWORDS)


def test_new_mail_with_a_tenant_keyword_is_confidential_and_its_later_replies_follow(fake_dal: Fakes) -> None:
    # Given the tenant's keyword "salary",
    confidentiality.put_tenant_settings(
        ADMIN, TenantSettingsIn(confidential_keywords=["salary"], confidential_contacts=[])
    )
    first = _new("m1", subject="Your salary", thread_id="t1")
    plain = _new("m2", subject="Lunch?", thread_id="t2")

    # When new mail is classified,
    decided = {m.id: m for m in confidentiality.classify_new(ACCOUNT, [first, plain])}

    # Then only the keyword's message is confidential, with a reason, and its thread is marked;
    assert decided["m1"].confidential and decided["m1"].confidential_reasons
    assert not decided["m2"].confidential and decided["m2"].confidential_reasons == ()
    assert set(fake_dal.dal.thread_marks("acme", "alice", ["t1", "t2"])) == {"t1"}
    # When a reply without the keyword arrives later, Then it follows its thread.
    [reply] = confidentiality.classify_new(ACCOUNT, [_new("m3", subject="Re: thanks", thread_id="t1")])
    assert reply.confidential


def test_the_owners_decision_outranks_the_rules_for_later_mail(fake_dal: Fakes) -> None:
    # Given a keyword thread the owner declared not confidential,
    confidentiality.put_tenant_settings(
        ADMIN, TenantSettingsIn(confidential_keywords=["salary"], confidential_contacts=[])
    )
    stored = a_message(fake_dal, "m1", subject="salary", thread_id="t1", confidential=True)
    confidentiality.set_thread_confidential(stored, False)
    assert not fake_dal.dal.find_message("m1").confidential  # type: ignore[union-attr]

    # When another keyword message of that thread arrives, Then it stays visible.
    [later] = confidentiality.classify_new(ACCOUNT, [_new("m2", subject="salary again", thread_id="t1")])
    assert not later.confidential


def _new(id: str, **overrides: object) -> Message:
    base = Message(
        id=id,
        tenant_id="acme",
        user_id="alice",
        folder="inbox",
        server_folder="INBOX",
        internal_date=WHEN,
        size=1,
        match_key=f"mid:<{id}@x>",
        s3_key=f"raw/{id}",
        content_hash=id,
        thread_id="t",
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
