from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.monitoring import views as monitoring
from apps.retrieval.api.views import AnswerView, SearchView

api_v1 = [
    path("search/", SearchView.as_view(), name="search"),
    path("answer/", AnswerView.as_view(), name="answer"),
    path("", include("apps.ingestion.api.urls")),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", monitoring.healthz, name="healthz"),
    path("readyz", monitoring.readyz, name="readyz"),
    path("", include("django_prometheus.urls")),
    path("admin/", admin.site.urls),
    path("auth/", include("apps.accounts.sso.urls")),
    path("auth/", include("social_django.urls", namespace="social")),
]

handler404 = "ragsite.api_errors.not_found"
