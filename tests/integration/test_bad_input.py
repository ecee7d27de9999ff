"""Malformed real-world mail against the real sync: nothing crashes, nothing is lost, raws are exact.

The corpus is CPython's own email test messages (``test/test_email/data/msg_*.txt`` of the running
interpreter, where the installation ships them) plus generated horrors: no Message-ID, raw 8-bit
headers, unknown charsets, broken base64, a 10,000-line header block, 500 levels of multipart,
attachment names with path separators, binary garbage, an empty body, headers only and a 2 MB
single-line body. They all go into one Dovecot mailbox with MULTIAPPEND and are synced once.
"""

from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path

import pytest
import requests

from mailsync.mime import content_hash
from mailsync.sync.planner import jobs as policy
from tests.integration.sync_support import Account, connect_account, days_ago


def cpython_email_corpus() -> dict[str, bytes]:
    """CPython's malformed-mail test messages, when this Python installation ships its test suite."""
    data = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
    if not data.is_dir():
        return {}
    return {f"cpython/{path.name}": path.read_bytes() for path in sorted(data.glob("msg_*.txt"))}


def _headers(subject: bytes, extra: bytes = b"") -> bytes:
    return (
        b"From: Fuzz Sender <fuzz@example.com>\r\nTo: bob@example.com\r\n"
        b"Date: Mon, 2 Mar 2026 10:00:00 +0100\r\nSubject: " + subject + b"\r\n" + extra
    )


def _deep_multipart(levels: int) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="level%d"\r\n\r\n--level%d\r\n' % (i, i) for i in range(levels)
    )
    closing = b"".join(b"\r\n--level%d--\r\n" % i for i in reversed(range(levels)))
    return (
        _headers(b"deep nesting", b"Message-ID: <deep@fuzz.test>\r\nMIME-Version: 1.0\r\n")
        + opening
        + b"Content-Type: text/plain\r\n\r\ninnermost text\r\n"
        + closing
    )


def _attachment(subject: bytes, disposition: bytes, content_type: bytes = b"application/octet-stream") -> bytes:
    return _headers(
        subject,
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n",
    ) + (
        b"\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
        b"--XX\r\nContent-Type: " + content_type + b"\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: " + disposition + b"\r\n\r\naGVsbG8=\r\n--XX--\r\n"
    )


# Attachment parameters whose file name carries a directory part; the CRM must never get one.
PATH_ATTACHMENTS: dict[str, bytes] = {
    "gen/attachment-unix-traversal": _attachment(b"unix path", b'attachment; filename="../../etc/passwd"'),
    "gen/attachment-windows-path": _attachment(b"windows path", b'attachment; filename="C:\\\\evil.exe"'),
    "gen/attachment-windows-unquoted": _attachment(b"windows unquoted", b"attachment; filename=C:\\evil.exe"),
    "gen/attachment-rfc2231-traversal": _attachment(
        b"rfc2231 path", b"attachment; filename*=utf-8''..%2F..%2Fetc%2Fshadow"
    ),
    "gen/attachment-rfc2047-traversal": _attachment(
        b"rfc2047 path", b'attachment; filename="=?utf-8?q?=2E=2E=2F=2E=2E=2Froot=2F=2Essh=2Fid=5Frsa?="'
    ),
    "gen/attachment-ct-name-traversal": _attachment(
        b"content-type name path", b"attachment", b'application/pdf; name="..\\\\..\\\\Windows\\\\win.ini"'
    ),
    "gen/attachment-only-directory": _attachment(b"directory only", b'attachment; filename="../../"'),
}


def generated_corpus() -> dict[str, bytes]:
    # Deterministic garbage without NUL bytes: Dovecot rewrites NULs (the comparison is against
    # what the server serves anyway, but the point here is the parser, not Dovecot).
    rng = random.Random(20260302)
    garbage = bytes(rng.randrange(1, 256) for _ in range(64 * 1024))
    cases = {
        "gen/no-message-id": _headers(b"no message id") + b"\r\nNobody gave me an id.\r\n",
        "gen/8bit-headers": (
            b"From: J\xf6rg M\xfcller <joerg@example.com>\r\nTo: Ren\xc3\xa9e <renee@example.com>\r\n"
            b"Subject: Caf\xe9 cr\xe8me \xff\xfe \xc3\xa9t\xc3\xa9\r\nMessage-ID: <8bit@fuzz.test>\r\n"
            b"X-Raw: \x80\x81\x82\x1b[31m\r\n\r\nRaw 8-bit headers, no MIME at all.\r\n"
        ),
        "gen/unknown-charsets": _headers(
            b"=?x-klingon?Q?qapla=E2?= =?utf-8?B?!!notbase64?= =?unknown-8bit?q?=FF?=",
            b"Message-ID: <charset@fuzz.test>\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: text/plain; charset="x-klingon"\r\nContent-Transfer-Encoding: 8bit\r\n',
        )
        + b"\r\nnuqneH \xe2\x80\xfe\xff tlhIngan\r\n",
        "gen/bogus-charset-name": _headers(
            b"=?utf-8'en?Q?quote_in_charset?=",
            b'MIME-Version: 1.0\r\nContent-Type: text/html; charset="../../utf-8\x01"\r\n',
        )
        + b"\r\n<p>caf\xe9</p>\r\n",
        "gen/broken-base64": _headers(
            b"broken base64",
            b"Message-ID: <b64@fuzz.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n",
        )
        + (
            b"\r\n--BB\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"SGVsbG8gd29y!!bGQ*&^%\r\nQ===\r\n=\r\nA\r\n"
            b"--BB\r\nContent-Type: application/pdf; name=broken.pdf\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=broken.pdf\r\n\r\nJVBERi0xLjQK\xff\xfe====abc\r\n--BB"
        ),
        "gen/10000-header-lines": _headers(
            b"ten thousand header lines",
            b"".join(b"X-Filler-%05d: value %d\r\n" % (i, i) for i in range(10_000)),
        )
        + b"\r\nafter the header block\r\n",
        "gen/deep-multipart-500": _deep_multipart(500),
        "gen/binary-garbage": garbage,
        "gen/binary-garbage-body": _headers(b"binary body", b"Content-Type: application/octet-stream\r\n")
        + b"\r\n"
        + garbage[:8192],
        "gen/empty-body": _headers(b"empty body", b"Message-ID: <empty@fuzz.test>\r\n") + b"\r\n",
        "gen/headers-only": _headers(b"headers only, no separator", b"Message-ID: <hdronly@fuzz.test>\r\n"),
        "gen/2mb-single-line": _headers(b"two megabytes on one line") + b"\r\n" + b"A" * (2 * 1024 * 1024) + b"\r\n",
        "gen/lf-only-line-endings": b"Subject: bare LF\nFrom: lf@example.com\n\nunix line endings\n",
        "gen/duplicate-message-id-a": _headers(b"duplicate id A", b"Message-ID: <same@fuzz.test>\r\n") + b"\r\nA\r\n",
        "gen/duplicate-message-id-b": _headers(b"duplicate id B", b"Message-ID: <same@fuzz.test>\r\n") + b"\r\nB\r\n",
        "gen/garbage-date-and-addresses": (
            b'From: <<<@@@>>>, "unterminated <x@\r\nTo: ;;;,,,:::\r\nCc: (((((\r\n'
            b"Date: Feb 30 99999 25:61:61 +9999\r\n"
            b"Message-ID: <<<>>>\r\nReferences: <a> <b <c>>\r\nSubject: \r\n\r\nbody\r\n"
        ),
        "gen/multipart-without-boundary": _headers(
            b"no boundary", b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative\r\n"
        )
        + b"\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n",
    }
    return cases | PATH_ATTACHMENTS


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(policy, "RETRY_BASE_DELAY_SECONDS", 0)


def _fill(account: Account, corpus: dict[str, bytes]) -> dict[int, bytes]:
    """MULTIAPPEND the corpus to INBOX (inside the sync window); UID -> the server's bytes."""
    when = days_ago(1)
    with account.user.client() as imap:
        imap.imap.multiappend("INBOX", [{"msg": raw, "date": when} for raw in corpus.values()])
        uids = imap.uids("INBOX")
        fetched = imap.imap.fetch(uids, [b"BODY.PEEK[]"])
    return {uid: fetched[uid][b"BODY[]"] for uid in uids}


def _download(account: Account, message_id: str) -> bytes:
    link = account.api("GET", f"/v1/messages/{message_id}/raw", caller=account.caller)
    assert link.status == 200, link.body
    response = requests.get(link.body["url"], timeout=30)
    assert response.status_code == 200
    return response.content


def test_malformed_corpus_syncs_completely_and_exactly(api, local_mail_env, mail_user) -> None:
    corpus = cpython_email_corpus() | generated_corpus()
    account = connect_account(api, mail_user)
    on_server = _fill(account, corpus)
    assert len(on_server) == len(corpus), "Dovecot accepted every message"

    result = account.sync()
    assert result.status == "synced", result
    assert result.outcome.complete and not result.outcome.folder_errors, result.outcome
    assert result.outcome.created == len(on_server)

    # Not stuck: idle, and a second sync is a no-op that succeeds.
    again = account.sync()
    assert again.status == "synced" and again.outcome.created == 0, again
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert status["state"] == "idle" and not status["last_error"], status
    inbox = next(f for f in status["folders"] if f["crm_folder"] == "inbox")
    assert inbox["messages"] == len(on_server), inbox

    # Every message stored, once, as synced; its raw is byte for byte what the server serves.
    listed = account.messages()
    assert len(listed) == len(on_server)
    assert {m["state"] for m in listed} == {"synced"}
    assert sorted(m["uid"] for m in listed) == sorted(on_server)
    for listed_message in listed:
        uid = listed_message["uid"]
        raw = _download(account, listed_message["id"])
        assert content_hash(raw) == content_hash(on_server[uid]), f"raw of UID {uid} differs from the server's"
        assert listed_message["size"] == len(on_server[uid])

        # Metadata is best effort, but always readable and clean JSON (no lone surrogates).
        one = account.api("GET", f"/v1/messages/{listed_message['id']}", caller=account.caller)
        assert one.status == 200, one.body
        json.dumps(one.body, ensure_ascii=False).encode("utf-8")
        for attachment in one.body["attachments"]:
            assert attachment["size"] >= 0

    by_subject = {m["subject"]: m for m in listed}
    assert by_subject["no message id"]["internet_message_id"] is None
    assert by_subject["deep nesting"]["snippet"] == "innermost text"
    assert by_subject["ten thousand header lines"]["snippet"] == "after the header block"
    assert by_subject["two megabytes on one line"]["size"] > 2 * 1024 * 1024
    assert by_subject["duplicate id A"]["id"] != by_subject["duplicate id B"]["id"]
    assert "Caf" in by_subject_prefix(by_subject, "Caf")


def by_subject_prefix(by_subject: dict[str | None, dict], prefix: str) -> str:
    """The one subject starting with ``prefix`` (raw 8-bit subjects are decoded best effort)."""
    [subject] = [s for s in by_subject if s and s.startswith(prefix)]
    return subject


def test_attachment_names_lose_their_directory_part(api, local_mail_env, mail_user) -> None:
    account = connect_account(api, mail_user)
    _fill(account, PATH_ATTACHMENTS)
    assert account.sync().status == "synced"
    names = {m["subject"]: [a["filename"] for a in m["attachments"]] for m in account.messages()}
    assert len(names) == len(PATH_ATTACHMENTS)
    for subject, filenames in names.items():
        for name in filenames:
            assert name is None or not ({"/", "\\"} & set(name) or name in {".", ".."}), (subject, name)
    assert names["unix path"] == ["passwd"]
    assert names["windows path"] == ["evil.exe"]
    assert names["rfc2231 path"] == ["shadow"]
    assert names["rfc2047 path"] == ["id_rsa"]
