"""Names from the outside (file names, inspector names) as a person or a spreadsheet may safely read them."""

from __future__ import annotations

import re

# C0 and C1 controls (newlines, carriage returns, terminal escape codes), the bidirectional overrides, and the lone
# surrogates that stand for a name's bytes that are not UTF-8
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet run a cell as a formula


def is_utf8(text: str) -> bool:
    """Whether a name is UTF-8 text: Python keeps a name's bytes that are not as lone surrogates, which a UTF-8 file,
    a CSV cell or SQLite text cannot hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """Control and direction characters written as escapes (a newline as \\n, ESC as \\x1b), and a name's bytes
    that are not UTF-8 (\\udce9): a file name can neither forge a line of output (a defective photo printed as ok)
    nor drive the terminal, nor stop a message from being printed."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def spreadsheet_cell(text: str) -> str:
    """A text cell that a spreadsheet shows as text: one starting like a formula gets a leading quote (OWASP)."""
    return "'" + text if text.startswith(FORMULA_START) else text
