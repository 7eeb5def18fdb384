"""The index-backend fixtures (tests/retrieval/index_backends.py) for every retrieval test module."""

from tests.retrieval.index_backends import (  # noqa: F401 - fixtures, found by pytest through this conftest
    _closed_index,
    backend,
    handbook,
    standin,
    weaviate_backend,
    weaviate_handbook,
)
