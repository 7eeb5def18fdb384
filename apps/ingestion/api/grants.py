"""Grants on sources and documents: list, grant, revoke; all through ingestion.grants.

Only a caller who may read the object and holds ``grant_access`` manages its grants: nobody can hand out (to others
or to themself) what they cannot read, and an object the caller cannot read answers the 404 of a missing one."""

import uuid

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.access import access_scope
from apps.accounts.models import DocumentRestriction
from apps.accounts.permissions import HasCapability
from ragsite.serializers import RejectUnknownFields

from .. import grants
from ..models import Document, DocumentAccess, Source
from ..visibility import readable_sources


class GranteeSerializer(RejectUnknownFields, serializers.Serializer):
    user = serializers.CharField(required=False, help_text="Username (or numeric id) to grant to or revoke from")
    group = serializers.CharField(required=False, help_text="Group name to grant to or revoke from")


class GrantSerializer(serializers.Serializer):
    user = serializers.CharField(required=False)
    user_id = serializers.IntegerField(required=False)
    group = serializers.CharField(required=False)
    granted_by = serializers.CharField(allow_null=True)
    granted_at = serializers.DateTimeField()


class RestrictionSerializer(serializers.Serializer):
    reason = serializers.CharField(allow_blank=True)
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()


class GrantListSerializer(serializers.Serializer):
    users = GrantSerializer(many=True)
    groups = GrantSerializer(many=True)
    reader_groups = serializers.ListField(child=serializers.CharField(), required=False,
                                          help_text="Sources: the source's reader groups (changed on the source)")
    restriction = RestrictionSerializer(required=False, allow_null=True,
                                        help_text="Documents: set when the document is narrowed to its own grants")
    principals = serializers.ListField(child=serializers.CharField(), required=False,
                                       help_text="Documents: the readers the search enforces now")


def _name(user):
    return user.get_username() if user is not None else None


def _grant_data(row) -> dict:
    holder = ({"user": row.user.get_username(), "user_id": row.user_id} if hasattr(row, "user")
              else {"group": row.group.name})
    return {**holder, "granted_by": _name(row.granted_by), "granted_at": row.granted_at}


def _grantee(request):
    """(user, group) from the body or, for DELETE, the query string; 400 naming the field otherwise."""
    data = request.data if isinstance(request.data, dict) and request.data else request.query_params
    unknown = set(data) - {"user", "group"}
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["unknown field; give user or group"]})
    if ("user" in data) == ("group" in data):
        raise ValidationError({"user": ["give exactly one of user or group"]})
    if "user" in data:
        return grants.resolve_user(data["user"]), None
    return None, grants.resolve_group(data["group"])


_GRANTEE_PARAMS = [OpenApiParameter("user", str, required=False, description="DELETE: username or id"),
                   OpenApiParameter("group", str, required=False, description="DELETE: group name")]

class _GrantsView(APIView):
    permission_classes = [HasCapability]
    required_capability = "grant_access"

    def get_target(self, pk):
        """The object, if the caller may read it; NotFound otherwise (forbidden and missing look the same)."""
        raise NotImplementedError

    def listing(self, target) -> dict:
        users, groups = grants.grants_of(target)
        return {"users": [_grant_data(r) for r in users], "groups": [_grant_data(r) for r in groups]}

    @extend_schema(responses=GrantListSerializer)
    def get(self, request, pk):
        return Response(self.listing(self.get_target(pk)))

    @extend_schema(request=GranteeSerializer, responses={200: GrantSerializer, 201: GrantSerializer})
    def post(self, request, pk):
        target = self.get_target(pk)
        user, group = _grantee(request)
        row, created = grants.grant(target, user=user, group=group, actor=request.user)
        return Response(_grant_data(row), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=GranteeSerializer, parameters=_GRANTEE_PARAMS, responses={204: None})
    def delete(self, request, pk):
        target = self.get_target(pk)
        user, group = _grantee(request)
        try:
            grants.revoke(target, user=user, group=group, actor=request.user)
        except grants.GrantNotFound as exc:
            raise NotFound(str(exc)) from exc
        return Response(status=status.HTTP_204_NO_CONTENT)



@extend_schema(tags=["grants"])
class SourceGrantsView(_GrantsView):
    """Users and groups granted to read a source's documents (beside its reader groups)."""

    def get_target(self, pk):
        source = readable_sources(Source.objects.filter(pk=pk), self.request.user).first()
        if source is None:
            raise NotFound("No source with this id.")
        return source

    def listing(self, target):
        return {**super().listing(target), "reader_groups": list(target.reader_groups.values_list("name", flat=True))}


def _document(pk, user) -> Document:
    try:
        document_id = uuid.UUID(str(pk))
    except ValueError:
        document_id = None
    readable = Document.objects.readable_by(access_scope(user)).select_related("source")
    document = readable.filter(pk=document_id).first() if document_id else None
    if document is None:
        raise NotFound("No document with this id.")
    return document


@extend_schema(tags=["grants"])
class DocumentGrantsView(_GrantsView):
    """Users and groups granted to read one document, whatever it inherits; and whether it is restricted."""

    def get_target(self, pk):
        return _document(pk, self.request.user)

    def listing(self, target):

        restriction = DocumentRestriction.objects.select_related("created_by").filter(document=target).first()
        return {
            **super().listing(target),
            "restriction": {"reason": restriction.reason, "created_by": _name(restriction.created_by),
                            "created_at": restriction.created_at} if restriction else None,
            "principals": sorted(DocumentAccess.objects.filter(document=target).values_list("principal", flat=True)),
        }


class RestrictRequestSerializer(RejectUnknownFields, serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)


@extend_schema(tags=["grants"])
class DocumentRestrictionView(APIView):
    """Narrow a document to its own grants (POST) or let it inherit its readers again (DELETE)."""

    permission_classes = [HasCapability]
    required_capability = "grant_access"

    @extend_schema(request=RestrictRequestSerializer, responses={200: RestrictionSerializer,
                                                                 201: RestrictionSerializer})
    def post(self, request, pk):

        document = _document(pk, request.user)
        data = request.data if isinstance(request.data, dict) else {}
        unknown = set(data) - {"reason"}
        if unknown:
            raise ValidationError({sorted(unknown)[0]: ["unknown field; the only one is reason"]})
        created = grants.restrict(document, reason=data.get("reason", ""), actor=request.user)
        restriction = DocumentRestriction.objects.select_related("created_by").get(document=document)
        body = {"reason": restriction.reason, "created_by": _name(restriction.created_by),
                "created_at": restriction.created_at}
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, pk):
        document = _document(pk, request.user)
        try:
            grants.unrestrict(document, actor=request.user)
        except grants.GrantNotFound as exc:
            raise NotFound(str(exc)) from exc
        return Response(status=status.HTTP_204_NO_CONTENT)
