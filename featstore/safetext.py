"""Text made safe to show: a file name printed to a terminal or a log never sends it escape sequences, bells or
carriage returns, nor shows its letters in another order than stored (bidirectional overrides). The lowest layer, so
that every module may name a path in a message (:mod:`featstore.linkrule` too, below :mod:`featstore.outputs`, which
re-exports :func:`terminal_safe`).
"""

from __future__ import annotations


def terminal_safe(text: str) -> str:
    r"""``text`` with control characters (escape sequences, bells, carriage returns) and undecodable file-name bytes
    shown as ``\x..`` escapes: safe to print to a terminal or a log.

    >>> terminal_safe("cat\r\nimg.png"), terminal_safe("bad\udcff.png")
    ('cat\\x0d\\x0aimg.png', 'bad\\xff.png')
    """
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from os.fsdecode
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(
        f"\\x{ord(c):02x}" if _hidden(ord(c)) else (f"\\u{ord(c):04x}" if ord(c) in _BIDI else c) for c in text
    )


_BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}  # bidirectional overrides: shown in another order than stored


def _hidden(code: int) -> bool:
    """A C0 or C1 control character, or DEL."""
    return code < 0x20 or 0x7F <= code < 0xA0
