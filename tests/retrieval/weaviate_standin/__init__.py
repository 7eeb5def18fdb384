"""A wire-level STAND-IN for Weaviate, for the contract tests (no Weaviate server can be obtained where they run).

It is not Weaviate. It speaks the two protocols weaviate-client v4 uses, on real sockets, so the backend under test
runs its real client code: REST (connection and schema) and gRPC (queries and batches), decoded with the protobuf
modules shipped inside weaviate-client.

Implemented, because ragsite's backend sends it (found by reading weaviate-client 4.23 and by running the
backend against this server with every other request recorded):
- REST: GET /v1/meta, /v1/.well-known/live and /ready; GET, POST, DELETE /v1/schema[/{class}] (collections with
  named self-provided vectors, cosine HNSW, text / text[] / int / date properties with word or field tokenization,
  optional multi-tenancy); POST /v1/schema/{class}/properties (add a property); HEAD, POST, DELETE
  /v1/schema/{class}/tenants.
- gRPC: grpc.health.v1.Health/Check; weaviate.v1.Weaviate/BatchObjects (upsert by id; per-object errors for
  schema violations, vector-length mismatches and objects a test asked to reject); BatchDelete (filter, dry run,
  verbose); Search: near_vector, bm25, hybrid (relativeScore and ranked fusion, alpha), plain listing with the
  ``after`` cursor; filters Equal and ContainsAny on field-tokenized text, text[], int and the id,
  GreaterThan(Equal) and LessThan(Equal) on int and date properties, And, Or;
  returned properties, id, distance, certainty, score and explain_score.
- API keys (``Authorization: Bearer``) when started with one.

Not implemented, refused with HTTP 501 or gRPC UNIMPLEMENTED and recorded in ``unknown_calls``: every other
endpoint and method (GraphQL, object REST endpoints, backups, nodes, cluster, RBAC, TenantsGet, Aggregate,
BatchReferences, BatchStream), vectorizer modules, auto-schema, references, nested objects, other filter operators,
group-by, sorting, autocut, rerank, generative search, multi-vectors, distance/certainty thresholds, several BM25
properties, returning vectors. Differences that remain where it does answer: exact rather than HNSW (approximate)
vector search; a single node with no replication, consistency levels ignored; BM25 tokenization is Weaviate's
``word`` rule and ``en`` stop words as published, not its code; no limit on matches per batch delete
(Weaviate caps one at QUERY_MAXIMUM_RESULTS).
"""

from .server import WeaviateStandIn

__all__ = ["WeaviateStandIn"]
