"""OCR: scanned PDFs, images and pictures inside .docx read the text the corpus README says they hold.

OCR takes seconds per page on two cores, so each corpus file is recognised once per module.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from kbqa import ocr
from kbqa.errors import CorruptDocument, ModelUnavailable
from kbqa.loaders import load_document
from kbqa.schema import Section
from tests.conftest import CORPUS

OCR_FILES = ["zh_scanned_magazine_page.pdf", "en_scanned_paper_page.pdf", "zh_chi_sim_image.jpeg",
             "zh_ocr_test.jpg", "zh_text_transparent.png"]


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[Section]]:
    """Every OCR test file (and the .docx with a picture) loaded once, with OCR on."""
    files = [CORPUS / "ocr" / name for name in OCR_FILES] + [CORPUS / "zh_docx_with_text_image.docx"]
    return {path.name: load_document(path, ocr=True) for path in files}


def text_of(loaded: dict[str, list[Section]], name: str) -> str:
    return "\n".join(s.text for s in loaded[name])


def test_scanned_chinese_magazine_page_is_read_column_by_column(loaded: dict[str, list[Section]]) -> None:
    [page] = loaded["zh_scanned_magazine_page.pdf"]
    assert page.page == 1
    for words in ("内心强大", "世界辽阔", "姜钦峰", "曾国藩", "阳阳"):
        assert words in page.text
    # The left column of the story comes before the right one, not interleaved line by line.
    assert page.text.index("结果出来要7天") < page.text.index("烟消云散") < page.text.index("阳阳病愈后")
    # Lines broken inside a sentence are joined.
    assert "我领着阳阳在这个城市的游乐园游玩" in page.text


def test_scanned_english_page_is_read(loaded: dict[str, list[Section]]) -> None:
    [page] = loaded["en_scanned_paper_page.pdf"]
    assert page.page == 1
    assert "Principal component analysis (PCA)" in page.text
    assert page.text.index("tumour and metastases, by fold") < page.text.index("larger difference between")


def test_chinese_image_is_read(loaded: dict[str, list[Section]]) -> None:
    text = text_of(loaded, "zh_chi_sim_image.jpeg")
    assert "甘草黄酮" in text and "适用人群" in text


def test_horizontal_and_vertical_text_boxes_are_read(loaded: dict[str, list[Section]]) -> None:
    text = text_of(loaded, "zh_ocr_test.jpg")
    assert "横向文本框" in text and "竖向文本框" in text and "English" in text


def test_transparent_png_is_read_as_black_on_white(loaded: dict[str, list[Section]]) -> None:
    assert text_of(loaded, "zh_text_transparent.png") == "我是中国人"


def test_picture_inside_docx_is_read_after_its_text_and_table(loaded: dict[str, list[Section]]) -> None:
    [section] = loaded["zh_docx_with_text_image.docx"]
    assert section.text.startswith("我是文字\n我是表格1 | 我是表格2\n我是表格3 | 我是表格4\n")
    assert "横向文本框" in section.text


def test_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((10, 5, 20, 15), fill=(0, 0, 0, 255))
    rgb = ocr.prepare_image(image)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (255, 255, 255) and rgb.getpixel((15, 10)) == (0, 0, 0)
    palette = image.convert("P")
    palette.info["transparency"] = palette.getpixel((1, 1))
    assert ocr.prepare_image(palette).getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    photo = Image.new("RGB", (60, 20), "white")
    exif = photo.getexif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", exif=exif)
    assert ocr.prepare_image(Image.open(buffer)).size == (20, 60)


def test_generated_transparent_png_bytes_are_read() -> None:
    # Square, because the detector scales the short side up to 736 px: a wide strip costs seconds.
    image = Image.new("RGBA", (260, 260), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((10, 100), "HELLO 2024", fill=(0, 0, 0, 255), font=ImageFont.load_default(36))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert "HELLO" in ocr.ocr_image(buffer.getvalue()).replace(" ", "")


def test_undecodable_image_bytes_are_corrupt() -> None:
    with pytest.raises(CorruptDocument):
        ocr.ocr_image(b"not an image")


def test_boxes_are_ordered_by_column_then_line() -> None:
    left = [(0, 10 * i, 100, 10 * i + 8, f"L{i}") for i in range(6)]
    right = [(120, 10 * i + 1, 220, 10 * i + 9, f"R{i}") for i in range(6)]
    title = [(0, -30, 220, -20, "TITLE")]
    footer = [(0, 90, 30, 98, "12")]
    text = ocr.order_lines(right + footer + left + title)
    assert text.split("\n") == ["TITLE", *(f"L{i}" for i in range(6)), *(f"R{i}" for i in range(6)), "12"]


def test_boxes_on_one_line_are_joined_left_to_right() -> None:
    assert ocr.order_lines([(50, 0, 90, 10, "b"), (0, 1, 40, 11, "a")]) == "a b"


def test_missing_rapidocr_is_reported_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocr, "_engine", None)
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)
    with pytest.raises(ModelUnavailable, match="pip install rapidocr-onnxruntime"):
        ocr.ocr_image(Image.new("RGB", (64, 64), "white"))


def test_scanned_pdf_without_ocr_engine_names_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocr, "_engine", None)
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)
    with pytest.raises(ModelUnavailable):
        load_document(CORPUS / "ocr" / "en_scanned_paper_page.pdf", ocr=True)


def test_without_an_ocr_engine_a_documents_text_is_kept_and_its_pictures_named(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import docx
    from pypdf import PdfReader, PdfWriter

    monkeypatch.setattr(ocr, "_engine", None)
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)
    picture = tmp_path / "picture.png"
    Image.new("RGB", (200, 100), "white").save(picture)
    document = docx.Document()
    document.add_paragraph("The refund period is 7 days.")
    document.add_picture(str(picture))
    document.save(str(tmp_path / "pic.docx"))
    scan = io.BytesIO()
    Image.new("RGB", (600, 200), "white").save(scan, "PDF")
    writer = PdfWriter()
    writer.add_page(PdfReader(CORPUS / "en_langchain_llm_apps_primer.pdf").pages[0])
    writer.add_page(PdfReader(scan).pages[0])
    writer.write(str(tmp_path / "mixed.pdf"))
    with caplog.at_level("WARNING"):
        assert [s.text for s in load_document(tmp_path / "pic.docx", ocr=True)] == ["The refund period is 7 days."]
        assert [s.page for s in load_document(tmp_path / "mixed.pdf", ocr=True)] == [1]
    assert "pic.docx: the text of its 1 picture(s) is not read: OCR needs" in caplog.text
    assert "mixed.pdf: page(s) 2 have too little text and could not be OCR'd" in caplog.text


def _text_pdf(line: str, width: float, height: float) -> bytes:
    """A one-page PDF with ``line`` in small Helvetica at the foot of the page (a scanning app's stamp)."""
    stream = f"BT /F1 8 Tf 300 20 Td ({line}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] /Contents 4 0 R "
               f"/Resources << /Font << /F1 5 0 R >> >> >>".encode(),
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_a_scan_with_a_stamp_of_text_on_it_is_still_read(tmp_path: Path) -> None:
    # "Scanned with CamScanner" (21 characters) in the text layer made the page look like text, not a scan:
    # the scanned invoice, letter or paper on it was lost without a word.
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=CORPUS / "ocr" / "en_scanned_paper_page.pdf")
    box = writer.pages[0].mediabox
    stamp = PdfReader(io.BytesIO(_text_pdf("Scanned with CamScanner", float(box.width), float(box.height))))
    writer.pages[0].merge_page(stamp.pages[0])
    writer.write(str(tmp_path / "stamped.pdf"))
    [page] = load_document(tmp_path / "stamped.pdf", ocr=True)
    assert "Scanned with CamScanner" in page.text and "Principal component analysis (PCA)" in page.text
    # A page of text (here: the stamp alone, with no image) is not OCR'd.
    (tmp_path / "stamp.pdf").write_bytes(_text_pdf("Scanned with CamScanner", 596, 794))
    assert [s.text for s in load_document(tmp_path / "stamp.pdf", ocr=True)] == ["Scanned with CamScanner"]
