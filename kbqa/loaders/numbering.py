"""Word's automatic numbering: the label ("第三条", "2.1", "b)") a numbered paragraph shows before its text.

Word keeps a list item's number out of the text: the paragraph (or its style) names a list and a level, and the
list's level says how to count and write it (numbering.xml). A regulation whose articles are numbered so lost
"第三条" with it, and a question about 第三条 found nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from docx.oxml.ns import qn

_W_VAL = qn("w:val")


@dataclass(frozen=True)
class _Level:
    start: int
    fmt: str
    text: str
    suffix: str


def _val(element: Any, tag: str, default: str | None = None) -> str | None:
    child = element.find(qn(tag)) if element is not None else None
    return child.get(_W_VAL, default) if child is not None else default


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _levels(abstract: Any) -> dict[int, _Level]:
    out = {}
    for lvl in abstract.iterchildren(qn("w:lvl")):
        out[_int(lvl.get(qn("w:ilvl")), 0)] = _Level(
            start=_int(_val(lvl, "w:start"), 1), fmt=_val(lvl, "w:numFmt", "decimal") or "decimal",
            text=_val(lvl, "w:lvlText", "") or "", suffix=_val(lvl, "w:suff", "tab") or "tab")
    return out


class Numbering:
    """Counts a document's numbered paragraphs in reading order and writes each one's label."""

    def __init__(self, numbering: Any | None, styles: Any | None) -> None:
        self.abstract: dict[str, dict[int, _Level]] = {}
        self.nums: dict[str, tuple[str, dict[int, int]]] = {}  # numId -> (abstractNumId, level -> start override)
        if numbering is not None:
            for abstract in numbering.iterchildren(qn("w:abstractNum")):
                self.abstract[abstract.get(qn("w:abstractNumId"), "")] = _levels(abstract)
            for num in numbering.iterchildren(qn("w:num")):
                starts = {_int(o.get(qn("w:ilvl")), 0): _int(_val(o, "w:startOverride"), 1)
                          for o in num.iterchildren(qn("w:lvlOverride")) if o.find(qn("w:startOverride")) is not None}
                self.nums[num.get(qn("w:numId"), "")] = (_val(num, "w:abstractNumId", "") or "", starts)
        self.styles: dict[str, tuple[Any, str | None]] = {}  # styleId -> (its numPr or None, basedOn)
        if styles is not None:
            for style in styles.iterchildren(qn("w:style")):
                ppr = style.find(qn("w:pPr"))
                self.styles[style.get(qn("w:styleId"), "")] = (
                    ppr.find(qn("w:numPr")) if ppr is not None else None, _val(style, "w:basedOn"))
        self.counts: dict[str, list[int | None]] = {}

    def _style_numbering(self, style: str | None) -> Any | None:
        seen = set()
        while style and style not in seen and style in self.styles:
            seen.add(style)
            num_pr, based_on = self.styles[style]
            if num_pr is not None:
                return num_pr
            style = based_on
        return None

    def label(self, p: Any) -> str:
        """The label paragraph ``p`` shows before its text, with the space after it; "" when it has none
        (bullets too: a bullet says nothing)."""
        if not self.nums:
            return ""
        ppr = p.find(qn("w:pPr"))
        own = ppr.find(qn("w:numPr")) if ppr is not None else None
        style = self._style_numbering(_val(ppr, "w:pStyle"))
        num_id = _val(own, "w:numId") or _val(style, "w:numId")
        ilvl = _int(_val(own, "w:ilvl") or _val(style, "w:ilvl"), 0)
        if not num_id or num_id not in self.nums:  # numId 0: numbering turned off for this paragraph
            return ""
        abstract_id, starts = self.nums[num_id]
        levels = self.abstract.get(abstract_id, {})
        level = levels.get(ilvl)
        if level is None:
            return ""
        # Lists of one abstract definition count on together, as Word shows them, unless a list restarts.
        key = f"num {num_id}" if starts else f"abstract {abstract_id}"
        counts = self.counts.setdefault(key, [None] * 9)
        start = starts.get(ilvl, level.start)
        counts[ilvl] = start if counts[ilvl] is None else counts[ilvl] + 1  # type: ignore[operator]
        counts[ilvl + 1:] = [None] * (8 - ilvl)
        if level.fmt in ("bullet", "none") or not level.text:
            return ""
        text = level.text
        for i in range(8, -1, -1):  # %10 is no placeholder; %1..%9 name levels 0..8
            if f"%{i + 1}" in text:
                at = levels.get(i, level)
                n = counts[i] if counts[i] is not None else starts.get(i, at.start)
                text = text.replace(f"%{i + 1}", format_number(n or 0, at.fmt))
        return text + {"tab": " ", "space": " "}.get(level.suffix, "")


_ZH_DIGITS = "零一二三四五六七八九"
_CIRCLED = "①②③④⑤⑥⑦⑧⑨⑩⑪⑫⑬⑭⑮⑯⑰⑱⑲⑳"
_STEMS = "甲乙丙丁戊己庚辛壬癸"


def chinese_number(n: int) -> str:
    """``n`` in Chinese numerals as a list counts: 一, 十, 十一, 二十三, 一百零五, 一千二百."""
    if n <= 0 or n >= 100_000:
        return str(n)
    out, zero = "", False
    for value, unit in ((10_000, "万"), (1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit, n = divmod(n, value)
        if digit:
            if zero and out:
                out += "零"
            out += ("" if unit == "十" and not out and digit == 1 else _ZH_DIGITS[digit]) + unit
            zero = False
        elif out:
            zero = True
    return out


def _roman(n: int) -> str:
    if not 0 < n < 4000:
        return str(n)
    out = ""
    for value, mark in ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
                        (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        count, n = divmod(n, value)
        out += mark * count
    return out


def format_number(n: int, fmt: str) -> str:
    """``n`` written in Word's number format ``fmt`` (decimal where kbqa does not know it)."""
    if fmt in ("chineseCounting", "chineseCountingThousand", "taiwaneseCounting", "taiwaneseCountingThousand",
               "japaneseCounting", "chineseLegalSimplified"):
        return chinese_number(n)
    if fmt in ("ideographDigital", "taiwaneseDigital", "japaneseDigitalTenThousand"):
        return "".join(_ZH_DIGITS[int(d)] for d in str(n))
    if fmt in ("lowerRoman", "upperRoman"):
        return _roman(n).lower() if fmt == "lowerRoman" else _roman(n)
    if fmt in ("lowerLetter", "upperLetter") and n > 0:
        letter = "abcdefghijklmnopqrstuvwxyz"[(n - 1) % 26] * ((n - 1) // 26 + 1)
        return letter.upper() if fmt == "upperLetter" else letter
    if fmt == "decimalZero":
        return f"{n:02d}"
    if fmt == "decimalFullWidth":
        return "".join(chr(ord(d) + 0xFEE0) for d in str(n))
    if fmt == "decimalEnclosedCircle" and 0 < n <= len(_CIRCLED):
        return _CIRCLED[n - 1]
    if fmt in ("ideographTraditional", "ideographZodiac") and 0 < n <= len(_STEMS):
        return _STEMS[n - 1]
    return str(n)
