from django.urls import path
from rest_framework.routers import DefaultRouter

from .grants import DocumentGrantsView, DocumentRestrictionView, SourceGrantsView
from .views import DocumentViewSet, SourceViewSet, SyncRunViewSet

router = DefaultRouter()
router.register("sources", SourceViewSet, basename="source")
router.register("sync-runs", SyncRunViewSet, basename="syncrun")
router.register("documents", DocumentViewSet, basename="document")
urlpatterns = [
    path("sources/<int:pk>/grants/", SourceGrantsView.as_view(), name="source-grants"),
    path("documents/<str:pk>/grants/", DocumentGrantsView.as_view(), name="document-grants"),
    path("documents/<str:pk>/restriction/", DocumentRestrictionView.as_view(), name="document-restriction"),
    *router.urls,
]
