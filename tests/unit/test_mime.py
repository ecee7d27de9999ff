"""MIME parsing: plain data in, ParsedMessage out; hostile input must never raise."""

from __future__ import annotations

import base64
import email.message
import json
import random
import re
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mailsync.mime import (
    SNIPPET_LENGTH,
    Address,
    Attachment,
    ParsedMessage,
    content_hash,
    normalise_msg_id,
    parse_message,
    participants,
    thread_key,
)

CRLF = b"\r\n"


def message(*headers: str | bytes, body: bytes = b"Body text.") -> bytes:
    lines = [h.encode() if isinstance(h, str) else h for h in headers]
    return CRLF.join(lines) + CRLF + CRLF + body


def multipart(parts: list[bytes], subtype: str = "mixed", boundary: str = "BOUNDARY", headers: tuple = ()) -> bytes:
    body = b"".join(b"--" + boundary.encode() + CRLF + part + CRLF for part in parts)
    body += b"--" + boundary.encode() + b"--" + CRLF
    return message(
        "From: a@example.com", *headers, "MIME-Version: 1.0",
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"', body=body,
    )  # fmt: skip


def part(*headers: str | bytes, body: bytes) -> bytes:
    lines = [h.encode() if isinstance(h, str) else h for h in headers]
    return CRLF.join(lines) + CRLF + CRLF + body


def assert_storable(parsed: ParsedMessage) -> None:
    """Everything must survive JSON + UTF-8 (lone surrogates from undecodable bytes would not)."""
    json.dumps(asdict(parsed), default=str, ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (b"=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=", "Grüße aus Köln"),
        (b"=?ISO-8859-1?Q?Bewerbung_f=FCr_die_Stelle?=", "Bewerbung für die Stelle"),
        (b"=?iso-8859-1?q?Caf=E9?= =?iso-8859-1?q?_au_lait?=", "Café au lait"),
        (b"Re: =?utf-8?q?Caf=C3=A9?= meeting", "Re: Café meeting"),
        (b"=?windows-1252?Q?=80_100?=", "€ 100"),
        (b"=?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=", "日本語"),
        # A multi-byte character split across two encoded words.
        (b"=?utf-8?B?4oI=?= =?utf-8?B?rA==?=", "€"),
        (b"=?utf-8*de?Q?T=C3=BCr?=", "Tür"),
        (b"Plain subject", "Plain subject"),
        (b"Folded\r\n subject\r\n\tline", "Folded subject line"),
        (b"", ""),
    ],
)
def test_subject_is_decoded(subject: bytes, expected: str) -> None:
    parsed = parse_message(message(b"Subject: " + subject, "From: a@example.com"))
    assert parsed.subject == expected


def test_missing_subject_is_none() -> None:
    assert parse_message(message("From: a@example.com")).subject is None


def test_unknown_8bit_charset_is_guessed_without_an_error() -> None:
    utf8 = parse_message(message("Subject: =?unknown-8bit?Q?Gr=C3=BC=C3=9Fe?="))
    latin = parse_message(message("Subject: =?unknown-8bit?Q?caf=E9?="))
    assert utf8.subject == "Grüße"
    assert latin.subject == "café"
    assert not [e for e in utf8.parse_errors + latin.parse_errors if "charset" in e]


def test_bogus_charset_falls_back_and_is_reported() -> None:
    parsed = parse_message(message("Subject: =?x-no-such-charset?Q?caf=E9?= ok"))
    assert parsed.subject == "café ok"
    assert any("x-no-such-charset" in e for e in parsed.parse_errors)


@pytest.mark.parametrize("charset", ["idna", "base64", "rot13", "unicode-escape", "utf-8\x00"])
def test_python_codecs_that_are_not_charsets_are_refused(charset: str) -> None:
    parsed = parse_message(message(f"Subject: =?{charset}?Q?caf=E9?="))
    assert parsed.subject == "café"
    assert any("charset" in e for e in parsed.parse_errors)


def test_malformed_encoded_word_is_kept_literally() -> None:
    parsed = parse_message(message("Subject: =?utf-8?B?A?= rest"))
    assert parsed.subject == "=?utf-8?B?A?= rest"
    assert any("encoded word" in e for e in parsed.parse_errors)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Subject: Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln", "Grüße aus Köln"),
        (b"Subject: caf\xe9 \x80 5", "café € 5"),  # not UTF-8: windows-1252
        (b"Subject: \x81\x8d", "\x81\x8d"),  # bytes windows-1252 leaves undefined
    ],
)
def test_raw_8bit_header_bytes(raw: bytes, expected: str) -> None:
    parsed = parse_message(message(raw))
    assert parsed.subject == expected
    assert_storable(parsed)


def test_from_with_encoded_display_name() -> None:
    parsed = parse_message(message("From: =?utf-8?B?SsO2cmcgTcO8bGxlcg==?= <Joerg.Mueller@Example.COM>"))
    assert parsed.from_ == [Address(name="Jörg Müller", email="joerg.mueller@example.com")]


def test_from_with_raw_utf8_and_quoted_encoded_display_names() -> None:
    parsed = parse_message(
        message(b"From: J\xc3\xb6rg <j@example.de>", b'To: "=?utf-8?Q?M=C3=BCller_(HR)?=" <hr@example.de>')
    )
    assert parsed.from_ == [Address(name="Jörg", email="j@example.de")]
    assert parsed.to == [Address(name="Müller (HR)", email="hr@example.de")]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a@example.com", [Address(None, "a@example.com")]),
        ("<a@example.com>", [Address(None, "a@example.com")]),
        ('"Last, First" <LF@Example.com>', [Address("Last, First", "lf@example.com")]),
        ("a@example.com (Anna Alt)", [Address("Anna Alt", "a@example.com")]),
        ("Anna (HR) <a@example.com> (work)", [Address("Anna", "a@example.com")]),
        ('"A \\"Q\\" B" <a@example.com>', [Address('A "Q" B', "a@example.com")]),
        (
            'Team: a@example.com, "Bob" <b@example.com>;, c@example.com',
            [Address(None, "a@example.com"), Address("Bob", "b@example.com"), Address(None, "c@example.com")],
        ),
        ("undisclosed-recipients:;", []),
        ("a@example.com, , b@example.com", [Address(None, "a@example.com"), Address(None, "b@example.com")]),
        ("a@example.com; b@example.com", [Address(None, "a@example.com"), Address(None, "b@example.com")]),
        ("<@relay.example:a@example.com>", [Address(None, "a@example.com")]),
        ("jörg@müller.example", [Address(None, "jörg@müller.example")]),
        ('"john doe"@example.com', [Address(None, '"john doe"@example.com')]),
    ],
)
def test_address_lists(header: str, expected: list[Address]) -> None:
    parsed = parse_message(message(f"To: {header}"))
    assert parsed.to == expected
    assert not [e for e in parsed.parse_errors if "address" in e]


@pytest.mark.parametrize(
    "broken",
    ["no address here", "Name <no-at-sign>", "<>", "a@", "@example.com", '"unterminated <x@example.com>',
     "alice@example.org)<bob@example.org>", "<a@example.com> <b@example.com>", "x@a@b"],
)  # fmt: skip
def test_broken_addresses_are_skipped_and_reported(broken: str) -> None:
    parsed = parse_message(message(f"To: ok@example.com, {broken}"))
    assert [a.email for a in parsed.to] == ["ok@example.com"]
    assert any("unparseable address in To" in e for e in parsed.parse_errors)


def test_all_address_headers_are_read() -> None:
    parsed = parse_message(
        message(
            "From: f@example.com", "Sender: s@example.com", "Reply-To: r@example.com",
            "To: t@example.com", "Cc: c@example.com", "Bcc: b@example.com",
        )
    )  # fmt: skip
    assert [[a.email for a in group] for group in (
        parsed.from_, parsed.sender, parsed.reply_to, parsed.to, parsed.cc, parsed.bcc
    )] == [["f@example.com"], ["s@example.com"], ["r@example.com"], ["t@example.com"], ["c@example.com"],
           ["b@example.com"]]  # fmt: skip


def test_duplicate_headers_take_the_first() -> None:
    parsed = parse_message(
        message("Subject: first", "From: one@example.com", "Subject: second", "From: two@example.com",
                "Message-ID: <1@x>", "Message-ID: <2@x>")
    )  # fmt: skip
    assert parsed.subject == "first"
    assert [a.email for a in parsed.from_] == ["one@example.com"]
    assert parsed.internet_message_id == "1@x"


def test_very_long_headers_are_parsed_in_linear_time() -> None:
    recipients = ", ".join(f'"User {i}" <user{i}@example.com>' for i in range(20_000))
    subject = "word " * 20_000
    raw = message(f"To: {recipients}", f"Subject: {subject}")
    started = time.thread_time()  # CPU time of this thread: what a loaded machine does not stretch
    parsed = parse_message(raw)
    elapsed = time.thread_time() - started
    assert len(parsed.to) == 20_000
    assert parsed.to[-1] == Address("User 19999", "user19999@example.com")
    assert parsed.subject == subject.strip()
    # The stdlib's header registry needs ~40 s for this list; a linear parser well under a second.
    assert elapsed < 5


def test_parse_errors_are_capped() -> None:
    parsed = parse_message(message("To: " + ", ".join(f"broken{i}" for i in range(500))))
    assert parsed.to == []
    assert len(parsed.parse_errors) <= 51
    assert parsed.parse_errors[-1] == "further problems omitted"


# --------------------------------------------------------------------------- date and ids


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Tue, 5 Mar 2024 10:15:00 +0100", datetime(2024, 3, 5, 10, 15, tzinfo=timezone(timedelta(hours=1)))),
        ("5 Mar 2024 10:15:00 -0000", datetime(2024, 3, 5, 10, 15, tzinfo=UTC)),
        ("Tue, 5 Mar 2024 10:15:00", datetime(2024, 3, 5, 10, 15, tzinfo=UTC)),
        ("Tue, 5 Mar 24 10:15 EST", datetime(2024, 3, 5, 10, 15, tzinfo=timezone(timedelta(hours=-5)))),
        ("Tue,\r\n 5 Mar 2024 10:15:00 GMT", datetime(2024, 3, 5, 10, 15, tzinfo=UTC)),
    ],
)
def test_date_is_timezone_aware(value: str, expected: datetime) -> None:
    parsed = parse_message(message(f"Date: {value}"))
    assert parsed.date == expected
    assert parsed.date is not None and parsed.date.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(
    "value", ["yesterday", "", "Fri, 29 Feb 2023 10:00:00 +0000", "1 Jan 99999 00:00 +0000", "2024-03-05T10:15:00Z"]
)
def test_invalid_date_is_none_and_reported(value: str) -> None:
    parsed = parse_message(message(f"Date: {value}"))
    assert parsed.date is None
    assert any("Date" in e for e in parsed.parse_errors)


def test_missing_date_is_none() -> None:
    assert parse_message(message("From: a@example.com")).date is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<abc@x>", "abc@x"),
        ("  <abc@x>  ", "abc@x"),
        ("abc@x", "abc@x"),
        ("<abc@x> (added by relay)", "abc@x"),
        ("<abc\r\n @x>", "abc@x"),
        ("<>", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_normalise_message_id(value: str | None, expected: str | None) -> None:
    assert normalise_msg_id(value) == expected


def test_message_ids_in_a_message() -> None:
    parsed = parse_message(
        message(
            "Message-ID: <Own.ID@Example.com>",
            'In-Reply-To: Your message of "Mon" <parent@x> <other@x>',
            "References: <root@x>\r\n <mid@x> <root@x>\r\n\t<parent@x>",
        )
    )
    assert parsed.internet_message_id == "Own.ID@Example.com"  # ids are case-sensitive: kept as sent
    assert parsed.in_reply_to == "parent@x"
    assert parsed.references == ["root@x", "mid@x", "parent@x"]


def test_missing_ids() -> None:
    parsed = parse_message(message("From: a@example.com", "Message-ID:"))
    assert (parsed.internet_message_id, parsed.in_reply_to, parsed.references) == (None, None, [])


def test_thread_key_of_a_thread_is_the_key_of_its_root() -> None:
    root = parse_message(message("Message-ID: <root@example.com>"))
    reply = parse_message(message("Message-ID: <r1@example.com>", "In-Reply-To: <root@example.com>"))
    deep = parse_message(
        message(
            "Message-ID: <r3@example.com>",
            "In-Reply-To: <r2@example.com>",
            "References: <root@example.com> <r1@example.com> <r2@example.com>",
        )
    )
    unrelated = parse_message(message("Message-ID: <other@example.com>"))
    key = thread_key(root, "fallback")
    assert thread_key(reply, "x") == key
    assert thread_key(deep, "y") == key
    assert thread_key(unrelated, "fallback") != key
    assert len(key) == 32 and int(key, 16) >= 0


def test_thread_key_falls_back_to_the_callers_hash() -> None:
    raw = message("Subject: no ids")
    parsed = parse_message(raw)
    assert thread_key(parsed, content_hash(raw)) == thread_key(parsed, content_hash(raw))
    assert thread_key(parsed, content_hash(raw)) != thread_key(parsed, content_hash(raw + b"x"))


def test_content_hash_is_sha256_hex() -> None:
    assert content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_participants_are_unique_lower_cased_in_header_order() -> None:
    parsed = parse_message(
        message(
            # Header order in the message does not matter; from/sender/reply_to/to/cc/bcc does.
            "Cc: bob@X.org, Carol <CAROL@y.org>",
            "To: anna@example.com, Bob <BOB@x.org>",
            "From: Anna <Anna@Example.com>",
            "Reply-To: anna@example.COM",
            "Bcc: dave@z.org, carol@y.org",
        )
    )
    assert participants(parsed) == ["anna@example.com", "bob@x.org", "carol@y.org", "dave@z.org"]


# --------------------------------------------------------------------------- bodies and snippets


def test_plain_body_quoted_printable_latin1() -> None:
    raw = message(
        "Content-Type: text/plain; charset=iso-8859-1",
        "Content-Transfer-Encoding: quoted-printable",
        body=b"Gr=FC=DFe aus K=F6ln,=\r\n und =80 gespart.\r\n",
    )
    assert parse_message(raw).snippet == "Grüße aus Köln, und € gespart."


def test_plain_body_base64_utf8() -> None:
    text = "Hallo Jörg,\n\n  wie   geht's?\n"
    raw = message(
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: base64",
        body=base64.encodebytes(text.encode()),
    )
    parsed = parse_message(raw)
    assert parsed.snippet == "Hallo Jörg, wie geht's?"
    assert parsed.has_html is False
    assert parsed.attachments == []


@pytest.mark.parametrize(
    ("charset", "body", "expected", "reported"),
    [
        ("koi8-r", "Привет".encode("koi8-r"), "Привет", False),
        ("iso-2022-jp", "日本語です".encode("iso2022_jp"), "日本語です", False),
        ("gb2312", "你好".encode("gb18030"), "你好", False),
        ("x-totally-unknown", "Grüße".encode(), "Grüße", True),
        ("x-totally-unknown", "Grüße".encode("cp1252"), "Grüße", True),
        ("utf-8", "Grüße".encode("cp1252"), "Grüße", True),  # mislabelled Latin-1
        ("us-ascii", "Grüße".encode(), "Grüße", False),  # mislabelled UTF-8
        ("unknown-8bit", "Grüße".encode(), "Grüße", False),
    ],
)
def test_body_charsets(charset: str, body: bytes, expected: str, reported: bool) -> None:
    parsed = parse_message(message(f"Content-Type: text/plain; charset={charset}", body=body))
    assert parsed.snippet == expected
    assert any("charset" in e or "UTF-8" in e for e in parsed.parse_errors) is reported


def test_snippet_is_capped_and_whitespace_collapsed() -> None:
    text = "\n\n".join(f"Line {i}\twith   spaces" for i in range(5000))
    parsed = parse_message(message("Content-Type: text/plain", body=text.encode()))
    assert len(parsed.snippet) <= SNIPPET_LENGTH
    assert len(parsed.snippet) >= SNIPPET_LENGTH - 10
    assert parsed.snippet.startswith("Line 0 with spaces Line 1 with spaces")
    assert "  " not in parsed.snippet and "\n" not in parsed.snippet and "\t" not in parsed.snippet


def test_snippet_continues_over_several_text_parts() -> None:
    raw = multipart(
        [
            part("Content-Type: text/plain", body=b"First part."),
            part("Content-Type: image/png", "Content-Transfer-Encoding: base64", body=b"iVBORw0KGgo="),
            part("Content-Type: text/plain", body=b"Second part."),
        ]
    )
    assert parse_message(raw).snippet == "First part. Second part."


HTML_BODY = (
    b"<!DOCTYPE html><html><head><title>Hidden title</title>"
    b"<style>.x { color: red; }</style><!-- a comment --></head>"
    b"<body><p>Hallo&nbsp;Anna &amp; Bob &lt;3</p><script>alert('x')</script>"
    b"<div>Caf&eacute; &#8364;5 <b>fett</b>ig &#x263A;</div><SCRIPT type=x>var y = 1;</Script>"
    b"<p>Ende</p></body></html>"
)


def test_html_only_message() -> None:
    parsed = parse_message(message("Content-Type: text/html; charset=utf-8", body=HTML_BODY))
    assert parsed.has_html is True
    assert parsed.snippet == "Hallo Anna & Bob <3 Café €5 fettig ☺ Ende"
    for leaked in ("<", "color", "alert", "Hidden", "comment", "var y"):
        assert leaked not in parsed.snippet.replace("<3", "")


def test_alternative_prefers_plain_text() -> None:
    raw = multipart(
        [
            part("Content-Type: text/plain; charset=utf-8", body=b"Plain version"),
            part("Content-Type: text/html; charset=utf-8", body=b"<p>HTML version</p>"),
        ],
        subtype="alternative",
    )
    parsed = parse_message(raw)
    assert parsed.snippet == "Plain version"
    assert parsed.has_html is True


def test_nested_multipart_with_empty_plain_falls_back_to_html() -> None:
    alternative = multipart(
        [
            part("Content-Type: text/plain", body=b"  \r\n "),
            part("Content-Type: text/html", "Content-Transfer-Encoding: quoted-printable",
                 body=b"<p>Nur =3D HTML</p>"),
        ],
        subtype="alternative", boundary="INNER",
    )  # fmt: skip
    inner = alternative.split(b"\r\n\r\n", 1)
    raw = multipart(
        [
            part("MIME-Version: 1.0", 'Content-Type: multipart/alternative; boundary="INNER"',
                 body=inner[1]),
            part("Content-Type: application/pdf", 'Content-Disposition: attachment; filename="a.pdf"', body=b"%PDF"),
        ]
    )  # fmt: skip
    parsed = parse_message(raw)
    assert parsed.snippet == "Nur = HTML"
    assert parsed.attachments == [Attachment("a.pdf", "application/pdf", 4)]


def test_hostile_html_is_linear() -> None:
    bodies = [b"<a" * 100_000, b"</" * 100_000, b"<?" * 100_000, b"<script>" + b"</scrip" * 30_000]
    for body in bodies:
        started = time.thread_time()  # CPU time of this thread: what a loaded machine does not stretch
        parsed = parse_message(message("Content-Type: text/html", body=body))
        assert time.thread_time() - started < 2
        assert "<a" not in parsed.snippet


def test_huge_html_is_capped() -> None:
    body = b"<p>" + b"x" * (5 * 1024 * 1024) + b"</p><p>after the cap</p>"
    parsed = parse_message(message("Content-Type: text/html", body=body))
    assert parsed.snippet == "x" * SNIPPET_LENGTH


# --------------------------------------------------------------------------- attachments

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 7 + b"\n%%EOF\n"


def pdf_part(disposition: bytes) -> bytes:
    return part(
        "Content-Type: application/pdf",
        "Content-Transfer-Encoding: base64",
        disposition,
        body=base64.encodebytes(PDF),
    )


@pytest.mark.parametrize(
    "disposition",
    [
        b"Content-Disposition: attachment; filename*=utf-8''Lebenslauf%20M%C3%BCller.pdf",
        b"Content-Disposition: attachment;\r\n filename*0*=utf-8''Lebenslauf%20M%C3%BC;\r\n filename*1=ller.pdf",
        b"Content-Disposition: attachment; filename*=iso-8859-1'de'Lebenslauf%20M%FCller.pdf",
        b'Content-Disposition: attachment; filename="=?utf-8?B?TGViZW5zbGF1ZiBNw7xsbGVyLnBkZg==?="',
        b'Content-Disposition: attachment; filename="Lebenslauf M\xc3\xbcller.pdf"',
        b'Content-Disposition: attachment; filename="C:\\\\Users\\\\x\\\\Lebenslauf M\xc3\xbcller.pdf"',
    ],
)
def test_pdf_attachment_with_encoded_filename(disposition: bytes) -> None:
    raw = multipart([part("Content-Type: text/plain", body=b"See attached CV."), pdf_part(disposition)])
    parsed = parse_message(raw)
    assert parsed.attachments == [Attachment("Lebenslauf Müller.pdf", "application/pdf", len(PDF))]
    assert parsed.snippet == "See attached CV."


def test_filename_from_content_type_name() -> None:
    raw = multipart([part('Content-Type: application/pdf; name="cv.pdf"', body=b"%PDF-1.4")])
    assert parse_message(raw).attachments == [Attachment("cv.pdf", "application/pdf", 8)]


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 57, 58, 59, 1000])
def test_base64_attachment_size_is_the_decoded_size(length: int) -> None:
    data = bytes(range(256)) * 4
    encoded = base64.encodebytes(data[:length])
    raw = multipart([part("Content-Type: application/octet-stream", "Content-Transfer-Encoding: base64",
                          "Content-Disposition: attachment; filename=x.bin", body=encoded)])  # fmt: skip
    assert parse_message(raw).attachments[0].size == length


def test_sizes_of_unclean_base64_quoted_printable_and_8bit() -> None:
    raw = multipart(
        [
            part("Content-Type: application/octet-stream", "Content-Transfer-Encoding: base64",
                 "Content-Disposition: attachment; filename=junk.bin", body=b"QUJD*REVG\r\nR0g"),
            part("Content-Type: text/csv", "Content-Transfer-Encoding: quoted-printable",
                 "Content-Disposition: attachment; filename=a.csv", body=b"a=3Bb=\r\n;c"),
            part("Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit",
                 "Content-Disposition: attachment; filename=n.txt", body="Grüße".encode()),
        ]
    )  # fmt: skip
    sizes = [(a.filename, a.size) for a in parse_message(raw).attachments]
    assert sizes == [("junk.bin", 8), ("a.csv", 5), ("n.txt", 7)]


def test_what_counts_as_an_attachment() -> None:
    raw = multipart(
        [
            part("Content-Type: text/plain", body=b"Body"),
            part("Content-Type: image/png", "Content-ID: <logo>", body=b"png"),  # inline, no name: no
            part("Content-Type: image/png", 'Content-Disposition: inline; filename="photo.png"', body=b"png"),
            part("Content-Type: text/plain", "Content-Disposition: attachment", body=b"notes"),
            part("Content-Type: application/zip", "Content-Disposition: attachement", body=b"zip"),  # RFC 2183
            part("Content-Type: text/html", 'Content-Disposition: inline; filename="page.html"', body=b"<p>x</p>"),
        ]
    )
    parsed = parse_message(raw)
    assert parsed.attachments == [
        Attachment("photo.png", "image/png", 3),
        Attachment(None, "text/plain", 5),
        Attachment(None, "application/zip", 3),
        Attachment("page.html", "text/html", 8),
    ]
    assert parsed.snippet == "Body"
    assert parsed.has_html is False  # the HTML is a named file, not a body


def test_a_named_single_text_part_is_the_body() -> None:
    parsed = parse_message(message('Content-Type: text/plain; name="body.txt"', body=b"Just text"))
    assert parsed.snippet == "Just text"
    assert parsed.attachments == []


INNER = CRLF.join(
    [
        b"From: inner@example.com",
        b"Subject: Inner",
        b'Content-Type: multipart/mixed; boundary="IN"',
        b"",
        b"--IN",
        b"Content-Type: text/plain",
        b"",
        b"Inner text must not leak.",
        b"--IN",
        b"Content-Type: application/pdf",
        b'Content-Disposition: attachment; filename="inner.pdf"',
        b"",
        b"%PDF",
        b"--IN--",
        b"",
    ]
)


def test_attached_message_is_one_attachment() -> None:
    raw = multipart(
        [
            part("Content-Type: text/plain", body=b"Forwarding this."),
            part("Content-Type: message/rfc822", "Content-Disposition: inline", body=INNER),
        ]
    )
    parsed = parse_message(raw)
    assert parsed.attachments == [Attachment(None, "message/rfc822", len(INNER))]
    assert parsed.snippet == "Forwarding this."
    assert parsed.from_ == [Address(None, "a@example.com")]


def test_large_attachments_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    attachment = bytes(random.Random(7).getrandbits(8) for _ in range(1024)) * (15 * 1024)  # 15 MiB
    text = ("Bitte finden Sie anbei meine Unterlagen. " * 50_000).encode()
    raw = multipart(
        [
            part("Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64",
                 body=base64.encodebytes(text)),
            part("Content-Type: application/pdf", "Content-Transfer-Encoding: base64",
                 'Content-Disposition: attachment; filename="big.pdf"', body=base64.encodebytes(attachment)),
        ]
    )  # fmt: skip
    assert len(raw) > 20_000_000
    decoded_lengths: list[int] = []
    original = email.message.Message.get_payload

    def spy(self: email.message.Message, i: int | None = None, decode: bool = False) -> object:
        result = original(self, i, decode)
        if decode:
            decoded_lengths.append(len(result))
        return result

    monkeypatch.setattr(email.message.Message, "get_payload", spy)
    started = time.thread_time()  # CPU time of this thread: what a loaded machine does not stretch
    parsed = parse_message(raw)
    elapsed = time.thread_time() - started
    assert parsed.attachments == [Attachment("big.pdf", "application/pdf", len(attachment))]
    assert parsed.snippet.startswith("Bitte finden Sie anbei meine Unterlagen.")
    assert max(decoded_lengths, default=0) < 100_000
    assert elapsed < 15


# --------------------------------------------------------------------------- broken input


def test_no_headers_at_all() -> None:
    parsed = parse_message(b"Hello there, this is just text.\r\nSecond line.\r\n")
    assert parsed.subject is None
    assert parsed.from_ == [] and parsed.internet_message_id is None and parsed.date is None
    assert parsed.snippet == "Hello there, this is just text. Second line."
    assert "message has no headers" in parsed.parse_errors


def test_empty_input() -> None:
    parsed = parse_message(b"")
    assert parsed == ParsedMessage(
        subject=None, from_=[], sender=[], reply_to=[], to=[], cc=[], bcc=[], date=None, internet_message_id=None,
        in_reply_to=None, references=[], snippet="", attachments=[], has_html=False,
        parse_errors=["message has no headers"],
    )  # fmt: skip


def test_garbage_body_keeps_headers() -> None:
    garbage = bytes(random.Random(3).getrandbits(8) for _ in range(5000))
    parsed = parse_message(message("Subject: Binary junk", "From: a@example.com", body=garbage))
    assert parsed.subject == "Binary junk"
    assert parsed.from_ == [Address(None, "a@example.com")]
    assert len(parsed.snippet) <= SNIPPET_LENGTH
    assert_storable(parsed)


def test_multipart_without_boundary_shows_the_body_as_text() -> None:
    parsed = parse_message(message("Subject: x", "Content-Type: multipart/mixed", body=b"Raw body text"))
    assert parsed.snippet == "Raw body text"
    assert any("no boundary" in e for e in parsed.parse_errors)


def test_deep_nesting_keeps_headers_and_reports() -> None:
    nested = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(3000))
    parsed = parse_message(message("Subject: deep", "Content-Type: multipart/mixed; boundary=b0", body=nested))
    assert parsed.subject == "deep"
    assert any("only headers" in e for e in parsed.parse_errors)


SAMPLE = multipart(
    [
        part("Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable",
             body=b"Gr=C3=BC=C3=9Fe"),
        part("Content-Type: text/html", body=HTML_BODY),
        pdf_part(b"Content-Disposition: attachment; filename*=utf-8''a%20b.pdf"),
        part("Content-Type: message/rfc822", body=INNER),
    ],
    headers=("Subject: =?utf-8?B?R3LDvMOfZQ==?=", "To: A <a@b.c>, (x) b@c.d", "Date: Tue, 5 Mar 2024 10:15:00 +0100",
             "Message-ID: <m@x>", "References: <r@x> <s@x>"),
)  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 30)):
        choice = rng.random()
        position = rng.randrange(len(buf) + 1)
        if choice < 0.4 and buf:
            buf[min(position, len(buf) - 1)] = rng.getrandbits(8)
        elif choice < 0.6:
            buf[position:position] = rng.choice([b"=?", b"?=", b"<", b">", b'"', b"(", b"\r\n", b"--BOUNDARY", b":"])
        elif choice < 0.8:
            del buf[position : position + rng.randint(1, 200)]
        else:
            buf[position:position] = rng.randbytes(rng.randint(1, 50))
    return bytes(buf)


def test_fuzz_never_raises() -> None:
    rng = random.Random(20240305)
    inputs = [rng.randbytes(rng.randint(0, 3000)) for _ in range(100)]
    inputs += [mutate(rng, SAMPLE) for _ in range(100)]
    for raw in inputs:
        parsed = parse_message(raw)
        assert isinstance(parsed, ParsedMessage)
        assert len(parsed.snippet) <= SNIPPET_LENGTH
        assert all(isinstance(e, str) for e in parsed.parse_errors)
        assert_storable(parsed)
        participants(parsed)
        thread_key(parsed, content_hash(raw))


def test_sample_used_by_the_fuzz_parses_cleanly() -> None:
    parsed = parse_message(SAMPLE)
    assert parsed.subject == "Grüße"
    assert parsed.to == [Address("A", "a@b.c"), Address("x", "b@c.d")]
    assert parsed.snippet == "Grüße"
    assert parsed.has_html is True
    assert [a.filename for a in parsed.attachments] == ["a b.pdf", None]
    assert parsed.references == ["r@x", "s@x"]
    assert parsed.parse_errors == []


def test_quoted_printable_body_with_raw_8bit_bytes() -> None:
    raw = message(
        "Content-Type: text/plain; charset=iso-8859-1",
        "Content-Transfer-Encoding: quoted-printable",
        body=b"Gr\xfc=DFe, raw and encoded",
    )
    assert parse_message(raw).snippet == "Grüße, raw and encoded"


def test_a_failing_field_does_not_cost_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise IndexError("stdlib bug")

    monkeypatch.setattr("mailsync.mime._parse_date", broken)
    parsed = parse_message(message("Subject: still here", "Date: Tue, 5 Mar 2024 10:15:00 +0100"))
    assert parsed.subject == "still here"
    assert parsed.date is None
    assert "could not read Date header: IndexError" in parsed.parse_errors


# --- identity of a message without Message-ID across an mbsync move (finding 12) ---------------


def test_match_hash_ignores_x_tuid_lines_that_mbsync_adds() -> None:
    from mailsync.mime import match_hash

    original = b"From: a@example.com\r\nSubject: no id\r\n\r\nBody\r\nX-TUID: in the body counts\r\n"
    at_end = original.replace(b"\r\n\r\n", b"\r\nX-TUID: Ab1Cd2Ef3Gh4\r\n\r\n", 1)
    at_start = b"X-TUID: Ab1Cd2Ef3Gh4\r\n" + original
    folded = original.replace(b"\r\n\r\n", b"\r\nx-tuid: Ab1\r\n Cd2\r\n\r\n", 1)
    assert match_hash(at_end) == match_hash(at_start) == match_hash(folded) == match_hash(original)
    # The body is hashed as is, and any other change still counts.
    assert match_hash(original.replace(b"X-TUID: in", b"X-TUID: on")) != match_hash(original)
    assert match_hash(original.replace(b"no id", b"no iD")) != match_hash(original)
    assert content_hash(at_end) != content_hash(original)


# --- shortcuts must give what the general paths give ---------------------------------------------


def test_given_random_address_lists_then_the_plain_list_shortcut_gives_what_the_full_scan_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailsync import mime

    names = ["", "Bob ", "J. Doe", "é ", " \t", "a@b ", "=x ", "\x00", "\u00a0", "\u2028"]
    addrs = ["<a@b.c>", "<A@B.COM>", "x@y", " x@Y.z ", "<x@y", "a b@c", "<a@b@c>", "<@r,@s:a@b>", "", "<>"]
    after = ["", " ", "Bob", "\r\n", " x@y", ">"]
    specials = ['"', "(", ")", "\\", "[", "]", ":", ";", "=?utf-8?q?x?=", "=?", "<", ",", "@"]
    rng = random.Random(20261202)
    values = []
    for _ in range(3000):
        entries = [rng.choice(names) + rng.choice(addrs) + rng.choice(after) for _ in range(rng.randint(0, 3))]
        value = rng.choice([",", ", ", " ,\t"]).join(entries)
        if rng.random() < 0.3:
            at = rng.randint(0, len(value))
            value = value[:at] + rng.choice(specials) + value[at:]
        values.append(value)
    shortcut = [mime._plain_address_list(value, mime._Errors(), "To") for value in values]
    assert sum(result is not None for result in shortcut) > 500  # the shortcut is really exercised

    def scanned(value: str) -> tuple[list[Address], list[str]]:
        errors = mime._Errors()
        return mime._parse_address_list(value, errors, "To"), errors.items

    fast = [scanned(value) for value in values]
    monkeypatch.setattr(mime, "_plain_address_list", lambda *_args: None)
    assert fast == [scanned(value) for value in values]


def test_given_odd_header_sections_then_the_single_part_shortcut_gives_what_the_full_parse_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailsync import mime

    line_ends = [b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"]
    lines = [b"Subject: hi", b"From: A <a@b.c>", b"To: x@y", b" folded", b"\tfolded", b"From sender date",
             b"no colon line", b":no name", b"Content-Type: text/plain; charset=utf-8", b"Content-Type: text/html",
             b"Content-Type: multipart/mixed; boundary=X", b"Content-Type: message/rfc822",
             b"Content-Type: MULTIPART\r\n /mixed", b"Content-Transfer-Encoding: base64",
             b"Content-Transfer-Encoding: quoted-printable", b"Content-Disposition: attachment; filename=x.pdf",
             b"X-8bit: caf\xe9", b"Date: Tue, 5 Mar 2024 10:15:00 +0100", b"", b"", b"--X", b"SGVsbG8gd29ybGQ=",
             b"body =C3=A9 text", b"\x00\x01", b"\xff\xfe"]  # fmt: skip
    rng = random.Random(20261202)
    inputs = []
    for _ in range(1500):
        raw = b"".join(rng.choice(lines) + rng.choice(line_ends) for _ in range(rng.randint(0, 14)))
        inputs.append(raw[: rng.randint(0, len(raw))] if rng.random() < 0.3 else raw)
    assert sum(mime._parse_single_part(raw) is not None for raw in inputs) > 300

    fast = [parse_message(raw) for raw in inputs]
    monkeypatch.setattr(mime, "_parse_single_part", lambda _raw: None)
    assert fast == [parse_message(raw) for raw in inputs]


def test_given_a_limit_then_the_cleaned_prefix_is_the_start_of_the_cleaned_text() -> None:
    from mailsync.mime import _clean_text

    pieces = ["word", " ", "\n", "\r\n", "\t", "\u00ad", "\u200b", "\x00", "\u00a0", "\u2028", "é", "  \u200b  "]
    rng = random.Random(20261202)
    for _ in range(2000):
        text = "".join(rng.choices(pieces, k=rng.randint(0, 600)))
        limit = rng.randint(1, 60)
        assert _clean_text(text, limit) == _clean_text(text)[:limit]


def test_given_any_line_ends_then_the_first_empty_line_is_where_the_stdlib_parser_sees_it() -> None:
    from mailsync.mime import _first_empty_line_end

    # Lines end at CRLF, a lone CR or LF; an empty line is a line end alone.
    empty_line = re.compile(rb"(?:\A|\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
    rng = random.Random(20261202)
    headers = b"X-Filler: value\r\n" * 2000  # pushes the empty line past the first search windows
    for _ in range(5000):
        raw = bytes(rng.choice(b"ab:\r\n\r\n") for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.1:
            raw = headers + raw
        found = empty_line.search(raw)
        assert _first_empty_line_end(raw) == (found.end() if found else -1), raw[-60:]


def _random_multipart(rng: random.Random, depth: int, eol: bytes) -> bytes:
    words = [
        b"hello",
        b"--",
        b"-- ",
        b"--b1",
        b"--b1--",
        b"caf\xe9",
        b"=C3=A9",
        b"Subject: x",
        b"",
        b"\x00",
        b"From me",
    ]

    def text(lines: int) -> bytes:
        return eol.join(b" ".join(rng.choices(words, k=rng.randint(0, 8))) for _ in range(lines)) + eol

    kind = rng.random()
    if depth < 2 and kind < 0.4:
        subtype = rng.choice([b"mixed", b"alternative", b"digest"]) if kind < 0.1 else b"mixed"
        boundary = rng.choice([b"b1", b"b2", b"=_%d" % depth])
        body = text(rng.randint(0, 5)) if rng.random() < 0.3 else b""
        for _ in range(rng.randint(0, 3)):
            # A digest's parts are messages without saying so: their bodies start with headers.
            inner = text(rng.randint(1, 20)) if subtype == b"digest" else _random_multipart(rng, depth + 1, eol)
            body += b"--" + boundary + rng.choice([b"", b" "]) + eol + inner + eol
        body += (b"--" + boundary + b"--" + eol if rng.random() < 0.8 else b"") + text(rng.randint(0, 3))
        return b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"' + eol + eol + body
    if depth < 2 and kind < 0.5:  # an attached message: headers after the part's empty line
        return b"Content-Type: message/rfc822" + eol + eol + b"Subject: inner" + eol + text(rng.randint(0, 40))
    content_type = rng.choice([b"text/plain; charset=utf-8", b"text/html", b"application/pdf; name=a.pdf"])
    return b"Content-Type: " + content_type + eol + rng.choice([eol, b""]) + text(rng.randint(0, 40))


def test_given_multipart_messages_then_setting_bodies_aside_gives_the_full_parse_s_tree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from email.parser import BytesParser

    from mailsync import mime

    def tree(msg: email.message.Message) -> list[object]:
        out, stack = [], [msg]
        while stack:
            part = stack.pop()
            payload = part._payload if isinstance(part._payload, str) else None
            out.append((list(part.raw_items()), part.preamble, part.epilogue, [repr(d) for d in part.defects], payload))
            stack.extend(reversed(part.get_payload()) if part.is_multipart() else [])
        return out

    monkeypatch.setattr(mime, "_ASIDE_MIN", 1)  # set aside every run, however short
    rng = random.Random(20261202)
    checked = 0
    for _ in range(600):
        eol = rng.choice([b"\r\n", b"\r\n", b"\n", b"\r"])
        raw = b"From: a@b.c" + eol + b"MIME-Version: 1.0" + eol + _random_multipart(rng, 0, eol)
        if rng.random() < 0.3:
            at = rng.randint(0, len(raw))
            raw = raw[:at] + rng.choice([b"\r", b"\n", b"--", b"\r\n--b1\r\n", b"\r--b2\r", b"message/x"]) + raw[at:]
        aside = mime._parse_bodies_aside(raw)
        if aside is not None:
            checked += 1
            assert tree(aside) == tree(BytesParser(policy=mime._POLICY).parsebytes(raw)), raw
    assert checked > 300


def test_given_thousands_of_lines_that_start_with_dashes_then_the_message_is_parsed_in_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailsync import mime

    text = b"word " * 100 + b"\r\n"
    few = multipart([part("Content-Type: text/plain", body=text + b"--x\r\n\r\n" + text) for _ in range(3)])
    many = multipart([part("Content-Type: text/plain", body=(text + b"--x\r\n\r\n") * 600 + text) for _ in range(3)])
    assert mime._parse_bodies_aside(few) is not None
    assert mime._parse_bodies_aside(many) is None  # the search for runs would cost more than it saves
    parsed = parse_message(many)
    monkeypatch.setattr(mime, "_parse_bodies_aside", lambda _raw: None)
    assert parsed == parse_message(many)


def test_dash_lines_are_found_with_two_searches_a_line_whatever_the_line_ends() -> None:
    """Lines that start with "--" after lone CRs in a message with no "\\n--": each search goes
    on from its own last find (searching both again from each line read the whole message each
    time, seconds of CPU for 4 MB of such mail; from a review)."""
    from mailsync import mime

    class Counted(bytes):
        finds = 0

        def find(self, *args: object) -> int:  # type: ignore[override]
            Counted.finds += 1
            return super().find(*args)  # type: ignore[arg-type]

    raw = Counted(b"Content-Type: multipart/mixed; boundary=B\r\r" + b"--x\r" * 500 + b"y " * 40 + b"\r\n--B--\r\n")
    found = list(mime._dash_lines(raw))
    expected = [m.start() + 1 for m in re.finditer(rb"(?=[\r\n]--)", bytes(raw))]
    assert found == expected and len(found) == 501
    assert Counted.finds <= 2 * (len(found) + 1)


def test_charset_labels_a_sender_makes_up_are_not_kept_by_python() -> None:
    # Python's codec search keeps every label it did not find for the life of the process
    # (encodings._cache): labels of codecs Python does not have are never looked up.
    import encodings

    from mailsync import mime

    words = " ".join(f"=?x-made-up-{i:04d}-{'a' * 30}?Q?hi?=" for i in range(300))
    raw = f"From: a@example.com\r\nSubject: {words}\r\n\r\nbody\r\n".encode()
    before = len(encodings._cache)
    parsed = mime.parse_message(raw)
    assert len(encodings._cache) == before
    assert any("unknown charset" in error for error in parsed.parse_errors)
    assert mime._codec_name("UTF-8") == "utf-8" and mime._codec_name("x-mac-roman") == "mac-roman"
