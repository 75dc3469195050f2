"""Untrusted text made safe for a terminal: the one place every command printing stored data uses.

Log records hold what senders chose (an integration id in a URL, a payload, a rewrite's message,
a destination's answer). Printed as they are, control characters clear the screen, set window
titles, write hyperlinks or forge table rows, and rich would read `[...]` as markup. Here:

- `safe_text` shows every control character (C0, DEL, C1), format character (bidi overrides,
  zero-width), surrogate, and line or paragraph separator as a visible escape (`\\n`, `\\x1b`,
  `\\u202e`), so one value is one line and nothing in it reaches the terminal as a command;
- `cell` wraps it in a rich `Text`, which rich never parses for markup or emoji codes;
- `json_line` writes JSON with every non-ASCII character and DEL escaped.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from rich.text import Text

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


def cell(text: str, style: str = "") -> Text:
    """A rich table cell of untrusted text: escaped, and never parsed as markup."""
    return Text(safe_text(text), style=style)


def json_line(value: Any) -> str:
    """One line of JSON that is safe on a terminal: ASCII only, DEL escaped too."""
    return json.dumps(value, ensure_ascii=True).replace("\x7f", "\\u007f")
