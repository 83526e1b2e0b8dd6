"""Text normalization applied to every document before hashing and tokenization.

Rules, in order: CRLF and lone CR become LF; vertical tab and form feed become LF; the other C0
and C1 control characters (all but TAB and LF) and DEL are removed; then Unicode NFC.

Example:
    >>> normalize_text("Cafe\\u0301\\r\\nline\\x00two\\x0cpage")
    'Café\\nlinetwo\\npage'
"""

from __future__ import annotations

import re
import unicodedata

_NEWLINES = re.compile(r"\r\n?|[\x0b\x0c]")
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def normalize_text(text: str) -> str:
    """Returns `text` with newlines unified, control characters removed, and in NFC."""
    if _NEWLINES.search(text):
        text = _NEWLINES.sub("\n", text)
    if _CONTROLS.search(text):
        text = _CONTROLS.sub("", text)
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text
