"""Large messages are parsed without their attachments' lines, and the result does not show it.

``mime`` cuts the middle out of long base64 runs before the stdlib parser sees them (which
would keep every line as a string and join them: several times the message in memory). Every
field must come out as a full parse gives it: snippets, attachment sizes (also inside an
attached message), 8-bit headers, parse errors.
"""

from __future__ import annotations

import base64
import random
import tracemalloc
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from mailsync import mime


def _full_parse(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> mime.ParsedMessage:
    with monkeypatch.context() as patch:
        patch.setattr(mime, "ELIDE_OVER", 1 << 62)
        return mime.parse_message(raw)


def _with_attachment(size: int, seed: int = 1) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Sender <sender@example.com>"
    msg["To"] = "Recipient <recipient@example.com>"
    msg["Subject"] = "cv"
    msg.set_content("Please find my CV attached.\n")
    msg.add_attachment(random.Random(seed).randbytes(size), maintype="application", subtype="pdf", filename="cv.pdf")
    return msg


def test_given_a_large_attachment_when_parsed_then_the_same_as_a_full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _with_attachment(3_000_000).as_bytes()
    parsed = mime.parse_message(raw)
    assert parsed == _full_parse(raw, monkeypatch)
    assert [(a.filename, a.size) for a in parsed.attachments] == [("cv.pdf", 3_000_000)]
    assert parsed.snippet == "Please find my CV attached."


def test_given_a_large_base64_html_body_then_the_snippet_is_the_full_parse_s(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = EmailMessage(policy=SMTP)
    msg["Subject"] = "newsletter"
    # Markup first, text late: the snippet needs far more than the first kilobytes.
    markup = "<style>" + "p{color:red}" * 10_000 + "</style>" + "<p>Dear candidate, welcome.</p>" * 20_000
    msg.set_content(markup, subtype="html", cte="base64")
    raw = msg.as_bytes()
    parsed = mime.parse_message(raw)
    assert parsed == _full_parse(raw, monkeypatch)
    assert parsed.snippet.startswith("Dear candidate, welcome.")


def test_given_an_attached_message_with_a_large_attachment_then_its_size_is_the_full_parse_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outer = EmailMessage(policy=SMTP)
    outer["Subject"] = "forwarded"
    outer.set_content("See below.\n")
    outer.add_attachment(_with_attachment(1_000_000))
    raw = outer.as_bytes()
    parsed = mime.parse_message(raw)
    assert parsed == _full_parse(raw, monkeypatch)
    assert parsed.attachments[0].content_type == "message/rfc822"


def test_given_base64_looking_lines_in_a_plain_part_then_its_size_is_its_wire_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = b"".join(base64.b64encode(random.Random(i).randbytes(57)) + b"\r\n" for i in range(5000))
    raw = (
        b'Subject: keys\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b'--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename="keys.txt"\r\n\r\n'
        + lines
        + b"--b--\r\n"
    )
    parsed = mime.parse_message(raw)
    assert parsed == _full_parse(raw, monkeypatch)


def test_given_8bit_headers_in_a_large_message_then_they_read_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    head = b"From: =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\nSubject: Caf\xe9 \xc3\xa9t\xc3\xa9\r\n"
    raw = head + _with_attachment(500_000).as_bytes()
    parsed = mime.parse_message(raw)
    assert parsed == _full_parse(raw, monkeypatch)
    assert parsed.from_[0].name == "Jörg"


def test_given_a_truncated_base64_run_then_it_parses_as_a_full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _with_attachment(800_000).as_bytes()
    cut = raw[: len(raw) - 5000]  # no padding line, no closing boundary
    parsed = mime.parse_message(cut)
    assert parsed == _full_parse(cut, monkeypatch)
    assert parsed.parse_errors


def test_given_40_mb_without_a_line_break_then_it_parses() -> None:
    parsed = mime.parse_message(b"Subject: x\r\n\r\n" + b"A" * 40_000_000)
    assert parsed.subject == "x"


def test_given_a_40_mb_message_then_the_parse_holds_a_small_part_of_it() -> None:
    raw = _with_attachment(30_000_000).as_bytes()
    tracemalloc.start()
    try:
        parsed = mime.parse_message(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.attachments[0].size == 30_000_000
    # A full parse holds the lines and their join: several times the message (> 100 MB here).
    assert peak < 16 * 1024 * 1024, f"parse peak {peak / 2**20:.1f} MiB for a {len(raw) / 2**20:.0f} MiB message"


def test_given_base64_lines_of_any_shape_then_the_run_end_is_where_line_by_line_matching_ends() -> None:
    # Blocks of equal lines are checked at once; the answer must be the regex's, line by line.
    rng = random.Random(20261202)
    for _ in range(300):
        width = rng.choice([76, 76, 64, 40, 39, 998, 999])
        data = base64.b64encode(rng.randbytes(rng.randint(3_000, 60_000)))
        lines = [data[i : i + width] for i in range(0, len(data), width)]
        ends = [rng.choice([b"\r\n", b"\n"])] * len(lines)
        for _ in range(rng.choice([0, 1, 3])):
            at = rng.randrange(len(lines))
            line = lines[at]
            kind = rng.randrange(7)
            if kind == 0:  # a stray character
                lines[at] = line[:5] + rng.choice([b"!", b"\r", b" ", b"\n"]) + line[6:]
            elif kind == 1:  # "\r" inside the line instead of before its "\n": the same count of each
                lines[at], ends[at] = line[:5] + b"\r" + line[5:], b"\n"
            elif kind == 2:
                ends[at] = b"\n" if ends[at] == b"\r\n" else b"\r\n"
            else:
                lines[at] = [line[:30], line + line[:40], b"", line + b"\r"][kind - 3]
        raw = b"--b\r\n\r\n" + b"".join(line + end for line, end in zip(lines, ends, strict=True)) + b"--b"
        expected_end = mime._BASE64_LINES.match(raw, 7).end()
        expected_breaks = raw.count(b"\n", 7, expected_end) + raw.count(b"\r", 7, expected_end)
        assert mime._base64_run_end(raw, 7) == (expected_end, expected_breaks)
