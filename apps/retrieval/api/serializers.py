from django.conf import settings
from rest_framework import serializers

from ..answer import ANSWER_DEFAULT_SENTENCES, ANSWER_DEFAULT_TOP_K, ANSWER_MAX_SENTENCES, ANSWER_MAX_TOP_K


class SearchRequestSerializer(serializers.Serializer):
    query = serializers.CharField(max_length=settings.SEARCH_MAX_QUERY_CHARS, trim_whitespace=True)
    top_k = serializers.IntegerField(min_value=1, max_value=settings.SEARCH_MAX_TOP_K, default=10)
    filters = serializers.DictField(required=False, default=dict)
    mode = serializers.ChoiceField(choices=["hybrid", "dense", "lexical"], default="hybrid")
    alpha = serializers.FloatField(min_value=0, max_value=1, required=False,
                                   help_text="hybrid: weight of the dense side (1 = dense only)")
    fusion = serializers.ChoiceField(choices=["relative_score", "rrf"], default="relative_score")
    explain = serializers.BooleanField(default=False, help_text="add each side's score to every result")


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


class AnswerRequestSerializer(SearchRequestSerializer):
    """The search request's fields (query, filters, mode, alpha, fusion), with answer-sized limits."""

    top_k = serializers.IntegerField(min_value=1, max_value=ANSWER_MAX_TOP_K, default=ANSWER_DEFAULT_TOP_K,
                                     help_text="how many permitted chunks the answer may draw from")
    explain = None  # no per-result scores in an answer
    max_sentences = serializers.IntegerField(min_value=1, max_value=ANSWER_MAX_SENTENCES,
                                             default=ANSWER_DEFAULT_SENTENCES,
                                             help_text="extractive answer: how many sentences at most")
    generate = serializers.BooleanField(default=False,
                                        help_text="write the answer with the configured language model")


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
