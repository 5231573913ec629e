"""Which language a text is in, as far as kbqa needs to know: Chinese or not."""

from __future__ import annotations

import re

#: Han characters (CJK unified ideographs, extension A, compatibility ideographs), for a regex ``[...]`` class.
HAN_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN = re.compile(f"[{HAN_CHARS}]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def is_chinese(text: str) -> bool:
    """True when Han characters outnumber Latin words (``ChatGLM2 的上下文多长`` is Chinese)."""
    han = len(_HAN.findall(text))
    return han > 0 and han >= len(_LATIN_WORD.findall(text))
