"""Confidential mail and dossiers: the rules, thread propagation, the visibility matrix, tenants."""

from __future__ import annotations

import base64

import pytest

from devstack.dovecot import make_message
from tests.conftest import Caller
from tests.integration.sync_support import Account, capture_events, connect_account, days_ago

MAP = {"inbox": "INBOX", "sent": "Sent", "archive": "Archive"}
CANDIDATE = "Candidate.Jansen@Example.com"
ALICE, BOB = Caller("alice", "acme"), Caller("bob", "acme")
ADMIN, OUTSIDER = Caller("root", "acme", "admin"), Caller("eve", "globex", "admin")


def mail(
    subject: str,
    *,
    mid: str,
    reply_to: str | None = None,
    sender: str = f"Candidate <{CANDIDATE}>",
    to: str = "Alice <alice@office.example>",
    days: float = 1,
) -> bytes:
    extra = {"In-Reply-To": f"<{reply_to}>", "References": f"<{reply_to}>"} if reply_to else None
    return make_message(subject=subject, sender=sender, to=to, date=days_ago(days), message_id=mid, extra_headers=extra)


def deliver(account: Account, *raws: bytes, folder: str = "INBOX") -> None:
    """Append with INTERNALDATE = the message's Date, as a delivering server would."""
    from email.utils import parsedate_to_datetime

    with account.user.client() as imap:
        for raw in raws:
            date = raw.split(b"\r\nDate: ", 1)[1].split(b"\r\n", 1)[0].decode()
            imap.append(folder, raw, internal_date=parsedate_to_datetime(date))
    assert account.sync(reason="user").status == "synced"


@pytest.fixture
def alice(api, local_mail_env, mail_user) -> Account:
    return connect_account(api, mail_user, MAP, who="alice")


@pytest.fixture
def bob(api, local_mail_env, dovecot) -> Account:
    return connect_account(api, dovecot.add_user(), MAP, who="bob")


def by_subject(account: Account) -> dict[str, dict]:
    return account.by_subject()


def test_keyword_rule_whole_words_after_prefixes(alice: Account) -> None:
    deliver(
        alice,
        mail("Vertrouwelijk: salarisvoorstel", mid="k1@x"),
        mail("Re: AW: Confidential offer", mid="k2@x"),
        mail("Our confidentiality policy", mid="k3@x"),
    )
    got = by_subject(alice)
    assert got["Vertrouwelijk: salarisvoorstel"]["confidential"] is True
    assert got["Re: AW: Confidential offer"]["confidential"] is True
    assert got["Our confidentiality policy"]["confidential"] is False


def test_tenant_keywords_and_contacts(alice: Account, api) -> None:
    settings = {"confidential_keywords": ["geheim"], "confidential_contacts": ["CEO@Board.example"]}
    assert api("PUT", "/v1/tenant/settings", settings, caller=ADMIN).status == 200
    deliver(
        alice,
        mail("Geheim plan", mid="t1@x"),
        mail("Confidential, but not a keyword here", mid="t2@x"),
        mail("Board matters", mid="t3@x", sender="The CEO <ceo@board.example>"),
        mail("To the board", mid="t4@x", to="ceo@board.example"),  # incoming: recipients don't count
    )
    got = by_subject(alice)
    assert got["Geheim plan"]["confidential"] is True
    assert got["Confidential, but not a keyword here"]["confidential"] is False
    assert got["Board matters"]["confidential"] is True
    assert got["To the board"]["confidential"] is False
    outgoing = make_message(subject="Proposal", sender="alice@office.example", to="ceo@board.example", message_id=None)
    sent = api("POST", "/v1/users/me/messages", {"raw": base64.b64encode(outgoing).decode()}, caller=ALICE)
    assert sent.body["confidential"] is True, "outgoing: a confidential recipient"


def test_owner_defaults(alice: Account, api) -> None:
    body = alice.settings_body() | {"incoming_confidential": True}
    api("PUT", "/v1/users/me/mail-settings", body, caller=ALICE)
    deliver(alice, mail("Plain hello", mid="d1@x"))
    assert by_subject(alice)["Plain hello"]["confidential"] is True
    api("PUT", "/v1/users/me/mail-settings", alice.settings_body() | {"outgoing_confidential": True}, caller=ALICE)
    raw = make_message(subject="Outgoing default", message_id=None)
    sent = api("POST", "/v1/users/me/messages", {"raw": base64.b64encode(raw).decode()}, caller=ALICE)
    assert sent.body["confidential"] is True


def test_reply_to_a_confidential_message_is_confidential(alice: Account) -> None:
    deliver(alice, mail("Confidential: offer", mid="root1@x", days=2))
    deliver(alice, mail("Re: your question", mid="reply1@x", reply_to="root1@x"))
    assert by_subject(alice)["Re: your question"]["confidential"] is True


def test_owner_sets_then_clears_a_thread(alice: Account, api) -> None:
    deliver(alice, mail("Interview", mid="th1@x", days=3), mail("Re: Interview", mid="th2@x", reply_to="th1@x", days=2))
    first = by_subject(alice)["Interview"]
    marked = api("PATCH", f"/v1/messages/{first['id']}", {"confidential": True}, caller=ALICE)
    assert marked.status == 200 and marked.body["confidential"] is True
    assert by_subject(alice)["Re: Interview"]["confidential"] is True, "the whole thread"
    deliver(alice, mail("Re: Re: Interview", mid="th3@x", reply_to="th1@x"))
    assert by_subject(alice)["Re: Re: Interview"]["confidential"] is True, "replies arriving later follow"

    cleared = api("PATCH", f"/v1/messages/{first['id']}", {"confidential": False}, caller=ALICE)
    assert cleared.body["confidential"] is False
    assert not any(m["confidential"] for m in by_subject(alice).values())
    deliver(alice, mail("Re: Interview (confidential details)", mid="th4@x", reply_to="th1@x"))
    assert by_subject(alice)["Re: Interview (confidential details)"]["confidential"] is False, "the owner decided"

    # Only the owner decides.
    assert api("PATCH", f"/v1/messages/{first['id']}", {"confidential": True}, caller=ADMIN).status == 403


def test_visibility_matrix(alice: Account, bob: Account, api, aws) -> None:
    events = capture_events(aws["EVENT_BUS_NAME"])
    deliver(alice, mail("Confidential: salary", mid="v1@x"), mail("Public hello", mid="v2@x"))
    secret, public = by_subject(alice)["Confidential: salary"], by_subject(alice)["Public hello"]

    expected = {
        # caller: (GET confidential, GET public)
        ALICE: (200, 200),
        BOB: (404, 200),
        ADMIN: (404, 200),
        OUTSIDER: (404, 404),
    }
    for caller, (secret_status, public_status) in expected.items():
        assert api("GET", f"/v1/messages/{secret['id']}", caller=caller).status == secret_status, caller
        assert api("GET", f"/v1/messages/{secret['id']}/raw", caller=caller).status == secret_status, caller
        assert api("GET", f"/v1/messages/{public['id']}", caller=caller).status == public_status, caller
        dossier = api("GET", f"/v1/contacts/{CANDIDATE}/messages", caller=caller).body["messages"]
        subjects = {m["subject"] for m in dossier}
        assert ("Confidential: salary" in subjects) is (caller is ALICE), caller
        assert ("Public hello" in subjects) is (caller is not OUTSIDER), caller
        assert api("PATCH", f"/v1/messages/{public['id']}", {"seen": True}, caller=caller).status in (
            (200,) if caller is ALICE else (403, 404)
        )

    # Listing a mailbox: the owner sees all; an admin sees the non-confidential part; a colleague nothing.
    assert {m["subject"] for m in alice.messages()} == {"Confidential: salary", "Public hello"}
    admin_view = api("GET", "/v1/users/alice/messages", caller=ADMIN).body["messages"]
    assert [m["subject"] for m in admin_view] == ["Public hello"]
    assert api("GET", "/v1/users/alice/messages", caller=BOB).status == 403
    # Counts include confidential mail: only the owner gets them.
    assert api("GET", "/v1/users/alice/sync-status", caller=ADMIN).body["folders"][0]["messages"] is None
    assert api("GET", "/v1/users/me/sync-status", caller=ALICE).body["folders"][0]["messages"] == 2

    received = {e["id"]: e for e in events.of_type("message.received")}
    assert received[secret["id"]]["confidential"] is True
    assert received[public["id"]]["confidential"] is False
    assert "candidate.jansen@example.com" in received[secret["id"]]["participants"]
    assert "subject" not in received[secret["id"]] and "snippet" not in received[secret["id"]]


def test_dossier_spans_users_newest_first_with_pagination(alice: Account, bob: Account, api) -> None:
    deliver(alice, *[mail(f"alice {i}", mid=f"a{i}@x", days=1 + i) for i in range(3)])
    deliver(bob, *[mail(f"bob {i}", mid=f"b{i}@x", days=1.5 + i, to="Bob <bob@office.example>") for i in range(3)])
    deliver(bob, mail("Confidential bob", mid="bc@x", days=0.5))
    deliver(alice, mail("unrelated", mid="u@x", sender="someone@else.example"))

    pages, cursor = [], None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api("GET", f"/v1/contacts/{CANDIDATE.upper()}/messages", query=query, caller=ALICE).body
        pages.append(page["messages"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    seen = [m for page in pages for m in page]
    assert all(len(page) <= 2 for page in pages) and len(pages) >= 3
    assert [m["subject"] for m in seen] == ["alice 0", "bob 0", "alice 1", "bob 1", "alice 2", "bob 2"]
    assert {m["subject"]: m["owner"] for m in seen}["bob 1"] == "bob"
    bob_view = api("GET", f"/v1/contacts/{CANDIDATE}/messages", query="limit=100", caller=BOB).body["messages"]
    assert bob_view[0]["subject"] == "Confidential bob", "the owner sees their own confidential mail"


def test_tenant_isolation(alice: Account, api, dovecot) -> None:
    deliver(alice, mail("acme only", mid="iso@x"))
    outsider = Account(api, dovecot.add_user(), Caller("eve", "globex", "user"))
    saved = api("PUT", "/v1/users/me/mail-settings", outsider.settings_body(), caller=outsider.caller)
    assert saved.status == 201
    api("PUT", "/v1/users/me/folder-map", MAP, caller=outsider.caller)
    outsider.tenant = "globex"
    deliver(outsider, mail("globex only", mid="iso2@x"))
    acme = api("GET", f"/v1/contacts/{CANDIDATE}/messages", caller=ALICE).body["messages"]
    globex = api("GET", f"/v1/contacts/{CANDIDATE}/messages", caller=outsider.caller).body["messages"]
    assert [m["subject"] for m in acme] == ["acme only"]
    assert [m["subject"] for m in globex] == ["globex only"]
    acme_id = acme[0]["id"]
    assert api("GET", f"/v1/messages/{acme_id}", caller=OUTSIDER).status == 404


def test_tenant_settings_for_admins_only(api, aws) -> None:
    assert api("GET", "/v1/tenant/settings", caller=ALICE).status == 403
    defaults = api("GET", "/v1/tenant/settings", caller=ADMIN).body
    assert defaults == {
        "confidential_keywords": ["confidential", "vertrouwelijk"],
        "confidential_contacts": [],
        "office_hours": {
            "time_zone": "Europe/Amsterdam",
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "start": "07:00",
            "end": "19:00",
        },
    }
    bad = api(
        "PUT", "/v1/tenant/settings", {"confidential_keywords": [], "confidential_contacts": ["nope"]}, caller=ADMIN
    )
    assert (bad.status, bad.body["error"]["field"]) == (422, "confidential_contacts.0")
    assert api("PUT", "/v1/tenant/settings", {"confidential_keywords": ["x"]}, caller=ADMIN).status == 422
    ok = api(
        "PUT", "/v1/tenant/settings", {"confidential_keywords": ["Geheim"], "confidential_contacts": []}, caller=ADMIN
    )
    assert ok.body["confidential_keywords"] == ["Geheim"]
    assert api("GET", "/v1/tenant/settings", caller=Caller("x", "globex", "admin")).body["confidential_keywords"] == [
        "confidential",
        "vertrouwelijk",
    ]
