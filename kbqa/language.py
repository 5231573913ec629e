"""Which language a text is in, as far as kbqa needs to know: Chinese or not."""

from __future__ import annotations

import re

#: Han characters (CJK unified ideographs, extension A, compatibility ideographs), for a regex ``[...]`` class.
HAN_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
#: One Han character (search a text for any).
HAN = re.compile(f"[{HAN_CHARS}]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


#: Quoted or code spans (an error message, a file name) say nothing of the language they are quoted in.
_QUOTED = re.compile(r"`[^`\n]+`|(?<![A-Za-z])'[^'\n]+'(?![A-Za-z])|\"[^\"\n]+\"|“[^”\n]+”|‘[^’\n]+’")


def is_chinese(text: str) -> bool:
    """True when Han characters outnumber Latin words (``ChatGLM2 的上下文多长`` is Chinese), quoted spans
    left out (``报错 No module named 'configs.model_config' 是哪个issue？``), or when a text with Han characters
    ends with a full-width question mark or full stop."""
    if not HAN.search(text):
        return False
    if text.rstrip()[-1:] in ("？", "。"):
        return True
    own = _QUOTED.sub(" ", text)
    if own.strip():
        text = own
    han = len(HAN.findall(text))
    return han > 0 and han >= len(_LATIN_WORD.findall(text))
