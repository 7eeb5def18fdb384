from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import HasCapability
from apps.compliance.audit import client_ip
from ragsite.parsers import BoundedJSONParser

from .. import answer as answers
from ..index import IndexUnavailable
from ..search import search_page
from .serializers import (
    AnswerRequestSerializer,
    AnswerResponseSerializer,
    SearchRequestSerializer,
    SearchResponseSerializer,
)


class _QueryView(APIView):
    """Search and answer alike: capability 'query', the search throttle, bad fields as 400, index down as 503."""

    throttle_scope = "search"
    permission_classes = [HasCapability]
    required_capability = "query"
    # JSON only: a form post cannot carry `filters` (a nested object), which was silently dropped (found by
    # tests/test_api_schema.py); now any other media type is a 415.
    parser_classes = [BoundedJSONParser]
    request_serializer = None

    def run(self, request, **params) -> dict:
        raise NotImplementedError

    def post(self, request):
        params = self.request_serializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            return Response(self.run(request, **params.validated_data))
        except IndexUnavailable as exc:
            return Response({"detail": f"search index unavailable: {exc}"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)


@extend_schema_view(post=extend_schema(request=SearchRequestSerializer, responses=SearchResponseSerializer))
class SearchView(_QueryView):
    request_serializer = SearchRequestSerializer

    def run(self, request, **params):
        return search_page(request.user, ip=client_ip(request), **params).as_dict()


@extend_schema_view(post=extend_schema(request=AnswerRequestSerializer, responses=AnswerResponseSerializer))
class AnswerView(_QueryView):
    request_serializer = AnswerRequestSerializer

    def run(self, request, **params):
        return answers.as_dict(answers.answer(request.user, ip=client_ip(request), **params))
