"""Answers with citations, built only from the chunks search() lets the user read.

Extractive by default (no language model): the permitted chunks are split into sentences, the sentences embedded
with the search model and ranked by cosine to the query, and the best few (minus near-duplicates) become the
answer, each marked with the number of the chunk it came from. Optionally an OpenAI-compatible generator writes
the answer from the same numbered chunks; when it fails the extractive answer is given with the reason.
"""

import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from apps.compliance.audit import record
from apps.ingestion.embedding import get_embedder
from ragsite.errors import FieldError

from . import generator
from .index import IndexFilter
from .search import SearchResult, query_fingerprint, search

ANSWER_MAX_TOP_K = 20
ANSWER_DEFAULT_TOP_K = 5
ANSWER_MAX_SENTENCES = 10
ANSWER_DEFAULT_SENTENCES = 3
# A candidate closer than this (cosine) to a sentence already picked says the same thing again.
REDUNDANCY_COSINE = 0.9
MIN_SENTENCE_WORDS = 4
EXTRACTIVE = "extractive"


class AnswerError(FieldError):
    pass


@dataclass
class Citation:
    n: int
    chunk_id: str
    document_id: str
    document_title: str
    source: str
    uri: str
    page: int | None
    text: str


@dataclass
class Answer:
    answer: str
    citations: list[Citation] = field(default_factory=list)
    generator: str = EXTRACTIVE
    took_ms: float = 0.0
    generator_error: str | None = None


def as_dict(result: Answer) -> dict:
    data = asdict(result)
    if data["generator_error"] is None:
        del data["generator_error"]
    return data


# --- sentences ---------------------------------------------------------------------------------------------

# Words that end in a full stop without ending the sentence.
# Ordinary words that can also end a sentence ("no", "sun") are left out on purpose.
_ABBREVIATIONS = {
    "e.g", "i.e", "etc", "vs", "cf", "approx", "incl", "dept", "fig", "ref", "st", "mr", "mrs", "ms", "dr", "prof",
    "jr", "sr", "inc", "ltd", "co", "corp", "jan", "feb", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
    "dec", "mon", "tue", "thu", "fri",
}
_CLOSERS = "\"'\u201d\u2019)]"
# End punctuation (plus closing quotes or brackets), then whitespace and what can start a sentence.
_SENTENCE_END = re.compile(r"[.!?]+[" + re.escape(_CLOSERS) + r"]*(?=\s+[\"'\u201c\u2018(\[]?[A-Z0-9])")
_TERMINAL = re.compile(r"[.!?:;][" + re.escape(_CLOSERS) + r"]*$")
_LIST_MARKER = re.compile(r"^(?:[-*\u2022\u2013]|\d{1,3}[.)])\s+")
_WORD = re.compile(r"[^\W_]+(?:[-'\u2019.][^\W_]+)*")


def _is_heading(line: str) -> bool:
    if line.startswith("#"):
        return True
    # A short line without closing punctuation is a title ("Travel and expenses"), not a statement.
    return not _TERMINAL.search(line) and len(_WORD.findall(line)) <= 8


def _split_line(line: str) -> list[str]:
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(line):
        candidate = line[start : match.end()]
        words = candidate.split()
        last = words[-1].rstrip(".!?" + _CLOSERS).lower() if words else ""
        if match.group().startswith(".") and (last in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last)):
            continue  # "e.g. The", "J. Smith": not a boundary
        sentences.append(candidate.strip())
        start = match.end()
    tail = line[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def split_sentences(text: str) -> list[str]:
    """The statements in a chunk: headings, table rows and fragments under MIN_SENTENCE_WORDS words dropped."""
    sentences = []
    # Paragraphs are separated by blank lines; inside one, a line break ending a sentence or a list item is a
    # boundary, while other breaks are just wrapping.
    for paragraph in re.split(r"\n\s*\n", text):
        lines, current = [], ""
        for raw in paragraph.splitlines():
            line = " ".join(raw.split())
            if not line:
                continue
            starts_item = bool(_LIST_MARKER.match(line)) or line.startswith(("#", "|"))
            wraps = line[0].islower() or not _is_heading(current)
            if current and not starts_item and not _TERMINAL.search(current) and wraps:
                current = f"{current} {line}"
            else:
                if current:
                    lines.append(current)
                current = line
        if current:
            lines.append(current)
        for line in lines:
            item = _LIST_MARKER.sub("", line)
            if line.startswith("|") or (item == line and _is_heading(line)):
                continue  # a table row or a heading; a list item is a statement even without a full stop
            line = item
            sentences.extend(s for s in _split_line(line) if len(_WORD.findall(s)) >= MIN_SENTENCE_WORDS)
    return sentences


def _cite(sentence: str, n: int) -> str:
    """'Text.' -> 'Text [n].' (the marker goes inside the sentence's closing punctuation)."""
    match = re.search(r"[.!?]+[" + re.escape(_CLOSERS) + r"]*$", sentence)
    if match is None:
        return f"{sentence} [{n}]"
    return f"{sentence[: match.start()]} [{n}]{match.group()}"


# --- extractive answer -------------------------------------------------------------------------------------


def _citation(n: int, result: SearchResult) -> Citation:
    return Citation(n=n, chunk_id=result.chunk_id, document_id=result.document_id,
                    document_title=result.document_title, source=result.source, uri=result.uri, page=result.page,
                    text=result.text)


def extractive_answer(query: str, results: list[SearchResult], max_sentences: int) -> tuple[str, list[Citation]]:
    candidates: list[tuple[int, str]] = []  # (index into results, sentence)
    seen = set()
    for index, result in enumerate(results):
        for sentence in split_sentences(result.text):
            key = sentence.lower()
            if key not in seen:  # overlapping chunks repeat sentences
                seen.add(key)
                candidates.append((index, sentence))
    if not candidates:
        return "", []
    embedder = get_embedder()
    vectors = embedder.encode([sentence for _, sentence in candidates])  # unit vectors: dot product = cosine
    scores = vectors @ np.asarray(embedder.encode_query(query), dtype=np.float32)
    picked: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if picked and float(np.max(vectors[picked] @ vectors[i])) > REDUNDANCY_COSINE:
            continue
        picked.append(int(i))
        if len(picked) == max_sentences:
            break
    numbers: dict[int, int] = {}  # result index -> citation number, in order of first use in the answer
    parts = []
    for i in picked:  # already in descending score order
        index, sentence = candidates[i]
        n = numbers.setdefault(index, len(numbers) + 1)
        parts.append(_cite(sentence, n))
    citations = [_citation(n, results[index]) for index, n in numbers.items()]
    return " ".join(parts), citations


# --- generated answer --------------------------------------------------------------------------------------

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def _generated_citations(text: str, results: list[SearchResult]) -> list[Citation]:
    """The passages the model cited by number; all of them if it cited none it was given."""
    cited = []
    for match in _MARKER.finditer(text):
        for number in match.group(1).split(","):
            n = int(number)
            if 1 <= n <= len(results) and n not in cited:
                cited.append(n)
    numbers = sorted(cited) or list(range(1, len(results) + 1))
    return [_citation(n, results[n - 1]) for n in numbers]


# --- the service -------------------------------------------------------------------------------------------


def answer(user, query: str, *, top_k: int = ANSWER_DEFAULT_TOP_K, filters: IndexFilter | None = None,
           mode: str = "hybrid", alpha: float | None = None, fusion: str = "relative_score",
           max_sentences: int = ANSWER_DEFAULT_SENTENCES, generate: bool = False, ip: str | None = None) -> Answer:
    """An answer to ``query`` with numbered citations, drawn only from chunks search() returns for ``user``. The
    values are valid (AnswerRequestSerializer checked them); whether a generator is configured is checked here."""
    started = time.perf_counter()
    if generate and not generator.enabled():
        raise AnswerError("generate", "no answer generator is configured on this server (ANSWER_LLM_URL)")
    # search() is the permission choke point: nothing below sees a chunk it did not return.
    results, _ = search(user, query, top_k=top_k, filters=filters, mode=mode, alpha=alpha, fusion=fusion,
                        ip=ip)
    result = Answer(answer="")
    if results:
        if generate:
            passages = [generator.Passage(n=i, title=r.document_title, heading=r.heading, text=r.text)
                        for i, r in enumerate(results, start=1)]
            try:
                generated = generator.generate(query, passages)
                result = Answer(answer=generated.text, citations=_generated_citations(generated.text, results),
                                generator=generated.model)
            except generator.GeneratorError as exc:
                result.generator_error = str(exc)
        if result.generator == EXTRACTIVE:
            result.answer, result.citations = extractive_answer(query, results, max_sentences)
    result.took_ms = round((time.perf_counter() - started) * 1000, 2)
    record(
        "answer",
        actor=user,
        ip=ip,
        data={
            "query_hmac": query_fingerprint(query),
            "top_k": top_k,
            "chunk_ids": [c.chunk_id for c in result.citations],
            "generate_requested": generate,
            "generator_used": result.generator != EXTRACTIVE,
            "generator": result.generator,
            "generator_failed": result.generator_error is not None,
        },
    )
    return result
