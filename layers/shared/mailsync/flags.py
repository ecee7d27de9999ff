"""IMAP flags as Mailsync keeps them: bounded in count and bytes.

Used by the IMAP connection (what it reports) and the stored metadata alike, so neither imports
the other.
"""

from __future__ import annotations

from collections.abc import Iterable

# Flags come from the server, not the message, but they are stored on the same item: a message
# with thousands of keywords (one FETCH line can carry ~1 MB of them) would make every write of it
# fail, and the account's pull stop at it for good. System flags go first, so \Seen is never cut.
MAX_FLAGS = 100
FLAG_BYTES = 200
_SYSTEM_FLAG_ORDER = ("\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft")


def cap_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """At most MAX_FLAGS distinct flags of at most FLAG_BYTES each, sorted case-insensitively.

    System flags are kept before keywords (the standard ones first); an over-long keyword is
    dropped, not cut: a shortened keyword would be a different one.
    """

    def priority(flag: str) -> tuple[int, int, str]:
        lower = flag.lower()
        if lower in _SYSTEM_FLAG_ORDER:
            return (0, _SYSTEM_FLAG_ORDER.index(lower), lower)
        return (1 if flag.startswith("\\") else 2, 0, lower)

    kept: list[str] = []
    for flag in sorted(set(flags), key=priority):
        if len(kept) >= MAX_FLAGS:
            break
        if len(_utf8(flag)) <= FLAG_BYTES:
            kept.append(flag)
    return tuple(sorted(kept, key=str.lower))


def _utf8(value: str) -> bytes:
    # Lone surrogates (undecodable input) must not make the size check itself raise.
    return value.encode("utf-8", "surrogatepass")
