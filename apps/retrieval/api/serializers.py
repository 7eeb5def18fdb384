from django.conf import settings
from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.compliance.labels import CLASSIFICATIONS
from ragsite.serializers import RejectUnknownFields

from ..answer import ANSWER_DEFAULT_SENTENCES, ANSWER_DEFAULT_TOP_K, ANSWER_MAX_SENTENCES, ANSWER_MAX_TOP_K
from ..index import IndexFilter
from ..index.fusion import FUSIONS, MODES
from ..search import SEARCH_MAX_WINDOW, SearchError, parse_filters

# A longer list was passed to the database whole (SQLite: "too many SQL variables", a 500); no one names more.
FILTER_MAX_SOURCES = 1000


# The schema states what search.parse_filters accepts (tests/test_api_schema.py holds the server to it).
@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "integer"},
                                {"type": "array", "minItems": 1, "maxItems": FILTER_MAX_SOURCES,
                                 "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}]})
class SourceRefField(serializers.JSONField):
    pass


@extend_schema_field({"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]})
class MomentField(serializers.CharField):
    pass


class GenerateField(serializers.BooleanField):
    """`generate`; the schema offers `true` only while a generator is configured (the server refuses it otherwise)."""


class _GenerateFieldSchema(OpenApiSerializerFieldExtension):
    target_class = GenerateField

    def map_serializer_field(self, auto_schema, direction):
        from .. import generator

        return {"type": "boolean"} if generator.enabled() else {"type": "boolean", "enum": [False]}


class SearchFiltersSerializer(serializers.Serializer):
    """The shape of ``filters`` (for the schema). Values are checked by search.parse_filters, which names the bad
    key (``filters.classification: ...``) and refuses unknown keys."""

    # null is the same as leaving the key out
    source = SourceRefField(required=False, allow_null=True, help_text="a source name or id, or a list of them")
    classification = serializers.ListField(child=serializers.ChoiceField(choices=CLASSIFICATIONS), required=False,
                                           allow_null=True, min_length=1,
                                           help_text="documents of any of these classifications")
    modified_after = MomentField(required=False, allow_null=True, help_text="ISO 8601 date or date-time (UTC unless "
                                 "it names an offset); documents modified at or after it")
    modified_before = MomentField(required=False, allow_null=True, help_text="ISO 8601 date or date-time; documents "
                                  "modified before it. Documents without a date match no date filter")


class _SearchFiltersSchema(OpenApiSerializerExtension):
    """parse_filters refuses keys it does not know, so the schema says so."""

    target_class = SearchFiltersSerializer

    def map_serializer(self, auto_schema, direction):
        return {**auto_schema._map_basic_serializer(self.target, direction), "additionalProperties": False}


@extend_schema_field(SearchFiltersSerializer)
class FiltersField(serializers.DictField):
    """``filters`` as the IndexFilter the search applies (search.parse_filters names the bad key)."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        sources = value.get("source")
        if isinstance(sources, list) and len(sources) > FILTER_MAX_SOURCES:
            raise serializers.ValidationError({"source": [f"at most {FILTER_MAX_SOURCES} sources, got "
                                                          f"{len(sources):,}"]})
        try:
            return parse_filters(value)
        except SearchError as exc:
            raise serializers.ValidationError({exc.field.removeprefix("filters."): [exc.message]}) from exc


class SearchRequestSerializer(RejectUnknownFields, serializers.Serializer):
    query = serializers.CharField(max_length=settings.SEARCH_MAX_QUERY_CHARS, trim_whitespace=True)
    top_k = serializers.IntegerField(min_value=1, max_value=settings.SEARCH_MAX_TOP_K, default=10,
                                     help_text="results per page")
    offset = serializers.IntegerField(min_value=0, max_value=SEARCH_MAX_WINDOW - 1, default=0,
                                      help_text=f"results to skip (pagination); offset + top_k <= {SEARCH_MAX_WINDOW}")
    filters = FiltersField(required=False, default=IndexFilter)
    mode = serializers.ChoiceField(choices=MODES, default="hybrid")
    alpha = serializers.FloatField(min_value=0, max_value=1, required=False,
                                   help_text="hybrid: weight of the dense side (1 = dense only)")
    fusion = serializers.ChoiceField(choices=FUSIONS, default="relative_score")
    explain = serializers.BooleanField(default=False, help_text="add each side's score to every result")

    def validate(self, attrs):
        if attrs.get("offset", 0) + attrs["top_k"] > SEARCH_MAX_WINDOW:
            raise serializers.ValidationError({"offset": [f"offset + top_k must be at most {SEARCH_MAX_WINDOW} "
                                                          "(the deepest page)"]})
        return attrs


class SearchResultSerializer(serializers.Serializer):
    chunk_id = serializers.UUIDField()
    document_id = serializers.UUIDField()
    document_title = serializers.CharField()
    source = serializers.CharField()
    uri = serializers.CharField()
    heading = serializers.CharField()
    page = serializers.IntegerField(allow_null=True, help_text="page of a paged document (PDF)")
    text = serializers.CharField()
    score = serializers.FloatField()
    explain = serializers.DictField(required=False, allow_null=True)


class SearchResponseSerializer(serializers.Serializer):
    results = SearchResultSerializer(many=True)
    took_ms = serializers.FloatField()
    offset = serializers.IntegerField(help_text="the offset of this page")
    next_offset = serializers.IntegerField(allow_null=True, help_text="offset of the next page; null on the last")
    served_mode = serializers.CharField(help_text="the mode actually served (hybrid, dense or lexical): lexical "
                                                  "while the index holds vectors of another embedding model")
    warnings = serializers.ListField(child=serializers.CharField(), required=False)


class AnswerRequestSerializer(SearchRequestSerializer):
    """The search request's fields (query, filters, mode, alpha, fusion), with answer-sized limits."""

    top_k = serializers.IntegerField(min_value=1, max_value=ANSWER_MAX_TOP_K, default=ANSWER_DEFAULT_TOP_K,
                                     help_text="how many permitted chunks the answer may draw from")
    explain = None  # no per-result scores in an answer
    offset = None  # an answer draws on the first top_k chunks
    max_sentences = serializers.IntegerField(min_value=1, max_value=ANSWER_MAX_SENTENCES,
                                             default=ANSWER_DEFAULT_SENTENCES,
                                             help_text="extractive answer: how many sentences at most")
    generate = GenerateField(default=False, help_text="write the answer with the configured language model "
                             "(refused with a 400 while none is configured: ANSWER_LLM_URL)")


class CitationSerializer(serializers.Serializer):
    n = serializers.IntegerField(help_text="the number the answer cites as [n]")
    chunk_id = serializers.UUIDField()
    document_id = serializers.UUIDField()
    document_title = serializers.CharField()
    source = serializers.CharField()
    uri = serializers.CharField()
    page = serializers.IntegerField(allow_null=True)
    text = serializers.CharField()


class AnswerResponseSerializer(serializers.Serializer):
    answer = serializers.CharField(allow_blank=True, help_text='"" when nothing the caller may read matches')
    citations = CitationSerializer(many=True)
    generator = serializers.CharField(help_text='"extractive" or the name of the model that wrote the answer')
    generator_error = serializers.CharField(required=False,
                                            help_text="why the generator was not used (the answer is extractive)")
    took_ms = serializers.FloatField()
