"""Untrusted text made safe for a terminal: the one place every command printing stored data uses.

Log records hold what senders chose (an integration id in a URL, a payload, a rewrite's message,
a destination's answer). Printed as they are, control characters clear the screen, set window
titles, write hyperlinks or forge table rows, and rich would read `[...]` as markup. Here:

- `safe_text` (`retrieve_core.text`, shared with the statuses and logs that need it) shows
  every control character (C0, DEL, C1), format character (bidi overrides, zero-width),
  surrogate, and line or paragraph separator as a visible escape (`\\n`, `\\x1b`, `\\u202e`),
  so one value is one line and nothing in it reaches the terminal as a command;
- `cell` wraps it in a rich `Text`, which rich never parses for markup or emoji codes;
- `json_line` writes JSON with every non-ASCII character and DEL escaped.
"""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text

from retrieve_core.text import safe_text

__all__ = ["cell", "json_line", "safe_text"]


def cell(text: str, style: str = "") -> Text:
    """A rich table cell of untrusted text: escaped, and never parsed as markup."""
    return Text(safe_text(text), style=style)


def json_line(value: Any) -> str:
    """One line of JSON that is safe on a terminal: ASCII only, DEL escaped too."""
    return json.dumps(value, ensure_ascii=True).replace("\x7f", "\\u007f")
