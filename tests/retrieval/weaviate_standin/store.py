"""The stand-in's data and the searches it runs: collections, tenants and objects in memory.

Semantics copied from Weaviate where the contract tests can see them, and refused out loud where not implemented:
- filters: Equal and ContainsAny on ``field``-tokenized text, text[], int and the object id; GreaterThan(Equal)
  and LessThan(Equal) on int and date (RFC 3339, compared as instants; an object without the property never
  matches); And, Or.
- BM25 (k1 1.2, b 0.75) over one ``word``-tokenized property: lower-cased alphanumeric tokens, Weaviate's ``en``
  stop words removed from the query; document frequencies and mean length over the whole shard (collection or
  tenant), as Weaviate computes them, with the filter applied to the scored objects only.
- near vector: exact cosine distance (1 - cosine) over the filtered objects; Weaviate's HNSW is approximate.
- hybrid: Weaviate's fusion code paths, each side taking max(100, limit) candidates: relativeScoreFusion (min-max
  per side, weights alpha and 1 - alpha, explain "original score ... normalized score") and rankedFusion
  (weight / (rank + 60), rank counted from 1).
"""

import math
import re
import threading
import time
import uuid as uuid_lib
from dataclasses import dataclass, field
from datetime import datetime

import grpc
import numpy as np

# Weaviate's "en" stop-word preset.
STOPWORDS_EN = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split()
)
K1, B = 1.2, 0.75
HYBRID_MIN_CANDIDATES = 100
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
SUPPORTED_TYPES = {"text", "text[]", "int", "date"}


class StandInError(Exception):
    """Something Weaviate itself would refuse (a bad request): 422 over REST, INVALID_ARGUMENT over gRPC."""

    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StandInError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class NotImplementedByStandIn(StandInError):
    """A request Weaviate would serve but the stand-in does not: it fails loudly instead of answering wrongly."""

    http_status = 501
    grpc_code = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, what: str):
        super().__init__(f"weaviate stand-in: {what} is not implemented")


def word_tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class StoredObject:
    uuid: str
    properties: dict
    vectors: dict  # name -> float32 array
    tokens: dict = field(default_factory=dict)  # searchable property -> word tokens
    created_ms: int = 0
    updated_ms: int = 0


@dataclass
class Shard:
    objects: dict = field(default_factory=dict)  # uuid -> StoredObject
    dimensions: dict = field(default_factory=dict)  # vector name -> length of the first vector stored


class Collection:
    CONFIG_KEYS = {"class", "description", "properties", "vectorConfig", "multiTenancyConfig"}

    def add_property(self, prop: dict) -> None:
        """POST /v1/schema/{class}/properties: a new property (existing objects simply lack it)."""
        if prop.get("name") in self.properties:
            raise StandInError(f"property '{prop.get('name')}' already exists")
        self.properties.update(self._property_specs([prop]))
        self.config = {**self.config, "properties": [*self.config.get("properties", []), prop]}
    PROPERTY_KEYS = {"name", "dataType", "tokenization", "indexSearchable", "indexFilterable", "description",
                     "skip_vectorization", "vectorize_property_name"}

    def __init__(self, config: dict):
        unknown = set(config) - self.CONFIG_KEYS
        if unknown:
            raise NotImplementedByStandIn(f"collection config {sorted(unknown)}")
        self.config = config
        self.name = config["class"][:1].upper() + config["class"][1:]
        self.properties = self._property_specs(config.get("properties", []))
        self.vector_names = set()
        for name, vector in (config.get("vectorConfig") or {}).items():
            if vector.get("vectorizer") != {"none": {}}:
                raise NotImplementedByStandIn(f"vectorizer {vector.get('vectorizer')!r} (only none: self-provided)")
            if vector.get("vectorIndexType", "hnsw") != "hnsw":
                raise NotImplementedByStandIn(f"vector index {vector.get('vectorIndexType')!r}")
            if set(vector.get("vectorIndexConfig") or {}) - {"distance"} or \
                    (vector.get("vectorIndexConfig") or {}).get("distance", "cosine") != "cosine":
                raise NotImplementedByStandIn(f"vector index config {vector.get('vectorIndexConfig')!r}")
            self.vector_names.add(name)
        if not self.vector_names:
            raise NotImplementedByStandIn("collections without named vectors (legacy vectorizer config)")
        mt = config.get("multiTenancyConfig") or {}
        if mt.get("autoTenantCreation") or mt.get("autoTenantActivation"):
            raise NotImplementedByStandIn("automatic tenant creation or activation")
        self.multi_tenant = bool(mt.get("enabled"))
        self.tenants: dict[str, Shard] = {}
        self.single = Shard()

    def _property_specs(self, properties: list) -> dict:
        specs = {}
        for prop in properties:
            if set(prop) - self.PROPERTY_KEYS:
                raise NotImplementedByStandIn(f"property settings {sorted(set(prop) - self.PROPERTY_KEYS)}")
            data_type = prop["dataType"][0]
            if data_type not in SUPPORTED_TYPES:
                raise NotImplementedByStandIn(f"data type {data_type!r}")
            tokenization = prop.get("tokenization") or ("word" if data_type.startswith("text") else None)
            if tokenization not in (None, "word", "field"):
                raise NotImplementedByStandIn(f"tokenization {tokenization!r}")
            searchable = prop.get("indexSearchable", True) and data_type.startswith("text")
            specs[prop["name"]] = {"type": data_type, "tokenization": tokenization, "searchable": searchable}
        return specs

    def shard(self, tenant: str) -> Shard:
        if self.multi_tenant:
            if not tenant:
                raise StandInError(f"class {self.name} has multi-tenancy enabled, but request was without tenant")
            if tenant not in self.tenants:
                raise StandInError(f'tenant not found: "{tenant}"')
            return self.tenants[tenant]
        if tenant:
            raise StandInError(f"class {self.name} has multi-tenancy disabled, but request was with tenant")
        return self.single

    # --- writing ------------------------------------------------------------------------------------------

    def coerce(self, properties: dict) -> dict:
        out = {}
        for name, value in properties.items():
            spec = self.properties.get(name)
            if spec is None:
                raise StandInError(f"no such prop with name '{name}' found in class '{self.name}' in the schema "
                                   "(the stand-in has no auto-schema)")
            kind = spec["type"]
            if value is None:
                continue
            if kind == "text" and isinstance(value, str):
                out[name] = value
            elif kind == "text[]" and isinstance(value, list) and all(isinstance(v, str) for v in value):
                out[name] = list(value)
            elif kind == "int" and isinstance(value, int | float) and float(value).is_integer():
                out[name] = int(value)
            elif kind == "date" and isinstance(value, str) and _parse_date(value) is not None:
                out[name] = value
            else:
                raise StandInError(f"invalid {kind} property '{name}' on class '{self.name}': {value!r}")
        return out

    def put(self, shard: Shard, object_uuid: str, properties: dict, vectors: dict) -> None:
        object_uuid = str(uuid_lib.UUID(object_uuid))
        properties = self.coerce(properties)
        for name, vector in vectors.items():
            if name not in self.vector_names:
                raise StandInError(f"collection {self.name} does not have a vector named {name!r}")
            expected = shard.dimensions.get(name)
            if expected is not None and len(vector) != expected:
                raise StandInError(f"new node has a vector with length {len(vector)}. Existing nodes have vectors "
                                   f"with length {expected}")
        for name, vector in vectors.items():
            shard.dimensions.setdefault(name, len(vector))
        now = int(time.time() * 1000)
        previous = shard.objects.get(object_uuid)
        tokens = {name: word_tokens(value) for name, value in properties.items()
                  if self.properties[name]["searchable"] and self.properties[name]["tokenization"] == "word"}
        shard.objects[object_uuid] = StoredObject(object_uuid, properties, dict(vectors), tokens,
                                                  previous.created_ms if previous else now, now)

    # --- filtering ----------------------------------------------------------------------------------------

    def matches(self, obj: StoredObject, flt) -> bool:
        """flt: ("and"|"or", [flt...]) or ("equal"|"contains_any", property, value or values)."""
        op = flt[0]
        if op == "and":
            return all(self.matches(obj, f) for f in flt[1])
        if op == "or":
            return any(self.matches(obj, f) for f in flt[1])
        _, prop, wanted = flt
        if op in ("gt", "gte", "lt", "lte"):
            return self._in_range(obj, op, prop, wanted)
        if prop == "_id":
            have = {obj.uuid}
            wanted = [str(uuid_lib.UUID(str(v))) for v in (wanted if op == "contains_any" else [wanted])]
        else:
            spec = self.properties.get(prop)
            if spec is None:
                raise StandInError(f"no such prop with name '{prop}' found in class '{self.name}' in the schema")
            if spec["type"].startswith("text") and spec["tokenization"] != "field":
                raise NotImplementedByStandIn(f"filtering on {spec['tokenization']}-tokenized property {prop!r}")
            value = obj.properties.get(prop)
            if value is None:
                return False
            have = set(value) if isinstance(value, list) else {value}
            if spec["type"].startswith("text"):
                have = {v.strip() for v in have}
            wanted = wanted if op == "contains_any" else [wanted]
        return not have.isdisjoint(wanted)

    def _in_range(self, obj: StoredObject, op: str, prop: str, wanted) -> bool:
        spec = self.properties.get(prop)
        if spec is None:
            raise StandInError(f"no such prop with name '{prop}' found in class '{self.name}' in the schema")
        value = obj.properties.get(prop)
        if spec["type"] == "date":
            bound = _parse_date(wanted) if isinstance(wanted, str) else None
            if bound is None:
                raise StandInError(f"invalid date filter value {wanted!r} for property '{prop}'")
            value = _parse_date(value) if value is not None else None
        elif spec["type"] == "int":
            bound = wanted
        else:
            raise NotImplementedByStandIn(f"range filters on {spec['type']} property {prop!r}")
        if value is None:
            return False
        return {"gt": value > bound, "gte": value >= bound, "lt": value < bound, "lte": value <= bound}[op]

    def allowed(self, shard: Shard, flt) -> list[StoredObject]:
        objects = sorted(shard.objects.values(), key=lambda o: o.uuid)
        return objects if flt is None else [o for o in objects if self.matches(o, flt)]

    # --- searching ----------------------------------------------------------------------------------------

    def bm25(self, shard: Shard, query: str, properties: list[str], candidates: list[StoredObject]) -> list:
        """[(object, score)] best first, score > 0; statistics over the whole shard, as Weaviate computes them."""
        prop = self._searchable(properties)
        terms = [t for t in word_tokens(query) if t not in STOPWORDS_EN]
        if not terms or not shard.objects:
            return []
        everything = list(shard.objects.values())
        n_docs = len(everything)
        avgdl = (sum(len(o.tokens.get(prop, ())) for o in everything) / n_docs) or 1.0
        document_frequency = {t: sum(1 for o in everything if t in o.tokens.get(prop, ())) for t in set(terms)}
        scored = []
        for obj in candidates:
            tokens = obj.tokens.get(prop, [])
            length = len(tokens)
            score = 0.0
            for term in terms:
                tf = tokens.count(term)
                if not tf:
                    continue
                df = document_frequency[term]
                idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
                score += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / avgdl))
            if score > 0:
                scored.append((obj, float(np.float32(score))))
        scored.sort(key=lambda pair: (-pair[1], pair[0].uuid))
        return scored

    def _searchable(self, properties: list[str]) -> str:
        names = properties or [n for n, s in self.properties.items() if s["searchable"]]
        if len(names) != 1:
            raise NotImplementedByStandIn(f"BM25F over several properties ({names}); name exactly one")
        spec = self.properties.get(names[0])
        if spec is None or not spec["searchable"] or spec["tokenization"] != "word":
            raise NotImplementedByStandIn(f"BM25 over property {names[0]!r} (only word-tokenized searchable text)")
        return names[0]

    def near_vector(self, vector_name: str, vector: np.ndarray, candidates: list[StoredObject]) -> list:
        """[(object, cosine distance)] nearest first."""
        if vector_name not in self.vector_names:
            raise StandInError(f"collection {self.name} does not have a vector named {vector_name!r}")
        query = vector / (np.linalg.norm(vector) or 1.0)
        found = []
        for obj in candidates:
            stored = obj.vectors.get(vector_name)
            if stored is None:
                continue
            if len(stored) != len(query):
                raise StandInError(f"vector lengths don't match: {len(query)} vs {len(stored)}")
            cosine = float(np.dot(stored, query) / (np.linalg.norm(stored) or 1.0))
            found.append((obj, float(np.float32(1.0 - cosine))))
        found.sort(key=lambda pair: (pair[1], pair[0].uuid))
        return found

    def hybrid(self, shard: Shard, *, query: str, vector, vector_name: str, alpha: float, fusion: str,
               properties: list[str], candidates: list[StoredObject], limit: int) -> list:
        """[(object, fused score, explain)] best first: Weaviate's hybrid Search and its two fusion functions."""
        depth = max(HYBRID_MIN_CANDIDATES, limit)
        sets, weights, names = [], [], []
        if alpha < 1 and query:
            sets.append([(o, s) for o, s in self.bm25(shard, query, properties, candidates)[:depth]])
            weights.append(1 - alpha)
            names.append("keyword")
        if alpha > 0:
            if vector is None:
                raise NotImplementedByStandIn("hybrid search without a vector (it has no vectorizer)")
            near = self.near_vector(vector_name, vector, candidates)[:depth]
            sets.append([(o, float(np.float32(1 - d))) for o, d in near])
            weights.append(alpha)
            names.append("vector")
        fused: dict[str, list] = {}  # uuid -> [object, score, explain, secondary]
        if fusion == "ranked":
            for weight, found, name in zip(weights, sets, names, strict=True):
                for rank, (obj, value) in enumerate(found):
                    score = weight / (rank + 60 + 1)
                    entry = fused.setdefault(obj.uuid, [obj, 0.0, "", value])
                    entry[1] += score
                    entry[2] += f"\n(Result Set {name}) Document {obj.uuid} contributed {_go(score)} to the score"
                    entry[3] = value
        elif fusion == "relative":
            for weight, found, name in zip(weights, sets, names, strict=True):
                if not found:
                    continue
                values = [v for _, v in found]
                low, high = min(values), max(values)
                for obj, value in found:
                    score = weight if high == low else weight * (value - low) / (high - low)
                    explain = (f"(Result Set '{name}') Document {obj.uuid}: original score {_go(value)}, "
                               f"normalized score: {_go(score)}")
                    entry = fused.get(obj.uuid)
                    if entry is not None:
                        explain += " - " + entry[2]
                        score += entry[1]
                    fused[obj.uuid] = [obj, score, explain, value]
        else:
            raise NotImplementedByStandIn(f"fusion {fusion!r}")
        ranked = sorted(fused.values(), key=lambda e: (-round(e[1], 7), -e[3], e[0].uuid))
        return [(obj, float(np.float32(score)), explain) for obj, score, explain, _ in ranked]


def _go(value: float) -> str:
    """A float32 as Go's %v prints it (shortest representation)."""
    return str(np.float32(value))


def _parse_date(value: str):
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class Store:
    """Every collection of one stand-in server, behind one lock."""

    def __init__(self):
        self.lock = threading.RLock()
        self.collections: dict[str, Collection] = {}
        self.rejections: list = []  # [(predicate(collection, properties) -> bool, message)]

    def collection(self, name: str) -> Collection:
        found = self.collections.get(name[:1].upper() + name[1:])
        if found is None:
            raise NotFound(f"could not find class {name} in schema")
        return found

    def create(self, config: dict) -> Collection:
        collection = Collection(config)
        if collection.name in self.collections:
            raise StandInError(f'class name "{collection.name}" already exists')
        self.collections[collection.name] = collection
        return collection

    def rejection_for(self, collection: Collection, properties: dict) -> str | None:
        for predicate, message in self.rejections:
            if predicate(collection.name, properties):
                return message
        return None
