"""The one rendering of a process's argv that every `cmdline` column carries.

Why: a command line is attacker-controlled text that ends up on an analyst's terminal, in a SIEM
and in alert evidence. Joining argv with spaces loses the argument boundaries (`sh -c "a b"` and
`sh -c a b` look the same) and passes control characters through raw, so an ESC or OSC sequence,
a carriage return or a bidi override in an argument can rewrite what the analyst sees. Every
table (container_processes, container_process_events) therefore renders argv here, and only here.

The rendering is shell quoting, as bash's `printf %q` family does it, so it reads naturally and a
shell (or the classifier's tokenizer) splits it back into the same argv:

* an argument of word characters and ``@%+=:,./-`` only is written as is (``wget -qO- http://x/``);
* one with spaces or other shell syntax, but nothing invisible, goes in single quotes;
* one with a control or invisible character, a single quote, or bytes that are not UTF-8 goes in
  ANSI-C quotes, ``$'...'``, where ``\\\\`` is a backslash, ``\\'`` a quote, ``\\n \\r \\t`` and
  ``\\xNN`` are control characters and undecodable bytes, and ``\\uXXXX`` is an invisible Unicode
  character (C1 controls, format characters such as bidi overrides, line/paragraph separators);
* an empty argument is ``''``.

Nothing that a terminal interprets survives: the output holds printable characters and spaces only.
Stdlib only: the exec-capture process (proc_connector) renders with it too.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

# Written as is: word characters (Unicode letters and digits, underscore) and a few punctuation
# marks with no shell meaning. \w never matches control, format or separator characters.
_BARE = re.compile(r"[\w@%+=:,./-]+")
# A raw /proc cmdline whose every argument is a non-empty bare ASCII word (one bytes regex pass
# instead of a decode and a match per argument: container_processes renders hundreds per query).
_BARE_RAW = re.compile(rb"(?:[A-Za-z0-9_@%+=:,./-]+\x00)*[A-Za-z0-9_@%+=:,./-]+\x00?")
# Printable ASCII and space, except the single quote: fine inside '...'.
_ASCII_QUOTABLE = re.compile(r"[ -&(-~]*")
_NAMED = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(ch: str) -> bool:
    """A character that shows as itself: not a control, format, surrogate (an undecodable byte
    from surrogateescape), private-use or unassigned code point, nor a line/paragraph separator."""
    cat = unicodedata.category(ch)
    return cat[0] != "C" and cat not in ("Zl", "Zp")


def _ansi_c_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:  # surrogateescape: the original byte was not UTF-8
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x20 or o == 0x7F:
        return f"\\x{o:02x}"
    if o < 0x80 or _visible(ch):
        return ch
    return f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"


def _single_quotable(arg: str) -> bool:
    """Safe inside '...': no single quote, and every character printable (or a space)."""
    if _ASCII_QUOTABLE.fullmatch(arg):
        return True
    return "'" not in arg and all(" " <= ch < "\x7f" if ch.isascii() else _visible(ch)
                                  for ch in arg)


def quote_arg(arg: str) -> str:
    """One argument, quoted only as much as it needs (see the module docstring)."""
    if not arg:
        return "''"
    if _BARE.fullmatch(arg):
        return arg
    if _single_quotable(arg):
        return f"'{arg}'"
    return "$'" + "".join(map(_ansi_c_char, arg)) + "'"


def split_raw(raw: bytes) -> list[str]:
    """argv from /proc/<pid>/cmdline bytes (NUL separated, one trailing NUL); bytes that are not
    UTF-8 become lone surrogates (surrogateescape), which quote_arg writes back as ``\\xNN``."""
    if not raw:
        return []
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")]


def format_cmdline(argv: bytes | Sequence[str | bytes]) -> str:
    """The `cmdline` column for an argv: raw /proc cmdline bytes, or a list of arguments (bytes
    arguments are raw; str arguments are text, lone surrogates in them are undecodable bytes)."""
    if isinstance(argv, (bytes, bytearray, memoryview)):
        raw = bytes(argv)
        if _BARE_RAW.fullmatch(raw):  # the common case (sleep 3600, nginx -g ...): no quoting
            return raw.rstrip(b"\0").replace(b"\0", b" ").decode("ascii")
        args: Sequence[str | bytes] = split_raw(raw)
    else:
        args = argv
    return " ".join(quote_arg(a.decode("utf-8", "surrogateescape")
                              if isinstance(a, (bytes, bytearray)) else str(a)) for a in args)
