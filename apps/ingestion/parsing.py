"""Turn a file's bytes into a title, author, language and text with heading markers. Every refusal is a ParseError
with a reason an operator can act on; the sync records it against that document and goes on.

The text handed to the chunker: paragraphs separated by blank lines; a heading is a paragraph of "#"-prefixed
text (markdown style, levels 1 to 6); in paged formats (PDF) a paragraph "\\f<n>" (form feed, page number) says
that page n starts there. Parsers never let user text produce either marker by accident (see ``_literal`` and
``_normalise``, which strips form feeds from paragraph ends).
"""

import csv
import io
import json
import re
import unicodedata
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import PurePosixPath

from bs4 import BeautifulSoup

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
CSV = "text/csv"
JSON = "application/json"

CONTENT_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": PDF,
    ".docx": DOCX,
    ".csv": CSV,
    ".json": JSON,
}
_BOILERPLATE_TAGS = ("script", "style", "noscript", "nav", "footer", "header", "template", "svg", "form", "iframe")
_HEADING_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_LOOKS_LIKE_HEADING = re.compile(r"^#{1,6}\s")

# A .docx is a zip archive; these are checked on the sizes its directory declares before anything is inflated.
# Python's zipfile stops inflating a member at its declared size (and then fails its CRC check), so a member
# cannot quietly grow past what was checked here.
ZIP_MAX_UNCOMPRESSED = 100 * 1024 * 1024
ZIP_MAX_RATIO = 100
ZIP_MAX_MEMBERS = 10_000
# Below this much inflated data a high ratio is harmless: python-docx's own blank template inflates 24:1.
_ZIP_RATIO_FLOOR = 1024 * 1024

_LANGUAGE_SAMPLE_CHARS = 10_000
_LANGUAGE_MIN_LETTERS = 20
_LANGUAGE_MIN_CONFIDENCE = 0.5
_JSON_MAX_DEPTH = 32


class ParseError(Exception):
    """The document cannot be turned into text; the message says why."""


@dataclass
class ParsedDocument:
    title: str
    text: str  # see the module docstring: paragraphs, "#" headings, "\f<n>" page starts
    content_type: str
    author: str = ""
    language: str = ""  # ISO 639-1 code when the detector is confident, else ""


@dataclass
class _Found:
    """What a format's parser found; parse() fills in the defaults."""

    body: str
    title: str = ""
    author: str = ""


def content_type_for(name: str) -> str | None:
    return CONTENT_TYPES.get(PurePosixPath(name).suffix.lower())


def parse(name: str, data: bytes, content_type: str | None = None, title: str | None = None) -> ParsedDocument:
    """``content_type`` overrides the guess from the name's extension; ``title`` overrides the parser's."""
    content_type = content_type or content_type_for(name)
    if content_type is None:
        raise ParseError(f"unsupported file type {PurePosixPath(name).suffix or '(none)'!r}")
    if content_type not in _PARSERS:
        raise ParseError(f"unsupported content type {content_type!r}")
    if not data.strip():
        raise ParseError("empty document: no text to index")
    fallback_title = PurePosixPath(name).stem.replace("-", " ").replace("_", " ").strip().capitalize()
    found = _PARSERS[content_type](data, title or fallback_title)
    # PostgreSQL text cannot hold NUL, and PDF fonts, docx runs and JSON "\u0000" escapes can all produce one.
    body = found.body.replace("\x00", "")
    if not _PAGE_MARKERS.sub("", body).strip():
        raise ParseError("no text left after parsing")
    return ParsedDocument(
        title=_one_line(title or found.title.replace("\x00", "") or fallback_title)[:500],
        text=body,
        content_type=content_type,
        author=_one_line(found.author.replace("\x00", ""))[:300],
        language=detect_language(body),
    )


# --- text encodings -------------------------------------------------------------------------------------------

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),  # before UTF-16 LE, whose mark it starts with
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# Tried by charset-normalizer only after strict UTF-8 failed; UTF-16/32 without a byte-order mark are left out
# because almost any even-length byte string "decodes" as UTF-16 into CJK-looking nonsense.
_NOT_GUESSED = ["utf_8", "utf_16", "utf_16_be", "utf_16_le", "utf_32", "utf_32_be", "utf_32_le", "utf_7"]
# When a short text leaves many single-byte code pages tied, charset-normalizer picks by name (cp1006, Urdu, for
# "café"). Windows-1252 is the commonest legacy encoding (HTML5 reads latin-1 labels as it), so it wins ties.
_PREFERRED_ON_TIE = ("cp1252", "latin_1", "iso8859_15")
_ALLOWED_CONTROLS = set("\t\n\r\f\v\x1b")  # ESC: terminal colours in logs
_MAX_CONTROL_SHARE = 0.01  # legacy text has next to none; charset-normalizer lets about 1 in 55 through


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM), then UTF-16/32 with a BOM, then a legacy encoding charset-normalizer can
    vouch for; anything else is refused with the reason."""
    if not data.strip():
        raise ParseError("empty document: no text to index")
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(encoding)
            except UnicodeDecodeError as exc:
                name = encoding.upper()
                raise ParseError(f"starts with a {name} byte-order mark but is not valid {name}: {exc.reason} at "
                                 f"offset {exc.start + len(bom)}") from exc
            if "\x00" in text[:8192]:
                raise ParseError("binary content (NUL bytes) in a file named as text")
            return text
    if b"\x00" in data[:8192]:
        raise ParseError("binary content (NUL bytes) in a file named as text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf8_problem = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
    text, encoding = _guess_legacy_encoding(data)
    if text is None:
        raise ParseError(f"unknown text encoding: not valid UTF-8 ({utf8_problem}) and no legacy encoding explains "
                         "its bytes (binary data named as text?)")
    return _check_guess(text, encoding)


def _guess_legacy_encoding(data: bytes) -> tuple[str | None, str | None]:
    from charset_normalizer import from_bytes

    matches = from_bytes(data, cp_exclusion=_NOT_GUESSED)
    best = matches.best()
    if best is None:
        return None, None
    for preferred in _PREFERRED_ON_TIE:
        for match in matches:
            if match.encoding == preferred and match.chaos <= best.chaos and match.coherence >= best.coherence:
                return str(match), match.encoding
    return str(best), best.encoding


def _check_guess(text: str, encoding: str) -> str:
    """A guessed encoding that turns the bytes into control characters was the wrong guess, or it is binary."""
    sample = text[:8192]
    controls = sum(1 for c in sample if c not in _ALLOWED_CONTROLS and unicodedata.category(c) == "Cc")
    if sample and controls / len(sample) > _MAX_CONTROL_SHARE:
        raise ParseError(f"binary content ({controls} control characters in the first {len(sample)} characters "
                         f"read as {encoding}) in a file named as text")
    return text


# --- language -------------------------------------------------------------------------------------------------

_PAGE_MARKERS = re.compile(r"^\f\d+$", re.MULTILINE)
_HEADING_MARKS = re.compile(r"^#{1,6}\s+", re.MULTILINE)


@cache
def _language_identifier():
    # py3langid ships its model inside the wheel: nothing is downloaded. Loaded once per process (~0.6 s).
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> str:
    """ISO 639-1 code of the text's main language, or "" when there is too little text or the detector is unsure
    (lists of labels and numbers, mixed languages)."""
    sample = _HEADING_MARKS.sub("", _PAGE_MARKERS.sub("", text[:_LANGUAGE_SAMPLE_CHARS]))
    if sum(1 for c in sample if c.isalpha()) < _LANGUAGE_MIN_LETTERS:
        return ""
    language, confidence = _language_identifier().classify(sample)
    if confidence < _LANGUAGE_MIN_CONFIDENCE or language in ("und", "zxx"):
        return ""
    return language[:16]


# --- shared helpers -------------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = [re.sub(r"[ \t]+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paragraphs if p)


def _one_line(value) -> str:
    return " ".join(str(value or "").split())


def _literal(block: str) -> str:
    """A paragraph of a format without heading syntax that happens to start with "# " must not become a heading."""
    return "\\" + block if _LOOKS_LIKE_HEADING.match(block) else block


def _blocks(parts) -> str:
    return "\n\n".join(_literal(p) for p in parts if p)


# --- text, markdown, html -------------------------------------------------------------------------------------


def _parse_plain(data: bytes, default_title: str) -> _Found:
    return _Found(_normalise(decode_text(data)))


def _parse_markdown(data: bytes, default_title: str) -> _Found:
    text = decode_text(data)
    title = ""
    for line in text.splitlines():
        match = _MD_HEADING.match(line)
        if match and len(match.group(1)) == 1:
            title = match.group(2).strip()
            break
    # Headings become their own paragraphs so the chunker can follow them.
    lines = []
    for line in text.replace("\r\n", "\n").splitlines():
        if _MD_HEADING.match(line):
            lines.extend(["", line.strip(), ""])
        else:
            lines.append(line)
    return _Found(_normalise("\n".join(lines)), title)


def _parse_html(data: bytes, default_title: str) -> _Found:
    text = decode_text(data)
    try:
        soup = BeautifulSoup(text, "lxml")
    except Exception as exc:  # lxml raises several types on hostile input
        raise ParseError(f"unreadable HTML: {exc}") from exc
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    author_meta = soup.find("meta", attrs={"name": re.compile("^author$", re.I)})
    author = author_meta.get("content", "") if author_meta else ""
    for tag in soup(_BOILERPLATE_TAGS):
        tag.decompose()
    body = soup.body or soup
    parts = []
    for element in body.find_all([*_HEADING_TAGS, "p", "li", "td", "th", "pre", "blockquote", "dt", "dd"]):
        if element.find_parent(["p", "li", "td", "th", "pre", "blockquote", "dd"]) is not None:
            continue  # its text is already part of the enclosing block
        value = " ".join(element.get_text().split())
        if not value:
            continue
        if element.name in _HEADING_TAGS:
            parts.append("#" * int(element.name[1]) + " " + value)
            title = title or value
        else:
            parts.append(("- " if element.name == "li" else "") + value)
    if not parts:  # no block structure: take all the visible text
        parts = [body.get_text("\n", strip=True)]
    return _Found(_normalise("\n\n".join(parts)), title, author if isinstance(author, str) else "")


# --- tables (csv, docx) ---------------------------------------------------------------------------------------

_DATA_LIKE = re.compile(r"^[\s$€£¥+\-(]*\d[\d\s.,:/\-)%]*$")


def _has_header(rows: list[list[str]]) -> bool:
    """A first row of distinct, non-empty, non-numeric, short cells followed by more rows is taken as headers.

    (csv.Sniffer.has_header abstains on columns of varying-length words, which is most real CSV, so it would
    call "name,team / Alice,Finance" headerless.) A headerless file of short distinct words is misread; its
    values then appear as labels, which loses nothing."""
    if len(rows) < 2:
        return False
    first = [c.strip() for c in rows[0]]
    if not first or any(not c or len(c) > 100 or _DATA_LIKE.match(c) for c in first):
        return False
    return len({c.lower() for c in first}) == len(first)


def _table_blocks(rows: list[list[str]]) -> list[str]:
    """One paragraph per row, a "label: value" line per non-empty cell."""
    rows = [[_one_line(c) for c in row] for row in rows]
    rows = [row for row in rows if any(row)]
    if not rows:
        return []
    headers: list[str] = []
    if _has_header(rows):
        headers, rows = rows[0], rows[1:]
    blocks = []
    for row in rows:
        lines = []
        for i, value in enumerate(row):
            if value:
                label = headers[i] if i < len(headers) and headers[i] else f"Column {i + 1}"
                lines.append(f"{label}: {value}")
        blocks.append("\n".join(lines))
    return blocks


# --- csv ------------------------------------------------------------------------------------------------------


def _parse_csv(data: bytes, default_title: str) -> _Found:
    text = decode_text(data)
    sample = text[:65536]
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        delimiter, skip_space = sniffed.delimiter, sniffed.skipinitialspace
    except csv.Error:  # one column, or too little to tell: RFC 4180 commas
        delimiter, skip_space = ",", False
    # Only the delimiter is taken from the sniffer: its quoting guesses from a sample can make valid rows fail.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=skip_space, strict=True)
    rows = []
    try:
        for row in reader:
            rows.append(row)
    except csv.Error as exc:
        raise ParseError(f"unreadable CSV: {exc} (line {reader.line_num})") from exc
    blocks = _table_blocks(rows)
    # A heading per file, so every row's chunk says which table it came from.
    return _Found(f"# {default_title}\n\n{_blocks(blocks)}" if blocks else "")


# --- json -----------------------------------------------------------------------------------------------------


def _parse_json(data: bytes, default_title: str) -> _Found:
    text = decode_text(data)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except ValueError as exc:  # e.g. an integer longer than Python's 4,300-digit limit
        raise ParseError(f"invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ParseError("invalid JSON: nested too deeply to read") from exc
    title = author = ""
    if isinstance(value, dict):
        title = _json_string(value, "title")
        author = _json_string(value, "author")
    return _Found(_blocks(_json_blocks(value)), title, author)


def _json_string(obj: dict, key: str) -> str:
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == key and isinstance(v, str):
            return v
    return ""


def _is_container(value) -> bool:
    return isinstance(value, dict | list)


def _json_blocks(value) -> list[str]:
    """A readable flattening: a paragraph per record. A top-level list gives one paragraph per item; in an object,
    each nested object, and each item of a list of objects, is a paragraph, and scalar members are grouped."""
    blocks: list[str] = []
    scalars: list[str] = []

    def flush():
        if scalars:
            blocks.append("\n".join(scalars))
            scalars.clear()

    if isinstance(value, list):
        for item in value:
            if _is_container(item):
                flush()
                blocks.append("\n".join(_json_lines(item, [], 1)))
            else:
                scalars.extend(f"- {line}" for line in _json_lines(item, [], 1))
    elif isinstance(value, dict):
        for key, item in value.items():
            label = _json_key(key)
            if isinstance(item, list) and any(_is_container(i) for i in item):
                flush()
                for position, element in enumerate(item, 1):
                    blocks.append("\n".join(_json_lines(element, [label, str(position)], 2)))
            elif isinstance(item, dict):
                flush()
                blocks.append("\n".join(_json_lines(item, [label], 1)))
            else:
                scalars.extend(_json_lines(item, [label], 1))
    else:
        scalars.extend(_json_lines(value, [], 0))
    flush()
    return [b for b in blocks if b]


def _json_key(key) -> str:
    return _one_line(key) or "(blank)"


def _json_scalar(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _one_line(value)


def _json_lines(value, path: list[str], depth: int) -> list[str]:
    """Lines "a > b: value" for nested members; a list of scalars as "a:" then "- item" lines; a list of objects
    itemised by position ("a > 2 > b: value")."""
    label = " > ".join(path)
    if _is_container(value) and depth > _JSON_MAX_DEPTH:
        return [f"{label}: (nested more than {_JSON_MAX_DEPTH} levels deep; not indexed)"]
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            lines.extend(_json_lines(item, [*path, _json_key(key)], depth + 1))
        return lines
    if isinstance(value, list):
        if all(not _is_container(i) for i in value):
            items = [f"- {s}" for s in map(_json_scalar, value) if s]
            return ([f"{label}:"] if label and items else []) + items
        lines = []
        for position, item in enumerate(value, 1):
            lines.extend(_json_lines(item, [*path, str(position)], depth + 1))
        return lines
    scalar = _json_scalar(value)
    if not scalar:
        return []
    return [f"{label}: {scalar}" if label else scalar]


# --- pdf ------------------------------------------------------------------------------------------------------


def _parse_pdf(data: bytes, default_title: str) -> _Found:
    try:
        return _read_pdf(data)
    except ParseError:
        raise
    except Exception as exc:  # pypdf raises many types (PdfReadError, ValueError, KeyError...) on broken files
        raise ParseError(f"unreadable PDF: {type(exc).__name__}: {exc}") from exc


def _read_pdf(data: bytes) -> _Found:
    from pypdf import PdfReader

    if b"%PDF-" not in data[:1024]:
        raise ParseError("not a PDF: no %PDF- header in the first 1,024 bytes")
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        # Many PDFs are "encrypted" with an empty user password only to restrict printing or copying; those open.
        try:
            opened = reader.decrypt("")
        except Exception as exc:
            raise ParseError(f"encrypted PDF that cannot be decrypted here: {exc}") from exc
        if not opened:
            raise ParseError("encrypted PDF: it needs a password to open, and ragsite is given none")
    try:
        meta = reader.metadata
        title, author = (_one_line(meta.title), _one_line(meta.author)) if meta is not None else ("", "")
    except Exception:  # broken metadata costs the title, not the document
        title = author = ""
    parts = []
    for number, page in enumerate(reader.pages, 1):
        try:
            text = _normalise(page.extract_text() or "")
        except Exception as exc:
            raise ParseError(f"unreadable PDF: page {number}: {type(exc).__name__}: {exc}") from exc
        if text:
            parts.append(f"\f{number}")
            parts.extend(_literal(p) for p in text.split("\n\n"))
    if not parts:
        raise ParseError("no text left after parsing: the PDF has no extractable text (scanned pages would need "
                         "OCR, which ragsite does not do)")
    return _Found("\n\n".join(parts), title, author)


# --- docx -----------------------------------------------------------------------------------------------------

_DOCX_HEADING = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def check_zip(data: bytes, what: str):
    """Refuse a zip whose directory declares too much inflated data, too high a ratio or too many members: a zip
    bomb never reaches the library that would inflate it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except Exception as exc:  # BadZipFile, and struct/value errors on a mangled directory
        raise ParseError(f"not a valid {what}: not a zip archive ({exc})") from exc
    if len(members) > ZIP_MAX_MEMBERS:
        raise ParseError(f"refused {what}: {len(members):,} zip members, over the {ZIP_MAX_MEMBERS:,} limit")
    inflated = sum(m.file_size for m in members)
    compressed = sum(m.compress_size for m in members)
    if inflated > ZIP_MAX_UNCOMPRESSED:
        raise ParseError(f"refused {what} (zip bomb?): it would inflate to {inflated:,} bytes, over the "
                         f"{ZIP_MAX_UNCOMPRESSED:,}-byte limit")
    if inflated > _ZIP_RATIO_FLOOR and inflated > ZIP_MAX_RATIO * max(compressed, 1):
        raise ParseError(f"refused {what} (zip bomb?): compression ratio {inflated // max(compressed, 1):,}:1 is "
                         f"over {ZIP_MAX_RATIO}:1")


def _parse_docx(data: bytes, default_title: str) -> _Found:
    check_zip(data, ".docx")
    try:
        return _read_docx(data)
    except ParseError:
        raise
    except Exception as exc:  # python-docx: PackageNotFoundError, KeyError for missing parts, lxml syntax errors
        raise ParseError(f"unreadable .docx: {type(exc).__name__}: {exc}") from exc


def _read_docx(data: bytes) -> _Found:
    import docx
    from docx.table import Table

    document = docx.Document(io.BytesIO(data))
    properties = document.core_properties
    title, author = _one_line(properties.title), _one_line(properties.author)
    first_heading = ""
    parts = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            parts.extend(_table_blocks(_docx_rows(item)))
            continue
        text = _one_line(item.text)
        if not text:
            continue
        style = _one_line(getattr(item.style, "name", ""))
        heading = _DOCX_HEADING.match(style)
        if style.lower() == "title":
            first_heading = first_heading or text
            parts.append(f"# {text}")
        elif heading and int(heading.group(1)) > 0:
            first_heading = first_heading or text
            parts.append("#" * min(int(heading.group(1)), 6) + " " + text)
        elif style.lower().startswith("list"):
            parts.append(f"- {text}")
        else:
            parts.append(_literal(text))
    return _Found("\n\n".join(parts), title or first_heading, author)


def _docx_rows(table) -> list[list[str]]:
    rows = []
    for row in table.rows:
        cells, previous = [], None
        for cell in row.cells:
            if cell._tc is not previous:  # a merged cell is returned once per grid column it spans
                cells.append(cell.text)
            previous = cell._tc
        rows.append(cells)
    return rows


_PARSERS = {
    "text/plain": _parse_plain,
    "text/markdown": _parse_markdown,
    "text/html": _parse_html,
    CSV: _parse_csv,
    JSON: _parse_json,
    PDF: _parse_pdf,
    DOCX: _parse_docx,
}
