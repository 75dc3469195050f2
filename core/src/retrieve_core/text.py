"""Untrusted text made safe for where it goes: a terminal or a status (one visible line), UTF-8.

Senders, destinations and polled sources choose text that ends up in log records, statuses,
notifications and terminals. Two transformations every such output shares:

- `safe_text` shows every control character (C0, DEL, C1), format character (bidi overrides,
  zero-width), surrogate, and line or paragraph separator as a visible escape (`\\n`, `\\x1b`,
  `\\u202e`), so one value is one line and nothing in it acts on a terminal;
- `utf8_text` makes text UTF-8 can carry: a lone surrogate (a string cut inside an emoji, or
  escaped that way in a sender's JSON) becomes its visible `\\udXXX` escape.
"""

from __future__ import annotations

import unicodedata

# Unicode categories shown escaped: controls, format characters, surrogates, and the
# separators a terminal (or a reader) takes for a new line.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_text(text: str) -> str:
    """`text` with every character that could act on a terminal shown as an escape."""
    if text.isprintable():  # the common case: nothing to look at twice
        return text
    return "".join(
        _escape(char) if unicodedata.category(char) in _UNSAFE_CATEGORIES else char for char in text
    )


def utf8_text(text: str) -> str:
    """`text` as UTF-8 can carry it: lone surrogates become visible `\\udXXX` escapes."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode()
