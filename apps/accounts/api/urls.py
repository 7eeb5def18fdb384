from django.urls import path

from .views import DocumentGrantsView, DocumentRestrictionView, SourceGrantsView

urlpatterns = [
    path("sources/<int:pk>/grants/", SourceGrantsView.as_view(), name="source-grants"),
    path("documents/<str:pk>/grants/", DocumentGrantsView.as_view(), name="document-grants"),
    path("documents/<str:pk>/restriction/", DocumentRestrictionView.as_view(), name="document-restriction"),
]
