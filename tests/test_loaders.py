"""Loaders: every corpus document loads; bad, empty, encrypted and unknown files fail with a clear KBQAError.

OCR behaviour (scans, images, pictures inside .docx) is in test_ocr.py.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader, PdfWriter

from kbqa.errors import CorruptDocument, EmptyDocument, EncryptedDocument, KBQAError, UnsupportedFile
from kbqa.loaders import SUPPORTED_SUFFIXES, load_document, read_text, tidy_text
from kbqa.schema import Section
from tests.conftest import CORPUS

#: The documents to ingest: top-level files except the JSON datasets and the corpus's own README.
DOCUMENTS = sorted(p for p in CORPUS.iterdir()
                   if p.is_file() and p.suffix != ".json" and p.name != "README.md")
PRIMER = CORPUS / "en_langchain_llm_apps_primer.pdf"
GAOCE = CORPUS / "zh_research_report_gaoce_688556.pdf"


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# ---------------------------------------------------------------- the corpus

def test_the_corpus_has_the_documents_the_readme_lists() -> None:
    assert {p.suffix for p in DOCUMENTS} == {".txt", ".md", ".pdf", ".docx", ".csv", ".html"}
    assert len(DOCUMENTS) == 10


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_corpus_document_loads_with_text(path: Path) -> None:
    sections = load_document(path, ocr=False)
    assert sections and all(s.text.strip() for s in sections)
    if path.suffix == ".pdf":
        assert [s.page for s in sections] == list(range(1, len(PdfReader(path).pages) + 1))
    else:
        assert all(s.page is None for s in sections)


def test_pdf_pages_are_numbered_from_one() -> None:
    sections = load_document(PRIMER, ocr=False)
    assert [s.page for s in sections] == list(range(1, 9))
    assert "LangChain" in sections[1].text


def test_text_file_is_one_section_with_its_exact_text() -> None:
    [section] = load_document(CORPUS / "state_of_the_union.txt")
    assert len(section.text) == 38080
    assert "4,000 projects have already been announced." in section.text


def test_chinese_pdf_lines_broken_inside_sentences_are_joined() -> None:
    text = "\n".join(s.text for s in load_document(GAOCE, ocr=False))
    assert "项目一期计划建设年产4,000万千米金刚线产能" in text
    assert "金刚线需求释放" in text  # "金刚线需" + line break + "求释放" in the raw extraction
    assert "南京大学材料学学士" in text
    # Table rows, headings and key: value lines keep their own lines.
    assert "\n营业收入(百万元) 746 1,567 3,684 5,056 5,752\n" in text
    assert "\n投资要点\n" in text
    assert "\n总股本(百万股)：227.92\n" in text


def test_tidy_text_removes_letter_spacing_but_keeps_word_gaps() -> None:
    assert tidy_text("金 刚 线 需 求 释 放") == "金刚线需求释放"
    assert tidy_text("买入 相对强于市场表现") == "买入 相对强于市场表现"
    assert tidy_text("年产 4,000 万千米，较去年提升约 30%。") == "年产4,000万千米，较去年提升约30%。"
    assert tidy_text("English  text\n\n\n\nstays  as it is") == "English  text\n\nstays  as it is"


def test_markdown_comments_and_report_bookmarks_are_left_out(tmp_path: Path) -> None:
    page = write(tmp_path, "rules.md", "# 规则\n\n<!-- INFO END -->\n\n第一条 内容。\n<!-- a\nnote -->\n")
    assert load_document(page)[0].text.split() == ["#", "规则", "第一条", "内容。"]
    quoted = "Start a comment with `<!--` and end it with `-->`.\n\n```html\n<!-- shown as written -->\n```\n"
    assert load_document(write(tmp_path, "html.md", quoted))[0].text == quoted
    assert load_document(write(tmp_path, "c.txt", "<!-- kept: a text file shows it -->"))[0].text.startswith("<!--")
    assert tidy_text("[Table_Main]\n\n证券研究报告\n[Table_Base] 股票数据") == "证券研究报告\n股票数据"


def test_tidy_text_joins_western_lines_broken_inside_a_sentence() -> None:
    text = ("A large language model (LLM) is a subtype of\nartificial intelligence model that generates text\n"
            "with human-like proficiency. Models such as GPT-\n2 were trained on it.\n"
            "A.A.3 Chains\nThe most important part is this\n- a list item\n"
            "Revenue by year in millions of dollars\n2021 2022 2023 746 1,567 3,684")
    assert tidy_text(text).split("\n") == [
        "A large language model (LLM) is a subtype of artificial intelligence model that generates text with "
        "human-like proficiency. Models such as GPT-2 were trained on it.",
        "A.A.3 Chains", "The most important part is this", "- a list item",
        "Revenue by year in millions of dollars", "2021 2022 2023 746 1,567 3,684"]
    code = ("To install the dependencies of the demo, run:\npip install -r requirements.txt\n"
            "python web_demo.py --port 7860\nresult = chain.run(question)\nprint(result)")
    assert tidy_text(code) == code  # commands and code keep their lines
    quoted = "For example, the sample given under the category of\n‘autonomous agents’ implements AutoGPT."
    assert tidy_text(quoted) == quoted.replace("\n", " ")
    # Words broken where the line ran out are mended, compounds and addresses keep their hyphen; after a full
    # line, a capital or a citation goes on with the sentence; a line with the page's number stands apart.
    column = ("Kurbasic et al. Clinical Proteomics (2015) 12:13 Page 6 of 14\n"
              "the changes between the pri-\nmary tumours and the self-\nplay games were found by the bespoke\n"
              "AI models of the study by OpenAI\n[5], as seen at the github.com/llm-\nexamples page today.")
    assert tidy_text(column).split("\n") == [
        "Kurbasic et al. Clinical Proteomics (2015) 12:13 Page 6 of 14",
        "the changes between the primary tumours and the self-play games were found by the bespoke AI models of "
        "the study by OpenAI [5], as seen at the github.com/llm-examples page today."]


def test_tidy_text_keeps_short_headings_and_table_rows_apart() -> None:
    text = ("投资要点\n事件：公司拟与壶关县人民政府签署协议书\n"
            "绝对涨幅(%) 7.18 32.88 80.86\n相对涨幅(%) 8.10 25.93")
    assert tidy_text(text) == text


def test_csv_rows_become_sections_of_header_value_lines() -> None:
    sections = load_document(CORPUS / "zh_langchain_chatglm_closed_issues.csv")
    assert len(sections) == 172
    assert [s.extra["line"] for s in sections] == list(range(2, 174))  # lines in the file: the header is 1
    first = sections[0].text.split("\n")
    assert first[0] == "title: 加油~以及一些建议"
    assert all(": " in line and not line.startswith(": ") for line in first)  # the index column is dropped
    assert any("\n" in s.text.split("detail: ", 1)[-1] for s in sections)  # multi-line quoted cells


def test_csv_skips_empty_values_and_names_unnamed_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", 'name,,note\r\nAda,x,"two\r\nlines"\r\nBob,,\r\n\r\n,,\r\n')
    sections = load_document(path)
    assert [s.text for s in sections] == ["name: Ada\ncolumn 2: x\nnote: two\nlines", "name: Bob"]
    assert [s.extra for s in sections] == [{"line": 2}, {"line": 4}]  # where each record starts in the file


def test_csv_in_gbk_with_semicolons_is_decoded(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "问题;答案\n天空是什么颜色;蓝色\n".encode("gbk"))
    assert load_document(path)[0].text == "问题: 天空是什么颜色\n答案: 蓝色"


def test_csv_with_only_a_header_is_empty(tmp_path: Path) -> None:
    with pytest.raises(EmptyDocument, match="only a header"):
        load_document(write(tmp_path, "header.csv", "title,body\n"))


def test_docx_keeps_paragraphs_headings_and_tables_in_body_order(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("第一章 总则", level=1)
    document.add_paragraph("Before the table.")
    table = document.add_table(rows=2, cols=3)
    table.cell(0, 0).merge(table.cell(0, 1)).text = "merged"
    table.cell(0, 2).text = "c"
    table.cell(1, 0).text = "1"
    table.cell(1, 2).text = "3"
    document.add_paragraph("After the table.")
    document.save(str(tmp_path / "order.docx"))
    [section] = load_document(tmp_path / "order.docx")
    assert section.text == "第一章 总则\nBefore the table.\nmerged | c\n1 |  | 3\nAfter the table."


def test_docx_table_rows_and_cells_inside_content_controls_are_read(tmp_path: Path) -> None:
    import docx
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    def wrap(element: object, *tags: str) -> None:  # element moved inside w:sdt/w:sdtContent (or w:customXml)
        outer = OxmlElement(tags[0])
        element.addprevious(outer)  # type: ignore[attr-defined]
        inner = outer
        for tag in tags[1:]:
            inner.append(child := OxmlElement(tag))
            inner = child
        inner.append(element)

    document = docx.Document()
    table = document.add_table(rows=3, cols=2)
    for (r, c), text in {(0, 0): "Name", (0, 1): "Price", (1, 0): "Widget", (1, 1): "42 USD",
                         (2, 0): "Gadget", (2, 1): "7 USD"}.items():
        table.cell(r, c).text = text
    rows = table._tbl.findall(qn("w:tr"))
    wrap(rows[1], "w:sdt", "w:sdtContent")  # a repeating section's row
    wrap(rows[2], "w:customXml")
    wrap(rows[0].findall(qn("w:tc"))[1], "w:sdt", "w:sdtContent")  # a cell's content control
    paragraph = document.add_paragraph("Case 000")
    paragraph.runs[0]._r.append(OxmlElement("w:noBreakHyphen"))
    paragraph.add_run("30653 filed; re")
    paragraph.runs[-1]._r.append(OxmlElement("w:softHyphen"))
    paragraph.add_run("opened")
    document.save(str(tmp_path / "t.docx"))
    [section] = load_document(tmp_path / "t.docx")
    assert section.text == "Name | Price\nWidget | 42 USD\nGadget | 7 USD\nCase 000-30653 filed; reopened"


def test_running_headers_and_footers_are_kept_once_where_they_first_appear() -> None:
    from kbqa.loaders.pdf import drop_running_lines

    bodies = ["Revenue grew.\nCosts fell.", "Risks are listed.\nSee below.", "Outlook is fair.\nNo change.",
              "Notes follow.\nEnd of notes."]
    pages = [f"ACME Annual Report 2023\n{body}\nPage {n} of 4" for n, body in enumerate(bodies, 1)]
    assert drop_running_lines(pages) == [f"ACME Annual Report 2023\n{bodies[0]}\nPage 1 of 4", *bodies[1:]]
    # A line repeated on fewer than half the pages, or in a document of two pages, is content.
    assert drop_running_lines(pages[:2]) == pages[:2]
    some = ["Summary\nText a.", "Summary\nText b.", "Other\nText c.", "Else\nText d.", "More\nText e."]
    assert drop_running_lines(some) == some
    # Only a page number may differ: a statement's balance lines, the same but for their amounts, are data.
    balances = ["1,000.00", "925.00", "847.00", "766.00", "682.00"]
    statement = [f"Balance brought forward {a}\nPayment -{n}2.50\nBalance carried forward {b}"
                 for n, (a, b) in enumerate(zip(balances, balances[1:], strict=False))]
    assert drop_running_lines(statement) == statement
    assert drop_running_lines(["第1页 共3页\nA。", "第2页 共3页\nB。", "- 3 -\nC。", "第4页 共3页\nD。"]) == [
        "第1页 共3页\nA。", "B。", "C。", "D。"]  # printed page numbers: one running line


def test_the_research_reports_running_header_is_read_once() -> None:
    sections = load_document(CORPUS / "zh_research_report_gaoce_688556.pdf")
    text = "\n".join(s.text for s in sections)
    assert text.count("公司点评  高测股份（688556.SH）") == 1 and sections[2].text.startswith("财务报表分析和预测")


def test_a_sentence_cut_by_a_page_break_is_repeated_whole_on_the_next_page() -> None:
    from kbqa.loaders.pdf import carry_broken_sentences, line_key

    pages = [Section("Intro.\nFor example, GPT-3 (June 2020) had 117", page=2),
             Section("1051\n\nmillion parameters, respectively.\nMore.", page=3),
             Section("模型的参数量在过去几年中增长得非常快，例如第三代模型的参数量达到了", page=4),
             Section("一千七百五十亿个，远超上一代。", page=5),
             Section("资料来源：公司年报（2020-2021），德邦研究所", page=6),  # a note, then a heading
             Section("信息披露\n分析师与研究助理简介", page=7)]
    carried = carry_broken_sentences(pages)
    assert [(s.page, s.text) for s in carried] == [
        (2, "Intro."),  # the half sentence moves: alone, "had 117" was taken for GPT-3's size
        (3, "1051\n\nFor example, GPT-3 (June 2020) had 117 million parameters, respectively.\nMore."),
        (5, "模型的参数量在过去几年中增长得非常快，例如第三代模型的参数量达到了一千七百五十亿个，远超上一代。"),
        (6, "资料来源：公司年报（2020-2021），德邦研究所"), (7, "信息披露\n分析师与研究助理简介")]
    assert carry_broken_sentences([pages[0], replace(pages[1], page=5)])[1] == replace(pages[1], page=5)
    heading = [Section("The results are summarised in the tables of section 3", page=1),
               Section("Discussion\nThe results show it.", page=2)]
    assert carry_broken_sentences(heading) == heading  # a page's first line in capitals may be its heading
    # A running footer kept on the first page is not the sentence the next page goes on with.
    footer = "Acme Corporation Annual Report 2023 - Confidential"
    with_footer = [Section(f"Costs rose by 4 per cent as the year went on, and margins fell as\n{footer}", page=1),
                   Section("the company expanded.", page=2)]
    carried = carry_broken_sentences(with_footer, {line_key(footer)})
    assert carried[1].text == "Costs rose by 4 per cent as the year went on, and margins fell as the company expanded."


def test_the_primers_sentence_across_a_page_break_is_in_one_chunk() -> None:
    sections = load_document(CORPUS / "en_langchain_llm_apps_primer.pdf")
    assert "GPT-3 (June 2020) had 117 million, 1.5 billion, and 175 billion parameters" in sections[2].text


def test_a_pdf_without_pages_says_so(tmp_path: Path) -> None:
    PdfWriter().write(str(tmp_path / "zero.pdf"))
    with pytest.raises(EmptyDocument, match="zero.pdf has no pages"):
        load_document(tmp_path / "zero.pdf")


def test_html_keeps_visible_text_only(tmp_path: Path) -> None:
    html = """<html><head><title>T</title><style>p {color: red}</style></head><body>
      <script>var x = 1;</script><noscript>enable js</noscript><template><p>tmpl</p></template>
      <h1>Title</h1><p>Visible <b>bold</b>&nbsp;text</p><div style="display: none">gone</div>
      <p hidden>also gone</p><span style="visibility:hidden">hidden span</span><!-- a comment -->
      <table><tr><th>Key</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>
      line one<br>line two</body></html>"""
    [section] = load_document(write(tmp_path, "page.html", html))
    assert section.text == "T\nTitle\nVisible bold text\nKey | Value\na | 1\nline one\nline two"


def test_html_title_leads_unless_the_page_starts_with_it(tmp_path: Path) -> None:
    page = write(tmp_path, "a.html", "<title>Refund policy - Acme</title><p>Returns within 7 days.</p>")
    assert load_document(page)[0].text == "Refund policy - Acme\nReturns within 7 days."
    page = write(tmp_path, "b.html", "<title> Refund\n policy </title><h1>refund policy</h1><p>Within 7 days.</p>")
    assert load_document(page)[0].text == "refund policy\nWithin 7 days."


def test_html_in_another_charset_than_it_declares_is_read_as_its_bytes_are(tmp_path: Path) -> None:
    html = '<meta charset="utf-8"><title>退款政策</title><p>商品在七天内可以无理由退货，运费由买家承担。</p>'
    (tmp_path / "gbk.html").write_bytes(html.encode("gbk"))
    assert load_document(tmp_path / "gbk.html")[0].text == "退款政策\n商品在七天内可以无理由退货，运费由买家承担。"
    (tmp_path / "utf8.html").write_bytes(html.encode("utf-8"))  # as declared: unchanged
    assert load_document(tmp_path / "utf8.html")[0].text == "退款政策\n商品在七天内可以无理由退货，运费由买家承担。"


@pytest.mark.parametrize("declared", ['<meta charset="gb2312">', '<meta charset="GBK">',
                                      '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">'])
def test_html_saved_as_utf8_but_declaring_an_older_charset_is_read_as_utf8(tmp_path: Path, declared: str) -> None:
    html = f'<html><head>{declared}<title>Refunds</title></head><body><p>Refund policy: seven days. 退款政策说明</p>'
    (tmp_path / "page.html").write_bytes(html.encode("utf-8"))
    assert load_document(tmp_path / "page.html")[0].text == "Refunds\nRefund policy: seven days. 退款政策说明"


def test_html_in_the_charset_it_declares_is_read_in_it(tmp_path: Path) -> None:
    (tmp_path / "gbk.html").write_bytes('<meta charset="gb2312"><p>退款政策，七天内。</p>'.encode("gbk"))
    assert load_document(tmp_path / "gbk.html")[0].text == "退款政策，七天内。"
    (tmp_path / "fr.html").write_bytes('<meta charset="windows-1252"><p>Délai : 7 jours – très court</p>'
                                       .encode("cp1252"))
    assert load_document(tmp_path / "fr.html")[0].text == "Délai : 7 jours – très court"


def test_html_title_is_the_pages_not_an_inline_icons(tmp_path: Path) -> None:
    page = write(tmp_path, "a.html", "<body><svg><title>Close icon</title></svg><p>Refunds take 7 days.</p>")
    assert load_document(page)[0].text == "Refunds take 7 days."


def test_inline_xbrl_cover_page_yields_its_facts_and_no_css() -> None:
    [section] = load_document(CORPUS / "en_galaxy_gaming_10k_cover.html")
    text = section.text
    address = "6480 Cameron Street Ste. 305 – Las Vegas, NV 89118"
    for fact in ("Galaxy Gaming", "Nevada", "000-30653", "GLXZ", address):
        assert fact in text
    assert "font-" not in text and "{" not in text and "  " not in text


# ---------------------------------------------------------------- text decoding

@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "gbk", "gb18030"])
def test_text_encodings_are_detected(tmp_path: Path, encoding: str) -> None:
    text = "第一条 为了保障公民合法权益，制定本规则。\r\nSecond line – “quoted”.\r\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    if encoding == "gbk":
        data = text.replace("–", "-").replace("“", '"').replace("”", '"').encode("gbk")
    [section] = load_document(write(tmp_path, "t.txt", data))
    assert section.text.startswith("第一条 为了保障公民合法权益，制定本规则。\nSecond line")
    assert "\r" not in section.text and "\ufeff" not in section.text


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("text", [
    "Hello 你好\n",
    "第一条 为了保障公民合法权益。\r\n第二条 人民检察院依法监督。\r\n" * 5,
    "人民检察院行政诉讼监督规则\u200b（试行）\n" + "第三条 人民检察院通过抗诉、检察建议等方式。\n" * 8,
])
def test_utf16_without_bom_is_detected(text: str, encoding: str) -> None:
    # Mostly Chinese: its line breaks and spaces give too few NUL bytes to tell UTF-16 by them alone.
    assert read_text(text.encode(encoding), "t.txt") == text.replace("\r\n", "\n")


@pytest.mark.parametrize("text", ["退款", "价格：100元", "你好", "第一章 总则"])
def test_short_gbk_text_is_not_mistaken_for_damaged_utf8(text: str) -> None:
    # "退款" in GBK is c3 cb bf ee: UTF-8 reads it as one good character (U+02FF) between two bad ones
    assert read_text(text.encode("gbk"), "t.txt") == text


def test_latin1_text_is_not_mistaken_for_gbk() -> None:
    text = "Le café de la gare est fermé le dimanche. Résumé: très bien, à bientôt, naïve élève."
    assert read_text(text.encode("cp1252"), "t.txt") == text


@pytest.mark.parametrize(("data", "expected"), [
    # cut mid-character:
    ("第一条 为了保障公民合法权益，制定本规则。".encode()[:-2], "第一条 为了保障公民合法权益，制定本规则\ufffd"),
    ("Russia’s war: it’s over.".encode() + b" \x92 " + "Ukraine’s people.".encode(),
     "Russia’s war: it’s over. \ufffd Ukraine’s people."),  # one stray cp1252 byte in UTF-8 text
    ("café".encode()[:3] + b"\xff" + "é au lait".encode(), "caf\ufffdé au lait"),
])
def test_utf8_with_a_damaged_byte_is_still_utf8(data: bytes, expected: str) -> None:
    assert read_text(data, "t.txt") == expected


@pytest.mark.parametrize(("text", "encoding"), [
    ("Le café était très crémeux, déjà prêt à être dégusté près de la fenêtre.", "cp1252"),
    ("El niño comió piña en España; ¿qué más? Über Straße und Größe.", "cp1252"),
    ("Zażółć gęślą jaźń: łódź płynie przez śliską rzekę.", "cp1250"),  # Polish stays Polish
    ("Ľubomír má veľa ľudí.", "cp1250"),  # Slovak too
    # Signs beside the letters (×, ™, ½) sent such text to a statistical guess that read it as Central European.
    ("Le salon mesure 4 × 5 mètres, très lumineux, à côté", "cp1252"),
    ("Our Widget™ costs 20 € in the café", "cp1252"),
    ("Mix ½ cup of sugar and ¼ cup of butter at 180°C.", "cp1252"),
    ("Añada ½ taza", "cp1252"),
    # Short text whose accented pairs are also GB2312 characters (öß as 鲞, éé as 殚): still Western.
    ("Artikel;Größe\nHemd;M\n", "cp1252"),
    ("Le fichier a été créé hier.", "cp1252"),
    ("créé", "cp1252"),
    ("A类", "gbk"),  # and a short Chinese text whose bytes also read as Western letters (AÀà) stays Chinese
])
def test_western_and_central_european_single_byte_text(text: str, encoding: str) -> None:
    assert read_text(text.encode(encoding), "t.txt") == text


def test_a_stray_nul_byte_in_utf8_text_is_left_out_but_binary_data_is_refused() -> None:
    assert read_text("退款 policy: seven days.\x00\n".encode(), "t.txt") == "退款 policy: seven days.\n"
    with pytest.raises(CorruptDocument, match="binary"):
        read_text(bytes(range(256)) * 4, "t.txt")


def test_cp1252_with_a_few_curly_quotes_is_not_read_as_damaged_utf8() -> None:
    text = "It\u2019s the workers\u2019 day, and the \u201cplan\u201d is simple. " * 3
    assert "\ufffd" not in read_text(text.encode("cp1252"), "t.txt")


def test_csv_with_a_cell_over_128_kb_loads(tmp_path: Path) -> None:
    rows = load_document(write(tmp_path, "big.csv", "title,body\nlong," + "word " * 40_000 + "\n"))
    assert len(rows) == 1 and len(rows[0].text) > 200_000


@pytest.mark.parametrize("name", ["scan.pdf", "notes.docx", "photo.png"])
def test_a_zero_byte_file_of_any_format_is_empty(tmp_path: Path, name: str) -> None:
    with pytest.raises(EmptyDocument, match="0 bytes"):
        load_document(write(tmp_path, name, b""))


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n  \n"])
def test_empty_or_blank_text_file_is_empty(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(EmptyDocument, match="notes.md"):
        load_document(write(tmp_path, "notes.md", content))


@pytest.mark.parametrize("data", [os.urandom(4096), bytes(range(1, 32)) * 50,
                                  b"\x7fELF\x02\x01" + bytes(600), b"PK\x03\x04" + bytes(100) + os.urandom(300)])
def test_binary_file_named_txt_is_corrupt(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(CorruptDocument, match="binary"):
        load_document(write(tmp_path, "garbage.txt", data))


# ---------------------------------------------------------------- PDF failures

@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["random", "random after a PDF header", "truncated", "head only"])
def test_corrupt_pdf_fails_quickly(tmp_path: Path, kind: str) -> None:
    real = GAOCE.read_bytes()
    data = {"random": os.urandom(200_000), "random after a PDF header": b"%PDF-1.7\n" + os.urandom(200_000),
            "truncated": real[: len(real) // 2], "head only": real[:3000]}[kind]
    with pytest.raises(CorruptDocument, match="broken.pdf"):
        load_document(write(tmp_path, "broken.pdf", data))


def encrypted_copy(tmp_path: Path, user_password: str, algorithm: str) -> Path:
    writer = PdfWriter()
    writer.append(PRIMER, pages=[1])
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm=algorithm)
    buffer = io.BytesIO()
    writer.write(buffer)
    return write(tmp_path, "locked.pdf", buffer.getvalue())


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-256"])
def test_pdf_with_a_password_is_reported_as_encrypted(tmp_path: Path, algorithm: str) -> None:
    if algorithm.startswith("AES"):
        pytest.importorskip("cryptography")
    with pytest.raises(EncryptedDocument, match="locked.pdf is password-protected: remove the password"):
        load_document(encrypted_copy(tmp_path, "s3cret", algorithm))


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-128", "AES-256"])
def test_pdf_encrypted_with_an_empty_user_password_loads(tmp_path: Path, algorithm: str) -> None:
    if algorithm.startswith("AES"):
        pytest.importorskip("cryptography")
    [section] = load_document(encrypted_copy(tmp_path, "", algorithm), ocr=False)
    assert section.page == 1 and "LangChain" in section.text


def test_scanned_pdf_with_ocr_off_says_so() -> None:
    with pytest.raises(EmptyDocument, match="no text layer.*OCR is off"):
        load_document(CORPUS / "ocr" / "zh_scanned_magazine_page.pdf", ocr=False)


# ---------------------------------------------------------------- other failures

@pytest.mark.parametrize("name", ["data.xyz", "passwd", "archive.tar.gz", "notes.doc"])
def test_unknown_suffix_is_unsupported_and_lists_the_supported_ones(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsupportedFile) as info:
        load_document(write(tmp_path, name, "text"))
    assert name in str(info.value) and ".pdf" in str(info.value) and ".docx" in str(info.value)
    if name == "notes.doc":
        assert "save it as .docx" in str(info.value)


def test_supported_suffixes_cover_the_documented_types() -> None:
    assert {".txt", ".md", ".markdown", ".pdf", ".docx", ".csv", ".tsv", ".html", ".htm", ".xhtml", ".png", ".jpg",
            ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} == SUPPORTED_SUFFIXES


def test_suffix_is_matched_case_insensitively(tmp_path: Path) -> None:
    assert load_document(write(tmp_path, "README.TXT", "hello"))[0].text == "hello"


@pytest.mark.parametrize("kind", ["not a zip", "zip without document.xml"])
def test_corrupt_docx_is_reported(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "report.docx"
    if kind == "not a zip":
        path.write_bytes(os.urandom(3000))
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("hello.txt", "not a word document")
    with pytest.raises(CorruptDocument, match="report.docx is not a readable Word .docx file"):
        load_document(path)


def test_a_docx_that_unpacks_to_a_hundred_times_its_size_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import docx

    from kbqa.loaders import office

    document = docx.Document()
    for _ in range(3000):
        document.add_paragraph("the same line again and again")
    path = tmp_path / "bomb.docx"
    document.save(str(path))
    with zipfile.ZipFile(path) as package:  # Word's own packages compress about tenfold
        ratio = sum(m.file_size for m in package.infolist()) / path.stat().st_size
    assert 10 < ratio < office._UNPACKED_RATIO and "the same line" in load_document(path)[0].text
    (tmp_path / "bomb").mkdir()  # the same document, its body repeated 40 times and packed tighter
    with zipfile.ZipFile(path) as package:
        parts = {m.filename: package.read(m.filename) for m in package.infolist()}
    body = parts["word/document.xml"]
    start, end = body.index(b"<w:p>"), body.rindex(b"</w:p>") + len(b"</w:p>")
    parts["word/document.xml"] = body[:start] + body[start:end] * 40 + body[end:]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as package:
        for part, data in parts.items():
            package.writestr(part, data)
    monkeypatch.setattr(office, "_UNPACKED_BYTES", 2**20)  # (100 MB by default: such a file is slow to build)
    with pytest.raises(CorruptDocument, match=r"bomb.docx unpacks to \d+ MB from .* over 100 times its size.*zip bomb"):
        load_document(path)


def test_empty_docx_is_empty(tmp_path: Path) -> None:
    import docx

    docx.Document().save(str(tmp_path / "blank.docx"))
    with pytest.raises(EmptyDocument, match="blank.docx"):
        load_document(tmp_path / "blank.docx")


def test_image_with_ocr_off_is_unsupported() -> None:
    with pytest.raises(UnsupportedFile, match="OCR is off"):
        load_document(CORPUS / "ocr" / "zh_ocr_test.jpg", ocr=False)


def test_broken_image_is_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CorruptDocument, match="scan.png is not a readable image"):
        load_document(write(tmp_path, "scan.png", b"\x89PNG\r\n\x1a\n" + os.urandom(500)))


def test_display_name_is_used_in_messages(tmp_path: Path) -> None:
    path = write(tmp_path, "7f3a9c.txt", b"")
    with pytest.raises(EmptyDocument, match="我的笔记.txt"):
        load_document(path, name="我的笔记.txt")


def test_unreadable_path_is_a_kbqa_error(tmp_path: Path) -> None:
    with pytest.raises(KBQAError, match="missing.txt could not be read"):
        load_document(tmp_path / "missing.txt")


def test_the_loader_is_picked_by_the_suffix_of_the_given_name(tmp_path: Path) -> None:
    upload = write(tmp_path, "abc123", "# Notes\n\nuploaded text")  # an upload's temp file has no suffix
    [section] = load_document(upload, name="x.md")
    assert section.text == "# Notes\n\nuploaded text"
    with pytest.raises(UnsupportedFile, match="passwd: Files without an extension are not supported"):
        load_document(write(tmp_path, "notes.txt", "text"), name="passwd")


def test_csv_delimiter_inside_a_quoted_header_does_not_count(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'id,"notes; remarks; misc"\n1,"hello, world"\n2,second\n')
    assert [s.text for s in load_document(path)] == ["id: 1\nnotes; remarks; misc: hello, world",
                                                      "id: 2\nnotes; remarks; misc: second"]


def _docx_table(rows: list[list[str]]) -> tuple[Any, Any]:
    """A new Word document holding one table of ``rows``, and the table."""
    import docx

    document = docx.Document()
    table = document.add_table(rows=len(rows), cols=len(rows[0]))
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            table.cell(i, j).text = value
    return document, table


def test_empty_table_cells_keep_the_other_cells_in_their_columns(tmp_path: Path) -> None:
    document, _ = _docx_table([["Name", "Q1", "Q2"], ["Widget", "", "5"], ["Gadget", "7", ""]])
    document.save(str(tmp_path / "t.docx"))
    assert load_document(tmp_path / "t.docx")[0].text == "Name | Q1 | Q2\nWidget |  | 5\nGadget | 7 | "
    page = write(tmp_path, "t.html", "<table><tr><th>Name</th><th>Q1</th></tr><tr><td></td><td>7</td></tr></table>")
    assert load_document(page)[0].text == "Name | Q1\n| 7"


def test_html_drops_site_navigation_and_keeps_preformatted_lines(tmp_path: Path) -> None:
    page = write(tmp_path, "p.html", "<nav>Home | About</nav><p>Body text.</p><pre>line one\nline two</pre>")
    assert load_document(page)[0].text == "Body text.\nline one\nline two"


def test_csv_delimiter_guess_survives_a_stray_inch_mark(tmp_path: Path) -> None:
    path = write(tmp_path, "inch.csv", '5" screen;price;model\nyes;300;A1\n')
    assert load_document(path)[0].text == '5" screen: yes\nprice: 300\nmodel: A1'


def test_every_chunk_of_a_csv_row_too_long_for_one_names_the_row(tmp_path: Path) -> None:
    from kbqa.splitter import Splitter

    desc = " ".join(f"Orchard fact {i}: apples come in many varieties, red and green." for i in range(20))
    path = tmp_path / "fruit.csv"
    path.write_text(f'name,desc,price\napple,"{desc}",3\npear,short,2\n', encoding="utf-8")
    sections = load_document(path)
    assert sections[0].lead == "name: apple\nprice: 3" and sections[1].lead == ""
    assert sections[1].text == "name: pear\ndesc: short\nprice: 2"  # a row that fits keeps its column order
    # also when a piece must be cut again to fit the model's token limit (here: 300 characters)
    for too_long in (None, lambda texts: [len(t) > 300 for t in texts]):
        chunks = Splitter(500, 50, too_long).split(sections[:1], "fruit.csv", "h")
        assert len(chunks) > 2 and all(len(c.text) <= (300 if too_long else 500) for c in chunks)
        assert all(c.text.startswith("name: apple\nprice: 3\n") and c.extra == {"line": 2} for c in chunks)
        assert all(f"Orchard fact {i}:" in "".join(c.text for c in chunks) for i in range(20))


def test_docx_reads_nested_tables_content_controls_text_boxes_and_insertions(tmp_path: Path) -> None:
    import docx
    from docx.oxml import parse_xml

    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    mc = 'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006"'
    document = docx.Document()
    document.add_paragraph("Intro.")
    outer = document.add_table(rows=1, cols=2)
    outer.cell(0, 0).text = "left"
    inner = outer.cell(0, 1).add_table(rows=1, cols=2)
    inner.cell(0, 0).text, inner.cell(0, 1).text = "inner a", "inner b"
    body = document.element.body
    extra = [
        f'<w:sdt {w}><w:sdtContent><w:p><w:r><w:t>Cover title</w:t></w:r></w:p></w:sdtContent></w:sdt>',
        f'<w:p {w}><w:r><w:t xml:space="preserve">Kept </w:t></w:r><w:ins w:id="1" w:author="a">'
        '<w:r><w:t>inserted</w:t></w:r></w:ins><w:del w:id="2" w:author="a"><w:r><w:delText>deleted</w:delText>'
        '</w:r></w:del></w:p>',
        # a text box as Word writes it: the drawing, and a fallback copy of the same text for old readers
        f'<w:p {w} {mc}><w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><w:txbxContent><w:p><w:r>'
        '<w:t>Boxed text</w:t></w:r></w:p></w:txbxContent></w:drawing></mc:Choice><mc:Fallback><w:pict>'
        '<w:txbxContent><w:p><w:r><w:t>Boxed text</w:t></w:r></w:p></w:txbxContent></w:pict></mc:Fallback>'
        '</mc:AlternateContent></w:r></w:p>',
    ]
    for xml in extra:
        body.insert(len(body) - 1, parse_xml(xml))  # before the section properties
    document.save(str(tmp_path / "rich.docx"))
    [section] = load_document(tmp_path / "rich.docx")
    assert section.text == "Intro.\nleft | inner a | inner b\nCover title\nKept inserted\nBoxed text"


def test_a_long_csv_row_keeps_a_repeated_field_that_did_not_fit_its_lead(tmp_path: Path) -> None:
    short = "v" * 95
    path = tmp_path / "same.csv"
    path.write_text(f'k,k,d,k\n{short},{short},"{"x" * 600}",{short}\n', encoding="utf-8")
    [section] = load_document(path)
    assert section.lead == f"k: {short}\nk: {short}" and section.text.count(f"k: {short}") == 3


def test_html_tags_in_markdown_are_read_as_their_text(tmp_path: Path) -> None:
    # A README's centred links were a chunk of markup ("</p> <p align="center"> 👋 加入我们的 <a href=...") that
    # scored 0.82 against an unrelated question and was cited.
    text = ('<p align="center">\n    👋 加入我们的 <a href="https://discord.gg/x" target="_blank">Discord</a> 和 '
            '<a href="resources/WECHAT.md">WeChat</a>\n</p>\n<details><summary><b>数理逻辑</b></summary>\n\n'
            '<img src="resources/math.png" alt="a worked sum" width="600"/>\n</details>\n\n'
            'Write `<br>` for a break; <T> and a < b > c stay.\n\n```html\n<p>shown as written</p>\n```\n')
    out = load_document(write(tmp_path, "README.md", text))[0].text
    assert "👋 加入我们的 Discord 和 WeChat" in out and "数理逻辑" in out and "a worked sum" in out
    assert not any(tag in out for tag in ("<a ", "</a>", "<p ", "</p>\n</", "<details", "<b>", "<img"))
    assert "Write `<br>` for a break; <T> and a < b > c stay." in out and "<p>shown as written</p>" in out
    assert "数理逻辑\n" in out  # a block tag ends its line: the heading is not glued to what follows


def test_a_markdown_comment_hides_itself_only(tmp_path: Path) -> None:
    # A comment with text after it on its line was taken to run to the next comment's end: the paragraphs
    # between them, which a reader sees, were lost.
    page = ("# Fees\n\n<!-- updated 2024-01 --> The fee is now 30 dollars per month.\n\nRefunds take 5 working days."
            "\n\n<!-- reviewed by legal -->\n\nContact us by email.\n\n<!-- start -->visible words<!-- end -->\n")
    expected = ("# Fees The fee is now 30 dollars per month. Refunds take 5 working days. Contact us by email. "
                "visible words")
    assert load_document(write(tmp_path, "fees.md", page))[0].text.split() == expected.split()
    code = "Write `<!-- x -->` or ``a <!-- b --> c``.\n\n<!-- unclosed: shown, as nothing ends it\n"
    assert load_document(write(tmp_path, "code.md", code))[0].text == code


def test_csv_of_european_excel_is_read_by_its_semicolons(tmp_path: Path) -> None:
    # As many commas as semicolons in the header (commas inside a name, a decimal comma below): read by commas,
    # the row was cut at "1.234" and "50".
    path = write(tmp_path, "k.csv",
                 "Kunde;Adresse (Straße, Nr., Ort);Umsatz\nMüller GmbH;Hauptstr. 5, Berlin;1.234,50\n")
    assert load_document(path)[0].text == ("Kunde: Müller GmbH\nAdresse (Straße, Nr., Ort): Hauptstr. 5, Berlin\n"
                                           "Umsatz: 1.234,50")
    # Excel's "sep=" line names the delimiter and is no header; the header is the row after it, line 1.
    path = write(tmp_path, "sep.csv", "sep=;\nName;Price\nTea, green;3,50\n")
    [row] = load_document(path)
    assert row.text == "Name: Tea, green\nPrice: 3,50" and row.extra["line"] == 2


def _docx_with(tmp_path: Path, name: str, body: str, numbering: str = "") -> Path:
    """A .docx whose body paragraphs are ``body`` (WordprocessingML), with abstractNum/num elements added."""
    import docx
    from docx.oxml import parse_xml

    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    document = docx.Document()
    for element in parse_xml(f"<w:root {w}>{numbering}</w:root>"):
        document.part.numbering_part.element.append(element)
    for element in parse_xml(f'<w:body {w} xmlns:m="http://schemas.openxmlformats.org/officeDocument/2006/math">'
                             f"{body}</w:body>"):
        document.element.body.append(element)
    document.save(str(tmp_path / name))
    return tmp_path / name


def test_docx_numbered_paragraphs_keep_their_numbers(tmp_path: Path) -> None:
    # Word keeps "第三条" out of the text (the list writes it); a question about 第三条 found nothing.
    numbering = ('<w:abstractNum w:abstractNumId="90"><w:lvl w:ilvl="0"><w:start w:val="1"/>'
                 '<w:numFmt w:val="chineseCounting"/><w:lvlText w:val="第%1条"/><w:suff w:val="space"/></w:lvl>'
                 '<w:lvl w:ilvl="1"><w:start w:val="1"/><w:numFmt w:val="decimal"/><w:lvlText w:val="（%2）"/>'
                 '<w:suff w:val="nothing"/></w:lvl></w:abstractNum><w:num w:numId="90"><w:abstractNumId w:val="90"/>'
                 "</w:num>")

    def item(text: str, level: int = 0) -> str:
        return (f'<w:p><w:pPr><w:numPr><w:ilvl w:val="{level}"/><w:numId w:val="90"/></w:numPr></w:pPr>'
                f"<w:r><w:t>{text}</w:t></w:r></w:p>")

    body = (item("为了规范管理，制定本办法。") + item("员工享有年假。") + item("年假十五天；", 1)
            + item("病假另计。", 1) + item("本办法由人事部解释。"))
    lines = load_document(_docx_with(tmp_path, "rules.docx", body, numbering))[0].text.split("\n")
    assert lines == ["第一条 为了规范管理，制定本办法。", "第二条 员工享有年假。", "（1）年假十五天；",
                     "（2）病假另计。", "第三条 本办法由人事部解释。"]
    # A style's numbering ("List Number" in Word's own template) counts too; bullets add nothing.
    import docx

    document = docx.Document()
    for text in ("Open the valve", "Check the pressure"):
        document.add_paragraph(text, style="List Number")
    document.add_paragraph("apples", style="List Bullet")
    document.save(str(tmp_path / "steps.docx"))
    assert load_document(tmp_path / "steps.docx")[0].text == "1. Open the valve\n2. Check the pressure\napples"


def test_numbers_in_words_formats() -> None:
    from kbqa.loaders.numbering import chinese_number, format_number

    assert [chinese_number(n) for n in (1, 10, 11, 20, 23, 100, 105, 110, 1200, 2003)] == [
        "一", "十", "十一", "二十", "二十三", "一百", "一百零五", "一百一十", "一千二百", "二千零三"]
    assert [format_number(4, f) for f in ("lowerRoman", "upperLetter", "decimalZero", "decimalEnclosedCircle",
                                          "ideographTraditional", "someFormat")] == ["iv", "D", "04", "④", "丁", "4"]
    assert format_number(28, "lowerLetter") == "bb"


def test_docx_hidden_and_moved_away_text_is_left_out_and_notes_and_equations_are_read(tmp_path: Path) -> None:
    body = ('<w:p><w:r><w:t xml:space="preserve">The launch date is </w:t></w:r><w:r><w:rPr><w:vanish/></w:rPr>'
            '<w:t xml:space="preserve">DRAFT: really March 3 </w:t></w:r><w:r><w:t>June 1.</w:t></w:r></w:p>'
            '<w:p><w:moveFrom w:id="1" w:author="a"><w:r><w:t>Budget is 40 dollars.</w:t></w:r></w:moveFrom></w:p>'
            '<w:p><w:moveTo w:id="2" w:author="a"><w:r><w:t>Budget is 40 dollars.</w:t></w:r></w:moveTo></w:p>'
            '<w:p><w:r><w:t>Revenue grew 12 percent</w:t></w:r><w:r><w:footnoteReference w:id="7"/></w:r>'
            '<w:r><w:t xml:space="preserve"> in 2023; energy is </w:t></w:r><m:oMath><m:r><m:t>E=m</m:t></m:r>'
            "<m:sSup><m:e><m:r><m:t>c</m:t></m:r></m:e><m:sup><m:r><m:t>2</m:t></m:r></m:sup></m:sSup></m:oMath>"
            "<w:r><w:t>.</w:t></w:r></w:p>")
    path = _docx_with(tmp_path, "notes.docx", body)
    footnotes = ('<w:footnotes xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
                 '<w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:footnote>'
                 '<w:footnote w:id="7"><w:p><w:r><w:footnoteRef/></w:r><w:r><w:t xml:space="preserve"> Without the '
                 "one-off sale, 3 percent.</w:t></w:r></w:p></w:footnote></w:footnotes>")
    _add_part(path, "word/footnotes.xml", footnotes, "footnotes",
              "application/vnd.openxmlformats-officedocument.wordprocessingml.footnotes+xml")
    assert load_document(path)[0].text.split("\n") == [
        "The launch date is June 1.", "Budget is 40 dollars.", "Revenue grew 12 percent[1] in 2023; energy is E=mc2.",
        "[1] Without the one-off sale, 3 percent."]


def _add_part(path: Path, part: str, xml: str, kind: str, content_type: str) -> None:
    """Put a part (footnotes.xml) into a saved .docx, with its relationship and content type."""
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    files[part] = xml.encode()
    files["[Content_Types].xml"] = files["[Content_Types].xml"].replace(
        b"</Types>", f'<Override PartName="/{part}" ContentType="{content_type}"/></Types>'.encode())
    rel = (f'<Relationship Id="rIdNotes" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
           f'{kind}" Target="{part.split("/", 1)[1]}"/></Relationships>')
    files["word/_rels/document.xml.rels"] = files["word/_rels/document.xml.rels"].replace(
        b"</Relationships>", rel.encode())
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)


def test_an_old_word_file_or_a_password_protected_one_named_docx_says_which(tmp_path: Path) -> None:
    ole = bytes.fromhex("d0cf11e0a1b11ae1") + b"\0" * 2000
    with pytest.raises(CorruptDocument, match="old Word 97-2003"):
        load_document(write(tmp_path, "old.docx", ole))
    with pytest.raises(EncryptedDocument, match="password-protected"):
        load_document(write(tmp_path, "locked.docx", ole + "EncryptedPackage".encode("utf-16-le")))
    with pytest.raises(CorruptDocument, match=r"damaged or truncated") as caught:
        load_document(write(tmp_path, "cut.docx", b"PK\x03\x04" + b"\0" * 100), name="cut.docx")
    assert str(tmp_path) not in str(caught.value)


def test_markdown_is_known_by_the_files_name_not_its_temporary_path(tmp_path: Path) -> None:
    # An upload is read from a temporary file without its suffix: its comments were kept as text.
    temp = write(tmp_path, "upload-0", "Visible.\n\n<!-- an editor's note -->\n\n![chart](data:image/png;base64,"
                 + "iVBORw0KGgo" * 200 + ")\n")
    assert load_document(temp, name="notes.markdown")[0].text.split() == ["Visible.", "chart"]


def test_soft_hyphens_and_ligatures_are_typesetting_not_text(tmp_path: Path) -> None:
    page = write(tmp_path, "p.html", "<p>Donau&shy;dampf&shy;schiff; the ﬁrst ﬂoor</p>")
    assert load_document(page)[0].text == "Donaudampfschiff; the first floor"
    assert load_document(write(tmp_path, "t.tsv", "name\tprice\ntea\t3\n"))[0].text == "name: tea\nprice: 3"


def test_the_values_filled_into_a_pdf_form_are_read(tmp_path: Path) -> None:
    from pypdf.generic import ArrayObject, DictionaryObject, NameObject, NumberObject, TextStringObject

    writer = PdfWriter(clone_from=CORPUS / "en_langchain_llm_apps_primer.pdf")
    while len(writer.pages) > 1:
        writer.remove_page(len(writer.pages) - 1)

    def field(name: str, kind: str, value: object) -> DictionaryObject:
        return DictionaryObject({
            NameObject("/Type"): NameObject("/Annot"), NameObject("/Subtype"): NameObject("/Widget"),
            NameObject("/FT"): NameObject(kind), NameObject("/T"): TextStringObject(name),
            NameObject("/V"): value, NameObject("/Rect"): ArrayObject([NumberObject(n) for n in (0, 0, 9, 9)])})

    fields = [field("applicant", "/Tx", TextStringObject("Maria Gonzalez")),
              field("married", "/Btn", NameObject("/Yes")), field("single", "/Btn", NameObject("/Off"))]
    writer.pages[0][NameObject("/Annots")] = ArrayObject([writer._add_object(f) for f in fields])
    writer.write(str(tmp_path / "form.pdf"))
    text = load_document(tmp_path / "form.pdf", ocr=False)[0].text
    assert text.endswith("\napplicant: Maria Gonzalez\nmarried: Yes")


def test_a_table_cell_merged_down_is_read_in_each_row_it_spans(tmp_path: Path) -> None:
    # Each row is read as one line; a region merged down two rows left the second row without it (" | 12 | 13").
    document, table = _docx_table([["Region", "Q1", "Q2"], ["North", "10", "11"], ["", "12", "13"]])
    table.cell(1, 0).merge(table.cell(2, 0))
    table.cell(0, 1).merge(table.cell(0, 2))
    document.save(str(tmp_path / "m.docx"))
    assert load_document(tmp_path / "m.docx")[0].text == "Region | Q1 Q2\nNorth | 10 | 11\nNorth | 12 | 13"
    page = write(tmp_path, "m.html", "<table><tr><th>Region</th><th colspan=2>Sales</th></tr><tr><td rowspan=2>North"
                 "</td><td>10</td><td>11</td></tr><tr><td>12</td><td>13</td></tr><tr><td>South</td><td rowspan=2>9"
                 "</td><td>1</td></tr><tr><td>East</td></tr></table>")
    assert load_document(page)[0].text.split("\n") == ["Region | Sales", "North | 10 | 11", "North | 12 | 13",
                                                        "South | 9 | 1", "East | 9"]


def test_question_and_answer_lines_of_a_pdf_stay_lines_of_their_own() -> None:
    # Long lines without a closing mark, followed by a capital: taken for one wrapped sentence ("...orders A: ...").
    text = ("Frequently asked questions about returns and refunds for all customers\n"
            "Q: What is the return window for online orders placed on our website\n"
            "A: Thirty days from delivery for all items bought online or in our stores.")
    assert tidy_text(text).split("\n") == text.split("\n")


def test_a_markdown_tables_rows_name_their_columns(tmp_path: Path) -> None:
    # QA: "C-Eval average of ChatGLM2-6B?" answered 48.3 (another row's Social Sciences) from "| ChatGLM2-6B |
    # 50.1 | 46.4 | 60.4 |": a row that names its columns, as a CSV row is read, says which figure is which.
    page = ("### C-Eval\n\n| Model | Average | STEM |\n| ----- |:---:| --- |\n| ChatGLM-6B | 38.9 | 33.3 |\n"
            "| ChatGLM2-6B | 50.1 | |\n| a \\| b | 1 | 2 |\n\nAfter the table.\n\n"
            "```\n| x | y |\n|---|---|\n| 1 | 2 |\n```\n")
    assert load_document(write(tmp_path, "t.md", page))[0].text == (
        "### C-Eval\n\nModel: ChatGLM-6B; Average: 38.9; STEM: 33.3\nModel: ChatGLM2-6B; Average: 50.1\n"
        "Model: a | b; Average: 1; STEM: 2\n\nAfter the table.\n\n```\n| x | y |\n|---|---|\n| 1 | 2 |\n```\n")
    assert load_document(write(tmp_path, "t.txt", page))[0].text == page  # a text file shows it as written
