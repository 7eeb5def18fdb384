import io
import json
import struct
import zipfile

import docx
import pytest
from pypdf import PdfReader, PdfWriter

from apps.ingestion.chunking import chunk_text
from apps.ingestion.embedding import get_embedder
from apps.ingestion.parsing import CONTENT_TYPES, ParseError, content_type_for, decode_text, parse

# --- fixture builders: every file is made here, nothing binary is committed ---------------------------------


def make_pdf(pages: list[list[str]], title: str | None = None, author: str | None = None) -> bytes:
    """A small valid PDF written by hand: a Helvetica text stream per page (one string per line), an Info
    dictionary, and a cross-reference table with correct offsets."""

    def literal(text):
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    kids = []
    for i, lines in enumerate(pages):
        page_id, content_id = 4 + 2 * i, 5 + 2 * i
        kids.append(f"{page_id} 0 R")
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"] + [f"({literal(line)}) Tj T*" for line in lines] + ["ET"]
        stream = "\n".join(ops).encode("cp1252")
        objects[page_id] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>").encode()
        objects[content_id] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream)
    objects[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()
    info_id = 4 + 2 * len(pages)
    info = [f"/Title ({literal(title)})" if title else "", f"/Author ({literal(author)})" if author else ""]
    objects[info_id] = f"<< {' '.join(info)} >>".encode("cp1252")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (info_id + 1)
    out += b"".join(b"%010d 00000 n \n" % offsets[n] for n in range(1, info_id + 1))
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (info_id + 1, info_id, xref)
    return bytes(out)


def encrypt_pdf(data: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, "owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx(blocks, title=None, author=None) -> bytes:
    """``blocks``: ("heading", level, text) | ("p", text) | ("p", text, style) | ("table", [[cell, ...], ...])."""
    document = docx.Document()
    document.core_properties.title = title or ""
    document.core_properties.author = author or ""
    for block in blocks:
        if block[0] == "heading":
            document.add_heading(block[2], block[1])
        elif block[0] == "table":
            rows = block[1]
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            for r, row in enumerate(rows):
                for c, value in enumerate(row):
                    table.cell(r, c).text = value
        else:
            document.add_paragraph(block[1], style=block[2] if len(block) > 2 else None)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bomb_docx(inflated_mib=30) -> bytes:
    """A zip named .docx whose document part inflates from a few kilobytes to ``inflated_mib`` MiB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with archive.open("word/document.xml", "w") as member:
            block = b"<w:p><w:r><w:t>lorem</w:t></w:r></w:p>" * 26_000  # ~1 MiB
            for _ in range(inflated_mib):
                member.write(block)
    return out.getvalue()


def with_declared_size(data: bytes, size: int) -> bytes:
    """The same zip with its first central-directory entry claiming ``size`` uncompressed bytes."""
    entry = data.find(b"PK\x01\x02")
    return data[: entry + 24] + struct.pack("<I", size) + data[entry + 28 :]


LOREM_PAGE = [
    "Remote access is provided through the GateKeeper client on every company laptop.",
    "Employees sign in with their badge number and a one-time code from the authenticator app.",
]


def test_markdown_title_and_headings():
    doc = parse("guide.md", b"# VPN guide\n\nInstall it.\n\n## Troubleshooting\nRestart the client.\n")
    assert doc.title == "VPN guide"
    assert doc.content_type == "text/markdown"
    assert "## Troubleshooting" in doc.text.split("\n\n")


def test_html_drops_boilerplate_and_keeps_structure():
    html = (b"<html><head><title>Security</title><style>p{}</style><script>alert(1)</script></head><body>"
            b"<nav>Menu</nav><h1>Security policy</h1><p>Encrypt <b>laptops</b>.</p><ul><li>One</li></ul>"
            b"<footer>Legal</footer></body></html>")
    doc = parse("s.html", html)
    assert doc.title == "Security"
    assert "alert" not in doc.text and "Menu" not in doc.text and "Legal" not in doc.text
    assert "# Security policy" in doc.text and "Encrypt laptops." in doc.text
    assert "- One" in doc.text


def test_html_author_from_meta_and_language():
    html = (b'<html lang="de"><head><meta name="Author" content="Hanna  Weber"><title>Reisen</title></head><body>'
            b"<p>Bahnfahrten werden in der zweiten Klasse erstattet, Hotels bis 140 Euro pro Nacht.</p></body></html>")
    doc = parse("reisen.html", html)
    assert (doc.title, doc.author, doc.language) == ("Reisen", "Hanna Weber", "de")


def test_plain_text_title_from_filename():
    doc = parse("travel-and-expenses.txt", b"Trains: standard class.\r\n\r\nHotels: capped.")
    assert doc.title == "Travel and expenses"
    assert doc.text == "Trains: standard class.\n\nHotels: capped."


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.txt", b"", "empty document"),
        ("blank.md", b"  \n\n ", "empty document"),
        ("empty.pdf", b"", "empty document"),
        ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary content"),
        ("binary.csv", b"a,b\n\x00\x01,\x02\n", r"binary content \(NUL bytes\)"),
        # every byte value but NUL: not UTF-8, and no legacy encoding makes text of it
        ("noise.txt", bytes(range(1, 256)) * 8, r"unknown text encoding: not valid UTF-8 \(byte 0x80 at offset 127\)"),
        ("bad-bom.txt", b"\xef\xbb\xbfcaf\xe9", "starts with a UTF-8 byte-order mark but is not valid UTF-8"),
        ("script-only.html", b"<html><body><script>x()</script></body></html>", "no text left"),
        ("data.xyz", b"hello", "unsupported file type"),
    ],
)
def test_bad_input_gives_a_reason(name, data, reason):
    with pytest.raises(ParseError, match=reason):
        parse(name, data)


def test_unsupported_content_type_named_by_a_connector():
    with pytest.raises(ParseError, match="unsupported content type 'image/png'"):
        parse("scan", b"\x89PNG", content_type="image/png")


def test_new_formats_are_registered():
    assert {name: content_type_for(name) for name in ("a.pdf", "b.DOCX", "c.csv", "d.json")} == {
        "a.pdf": "application/pdf",
        "b.DOCX": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "c.csv": "text/csv",
        "d.json": "application/json",
    }
    assert content_type_for("old.doc") is None and ".xlsx" not in CONTENT_TYPES


# --- encodings ------------------------------------------------------------------------------------------------


def test_legacy_latin1_text_is_decoded():
    data = "caf\xe9 cr\xe8me".encode("latin-1")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # the input really is not UTF-8
    doc = parse("latin1.txt", data)
    assert doc.text == "caf\xe9 cr\xe8me"


def test_windows_1252_markdown_keeps_euro_and_quotes():
    text = "# Caf\xe9 rules\n\nThe \u201cna\xefve\u201d r\xe9sum\xe9 costs 5 \u20ac."
    doc = parse("cafe.md", text.encode("cp1252"))
    assert doc.title == "Caf\xe9 rules"
    assert doc.text == "# Caf\xe9 rules\n\nThe \u201cna\xefve\u201d r\xe9sum\xe9 costs 5 \u20ac."


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_unicode_with_a_byte_order_mark(encoding):
    text = "Z\xfcrich \u2013 \u65e5\u672c \u2013 caf\xe9"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    assert decode_text(data) == text


def test_utf16_without_a_byte_order_mark_is_refused_as_binary():
    with pytest.raises(ParseError, match="binary content"):
        parse("notes.txt", "plain words".encode("utf-16-le"))


def test_guessed_encoding_producing_control_characters_is_refused():
    sentence = "Le caf\xe9 cr\xe8me est servi \xe0 la cantine chaque matin. ".encode("latin-1")
    clean = parse("menu.txt", sentence * 10)
    assert clean.text.startswith("Le caf\xe9 cr\xe8me") and clean.language == "fr"
    # one bell character per sentence: charset-normalizer still calls it Windows-1252, but it is not text
    with pytest.raises(ParseError, match=r"\(10 control characters in the first 520 characters read as cp1252\)"):
        parse("menu.txt", (sentence + b"\x07") * 10)


def test_utf8_is_taken_as_it_is():
    doc = parse("note.txt", "Stra\xdfe \u2192 caf\xe9\n\nZweiter Absatz.".encode())
    assert doc.text == "Stra\xdfe \u2192 caf\xe9\n\nZweiter Absatz."


# --- pdf ------------------------------------------------------------------------------------------------------


def test_pdf_title_author_pages_and_language():
    data = make_pdf(
        [["Remote access", *LOREM_PAGE], ["Expenses (travel)", "Hotel nights are capped at 140 pounds."],
         ["Security", "Laptops use full-disk encryption."]],
        title="Employee handbook", author="Jane Doe",
    )
    doc = parse("handbook.pdf", data)
    assert (doc.title, doc.author, doc.language) == ("Employee handbook", "Jane Doe", "en")
    assert doc.content_type == "application/pdf"
    blocks = doc.text.split("\n\n")
    assert [b for b in blocks if b.startswith("\f")] == ["\f1", "\f2", "\f3"]
    assert blocks[blocks.index("\f2") + 1].startswith("Expenses (travel)\nHotel nights are capped")


def test_pdf_without_metadata_takes_the_file_name():
    doc = parse("it/remote-access.pdf", make_pdf([LOREM_PAGE]))
    assert doc.title == "Remote access" and doc.author == ""


def test_pdf_chunks_carry_the_page_they_are_on():
    embedder = get_embedder()
    long_page = [f"Clause {i} says that calibration records are kept for seven years." for i in range(40)]
    data = make_pdf([LOREM_PAGE, long_page, [], ["Closing page: contact the quality team."]])
    doc = parse("manual.pdf", data)
    chunks = chunk_text(doc.text, embedder.count_tokens, 64, 16, embedder.split_tokens)
    assert chunks[0].page == 1 and "GateKeeper" in chunks[0].text
    on_page_2 = [c for c in chunks if c.page == 2]
    assert len(on_page_2) >= 3  # the long page is cut into several chunks, each still on page 2
    assert all("Clause" in c.text and "GateKeeper" not in c.text for c in on_page_2)
    assert chunks[-1].page == 4 and chunks[-1].text == "Closing page: contact the quality team."
    assert {c.page for c in chunks} == {1, 2, 4}  # page 3 is blank
    assert all("\f" not in c.text for c in chunks)


def test_pages_never_share_a_chunk():
    embedder = get_embedder()
    doc = parse("short.pdf", make_pdf([["One."], ["Two."], ["Three."]]))
    chunks = chunk_text(doc.text, embedder.count_tokens, 200, 40, embedder.split_tokens)
    assert [(c.page, c.text) for c in chunks] == [(1, "One."), (2, "Two."), (3, "Three.")]


def test_unpaged_text_has_no_page():
    embedder = get_embedder()
    chunks = chunk_text("# Manual\n\nWear gloves.", embedder.count_tokens, 200, 40, embedder.split_tokens)
    assert [(c.heading, c.page) for c in chunks] == [("Manual", None)]


def test_pdf_encrypted_with_an_empty_user_password_opens():
    data = encrypt_pdf(make_pdf([LOREM_PAGE], title="Restricted"), user_password="")
    assert PdfReader(io.BytesIO(data)).is_encrypted
    doc = parse("restricted.pdf", data)
    assert doc.title == "Restricted" and "GateKeeper" in doc.text


def test_bad_pdfs_give_a_reason():
    good = make_pdf([LOREM_PAGE, LOREM_PAGE])
    encrypted = encrypt_pdf(good, user_password="s3cret")
    assert PdfReader(io.BytesIO(encrypted)).is_encrypted
    cases = {
        "corrupt": (b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages", "unreadable PDF"),
        "truncated": (good[: len(good) // 2], "unreadable PDF"),
        "not a pdf": (b"GIF89a\x01\x00\x01\x00 this is an image", "not a PDF: no %PDF- header"),
        "encrypted": (encrypted, "encrypted PDF: it needs a password"),
        "no text": (make_pdf([[], []], title="Scanned"), "no text left after parsing: the PDF has no extractable"),
    }
    for label, (data, reason) in cases.items():
        with pytest.raises(ParseError, match=reason):
            parse(f"{label}.pdf", data)


# --- docx -----------------------------------------------------------------------------------------------------


def test_docx_headings_lists_tables_title_and_author():
    data = make_docx(
        [
            ("heading", 1, "Parental leave"),
            ("p", "Employees receive twenty-six weeks of fully paid parental leave after six months."),
            ("heading", 2, "Eligibility"),
            ("p", "Ask the people team to start the paperwork.", "List Bullet"),
            ("p", "# of months of service: six"),
            ("table", [["Country", "Weeks"], ["United Kingdom", "26"], ["France", "16"]]),
            ("heading", 3, "Exceptions"),
            ("p", "Contractors are not eligible."),
        ],
        title="Leave policy", author="People Team",
    )
    doc = parse("hr/leave.docx", data)
    assert (doc.title, doc.author, doc.language) == ("Leave policy", "People Team", "en")
    blocks = doc.text.split("\n\n")
    assert [b for b in blocks if b.startswith("#")] == ["# Parental leave", "## Eligibility", "### Exceptions"]
    assert "- Ask the people team to start the paperwork." in blocks
    assert "\\# of months of service: six" in blocks  # literal "#" text is not taken for a heading
    assert "Country: United Kingdom\nWeeks: 26" in blocks and "Country: France\nWeeks: 16" in blocks
    embedder = get_embedder()
    headings = [c.heading for c in chunk_text(doc.text, embedder.count_tokens, 200, 40, embedder.split_tokens)]
    assert headings == ["Parental leave", "Parental leave > Eligibility",
                        "Parental leave > Eligibility > Exceptions"]


def test_docx_title_falls_back_to_the_title_paragraph_then_the_file_name():
    titled = parse("x.docx", make_docx([("heading", 0, "Travel rules"), ("p", "Trains in standard class.")]))
    assert titled.title == "Travel rules" and titled.text.startswith("# Travel rules\n\n")
    untitled = parse("travel-rules.docx", make_docx([("p", "Trains in standard class.")]))
    assert untitled.title == "Travel rules"


def test_docx_language_is_detected():
    text = "Les employ\xe9s re\xe7oivent vingt-six semaines de cong\xe9 parental enti\xe8rement pay\xe9."
    assert parse("conge.docx", make_docx([("p", text)])).language == "fr"


def test_docx_zip_bomb_is_refused_before_python_docx_opens_it(monkeypatch):
    data = zip_bomb_docx()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sum(i.file_size for i in archive.infolist()) > 100 * len(data)

    def must_not_open(*args, **kwargs):
        raise AssertionError("python-docx was asked to open a zip bomb")

    monkeypatch.setattr(docx, "Document", must_not_open)
    with pytest.raises(ParseError, match=r"zip bomb\?\): compression ratio [\d,]+:1 is over 100:1"):
        parse("bomb.docx", data)


def test_docx_declaring_too_much_inflated_data_is_refused():
    data = with_declared_size(make_docx([("p", "Harmless text.")]), 200 * 1024 * 1024)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.infolist()[0].file_size == 200 * 1024 * 1024  # the forgery took
    with pytest.raises(ParseError, match="would inflate to 2[\\d,]+ bytes, over the 104,857,600-byte limit"):
        parse("forged.docx", data)


def test_bad_docx_gives_a_reason():
    other_zip = io.BytesIO()
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("notes.txt", "a zip, but no Word document in it")
    cases = {
        "not a zip": (b"PK\x03\x04 but not really a zip at all", "not a valid .docx: not a zip archive"),
        "plain text": (b"Just some text saved as .docx", "not a valid .docx: not a zip archive"),
        "other zip": (other_zip.getvalue(), "unreadable .docx"),
        "truncated": (make_docx([("p", "text")])[:2000], "not a valid .docx"),
    }
    for label, (data, reason) in cases.items():
        with pytest.raises(ParseError, match=reason):
            parse(f"{label}.docx", data)


# --- csv ------------------------------------------------------------------------------------------------------


def test_csv_rows_become_labelled_lines_under_a_heading():
    data = (b"name,team,notes\r\nAlice,Finance,\"Approves invoices, over 500 pounds\"\r\n"
            b"Bob,HR,\r\n\r\nCarol,IT,\"Runs the \"\"VPN\"\" gateway\"\r\n")
    doc = parse("staff-directory.csv", data)
    assert doc.title == "Staff directory" and doc.content_type == "text/csv"
    assert doc.text.split("\n\n") == [
        "# Staff directory",
        "name: Alice\nteam: Finance\nnotes: Approves invoices, over 500 pounds",
        "name: Bob\nteam: HR",
        'name: Carol\nteam: IT\nnotes: Runs the "VPN" gateway',
    ]


def test_csv_without_a_header_row_and_other_delimiters():
    doc = parse("readings.csv", b"2024-01-05;21.5;ok\n2024-01-06;22.0;ok\n")
    assert doc.text.split("\n\n")[1] == "Column 1: 2024-01-05\nColumn 2: 21.5\nColumn 3: ok"
    tabbed = parse("t.csv", "city\tcontact\nZ\xfcrich\tRen\xe9\n".encode("cp1252"))
    assert tabbed.text.split("\n\n")[1] == "city: Z\xfcrich\ncontact: Ren\xe9"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'name,notes\nAlice,"an unclosed quote\nBob,HR\n', r"unreadable CSV: unexpected end of data \(line 3\)"),
        (b'name,notes\nAlice,"quoted"trailing\n', "unreadable CSV: ',' expected after '\"'"),
        (b"name,notes\n" + b"x" * 200_000 + b",y\n", "unreadable CSV: field larger than field limit"),
        (b",,,\n,,\n", "no text left after parsing"),
    ],
)
def test_bad_csv_gives_a_reason(data, reason):
    with pytest.raises(ParseError, match=reason):
        parse("bad.csv", data)


# --- json -----------------------------------------------------------------------------------------------------


def test_json_object_is_flattened_readably():
    data = {
        "title": "Leeds office guide",
        "author": "Facilities",
        "opening_hours": "7am to 8pm",
        "wifi": True,
        "retired": None,
        "address": {"street": "1 Wharf Road", "geo": {"lat": 53.79, "lon": -1.54}},
        "tags": ["parking", "bike racks", ""],
        "rooms": [{"name": "Aire", "seats": 8}, {"name": "Wharfe", "seats": 4, "kit": ["screen", "phone"]}],
    }
    doc = parse("leeds.json", json.dumps(data).encode())
    assert (doc.title, doc.author, doc.content_type) == ("Leeds office guide", "Facilities", "application/json")
    assert doc.text.split("\n\n") == [
        "title: Leeds office guide\nauthor: Facilities\nopening_hours: 7am to 8pm\nwifi: true",
        "address > street: 1 Wharf Road\naddress > geo > lat: 53.79\naddress > geo > lon: -1.54",
        "tags:\n- parking\n- bike racks",
        "rooms > 1 > name: Aire\nrooms > 1 > seats: 8",
        "rooms > 2 > name: Wharfe\nrooms > 2 > seats: 4\nrooms > 2 > kit:\n- screen\n- phone",
    ]


def test_json_list_of_objects_gives_one_paragraph_per_object():
    data = [{"name": "Alice", "role": "Controller"}, {"name": "Bob", "role": "Clerk", "teams": ["AP", "AR"]}]
    doc = parse("people.json", json.dumps(data).encode())
    assert doc.title == "People"
    assert doc.text.split("\n\n") == ["name: Alice\nrole: Controller", "name: Bob\nrole: Clerk\nteams:\n- AP\n- AR"]
    assert parse("tags.json", b'["vpn", 3, false]').text == "- vpn\n- 3\n- false"


def test_deeply_nested_json_is_cut_not_crashed():
    value = "leaf"
    for _ in range(60):
        value = {"k": value}
    doc = parse("deep.json", json.dumps(value).encode())
    assert "nested more than 32 levels deep; not indexed" in doc.text


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"name": "Alice",', "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 18"),
        (b"{'single': 'quotes'}", "invalid JSON: Expecting property name"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON: nested too deeply"),
        (b"1" * 5000, "invalid JSON: Exceeds the limit"),
        (b'{"a": null, "b": [], "c": {}}', "no text left after parsing"),
    ],
)
def test_bad_json_gives_a_reason(data, reason):
    with pytest.raises(ParseError, match=reason):
        parse("bad.json", data)


def test_json_nul_escapes_do_not_reach_the_database():
    doc = parse("nul.json", b'{"note": "before\\u0000after"}')
    assert doc.text == "note: beforeafter"


# --- language -------------------------------------------------------------------------------------------------


def test_language_is_left_empty_when_unsure():
    assert parse("n.txt", b"Q3 2024: 12.5%").language == ""
    german = "Das Ger\xe4t muss j\xe4hrlich kalibriert werden, sagt die Abteilung."
    assert parse("d.txt", german.encode()).language == "de"


def test_chunks_follow_headings_and_budget():
    embedder = get_embedder()
    long_paragraph = " ".join(f"Sentence number {i} talks about calibration drift in sensors." for i in range(80))
    text = f"# Manual\n\nIntro paragraph.\n\n## Calibration\n\n{long_paragraph}\n\n## Safety\n\nWear gloves."
    chunks = chunk_text(text, embedder.count_tokens, 100, 20, embedder.split_tokens)
    headings = [c.heading for c in chunks]
    assert headings[0] == "Manual"
    assert headings[-1] == "Manual > Safety" and chunks[-1].text == "Wear gloves."
    calibration = [c for c in chunks if c.heading == "Manual > Calibration"]
    assert len(calibration) >= 5
    assert all(embedder.count_tokens(c.text) <= 100 for c in chunks)
    # nothing lost: every sentence is in some chunk
    joined = " ".join(c.text for c in calibration)
    assert all(f"Sentence number {i} " in joined for i in range(80))


def test_a_single_huge_sentence_is_cut_by_tokens():
    embedder = get_embedder()
    words = " ".join(f"w{i}" for i in range(1000))
    chunks = chunk_text(words, embedder.count_tokens, 64, 16, embedder.split_tokens)
    assert len(chunks) > 10
    assert all(embedder.count_tokens(c.text) <= 64 for c in chunks)
    assert chunks[0].text.startswith("w0 ") and chunks[-1].text.endswith("w999")
