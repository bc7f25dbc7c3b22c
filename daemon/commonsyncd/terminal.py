"""Text that others chose, made safe to print to a terminal.

File names, folder labels, device names and error details come from peers (and relays), and
a terminal obeys what it is sent: an escape sequence in a file name can move the cursor,
rewrite what is on screen, retitle the window or, on some terminals, answer back as if typed.
Everything the ``commonsync`` command prints passes through :func:`visible` (control
characters, bidirectional overrides and line separators become escapes a person can read:
ESC as ``\\x1b``, U+202E as ``\\u202e``), and what goes into a rich table is a ``Text``, so
that ``[bold]`` in a name is shown as it is rather than read as markup.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL; the bidirectional controls (which reorder what follows, and
# can make a name look like another); line and paragraph separators; lone surrogates (from
# names that were not UTF-8, which a terminal cannot show and print() cannot encode).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]"
)
# The same, but newlines (which a message of ours may hold) pass.
_UNSAFE_KEEP_LINES = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
    "\ud800-\udfff]"
)
# What json.dumps(ensure_ascii=False) leaves raw but a terminal may act on (it escapes C0).
_UNSAFE_IN_JSON = re.compile(
    "[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def visible(text: object, *, keep_lines: bool = False) -> str:
    """``str(text)`` with every character a terminal would act on written as an escape;
    with ``keep_lines``, newlines stay (for multi-line messages of our own)."""
    pattern = _UNSAFE_KEEP_LINES if keep_lines else _UNSAFE
    return pattern.sub(_escape, str(text))


def json_visible(encoded: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with the characters that JSON
    leaves raw but a terminal acts on written as ``\\uXXXX`` escapes: the same JSON value."""
    return _UNSAFE_IN_JSON.sub(_json_escape, encoded)
