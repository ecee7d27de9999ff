"""Pure MIME parsing: turn raw message bytes into the fields the sync stores (no I/O).

Built on the stdlib parser with the ``compat32`` policy, which never rejects input; header
text, addresses, charsets and HTML are decoded here because the stdlib's modern header
parser is quadratic on long address lists, raises on some malformed addresses and leaves
undecodable bytes as lone surrogates (which later break JSON and DynamoDB writes).
``parse_message`` never raises for any bytes: problems end up in ``parse_errors``.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import encodings
import encodings.aliases
import hashlib
import html
import pkgutil
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.feedparser import FeedParser
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import Compat32
from email.utils import parsedate_to_datetime

SNIPPET_LENGTH = 200
# Enough plain text to fill a snippet even after long runs of blank lines or indentation.
PLAIN_TEXT_CAP = 64 * 1024
HTML_CAP = 200 * 1024
# A snippet is first looked for in this much of a body; only a body whose first bytes are
# mostly markup or blank is read further (up to the caps above).
SNIPPET_FIRST_TRY = 4 * 1024
# Messages over this size are scanned for long runs of base64 lines (attachments) before the
# parser sees them: of each run only its first bytes and its last line are parsed, the rest is
# counted (see ``_elide_base64_runs``). Of a text part more is kept than a snippet ever reads
# (3 x HTML_CAP, quoted-printable), so snippets stay the same; of any other part only a little.
ELIDE_OVER = 64 * 1024
ELIDED_TEXT_KEEP = 1024 * 1024
ELIDED_OTHER_KEEP = 8 * 1024
MAX_PARSE_ERRORS = 50
_MAX_ERROR_LENGTH = 300


@dataclass(frozen=True)
class Address:
    name: str | None  # display name, decoded; None when there is none
    email: str  # addr-spec, lower-cased: the dossier lookup key


@dataclass(frozen=True)
class Attachment:
    filename: str | None  # decoded (RFC 2047 / RFC 2231), directory part removed
    content_type: str  # lower-case, e.g. "application/pdf"
    size: int  # decoded bytes (an attached message: its size on the wire)


@dataclass(frozen=True)
class ParsedMessage:
    subject: str | None
    from_: list[Address]
    sender: list[Address]
    reply_to: list[Address]
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]
    date: datetime | None  # timezone-aware; UTC when the header has no zone
    internet_message_id: str | None  # normalised by normalise_msg_id
    in_reply_to: str | None
    references: list[str]  # normalised, in order, de-duplicated
    snippet: str  # at most SNIPPET_LENGTH characters, whitespace collapsed
    attachments: list[Attachment]
    has_html: bool  # an HTML body (not an attached .html file)
    parse_errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- public API


def content_hash(raw: bytes) -> str:
    """SHA-256 hex digest of the raw message bytes."""
    return hashlib.sha256(raw).hexdigest()


# mbsync adds "X-TUID:" when it re-uploads a message (a move in its Maildir); the message is
# otherwise the same, so it must keep matching (see ``match_hash``).
_VOLATILE_HEADER = re.compile(rb"^X-TUID:[^\n]*\n(?:[ \t][^\n]*\n)*", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def match_hash(raw: bytes) -> str:
    """SHA-256 hex digest identifying a message without a Message-ID across moves.

    The content hash of the raw bytes with header lines that other mail programs add on a
    re-upload (``X-TUID``) left out; the body is hashed as is.
    """
    end = _HEADER_END.search(raw)
    split = end.end() if end else len(raw)
    header = _VOLATILE_HEADER.sub(b"", raw[:split])
    return hashlib.sha256(header + raw[split:]).hexdigest()


def normalise_msg_id(value: str | None) -> str | None:
    """The first message id in ``value`` without angle brackets or whitespace; None if there is none."""
    if value is None:
        return None
    match = _BRACKETED_ID.search(value)
    if match:
        # Some mailers fold long ids inside the brackets; the whitespace is not part of the id.
        candidate = _WHITESPACE.sub("", match.group(1))
    else:
        tokens = value.split()
        candidate = tokens[0].strip("<>") if tokens else ""
    return candidate or None


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw RFC 5322 / MIME bytes. Never raises; problems found are listed in ``parse_errors``."""
    errors = _Errors()
    msg = _parse_bytes(_elide_base64_runs(bytes(raw)), errors)
    if msg is None:
        return _empty_message(errors)

    headers = _first_headers(msg)
    if not headers:
        errors.add("message has no headers")

    def header(name: str) -> str | None:
        return _safe(errors, f"{name} header", lambda: _header_text(msg, headers, name), None)

    def addresses(name: str) -> list[Address]:
        return _safe(errors, f"{name} header", lambda: _address_header(msg, headers, name, errors), [])

    subject = _safe(errors, "Subject header", lambda: _subject(msg, headers, errors), None)
    from_, sender, reply_to, to, cc, bcc = (
        addresses(name) for name in ("From", "Sender", "Reply-To", "To", "Cc", "Bcc")
    )
    date = _safe(errors, "Date header", lambda: _parse_date(header("Date"), errors), None)
    internet_message_id = normalise_msg_id(header("Message-ID"))
    in_reply_to = normalise_msg_id(header("In-Reply-To"))
    references = _safe(errors, "References header", lambda: _msg_ids(header("References")), [])
    body = _safe(errors, "body", lambda: _analyse_body(msg, errors), _Body("", [], False))
    _safe(errors, "defects", lambda: _collect_defects(msg, errors), None)
    return ParsedMessage(
        subject=subject, from_=from_, sender=sender, reply_to=reply_to, to=to, cc=cc, bcc=bcc, date=date,
        internet_message_id=internet_message_id, in_reply_to=in_reply_to, references=references, snippet=body.snippet,
        attachments=body.attachments, has_html=body.has_html, parse_errors=errors.items,
    )  # fmt: skip


def participants(parsed: ParsedMessage) -> list[str]:
    """Unique lower-cased addresses from from/sender/reply_to/to/cc/bcc, in order of first appearance."""
    groups = (parsed.from_, parsed.sender, parsed.reply_to, parsed.to, parsed.cc, parsed.bcc)
    return list(dict.fromkeys(address.email.lower() for group in groups for address in group))


def thread_key(parsed: ParsedMessage, fallback: str) -> str:
    """Hash of the thread root: first References id, else In-Reply-To, else Message-ID, else ``fallback``."""
    root = (parsed.references[0] if parsed.references else None) or parsed.in_reply_to or parsed.internet_message_id
    root = root or fallback
    return hashlib.sha256(root.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# --------------------------------------------------------------------------- parsing & safety net


class _Policy(Compat32):
    """compat32 that hands out header text instead of ``Header('unknown-8bit')`` objects for raw 8-bit bytes."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        return _fix_8bit(value)


_POLICY = _Policy()


class _Errors:
    """Ordered, de-duplicated and capped: a hostile message must not produce an unbounded list."""

    def __init__(self) -> None:
        self._items: dict[str, None] = {}
        self._dropped = False

    def add(self, message: str) -> None:
        if len(message) > _MAX_ERROR_LENGTH:
            message = message[: _MAX_ERROR_LENGTH - 1] + "…"
        if message in self._items:
            return
        if len(self._items) >= MAX_PARSE_ERRORS:
            self._dropped = True
            return
        self._items[message] = None

    @property
    def items(self) -> list[str]:
        result = list(self._items)
        if self._dropped:
            result.append("further problems omitted")
        return result


def _safe[T](errors: _Errors, what: str, compute: Callable[[], T], default: T) -> T:
    # The stdlib parser has its own bugs on hostile input (RecursionError on deep nesting, odd
    # IndexErrors); one broken field must not cost the rest of the message, so any failure is
    # recorded as a parse error instead of propagating. Out-of-memory is not an input defect.
    try:
        return compute()
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; the failure is reported
        errors.add(f"could not read {what}: {type(exc).__name__}")
        return default


# A run: whole lines of the base64 alphabet, at least 128 of them in a row (possessive and anchored
# at line starts: linear even on hostile input, such as 40 MB without a line break). Found by its
# first 128 lines; where it ends, by ``_base64_run_end``.
_BASE64_RUN_START = re.compile(rb"(?m)^(?:[A-Za-z0-9+/=]{40,998}+\r?\n){128}")
_BASE64_LINES = re.compile(rb"(?:[A-Za-z0-9+/=]{40,998}+\r?\n)*+")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
# Lines of one width checked at once: at least this many (fewer go line by line) ...
_MIN_BLOCK_LINES = 64
# ... and the line ends looked for in at most this many lines ahead, so that checking stays
# linear however the widths vary.
_MAX_BLOCK_LINES = 4096
_TEXT_PART = re.compile(rb"content-type:[ \t]*(?:\r?\n[ \t]+)?text/", re.IGNORECASE)
# What stands for the lines cut out of a run: their bytes on the wire and their base64
# characters. NUL cannot occur in base64 and a run never contains a boundary line ("-").
_ELIDED = re.compile(r"\x00elided:(\d+):(\d+)\x00\r?\n")


def _elided_marker(raw_bytes: int, base64_chars: int) -> bytes:
    return b"\x00elided:%d:%d\x00\r\n" % (raw_bytes, base64_chars)


def _elide_base64_runs(raw: bytes) -> bytes:
    """``raw`` with the middle of long base64 runs replaced by a marker line.

    The stdlib parser keeps every line of a part as a ``str`` and joins them: a 40 MB attachment
    costs several times its size. The parts that matter here (headers, structure, the first KB
    of the text bodies) survive; an attachment's size is its kept characters plus the counted
    ones (``_attachment_size``). The raw message itself is stored whole, not this copy.
    """
    if len(raw) <= ELIDE_OVER:
        return raw
    pieces: list[bytes] = []
    position = 0
    search_from = 0
    while (run := _BASE64_RUN_START.search(raw, search_from)) is not None:
        start, head_end = run.span()
        end, run_breaks = _base64_run_end(raw, head_end)
        search_from = end
        keep_end = raw.find(b"\n", start + _run_keep(raw, start)) + 1
        last_line = raw.rfind(b"\n", start, end - 1) + 1  # the padding ("=") is on the last line
        if keep_end <= 0 or keep_end >= last_line:
            continue
        # The elided lines' breaks: the run's, less those of the lines kept before and after them.
        run_breaks += _line_breaks(raw, start, head_end)
        breaks = run_breaks - _line_breaks(raw, start, keep_end) - _line_breaks(raw, last_line, end)
        pieces.append(raw[position:keep_end])
        pieces.append(_elided_marker(last_line - keep_end, last_line - keep_end - breaks))
        position = last_line
    if not pieces:
        return raw
    pieces.append(raw[position:])
    return b"".join(pieces)


def _line_breaks(raw: bytes, start: int, end: int) -> int:
    return raw.count(b"\n", start, end) + raw.count(b"\r", start, end)


def _base64_run_end(raw: bytes, position: int) -> tuple[int, int]:
    """The end of the base64 lines that go on at ``position`` (a line start), as the run's regex
    would match them line by line, and the bytes of their line breaks.

    An encoder writes lines of one width, so blocks of them are checked at C speed instead: a
    line end at every width ("\\n", with "\\r" right before it if the first line has one), and
    nothing but the alphabet and those line ends in between (so their breaks need no counting).
    The rest (the last, shorter line; lines of mixed widths; a bad line) is matched line by line.
    """
    breaks = 0
    while True:
        first_end = raw.find(b"\n", position) + 1
        line_end = b"\r\n" if raw[first_end - 2 : first_end] == b"\r\n" else b"\n"
        width = first_end - position
        if first_end == 0 or not 40 <= width - len(line_end) <= 998:
            break
        newlines = raw[first_end - 1 : first_end - 1 + width * _MAX_BLOCK_LINES : width]
        lines = len(newlines) - len(newlines.lstrip(b"\n"))
        block_end = position + lines * width
        if (
            lines < _MIN_BLOCK_LINES
            or raw[position:block_end].translate(None, _BASE64_ALPHABET) != line_end * lines
            or (line_end == b"\r\n" and raw[first_end - 2 : block_end : width].strip(b"\r"))
        ):
            break
        breaks += lines * len(line_end)
        position = block_end
    match = _BASE64_LINES.match(raw, position)
    end = match.end() if match else position
    return end, breaks + _line_breaks(raw, position, end)


def _run_keep(raw: bytes, start: int) -> int:
    """How much of the base64 run at ``start`` to keep: much of a text part, little of others.

    The part's header block is what lies between the boundary line before the run (or the
    message start) and the run, looked for in the 4 KB before it.
    """
    window_start = max(0, start - 4096)
    boundary = raw.rfind(b"\n--", window_start, start)
    headers = raw[boundary + 1 if boundary != -1 else window_start : start]
    return ELIDED_TEXT_KEEP if _TEXT_PART.search(headers) else ELIDED_OTHER_KEEP


def _without_elided(payload: str) -> tuple[str, int, int]:
    """A payload without its marker lines, and the wire bytes and base64 characters they stand for."""
    if "\x00elided:" not in payload:
        return payload, 0, 0
    wire = chars = 0
    for found in _ELIDED.finditer(payload):
        wire += int(found.group(1))
        chars += int(found.group(2))
    return _ELIDED.sub("", payload), wire, chars


def _first_empty_line_end(raw: bytes, start: int = 0, end: int | None = None) -> int:
    """Where the first empty line in ``raw[start:end]`` ends (``start`` a line start), lines ended
    by CRLF, CR or LF as the stdlib parser splits them; -1 if there is none.

    An empty line starts right after a line end, so after "\\n" or after a lone "\\r" (one not
    followed by "\\n"): at "\\n\\r", "\\n\\n" or "\\r\\r". Searched with bytes.find in a growing window
    (a regex takes ~15 ns a byte here; a find of a pair the message lacks would read all of it).
    """
    end = len(raw) if end is None else end
    if raw.startswith((b"\r", b"\n"), start, end):
        empty = start
    else:
        window = 4096
        while True:
            empty, bound = -1, min(start + window, end)
            for pair in (b"\n\r", b"\n\n", b"\r\r"):
                found = raw.find(pair, start, bound)
                if found != -1:
                    empty = bound = found + 1  # the next pairs only count before it
            if empty != -1:
                break
            if bound == end:
                return -1
            window *= 4
    return empty + 2 if raw.startswith(b"\r\n", empty) else empty + 1


# Only these content types make the parser look into a body (a maintype is the text before "/").
_CONTAINER_TYPE = re.compile(rb"multipart/|message/", re.IGNORECASE)


def _parse_single_part(raw: bytes) -> Message | None:
    """A message that is neither multipart nor message/*, parsed without splitting its body into
    lines; None when it may be another shape or the header section is odd (the full parse then).

    For such a message the stdlib parser's payload is the text after the header section exactly,
    but it gets there by passing every body line through a Python-level loop and joining them
    again: most of the parse's CPU for plain-text mail. Here the parser sees only the header
    section, up to and including its first empty line, and the body is set as one string.
    """
    header_end = _first_empty_line_end(raw)
    if header_end == -1 or _CONTAINER_TYPE.search(raw, 0, header_end):
        return None
    parser = FeedParser(policy=_POLICY)
    parser.feed(raw[:header_end].decode("ascii", "surrogateescape"))  # as BytesParser decodes
    msg = parser.close()
    # A non-header line before the empty line (a defect) has already started the body: the
    # full parse keeps that case as it always was.
    if msg.get_content_maintype() in ("multipart", "message") or msg.get_payload() != "":
        return None
    msg.set_payload(str(memoryview(raw)[header_end:], "ascii", "surrogateescape"))
    return msg


# Stands for body lines set aside before a multipart parse (``_parse_bodies_aside``): their
# number in the list of what was set aside. NUL cannot come from a parsed message's text here:
# a message that has this already is parsed in full.
_ASIDE = re.compile("\x00aside:(\\d+)\x00")
# Bodies are set aside only in messages up to this size (the lower-cased copy looked through),
# and only runs of at least this many bytes (each stays a line for the parser).
ASIDE_UP_TO = 4 * 1024 * 1024
_ASIDE_MIN = 256
# Mail has a few lines that start with "--"; past this many the search for runs (some µs a line)
# costs more than it saves, and the message is parsed in full.
_ASIDE_MAX_DASH_LINES = 1000
# Content types whose body holds header sections: a message/* part, and any part of a digest
# (which is message/rfc822 without saying so).
_NESTED_HEADERS = re.compile(rb"message/|multipart/digest")


def _dash_lines(raw: bytes) -> Iterator[int]:
    """The start of each line after the first that begins with "--" (where any boundary is), in
    order. Each search goes on from its own last find, so every byte is looked at at most twice
    however the lines end (searching both from each line again was quadratic when one of the two
    line ends never occurs, e.g. mail with lone CRs)."""
    after_lf, after_cr = raw.find(b"\n--"), raw.find(b"\r--")  # a lone CR ends a line too
    while after_lf != -1 or after_cr != -1:
        if after_cr == -1 or (after_lf != -1 and after_lf < after_cr):
            yield after_lf + 1
            after_lf = raw.find(b"\n--", after_lf + 1)
        else:
            yield after_cr + 1
            after_cr = raw.find(b"\r--", after_cr + 1)


def _parse_bodies_aside(raw: bytes) -> Message | None:
    """A multipart message parsed with the lines of its parts' bodies set aside and put back
    into the payloads afterwards; None when that cannot be done (then the full parse).

    The stdlib parser passes each line of a multipart message through Python-level loops (and
    checks it against every open boundary), but the lines of a body only matter to it if they
    start with "--", the only lines a boundary can be. What lies between the first empty line
    after such a line (or after the message start) and the next such line is body text,
    preamble or epilogue, never a header section, as long as no body holds header sections
    (message/* and digests are parsed in full); each such run is one marker line for the
    parser. A marker takes the place of the run's last line end too, so that the parser's
    taking the line end before a boundary off a payload cuts the same bytes.
    """
    if len(raw) > ASIDE_UP_TO or b"\x00aside:" in raw or _NESTED_HEADERS.search(raw.lower()):
        return None
    pieces: list[bytes] = []
    aside: list[str] = []
    copied = 0
    dash_line = 0  # the message start, then each line that starts with "--"
    dash_lines = _dash_lines(raw)
    for _ in range(_ASIDE_MAX_DASH_LINES + 1):  # the message start and that many dash lines
        if dash_line >= len(raw):
            break
        following = next(dash_lines, len(raw))
        body = _first_empty_line_end(raw, dash_line, following)
        if body != -1 and following - body >= _ASIDE_MIN:
            last = raw[following - 2 : following]
            line_end = b"\r\n" if last == b"\r\n" else last[-1:] if last[-1:] in (b"\r", b"\n") else b""
            aside.append(raw[body : following - len(line_end)].decode("ascii", "surrogateescape"))
            pieces += [raw[copied:body], b"\x00aside:%d\x00" % (len(aside) - 1), line_end]
            copied = following
        dash_line = following
    else:
        return None  # too many lines that start with "--"
    if not aside:
        return None
    msg = BytesParser(policy=_POLICY).parsebytes(b"".join([*pieces, raw[copied:]]))

    def put_back(text: str | None) -> str | None:
        if text is None or "\x00aside:" not in text:
            return text
        return _ASIDE.sub(lambda found: aside[int(found.group(1))], text)

    stack = [msg]
    while stack:
        part = stack.pop()
        part.preamble, part.epilogue = put_back(part.preamble), put_back(part.epilogue)
        if part.is_multipart():
            stack.extend(child for child in part.get_payload() if isinstance(child, Message))
        elif isinstance(part._payload, str):
            # The payload as parsed: get_payload() would decode 8-bit text, set_payload() is fine
            # but there is no public reader of it.
            part.set_payload(put_back(part._payload))
    return msg


def _parse_bytes(raw: bytes, errors: _Errors) -> Message | None:
    for shortcut in (_parse_single_part, _parse_bodies_aside):
        try:
            msg = shortcut(raw)
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - the full parse below reads it (and reports what fails there)
            msg = None
        if msg is not None:
            return msg
    try:
        return BytesParser(policy=_POLICY).parsebytes(raw)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - fall back to headers only, reported below
        errors.add(f"MIME structure could not be parsed ({type(exc).__name__}); only headers were read")
    try:
        return BytesHeaderParser(policy=_POLICY).parsebytes(raw)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - nothing readable at all, reported
        errors.add(f"headers could not be parsed ({type(exc).__name__})")
        return None


def _empty_message(errors: _Errors) -> ParsedMessage:
    return ParsedMessage(
        subject=None, from_=[], sender=[], reply_to=[], to=[], cc=[], bcc=[], date=None, internet_message_id=None,
        in_reply_to=None, references=[], snippet="", attachments=[], has_html=False, parse_errors=errors.items,
    )  # fmt: skip


def _collect_defects(msg: Message, errors: _Errors) -> None:
    for part in _walk_all(msg):
        where = "" if part is msg else f" (in {part.get_content_type()} part)"
        for defect in getattr(part, "defects", ()):
            doc = (type(defect).__doc__ or type(defect).__name__).strip().splitlines()[0]
            detail = str(defect)
            errors.add(f"{doc}{f' ({detail})' if detail else ''}{where}")


def _walk_all(msg: Message) -> Iterator[Message]:
    # Iterative: Message.walk() recurses, and nesting depth is attacker-controlled.
    stack = [msg]
    while stack:
        part = stack.pop()
        yield part
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


# --------------------------------------------------------------------------- charsets


def _build_c1_table() -> dict[int, str]:
    table = {}
    for byte in range(0x80, 0xA0):
        char = bytes([byte]).decode("cp1252", "ignore")
        if char:
            table[byte] = char
    return table


_CP1252_C1 = _build_c1_table()

# Labels that are routinely mislabelled supersets in real mail; mapped the way the WHATWG
# Encoding Standard (what browsers and most mail clients do) maps them.
_CHARSET_ALIASES = {
    "iso-8859-1": "windows-1252",
    "iso8859-1": "windows-1252",
    "latin1": "windows-1252",
    "latin-1": "windows-1252",
    "l1": "windows-1252",
    "cp819": "windows-1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "x-sjis": "cp932",
    "sjis": "cp932",
    "iso-8859-8-i": "iso-8859-8",
    "x-mac-roman": "mac-roman",
    "utf8": "utf-8",
}
# Python codecs that are not mail charsets (and misbehave with errors="replace").
_NOT_CHARSETS = {"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"}
# Labels that are often wrong for 8-bit text: UTF-8 is tried first (valid UTF-8 almost never
# happens by accident), windows-1252 covers both ASCII and Latin-1 otherwise.
_GUESSED = {"ascii", "cp1252", "latin-1", "iso8859-1"}
_UNKNOWN_CHARSETS = {"unknown-8bit", "x-unknown", "unknown", "8bit", "binary", "x-user-defined"}


def _windows_1252(data: bytes) -> str:
    # WHATWG windows-1252: the 5 bytes cp1252 leaves undefined become C1 controls instead of errors.
    return data.decode("latin-1").translate(_CP1252_C1)


def _decode_strict(data: bytes, codec: str, truncated: bool) -> str:
    # Incremental, so that a prefix cut inside a multi-byte character is not an error.
    return codecs.getincrementaldecoder(codec)("strict").decode(data, final=not truncated)


def _guess_text(data: bytes, truncated: bool = False) -> str:
    """UTF-8 when the bytes are valid UTF-8 (it almost never validates by accident), else windows-1252."""
    try:
        return _decode_strict(data, "utf-8", truncated)
    except UnicodeDecodeError:
        return _windows_1252(data)


def _codec_labels() -> frozenset[str]:
    """Every label Python's own codecs answer to, normalized as its codec search does."""
    modules = {module.name for module in pkgutil.iter_modules(encodings.__path__)}
    return frozenset({*encodings.aliases.aliases, *encodings.aliases.aliases.values(), *modules})


_CODEC_LABELS = _codec_labels()


def _codec_name(charset: str) -> str | None:
    label = charset.strip().strip("\"'").lower()
    label = _CHARSET_ALIASES.get(label, label)
    # Only labels of the codecs Python has are looked up: Python keeps every label its codec
    # search did not find, for the life of the process, and a sender chooses the labels.
    normalized = encodings.normalize_encoding(label[:64])
    if normalized not in _CODEC_LABELS and normalized.replace(".", "_") not in _CODEC_LABELS:
        return None
    try:
        name = codecs.lookup(label).name
        # bytes.decode refuses codecs that are not text encodings (rot13, base64, zlib ...).
        b"a".decode(name, "replace")
    except (LookupError, ValueError):
        return None
    return None if name.replace("_", "-") in _NOT_CHARSETS else name


def _decode_bytes(data: bytes, charset: str | None, errors: _Errors, where: str, truncated: bool = False) -> str:
    """Text in the declared charset; never raises. Unknown or wrong labels fall back to a guess."""
    if not charset or charset.strip().lower() in _UNKNOWN_CHARSETS:
        return _guess_text(data, truncated)
    codec = _codec_name(charset)
    if codec is None:
        errors.add(f"unknown charset {charset[:40]!r} in {where}")
        return _guess_text(data, truncated)
    if codec in _GUESSED:
        return _guess_text(data, truncated)
    try:
        return _decode_strict(data, codec, truncated)
    except UnicodeDecodeError:
        if codec == "utf-8":
            errors.add(f"invalid UTF-8 in {where}; decoded as windows-1252")
            return _windows_1252(data)
        errors.add(f"bytes invalid in charset {charset[:40]!r} in {where}")
        return data.decode(codec, "replace")
    except (LookupError, ValueError):
        errors.add(f"charset {charset[:40]!r} in {where} could not be used")
        return _guess_text(data, truncated)


def _fix_8bit(value: str) -> str:
    """Header text as parsed from bytes (8-bit bytes kept as surrogate escapes) → real text."""
    if value.isascii():
        return value
    return _guess_text(value.encode("utf-8", "surrogateescape"))


# --------------------------------------------------------------------------- headers


_WHITESPACE = re.compile(r"\s+")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_CONTROL_RUNS = re.compile(r"[\x00-\x20\x7f]+")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BRACKETED_ID = re.compile(r"<([^<>]*)>")


def _first_headers(msg: Message) -> dict[str, tuple[str, str]]:
    """The first occurrence of each header, by lower-cased name, as stored: one pass over them.

    ``Message.get`` lower-cases every header name on each call until it finds one; eleven calls
    (most for headers a message does not have) over mail with dozens of Received, DKIM and ARC
    headers cost more than the rest of the header work.
    """
    first: dict[str, tuple[str, str]] = {}
    for name, value in msg.raw_items():  # the pairs Message.get reads
        first.setdefault(name.lower(), (name, value))
    return first


def _header_text(msg: Message, headers: dict[str, tuple[str, str]], name: str) -> str | None:
    # The first occurrence, as Message.get gives it: duplicates are ignored on purpose.
    found = headers.get(name.lower())
    if found is None:
        return None
    return _FOLD.sub("", str(msg.policy.header_fetch_parse(*found)))


def _subject(msg: Message, headers: dict[str, tuple[str, str]], errors: _Errors) -> str | None:
    value = _header_text(msg, headers, "Subject")
    return None if value is None else _decode_header(value, errors, "Subject")


def _decode_header(value: str, errors: _Errors, where: str) -> str:
    text = _decode_encoded_words(value, errors, where)
    if text.isprintable() and "  " not in text:
        return text.strip()  # no control characters, no run of spaces: nothing to collapse
    return _CONTROL_RUNS.sub(" ", text).strip()


def _decode_encoded_words(value: str, errors: _Errors, where: str) -> str:
    """RFC 2047 B and Q encoded words; adjacent words of one charset are joined as bytes first,
    because mailers split multi-byte characters across words."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None

    def flush() -> None:
        nonlocal pending_charset
        if pending_charset is not None:
            out.append(_decode_bytes(bytes(pending), pending_charset, errors, where))
        pending.clear()
        pending_charset = None

    position = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(value):
        gap = value[position : match.start()]
        # RFC 2047 §6.2: whitespace between two encoded words is not displayed.
        if gap and not (after_word and gap.isspace()):
            flush()
            out.append(gap)
        charset, encoding, text = match.groups()
        charset = charset.split("*", 1)[0]  # RFC 2231 language suffix
        data = _decode_word(encoding, text)
        if data is None:
            errors.add(f"malformed encoded word in {where}")
            flush()
            out.append(match.group(0))
            after_word = False
        else:
            if charset.lower() != pending_charset:
                flush()
                pending_charset = charset.lower()
            pending.extend(data)
            after_word = True
        position = match.end()
    flush()
    out.append(value[position:])
    return "".join(out)


def _decode_word(encoding: str, text: str) -> bytes | None:
    if encoding in "qQ":
        return binascii.a2b_qp(text.encode("utf-8"), header=True)
    text = text.rstrip("=")
    if len(text) % 4 == 1:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        return None


# --------------------------------------------------------------------------- addresses

# Specials get a token each; everything else comes in runs, so the scan costs per special
# character, not per character. Encoded words are one run: mailers put "(" or "," in them.
_ADDRESS_TOKEN = re.compile(r'=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=|(?:[^"\\()<>\[\],;:=]|=(?!\?))+|.', re.DOTALL)
_ADDR_SPEC = re.compile(r'(?:"[^"]*"|[^\s@<>()\[\],;:"]+)@(?:[^\s@<>()\[\],;:"]+|\[[^\[\]\s]*\])')
# What makes an address list need the scan: quotes, comments, escapes, domain literals, groups
# (and ";"), encoded words. Without them only "<", ">" and "," are special.
_NOT_PLAIN = re.compile(r'["\\()\[\]:;]|=\?')
# One entry of such a list: "phrase <addr> text" or a bare addr; an addr-spec without whitespace.
_PLAIN_MAILBOX = re.compile(r"([^<>]*)<([^\s<>@]+@[^\s<>@]+)>([^<>]*)|\s*([^\s<>@]+@[^\s<>@]+)\s*")


@dataclass
class _Mailbox:
    start: int
    phrase: list[str] = field(default_factory=list)  # display-name text outside <>, quotes removed
    bare: list[str] = field(default_factory=list)  # text outside <> and comments, for a bare addr-spec
    comments: list[str] = field(default_factory=list)
    angle: list[str] | None = None  # an open <...>
    addr: str | None = None  # the closed <...>
    broken: bool = False


def _parse_address_list(value: str, errors: _Errors, where: str) -> list[Address]:
    """Mailboxes in an address-list header value: groups flattened, unparseable entries skipped.

    A hand-written linear scan rather than ``email.headerregistry``, which is quadratic on long
    lists (40 s for 20,000 recipients) and raises on some malformed input. ``;`` is accepted as
    a separator too, because people type Outlook-style lists into other clients.
    """
    plain = _plain_address_list(value, errors, where)
    if plain is not None:
        return plain
    result: list[Address] = []
    box = _Mailbox(start=0)
    quote: list[str] | None = None
    comment: list[str] = []
    comment_depth = 0
    literal = False
    escaped = False

    def finish(end: int) -> None:
        nonlocal box
        address = _finish_mailbox(box, value[box.start : end], errors, where)
        if address is not None:
            result.append(address)
        box = _Mailbox(start=end + 1)

    def raw_target() -> list[str]:
        return box.angle if box.angle is not None else box.bare

    for match in _ADDRESS_TOKEN.finditer(value):
        chunk = match.group(0)
        if escaped:
            escaped = False
            (comment if comment_depth else quote if quote is not None else raw_target()).append(chunk)
        elif comment_depth:
            if chunk == "\\":
                escaped = True
            elif chunk == "(":
                comment_depth += 1
                comment.append(chunk)
            elif chunk == ")":
                comment_depth -= 1
                if comment_depth:
                    comment.append(chunk)
                else:
                    box.comments.append("".join(comment))
                    comment = []
            else:
                comment.append(chunk)
        elif quote is not None:
            if chunk == "\\":
                escaped = True
            elif chunk == '"':
                text = "".join(quote)
                quote = None
                raw_target().append(f'"{text}"')
                if box.angle is None:
                    box.phrase.append(text)
            else:
                quote.append(chunk)
        elif literal:
            raw_target().append(chunk)
            literal = chunk != "]"
        elif chunk == "(":
            comment_depth = 1
        elif chunk == '"':
            quote = []
        elif chunk == "[":
            literal = True
            raw_target().append(chunk)
        elif box.angle is not None:
            if chunk == ">":
                box.addr = "".join(box.angle)
                box.angle = None
            elif chunk == "<":
                box.broken = True
            else:
                # Source routes (<@a,@b:user@host>) put , and : inside the brackets.
                box.angle.append(chunk)
        elif chunk == "<":
            box.broken = box.broken or box.addr is not None
            box.angle = []
        elif chunk in (",", ";"):
            finish(match.start())
        elif chunk == ":" and box.addr is None:
            box = _Mailbox(start=match.end())  # what came before is a group's name, not an address
        elif chunk in (">", ")", ":", "\\"):
            box.broken = True
            box.bare.append(chunk)
        else:
            box.bare.append(chunk)
            box.phrase.append(chunk)
    if quote is not None or comment_depth:
        box.broken = True
    elif box.angle is not None:
        # "Name <a@b" at the very end is unambiguous enough to keep.
        errors.add(f"unterminated <...> in {where}")
        box.addr = "".join(box.angle)
    finish(len(value))
    return result


def _plain_address_list(value: str, errors: _Errors, where: str) -> list[Address] | None:
    """The common case of ``_parse_address_list`` without its token loop; None if the value needs it.

    Gives what the scan gives: an entry is split off at ",", an angle addr is taken as it is
    (it has no whitespace to remove), the display name is the text around it (decoded as
    ``_finish_mailbox`` decodes it), a bare addr has no name, and empty entries are skipped.
    """
    if _NOT_PLAIN.search(value):
        return None
    result: list[Address] = []
    for entry in value.split(","):
        if not entry.strip():
            continue
        match = _PLAIN_MAILBOX.fullmatch(entry)
        if match is None:
            return None  # "," inside <...> (a source route), a second "<", a stray ">", no "@" ...
        phrase, addr, after, bare = match.groups()
        if bare is not None:
            result.append(Address(name=None, email=bare.lower()))
        else:
            display = _decode_header(phrase + after, errors, where)
            result.append(Address(name=display or None, email=addr.lower()))
    return result


def _finish_mailbox(box: _Mailbox, source: str, errors: _Errors, where: str) -> Address | None:
    if not source.strip():
        return None
    if box.broken:
        errors.add(f"skipped unparseable address in {where}: {source.strip()[:80]!r}")
        return None
    if box.addr is not None:
        spec = _WHITESPACE.sub("", box.addr)
        if spec.startswith("@") and ":" in spec:
            spec = spec.split(":", 1)[1]  # obsolete source route
        name = "".join(box.phrase)
    else:
        spec = "".join(box.bare).strip()
        # Old style "user@host (Full Name)": the comment is the only name there is.
        name = " ".join(box.comments)
    if not _ADDR_SPEC.fullmatch(spec):
        errors.add(f"skipped unparseable address in {where}: {source.strip()[:80]!r}")
        return None
    display = _decode_header(name, errors, where)
    return Address(name=display or None, email=spec.lower())


def _address_header(msg: Message, headers: dict[str, tuple[str, str]], name: str, errors: _Errors) -> list[Address]:
    value = _header_text(msg, headers, name)
    if value is None:
        return []
    return _parse_address_list(value, errors, name)


# --------------------------------------------------------------------------- date and ids


def _parse_date(value: str | None, errors: _Errors) -> datetime | None:
    if value is None:
        return None
    text = _CONTROL_RUNS.sub(" ", value).strip()
    try:
        parsed = parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        errors.add(f"invalid Date header: {text[:80]!r}")
        return None
    # RFC 5322 "-0000" and zone-less dates come back naive; UTC is the documented assumption.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _msg_ids(value: str | None) -> list[str]:
    if value is None:
        return []
    ids = [_WHITESPACE.sub("", found) for found in _BRACKETED_ID.findall(value)]
    if not ids:
        ids = [token.strip("<>") for token in re.split(r"[\s,]+", value)]
    return list(dict.fromkeys(found for found in ids if found))


# --------------------------------------------------------------------------- body


@dataclass(frozen=True)
class _Body:
    snippet: str
    attachments: list[Attachment]
    has_html: bool


_TEXT_BODY_TYPES = ("text/plain", "text/html")
_MESSAGE_ATTACHMENT_TYPES = ("message/rfc822", "message/global")


def _leaves(msg: Message) -> Iterator[Message]:
    """Leaf parts in order; an attached message is one leaf (its own parts are not ours)."""
    stack = [msg]
    while stack:
        part = stack.pop()
        payload = part.get_payload()
        if isinstance(payload, list) and part.get_content_maintype() != "message":
            stack.extend(reversed([child for child in payload if isinstance(child, Message)]))
        else:
            yield part


def _content_type(part: Message) -> str:
    content_type = part.get_content_type()
    if content_type.startswith("multipart/") and not isinstance(part.get_payload(), list):
        # A multipart without (usable) boundary: the parser keeps the body as text; show it as such.
        return "text/plain"
    return content_type


def _analyse_body(msg: Message, errors: _Errors) -> _Body:
    leaves = []
    for part in _leaves(msg):
        disposition = part.get_content_disposition()
        # RFC 2183: an unrecognised disposition is to be treated as "attachment".
        inline = disposition in (None, "inline")
        leaves.append((part, _content_type(part), inline, _filename(part, errors)))

    bodies = [leaf for leaf in leaves if leaf[1] in _TEXT_BODY_TYPES and leaf[2] and leaf[3] is None]
    if not bodies:
        # Some clients name their only text part (body.txt); then that part is the body after all.
        bodies = [leaf for leaf in leaves if leaf[1] in _TEXT_BODY_TYPES and leaf[2]][:1]
    body_ids = {id(leaf[0]) for leaf in bodies}

    attachments = [
        Attachment(filename=filename, content_type=content_type, size=_attachment_size(part, errors))
        for part, content_type, inline, filename in leaves
        if id(part) not in body_ids
        and (not inline or filename is not None or content_type in _MESSAGE_ATTACHMENT_TYPES)
    ]
    plain = [part for part, content_type, _, _ in bodies if content_type == "text/plain"]
    html_parts = [part for part, content_type, _, _ in bodies if content_type == "text/html"]
    snippet = _snippet(plain, errors, is_html=False) or _snippet(html_parts, errors, is_html=True)
    return _Body(snippet=snippet, attachments=attachments, has_html=bool(html_parts))


def _filename(part: Message, errors: _Errors) -> str | None:
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        value = part.get_param(param, None, header)
        if value is None:
            continue
        if isinstance(value, tuple):  # RFC 2231: (charset, language, text with bytes as latin-1)
            charset, _language, text = value
            try:
                data = str(text).encode("latin-1")
            except UnicodeEncodeError:
                decoded = str(text)
            else:
                decoded = _decode_bytes(data, charset or None, errors, "attachment filename")
        else:
            decoded = str(value)
        # Outlook and others put RFC 2047 words in parameters although RFC 2047 forbids it.
        decoded = _decode_header(decoded, errors, "attachment filename")
        # Old clients send full client-side paths; only the last component is a file name.
        decoded = re.split(r"[\\/]", decoded)[-1].strip()
        if decoded:
            return decoded
    return None


def _transfer_encoding(part: Message) -> str:
    return str(part.get("content-transfer-encoding", "")).strip().lower()


_NOT_BASE64_TEXT = re.compile(r"[^A-Za-z0-9+/=\t\n\r ]")


def _base64_size(encoded: str, more_chars: int = 0) -> int | None:
    """Decoded length of clean base64 without decoding it (``more_chars``: characters of it
    elided before parsing); None if the data is not clean."""
    if _NOT_BASE64_TEXT.search(encoded):
        return None
    padding = 0
    first_pad = encoded.find("=")
    if first_pad != -1:
        tail = _WHITESPACE.sub("", encoded[first_pad:])
        if tail.strip("=") or len(tail) > 2:
            return None
        padding = len(tail)
    chars = len(encoded) - sum(encoded.count(c) for c in "\t\n\r ") + more_chars
    if chars % 4:
        return None
    return chars // 4 * 3 - padding


class _CountingSink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)


_DECODED_TRANSFER_ENCODINGS = ("base64", "quoted-printable", "x-uuencode", "uuencode", "x-uue", "uue")


def _flattened_size(messages: list[Message]) -> int:
    sink = _CountingSink()
    elided = 0
    for message in messages:
        BytesGenerator(sink, mangle_from_=False).flatten(message, linesep="\r\n")
        for part in _walk_all(message):
            payload = part.get_payload()
            if isinstance(payload, str) and "\x00elided:" in payload:
                for found in _ELIDED.finditer(payload):
                    # The generator wrote the marker line; the message had the lines it stands for.
                    elided += int(found.group(1)) - len(found.group(0))
    return sink.size + elided


def _attachment_size(part: Message, errors: _Errors) -> int:
    payload = part.get_payload()
    if isinstance(payload, list):
        # An attached message: its size on the wire, counted without building the bytes.
        return _safe(errors, "attached message size", lambda: _flattened_size(payload), 0)
    if not isinstance(payload, str):
        return 0
    payload, elided_bytes, elided_chars = _without_elided(payload)
    encoding = _transfer_encoding(part)
    if encoding == "base64":
        size = _base64_size(payload, elided_chars)
        if size is not None:
            return size
    if payload.isascii() and encoding not in _DECODED_TRANSFER_ENCODINGS:
        return len(payload) + elided_bytes  # identity encoding: one character per byte, no copy needed
    if elided_bytes:
        if encoding != "base64":
            return len(payload) + elided_bytes  # not base64 after all: its size on the wire
        # Unclean base64 (cut short, stray characters): the stdlib decodes what was kept (and
        # records the defects a full parse would); the elided lines were whole quads.
        part.set_payload(payload)
        decoded = _safe(errors, "attachment payload", lambda: part.get_payload(decode=True), None)
        return (len(decoded) if isinstance(decoded, bytes) else len(payload)) + elided_chars // 4 * 3
    decoded = _safe(errors, "attachment payload", lambda: part.get_payload(decode=True), None)
    return len(decoded) if isinstance(decoded, bytes) else len(payload)


_NON_BASE64 = re.compile(r"[^A-Za-z0-9+/]")


def _decoded_prefix(part: Message, cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the part's decoded payload, and whether more was cut off."""
    payload = part.get_payload()
    if not isinstance(payload, str):
        return b"", False
    encoding = _transfer_encoding(part)
    if encoding == "base64":
        chunk = payload[: cap * 2]
        truncated = len(payload) > len(chunk)
        clean = _NON_BASE64.sub("", chunk)
        if truncated:
            clean = clean[: len(clean) // 4 * 4]
        elif len(clean) % 4 == 1:
            clean = clean[:-1]  # a lone trailing character carries no complete byte
        data = binascii.a2b_base64(clean + "=" * (-len(clean) % 4))
    elif encoding == "quoted-printable" and payload.isascii():
        chunk = payload[: cap * 3]
        truncated = len(payload) > len(chunk)
        data = binascii.a2b_qp(chunk.encode("utf-8", "surrogateescape"))
    else:
        # get_payload() has already run raw 8-bit bytes through the declared charset with
        # errors="replace"; decode=True is the only public way to the bytes themselves (for
        # identity encodings it is a copy, not a decoding).
        raw = part.get_payload(decode=True)
        data = raw if isinstance(raw, bytes) else b""
        truncated = False
    return data[:cap], truncated or len(data) > cap


# Invisible characters marketing mail uses to pad preview text.
_INVISIBLE = re.compile("[\u00ad\u034f\u180e\u200b-\u200f\u2060-\u2064\ufeff\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def _clean_text(text: str, limit: int | None = None) -> str:
    """``text`` without invisible characters, whitespace collapsed; its first ``limit`` characters.

    With a limit only a prefix of ``text`` is cleaned, growing until it gives enough: the cleaned
    prefix is always a prefix of the cleaned whole (a cut whitespace run is only stripped), so the
    result is the same as cleaning all of it, for a snippet's 200 characters of a 4 KB body.
    """
    if limit is not None:
        size = 2 * limit
        while size < len(text):
            cleaned = _clean_text(text[:size])
            if len(cleaned) >= limit:
                return cleaned[:limit]
            size *= 4
    # split/join collapses whitespace as _WHITESPACE.sub(" ", ...).strip() does (the same
    # characters are whitespace to both), six times faster on text with a space every few letters.
    return " ".join(_INVISIBLE.sub("", text).split())[:limit]


def _snippet(parts: list[Message], errors: _Errors, *, is_html: bool) -> str:
    pieces: list[str] = []
    length = 0
    for part in parts:
        if length >= SNIPPET_LENGTH:
            break
        text = ""
        where = "text/html body" if is_html else "text/plain body"  # the part's _content_type
        for cap in (SNIPPET_FIRST_TRY, HTML_CAP if is_html else PLAIN_TEXT_CAP):
            data, truncated = _decoded_prefix(part, cap)
            text = _decode_bytes(data, part.get_content_charset(), errors, where, truncated)
            # Only what fits counts: the cut piece fills the snippet, as the whole piece would.
            text = _clean_text(_html_to_text(text, SNIPPET_LENGTH) if is_html else text, SNIPPET_LENGTH - length)
            if not truncated or len(text) >= SNIPPET_LENGTH - length:
                break  # enough text (or all there is) from the first bytes
        if text:
            pieces.append(text)
            length += len(text) + 1
    return " ".join(pieces)[:SNIPPET_LENGTH].rstrip()


# --------------------------------------------------------------------------- HTML to text

# Elements whose content is never shown as text.
_HIDDEN_ELEMENTS = frozenset({"script", "style", "title", "template"})
# Elements that do not separate words; every other tag becomes a space.
_INLINE_ELEMENTS = frozenset(
    {"a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "em", "font", "i", "kbd", "mark", "q", "s", "small",
     "span", "strike", "strong", "sub", "sup", "tt", "u", "var", "wbr"}
)  # fmt: skip
_TAG_START = re.compile(r"</?([A-Za-z][^\s/>]*)")
_HIDDEN_END = {name: re.compile(f"</{name}", re.IGNORECASE) for name in _HIDDEN_ELEMENTS}


def _html_to_text(markup: str, limit: int) -> str:
    """Visible text of HTML, stopping once about ``limit`` characters are collected.

    Deliberately not ``html.parser``: its scanner is quadratic on unclosed tags (30 s for 200 KB
    of "<a") in this Python. Each step here moves forward with ``str.find``, so it is linear;
    attribute values containing ">" are the price, which a snippet can afford.
    """
    out: list[str] = []
    collected = 0
    position = 0
    while collected < limit:
        start = markup.find("<", position)
        text = markup[position : start if start != -1 else len(markup)]
        if text:
            text = html.unescape(text)
            out.append(text)
            collected += len(_clean_text(text, limit - collected))
        if start == -1:
            break
        if markup.startswith("<!--", start):
            end = markup.find("-->", start + 4)
            position = end + 3
        else:
            tag = _TAG_START.match(markup, start)
            if tag is None:
                if markup.startswith(("<!", "<?"), start):  # doctype, CDATA, processing instruction
                    end = markup.find(">", start)
                    position = end + 1
                else:
                    out.append("<")  # a lone "<" is text
                    position = end = start + 1
            else:
                end = markup.find(">", tag.end())
                position = end + 1
                name = tag.group(1).lower()
                if name not in _INLINE_ELEMENTS:
                    out.append(" ")
                closing = markup[start + 1] == "/"
                if end != -1 and not closing and name in _HIDDEN_ELEMENTS and markup[end - 1] != "/":
                    close = _HIDDEN_END[name].search(markup, position)
                    end = -1 if close is None else markup.find(">", close.end())
                    position = end + 1
        if end == -1:
            break  # an unterminated construct swallows the rest, as in a browser
    return "".join(out)
