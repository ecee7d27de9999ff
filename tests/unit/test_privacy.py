"""Confidential-mail rules: pure functions, plain data in, assertions out."""

from __future__ import annotations

import unicodedata

import pytest

from mailsync.domain import ThreadMark
from mailsync.privacy import (
    DEFAULT_KEYWORDS,
    MessageFacts,
    TenantRules,
    involves_confidential_contact,
    is_outgoing,
    reasons,
    subject_is_confidential,
)

KEYWORD = "confidential keyword in the subject"
THREAD = "reply in a confidential thread"
CONTACT = "confidential contact"
OWNER = "thread marked confidential by its owner"
DEFAULT_IN = "owner's default for incoming mail"
DEFAULT_OUT = "owner's default for outgoing mail"

VIP = "ceo@client.example"


def facts(
    subject: str | None = "Hello",
    *,
    outgoing: bool = False,
    senders: tuple[str, ...] = ("someone@example.com",),
    recipients: tuple[str, ...] = ("me@agency.example",),
) -> MessageFacts:
    return MessageFacts(subject=subject, outgoing=outgoing, senders=senders, recipients=recipients)


def why(
    message: MessageFacts,
    rules: TenantRules | None = None,
    *,
    thread: ThreadMark | None = None,
    incoming_default: bool = False,
    outgoing_default: bool = False,
) -> list[str]:
    return reasons(
        message,
        rules if rules is not None else TenantRules(),
        thread=thread,
        incoming_default=incoming_default,
        outgoing_default=outgoing_default,
    )


# --- keyword rule -------------------------------------------------------------------------------


def test_default_keywords() -> None:
    assert DEFAULT_KEYWORDS == ("confidential", "vertrouwelijk")
    assert TenantRules().keywords == DEFAULT_KEYWORDS
    assert TenantRules().contacts == frozenset()


@pytest.mark.parametrize(
    "subject",
    [
        "Confidential",
        "confidential",
        "VERTROUWELIJK",
        "Re: vertrouwelijk",
        "Fwd: AW: Antw: Confidential offer",
        "Offer (confidential)",
        "[Vertrouwelijk] salaris",
        "Salary - CONFIDENTIAL!",
        "confidential: candidate shortlist",
        "Re:Confidential",
    ],
)
def test_default_keywords_match_whole_words_case_insensitively(subject: str) -> None:
    assert subject_is_confidential(subject, DEFAULT_KEYWORDS)


@pytest.mark.parametrize(
    "subject",
    [
        "confidentiality",
        "Confidentiality agreement",
        "nonconfidential",
        "vertrouwelijkheid",
        "Re: Vertrouwelijkheidsverklaring",
        "confidential_offer",
        "confidential2",
        "Hello",
        "",
    ],
)
def test_keywords_do_not_match_inside_longer_words(subject: str) -> None:
    assert not subject_is_confidential(subject, DEFAULT_KEYWORDS)


def test_none_subject_is_not_confidential() -> None:
    assert not subject_is_confidential(None, DEFAULT_KEYWORDS)
    assert why(facts(None)) == []


@pytest.mark.parametrize("keywords", [(), [], ("",), ("   ",), ("", "  \t ")])
def test_empty_keyword_list_matches_nothing(keywords: tuple[str, ...] | list[str]) -> None:
    assert not subject_is_confidential("Confidential", keywords)
    assert not subject_is_confidential("", keywords)
    assert not subject_is_confidential(None, keywords)


def test_empty_keyword_list_in_rules_disables_the_keyword_rule() -> None:
    assert why(facts("Confidential"), TenantRules(keywords=())) == []


def test_custom_keywords_replace_the_defaults() -> None:
    keywords = ("geheim", "privé")
    assert subject_is_confidential("Geheim", keywords)
    assert subject_is_confidential("Re: PRIVÉ - salaris", keywords)
    assert not subject_is_confidential("Confidential", keywords)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Strictly private", True),
        ("Re: STRICTLY PRIVATE offer", True),
        ("strictly   private", True),
        ("strictly\tprivate", True),
        ("strictly\nprivate", True),
        ("strictly privately", False),
        ("nonstrictly private", False),
        ("strictly-private", False),
        ("strictlyprivate", False),
        ("strictly", False),
        ("private", False),
    ],
)
def test_custom_keyword_with_spaces(subject: str, expected: bool) -> None:
    assert subject_is_confidential(subject, ["strictly private"]) is expected


def test_keyword_surrounding_white_space_is_ignored() -> None:
    assert subject_is_confidential("Re: secret", ["  secret  "])
    assert subject_is_confidential("strictly private", ["  strictly   private "])


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Geheim", True),
        ("GEHEIM: Angebot", True),
        ("Re: geheim", True),
        ("Geheimnis", False),
        ("geheimnis", False),
        ("streng geheimnisvoll", False),
        ("Übergeheim", False),
        ("geheimé", False),
    ],
)
def test_unicode_whole_words(subject: str, expected: bool) -> None:
    assert subject_is_confidential(subject, ["geheim"]) is expected


def test_unicode_keyword_is_case_insensitive() -> None:
    assert subject_is_confidential("ÜBERSICHT", ["übersicht"])
    assert not subject_is_confidential("Übersichten", ["übersicht"])


def test_regex_metacharacters_in_keywords_are_literal() -> None:
    assert subject_is_confidential("Re: a.b offer", ["a.b"])
    assert not subject_is_confidential("Re: axb offer", ["a.b"])
    assert not subject_is_confidential("anything", ["(.*)"])


def test_any_of_several_keywords_matches() -> None:
    keywords = ("confidential", "geheim", "strictly private")
    assert subject_is_confidential("geheim", keywords)
    assert subject_is_confidential("Strictly Private", keywords)
    assert subject_is_confidential("confidential", keywords)
    assert not subject_is_confidential("public", keywords)


def test_keywords_may_be_any_iterable() -> None:
    assert subject_is_confidential("confidential", iter(["confidential"]))
    assert subject_is_confidential("confidential", (k for k in DEFAULT_KEYWORDS))


def test_decomposed_unicode_subject_matches_composed_keyword() -> None:
    assert subject_is_confidential(unicodedata.normalize("NFD", "Re: Privé"), ["privé"])


# --- contact rule -------------------------------------------------------------------------------


def test_incoming_checks_senders_only() -> None:
    contacts = frozenset({VIP})
    assert involves_confidential_contact(facts(senders=(VIP,)), contacts)
    assert involves_confidential_contact(facts(senders=("other@x.example", VIP)), contacts)
    assert not involves_confidential_contact(facts(senders=("other@x.example",), recipients=(VIP,)), contacts)


def test_outgoing_checks_recipients_only() -> None:
    contacts = frozenset({VIP})
    assert involves_confidential_contact(facts(outgoing=True, recipients=(VIP,)), contacts)
    assert involves_confidential_contact(facts(outgoing=True, recipients=("a@x.example", VIP)), contacts)
    assert not involves_confidential_contact(
        facts(outgoing=True, senders=(VIP,), recipients=("other@x.example",)), contacts
    )


@pytest.mark.parametrize("address", ["CEO@Client.Example", "ceo@CLIENT.EXAMPLE", "Ceo@client.example"])
@pytest.mark.parametrize("outgoing", [False, True])
def test_contact_comparison_is_case_insensitive_on_the_addresses(address: str, outgoing: bool) -> None:
    message = facts(outgoing=outgoing, senders=(address,), recipients=(address,))
    assert involves_confidential_contact(message, frozenset({VIP}))


def test_contact_rule_with_no_contacts_or_no_addresses() -> None:
    assert not involves_confidential_contact(facts(senders=(VIP,)), frozenset())
    assert not involves_confidential_contact(facts(senders=()), frozenset({VIP}))
    assert not involves_confidential_contact(facts(outgoing=True, recipients=()), frozenset({VIP}))


def test_contact_must_match_the_whole_address() -> None:
    contacts = frozenset({VIP})
    assert not involves_confidential_contact(facts(senders=("xceo@client.example",)), contacts)
    assert not involves_confidential_contact(facts(senders=("ceo@client.example.org",)), contacts)


def test_contact_rule_in_reasons() -> None:
    rules = TenantRules(contacts=frozenset({VIP}))
    assert why(facts(senders=("CEO@client.example",)), rules) == [CONTACT]
    assert why(facts(recipients=(VIP,)), rules) == []
    assert why(facts(outgoing=True, recipients=(VIP,)), rules) == [CONTACT]
    assert why(facts(outgoing=True, senders=(VIP,)), rules) == []


# --- thread rule --------------------------------------------------------------------------------


def test_auto_confidential_thread_makes_a_reply_confidential() -> None:
    thread = ThreadMark(confidential=True, by_owner=False)
    assert why(facts("Re: hello"), thread=thread) == [THREAD]
    assert why(facts("Re: hello", outgoing=True), thread=thread) == [THREAD]


def test_non_confidential_or_missing_thread_adds_nothing() -> None:
    assert why(facts("Re: hello"), thread=ThreadMark(confidential=False, by_owner=False)) == []
    assert why(facts("Re: hello"), thread=None) == []


# --- owner decision -----------------------------------------------------------------------------


def test_owner_set_makes_confidential_without_any_other_rule() -> None:
    thread = ThreadMark(confidential=True, by_owner=True)
    assert why(facts("Hello"), TenantRules(keywords=()), thread=thread) == [OWNER]
    assert why(facts("Hello", outgoing=True), thread=thread) == [OWNER]


def test_owner_set_replaces_the_automatic_reasons() -> None:
    rules = TenantRules(contacts=frozenset({VIP}))
    thread = ThreadMark(confidential=True, by_owner=True)
    message = facts("Confidential", senders=(VIP,))
    assert why(message, rules, thread=thread, incoming_default=True) == [OWNER]


def test_owner_cleared_wins_over_every_automatic_rule() -> None:
    rules = TenantRules(contacts=frozenset({VIP}))
    thread = ThreadMark(confidential=False, by_owner=True)
    incoming = facts("Re: Confidential", senders=(VIP,))
    outgoing = facts("Re: vertrouwelijk", outgoing=True, recipients=(VIP,))
    assert why(incoming, rules, thread=thread) == []
    assert why(outgoing, rules, thread=thread) == []
    assert why(incoming, rules, thread=thread, incoming_default=True, outgoing_default=True) == []
    assert why(outgoing, rules, thread=thread, incoming_default=True, outgoing_default=True) == []


# --- owner defaults -----------------------------------------------------------------------------


def test_incoming_default_applies_to_incoming_only() -> None:
    assert why(facts(), incoming_default=True) == [DEFAULT_IN]
    assert why(facts(outgoing=True), incoming_default=True) == []


def test_outgoing_default_applies_to_outgoing_only() -> None:
    assert why(facts(outgoing=True), outgoing_default=True) == [DEFAULT_OUT]
    assert why(facts(), outgoing_default=True) == []


def test_both_defaults() -> None:
    assert why(facts(), incoming_default=True, outgoing_default=True) == [DEFAULT_IN]
    assert why(facts(outgoing=True), incoming_default=True, outgoing_default=True) == [DEFAULT_OUT]


def test_nothing_applies() -> None:
    assert why(facts("Re: hello", senders=(VIP,))) == []
    assert why(facts("Re: hello", outgoing=True, recipients=(VIP,))) == []


# --- reasons lists every applicable reason --------------------------------------------------------


def test_reasons_lists_every_applicable_reason_incoming() -> None:
    rules = TenantRules(contacts=frozenset({VIP}))
    thread = ThreadMark(confidential=True, by_owner=False)
    message = facts("Re: Confidential", senders=(VIP,))
    assert why(message, rules, thread=thread, incoming_default=True) == [KEYWORD, THREAD, CONTACT, DEFAULT_IN]


def test_reasons_lists_every_applicable_reason_outgoing() -> None:
    rules = TenantRules(contacts=frozenset({VIP}))
    thread = ThreadMark(confidential=True, by_owner=False)
    message = facts("Re: vertrouwelijk", outgoing=True, recipients=("a@x.example", VIP))
    assert why(message, rules, thread=thread, outgoing_default=True) == [KEYWORD, THREAD, CONTACT, DEFAULT_OUT]


def test_reasons_keyword_and_contact_only() -> None:
    rules = TenantRules(keywords=("strictly private",), contacts=frozenset({VIP}))
    message = facts("Strictly private: offer", senders=(VIP,))
    assert why(message, rules) == [KEYWORD, CONTACT]


def test_reasons_keyword_only() -> None:
    assert why(facts("Fwd: AW: Antw: Confidential offer")) == [KEYWORD]
    assert why(facts("Confidentiality agreement")) == []


# --- folders ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "expected"), [("sent", True), ("drafts", True), ("inbox", False), ("archive", False)]
)
def test_is_outgoing(folder: str, expected: bool) -> None:
    assert is_outgoing(folder) is expected


@pytest.mark.parametrize("folder", ["trash", "", "other"])
def test_other_folders_are_not_outgoing(folder: str) -> None:
    assert not is_outgoing(folder)


# --- classify_new: a batch of new messages, with the stored thread marks ------------------------


def _new(message_id: str, thread: str, minutes: int, subject: str = "hello", folder: str = "inbox", sender: str = ""):
    from datetime import UTC, datetime, timedelta

    from mailsync.domain import Address, Message

    return Message(
        id=message_id,
        tenant_id="acme",
        user_id="alice",
        folder=folder,
        server_folder="INBOX",
        internal_date=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes),
        size=1,
        match_key=f"mid:{message_id}",
        s3_key="k",
        content_hash="0",
        thread_id=thread,
        subject=subject,
        from_=(Address(sender or "someone@example.com"),),
    )


class _Owner:
    incoming_confidential = False
    outgoing_confidential = False


def test_classify_new_makes_later_replies_of_a_new_confidential_thread_confidential() -> None:
    from mailsync.privacy import classify_new

    # Given a confidential first message and a later reply in the same (unmarked) thread
    reply = _new("b", "t1", minutes=5, subject="Re: hello")
    first = _new("a", "t1", minutes=1, subject="Confidential: offer")
    # When they are classified in one batch, in any order
    result = classify_new(_Owner(), [reply, first], TenantRules(), {})
    # Then the reply follows its thread and the thread is to be marked
    assert result.reasons == {"a": [KEYWORD], "b": [THREAD]}
    assert result.threads_to_mark == frozenset({"t1"})


def test_classify_new_keeps_the_owners_decision_and_marks_nothing_new() -> None:
    from mailsync.privacy import classify_new

    cleared = {"t1": ThreadMark(confidential=False, by_owner=True)}
    result = classify_new(_Owner(), [_new("a", "t1", 1, subject="Confidential")], TenantRules(), cleared)
    assert result.reasons == {"a": []} and result.threads_to_mark == frozenset()


def test_classify_new_does_not_mark_a_thread_already_confidential() -> None:
    from mailsync.privacy import classify_new

    marked = {"t1": ThreadMark(confidential=True, by_owner=False)}
    result = classify_new(_Owner(), [_new("a", "t1", 1)], TenantRules(), marked)
    assert result.reasons == {"a": [THREAD]} and result.threads_to_mark == frozenset()


def test_classify_new_uses_the_owners_defaults_and_the_tenants_contacts() -> None:
    from mailsync.privacy import classify_new

    class Private(_Owner):
        outgoing_confidential = True

    rules = TenantRules(contacts=frozenset({VIP}))
    messages = [_new("in", "t1", 1, sender=VIP.upper()), _new("out", "t2", 2, folder="sent")]
    result = classify_new(Private(), messages, rules, {})
    assert result.reasons == {"in": [CONTACT], "out": [DEFAULT_OUT]}


def test_rules_from_saved_settings() -> None:
    from mailsync.domain import TenantSettings
    from mailsync.privacy import rules_from

    assert rules_from(None) == TenantRules()
    assert rules_from(TenantSettings()) == TenantRules(keywords=DEFAULT_KEYWORDS)
    saved = rules_from(TenantSettings(confidential_keywords=(), confidential_contacts=("A@B.example",)))
    assert saved == TenantRules(keywords=(), contacts=frozenset({"a@b.example"}))
