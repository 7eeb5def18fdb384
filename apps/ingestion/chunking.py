"""Split parsed text into passages of at most CHUNK_TOKENS tokens of the embedding model's tokenizer.

Passages follow headings and paragraphs: a chunk never spans two sections, paragraphs are packed whole while
they fit, and only a paragraph longer than the budget is cut, by sentences, then by tokens, with overlap.
Each chunk keeps its heading path, and in paged formats its page, for citations: a page start (a "\\f<n>"
paragraph written by apps.ingestion.parsing) closes the section, so a chunk never spans two pages.
"""

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.+)$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PAGE_START = re.compile(r"^\f(\d+)$")


def _meaningful(title: str) -> bool:
    # An identifier-like name ("4380635", "IMG_0042") says nothing about the text; a worded one does.
    return bool(re.search(r"[^\W\d_]{3,}", title))


def passage_text(title: str, heading: str, text: str) -> str:
    """What is embedded and lexically indexed for a chunk: its context (title, heading path) then its text."""
    title = title if _meaningful(title) else ""
    context = heading if title and heading.startswith(title) else " > ".join(p for p in (title, heading) if p)
    return f"{context}\n{text}" if context else text


@dataclass
class ChunkDraft:
    heading: str
    text: str
    page: int | None = None  # the page it is on, in paged formats (PDF)


def _sections(text: str):
    """Yield (heading path, page, [paragraphs]) in document order."""
    path: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    page = None
    for block in text.split("\n\n"):
        page_start = _PAGE_START.match(block)
        if page_start:
            if paragraphs:
                yield " > ".join(h for _, h in path), page, paragraphs
                paragraphs = []
            page = int(page_start.group(1))
            continue
        match = _HEADING.match(block)
        if match:
            if paragraphs:
                yield " > ".join(h for _, h in path), page, paragraphs
                paragraphs = []
            level = len(match.group(1))
            path = [(lvl, h) for lvl, h in path if lvl < level] + [(level, match.group(2).strip())]
        else:
            paragraphs.append(block)
    if paragraphs:
        yield " > ".join(h for _, h in path), page, paragraphs


def chunk_text(text: str, count_tokens, max_tokens: int, overlap_tokens: int, split_tokens) -> list[ChunkDraft]:
    """``count_tokens(str) -> int`` and ``split_tokens(str, size, overlap) -> [str]`` come from the tokenizer."""
    chunks: list[ChunkDraft] = []
    for heading, page, paragraphs in _sections(text):
        current: list[str] = []
        current_tokens = 0
        for paragraph in paragraphs:
            pieces = [paragraph]
            n = count_tokens(paragraph)
            if n > max_tokens:
                pieces = _split_long(paragraph, count_tokens, max_tokens, overlap_tokens, split_tokens)
            for piece in pieces:
                n = count_tokens(piece)
                if current and current_tokens + n > max_tokens:
                    chunks.append(ChunkDraft(heading, "\n\n".join(current), page))
                    current, current_tokens = [], 0
                current.append(piece)
                current_tokens += n
        if current:
            chunks.append(ChunkDraft(heading, "\n\n".join(current), page))
    return chunks


def _split_long(paragraph, count_tokens, max_tokens, overlap_tokens, split_tokens):
    pieces, current, current_tokens = [], [], 0
    for sentence in _SENTENCE_END.split(paragraph):
        n = count_tokens(sentence)
        if n > max_tokens:
            if current:
                pieces.append(" ".join(current))
                current, current_tokens = [], 0
            pieces.extend(split_tokens(sentence, max_tokens, overlap_tokens))
            continue
        if current and current_tokens + n > max_tokens:
            pieces.append(" ".join(current))
            # Carry the last sentence over when it fits the overlap, so a fact cut at the edge stays whole.
            tail = current[-1]
            current, current_tokens = ([tail], count_tokens(tail)) if count_tokens(tail) <= overlap_tokens else ([], 0)
        current.append(sentence)
        current_tokens += n
    if current:
        pieces.append(" ".join(current))
    return pieces
