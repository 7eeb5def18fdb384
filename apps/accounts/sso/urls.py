from django.urls import path

from . import views

urlpatterns = [
    path("error/", views.sso_error, name="sso-error"),
    path("saml/login/", views.saml_login, name="saml-login"),
    path("saml/metadata/", views.saml_metadata, name="saml-metadata"),
    path("oidc/login/", views.oidc_login, name="oidc-login"),
]
