from rest_framework.routers import DefaultRouter

from .views import DocumentViewSet, SourceViewSet, SyncRunViewSet

router = DefaultRouter()
router.register("sources", SourceViewSet, basename="source")
router.register("sync-runs", SyncRunViewSet, basename="syncrun")
router.register("documents", DocumentViewSet, basename="document")
urlpatterns = router.urls
