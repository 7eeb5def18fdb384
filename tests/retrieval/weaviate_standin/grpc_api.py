"""The stand-in's gRPC side: Weaviate's v1 service (Search, BatchObjects, BatchDelete) and the health check the
client pings, decoded with the protobuf modules shipped inside weaviate-client. Every other method, and every
request field the stand-in does not evaluate, is refused with UNIMPLEMENTED and recorded."""

import logging
import time
import uuid as uuid_lib

import grpc
import numpy as np
from google.protobuf import json_format
from weaviate.proto.v1 import (
    base_pb2,
    base_search_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    weaviate_pb2_grpc,
)

from .store import NotImplementedByStandIn, StandInError

logger = logging.getLogger(__name__)

_F = base_pb2.Filters
_RANGE = {_F.OPERATOR_GREATER_THAN: "gt", _F.OPERATOR_GREATER_THAN_EQUAL: "gte", _F.OPERATOR_LESS_THAN: "lt",
          _F.OPERATOR_LESS_THAN_EQUAL: "lte"}
_UNSUPPORTED_SEARCH = ("group_by", "generative", "rerank", "boost", "near_object", "near_text", "near_image",
                       "near_audio", "near_video", "near_depth", "near_thermal", "near_imu")


def _vector(message, what: str):
    """A single float32 vector from whichever field the client filled."""
    if message.vector_bytes:
        return np.frombuffer(message.vector_bytes, dtype=np.float32).copy()
    vectors = list(getattr(message, "vectors", ()))
    if vectors:
        if len(vectors) != 1 or vectors[0].type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
            raise NotImplementedByStandIn(f"{what}: multi-vectors or several vectors")
        return np.frombuffer(vectors[0].vector_bytes, dtype=np.float32).copy()
    if list(getattr(message, "vector", ())):
        return np.array(list(message.vector), dtype=np.float32)
    return None


def _target(message, collection) -> str:
    names = list(message.targets.target_vectors) if message.HasField("targets") else []
    names = names or list(getattr(message, "target_vectors", ()))
    if len(names) > 1:
        raise NotImplementedByStandIn("multi-target vector search")
    if names:
        return names[0]
    if len(collection.vector_names) == 1:
        return next(iter(collection.vector_names))
    raise StandInError("several named vectors: the query must name a target vector")


def decode_filter(flt: base_pb2.Filters):
    """The client's Filters message as the store's tuples; operators and targets not implemented fail loudly."""
    if flt.operator in (_F.OPERATOR_AND, _F.OPERATOR_OR):
        return ("and" if flt.operator == _F.OPERATOR_AND else "or", [decode_filter(f) for f in flt.filters])
    if flt.operator not in (_F.OPERATOR_EQUAL, _F.OPERATOR_CONTAINS_ANY, *_RANGE):
        raise NotImplementedByStandIn(f"filter operator {_F.Operator.Name(flt.operator)}")
    if flt.target.WhichOneof("target") != "property":
        raise NotImplementedByStandIn(f"filter target {flt.target.WhichOneof('target')}")
    if list(flt.on):
        raise NotImplementedByStandIn("filters with the deprecated 'on' path")
    kind = flt.WhichOneof("test_value")
    values = {
        "value_text": lambda: flt.value_text,
        "value_int": lambda: flt.value_int,
        "value_text_array": lambda: list(flt.value_text_array.values),
        "value_int_array": lambda: list(flt.value_int_array.values),
    }
    if kind not in values:
        raise NotImplementedByStandIn(f"filter value {kind}")
    value = values[kind]()
    if flt.operator in _RANGE:
        if isinstance(value, list):
            raise NotImplementedByStandIn("a range filter with a list value")
        return (_RANGE[flt.operator], flt.target.property, value)
    if flt.operator == _F.OPERATOR_CONTAINS_ANY:
        return ("contains_any", flt.target.property, value if isinstance(value, list) else [value])
    if isinstance(value, list):
        raise NotImplementedByStandIn("Equal with a list value")
    return ("equal", flt.target.property, value)


def _value(kind: str, value) -> properties_pb2.Value:
    if kind == "text":
        return properties_pb2.Value(text_value=value)
    if kind == "int":
        return properties_pb2.Value(int_value=value)
    if kind == "date":
        return properties_pb2.Value(date_value=value)
    texts = properties_pb2.TextValues(values=value)
    return properties_pb2.Value(list_value=properties_pb2.ListValue(text_values=texts))


class WeaviateServicer(weaviate_pb2_grpc.WeaviateServicer):
    def __init__(self, standin):
        self.standin = standin
        self.store = standin.store

    def _guard(self, method: str, context, handler):
        self.standin.calls.append(f"grpc {method}")
        try:
            self.standin.check_grpc_auth(context)
            with self.store.lock:
                return handler()
        except NotImplementedByStandIn as exc:
            self.standin.record_unknown(f"grpc {method}: {exc}")
            context.abort(exc.grpc_code, str(exc))
        except StandInError as exc:
            context.abort(exc.grpc_code, str(exc))

    # --- implemented ---------------------------------------------------------------------------------------

    def BatchObjects(self, request: batch_pb2.BatchObjectsRequest, context):  # noqa: N802 - gRPC method name
        return self._guard("BatchObjects", context, lambda: self._batch_objects(request))

    def _batch_objects(self, request):
        started = time.perf_counter()
        errors = []
        for index, obj in enumerate(request.objects):
            try:
                collection = self.store.collection(obj.collection)
                shard = collection.shard(obj.tenant)
                properties, vectors = self._decode_object(obj)
                rejected = self.store.rejection_for(collection, properties)
                if rejected:
                    raise StandInError(rejected)
                collection.put(shard, obj.uuid, properties, vectors)
            except NotImplementedByStandIn:
                raise
            except StandInError as exc:
                errors.append(batch_pb2.BatchObjectsReply.BatchError(index=index, error=str(exc)))
        return batch_pb2.BatchObjectsReply(took=time.perf_counter() - started, errors=errors)

    @staticmethod
    def _decode_object(obj: batch_pb2.BatchObject):
        props = obj.properties
        for unsupported in ("single_target_ref_props", "multi_target_ref_props", "number_array_properties",
                            "int_array_properties", "boolean_array_properties", "object_properties",
                            "object_array_properties"):
            if len(getattr(props, unsupported)):
                raise NotImplementedByStandIn(f"batch objects with {unsupported}")
        properties = json_format.MessageToDict(props.non_ref_properties) if props.HasField("non_ref_properties") else {}
        for array in props.text_array_properties:
            properties[array.prop_name] = list(array.values)
        for name in props.empty_list_props:
            properties[name] = []
        if obj.vector_bytes or list(obj.vector):
            raise NotImplementedByStandIn("unnamed (legacy) vectors; name the vector")
        vectors = {}
        for vector in obj.vectors:
            if vector.type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
                raise NotImplementedByStandIn("multi-vectors")
            vectors[vector.name] = np.frombuffer(vector.vector_bytes, dtype=np.float32).copy()
        return properties, vectors

    def BatchDelete(self, request: batch_delete_pb2.BatchDeleteRequest, context):  # noqa: N802
        return self._guard("BatchDelete", context, lambda: self._batch_delete(request))

    def _batch_delete(self, request):
        started = time.perf_counter()
        collection = self.store.collection(request.collection)
        shard = collection.shard(request.tenant)
        if not request.HasField("filters"):
            raise StandInError("batch delete needs a filter")
        matched = collection.allowed(shard, decode_filter(request.filters))
        if not request.dry_run:
            for obj in matched:
                del shard.objects[obj.uuid]
        objects = [batch_delete_pb2.BatchDeleteObject(uuid=uuid_lib.UUID(o.uuid).bytes, successful=True)
                   for o in matched] if request.verbose else []
        return batch_delete_pb2.BatchDeleteReply(took=time.perf_counter() - started, failed=0, matches=len(matched),
                                                 successful=len(matched), objects=objects)

    def Search(self, request: search_get_pb2.SearchRequest, context):  # noqa: N802
        return self._guard("Search", context, lambda: self._search(request))

    def _search(self, request):
        started = time.perf_counter()
        for name in _UNSUPPORTED_SEARCH:
            if request.HasField(name):
                raise NotImplementedByStandIn(f"search with {name}")
        if len(request.sort_by) or request.autocut:
            raise NotImplementedByStandIn("search with sort_by or autocut")
        if request.limit <= 0:
            raise NotImplementedByStandIn("search without an explicit limit (Weaviate's QUERY_DEFAULTS_LIMIT)")
        collection = self.store.collection(request.collection)
        shard = collection.shard(request.tenant)
        names, metadata = self._requested(request, collection)
        flt = decode_filter(request.filters) if request.HasField("filters") else None
        candidates = collection.allowed(shard, flt)
        window = request.offset + request.limit
        rows: list[tuple] = []  # (object, {metadata})
        if request.HasField("near_vector"):
            nv = request.near_vector
            if nv.HasField("certainty") or nv.HasField("distance") or len(nv.vector_for_targets) or \
                    len(nv.vector_per_target) or nv.HasField("selection"):
                raise NotImplementedByStandIn("near_vector with certainty, distance, per-target vectors or selection")
            vector = _vector(nv, "near_vector")
            found = collection.near_vector(_target(nv, collection), vector, candidates)[request.offset:window]
            rows = [(o, {"distance": d, "certainty": 1 - d / 2}) for o, d in found]
        elif request.HasField("bm25_search"):
            bm25 = request.bm25_search
            if bm25.HasField("search_operator"):
                raise NotImplementedByStandIn("bm25 search_operator")
            found = collection.bm25(shard, bm25.query, list(bm25.properties), candidates)[request.offset:window]
            rows = [(o, {"score": s}) for o, s in found]
        elif request.HasField("hybrid_search"):
            rows = self._hybrid(request, collection, shard, candidates)
        else:  # a plain listing: the cursor API, ordered by id
            if request.after:
                if flt is not None:
                    raise StandInError("cursor api (after) is not compatible with filters")
                candidates = [o for o in candidates if o.uuid > str(uuid_lib.UUID(request.after))]
            rows = [(o, {}) for o in candidates[request.offset:window]]
        results = [self._result(collection, obj, meta, names, metadata) for obj, meta in rows]
        return search_get_pb2.SearchReply(took=time.perf_counter() - started, results=results)

    def _hybrid(self, request, collection, shard, candidates):
        hybrid = request.hybrid_search
        for name in ("near_text", "near_vector", "bm25_search_operator", "selection", "vector_distance"):
            if hybrid.HasField(name):
                raise NotImplementedByStandIn(f"hybrid with {name}")
        fusion = {base_search_pb2.Hybrid.FUSION_TYPE_RANKED: "ranked",
                  base_search_pb2.Hybrid.FUSION_TYPE_RELATIVE_SCORE: "relative",
                  base_search_pb2.Hybrid.FUSION_TYPE_UNSPECIFIED: "relative"}[hybrid.fusion_type]
        alpha = hybrid.alpha_param if hybrid.use_alpha_param else hybrid.alpha
        found = collection.hybrid(
            shard, query=hybrid.query, vector=_vector(hybrid, "hybrid"), vector_name=_target(hybrid, collection),
            alpha=alpha, fusion=fusion, properties=list(hybrid.properties), candidates=candidates,
            limit=request.offset + request.limit,
        )[request.offset : request.offset + request.limit]
        return [(o, {"score": s, "explain_score": e}) for o, s, e in found]

    @staticmethod
    def _requested(request, collection):
        names = list(collection.properties)
        if request.HasField("properties"):
            props = request.properties
            if len(props.ref_properties) or len(props.object_properties):
                raise NotImplementedByStandIn("returning references or nested object properties")
            if not props.return_all_nonref_properties:
                names = list(props.non_ref_properties)
        metadata = request.metadata if request.HasField("metadata") else search_get_pb2.MetadataRequest()
        if metadata.vector or len(metadata.vectors) or metadata.is_consistent or metadata.query_profile:
            raise NotImplementedByStandIn("returning vectors, consistency or query profiles")
        return names, metadata

    @staticmethod
    def _result(collection, obj, meta: dict, names: list[str], requested) -> search_get_pb2.SearchResult:
        fields = {}
        for name in names:
            if name not in collection.properties:
                raise StandInError(f"no such prop with name '{name}' found in class '{collection.name}'")
            if name in obj.properties:
                fields[name] = _value(collection.properties[name]["type"], obj.properties[name])
        result = search_get_pb2.MetadataResult(id=obj.uuid, id_as_bytes=uuid_lib.UUID(obj.uuid).bytes)
        for flag in ("distance", "certainty", "score", "explain_score"):
            if getattr(requested, flag) and flag in meta:
                setattr(result, flag, meta[flag])
                setattr(result, f"{flag}_present", True)
        if requested.creation_time_unix:
            result.creation_time_unix, result.creation_time_unix_present = obj.created_ms, True
        if requested.last_update_time_unix:
            result.last_update_time_unix, result.last_update_time_unix_present = obj.updated_ms, True
        return search_get_pb2.SearchResult(
            properties=search_get_pb2.PropertiesResult(non_ref_props=properties_pb2.Properties(fields=fields),
                                                       target_collection=collection.name),
            metadata=result,
        )

    # --- refused loudly ------------------------------------------------------------------------------------

    def _refuse(self, method: str, context):
        self.standin.record_unknown(f"grpc {method}")
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"weaviate stand-in: {method} is not implemented")

    def BatchReferences(self, request, context):  # noqa: N802
        self._refuse("BatchReferences", context)

    def TenantsGet(self, request, context):  # noqa: N802
        self._refuse("TenantsGet", context)

    def Aggregate(self, request, context):  # noqa: N802
        self._refuse("Aggregate", context)

    def BatchStream(self, request_iterator, context):  # noqa: N802
        self._refuse("BatchStream", context)


def health_handler(standin) -> grpc.GenericRpcHandler:
    """The client's gRPC ping: /grpc.health.v1.Health/Check with Weaviate's own health messages."""

    def check(request, context):
        standin.calls.append("grpc Health/Check")
        return health_weaviate_pb2.WeaviateHealthCheckResponse(
            status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING
        )

    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
            response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString,
        ),
    })


class UnknownMethodHandler(grpc.GenericRpcHandler):
    """Any other service or method: recorded and refused, never silently answered."""

    def __init__(self, standin):
        self.standin = standin

    def service(self, handler_call_details):
        method = handler_call_details.method

        def refuse(request, context):
            self.standin.record_unknown(f"grpc {method}")
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"weaviate stand-in: {method} is not implemented")

        return grpc.unary_unary_rpc_method_handler(refuse)
