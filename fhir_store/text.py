"""Text normalisation: NFC for storage, accent-folding for search.

Vietnamese desks type names with or without tone marks ("nguyen" must find
"Nguyễn"), so string search compares folded text: Unicode NFD, combining marks
dropped, "đ"/"Đ" mapped to "d" (it has no decomposition), lower-cased, and every
run of punctuation or space made one space.
"""

from __future__ import annotations

import re
import unicodedata

_MARKS = re.compile(r"[\u0300-\u036f]")
_SEPARATORS = re.compile(r"[\W_]+", re.UNICODE)


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    bare = _MARKS.sub("", decomposed).replace("đ", "d").replace("Đ", "D")
    return _SEPARATORS.sub(" ", bare.lower()).strip()


def nfc(text: str) -> str:
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)
