"""One escaping function for every place untrusted text meets a human: terminal tables, the HTML
report, the cut-down syslog form.

Why: command lines, container names, Zeek-unescaped Host headers and URIs come from the watched
containers, i.e. from the adversary. Printed raw, an ESC/OSC/CSI sequence recolours or rewrites what
the analyst sees (`\\x1b[2K\\r` erases the row, `\\x1b]8;;...` plants a link, `\\x1b]0;...` retitles
the window), CR/BS overwrite the line, and bidi overrides reorder it. Every such character is shown
as a visible escape instead: C0/C1 controls and DEL as `\\xNN`, invisible or reordering format
characters as `\\uNNNN`. Printable text, including non-ASCII, is left alone.
"""
from __future__ import annotations

import re
from typing import Any

# C0 controls, DEL, C1 controls; zero-width and bidi marks, line/paragraph separators, bidi
# embeddings/overrides/isolates, word joiner and friends, BOM.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _visible(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}"


def escape_text(value: Any) -> str:
    """`value` as text with every control and invisible formatting character made visible
    (ESC -> `\\x1b`, CR -> `\\x0d`, U+202E -> `\\u202e`)."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_visible, text) if _UNSAFE.search(text) else text
