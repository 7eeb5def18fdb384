"""SAML 2.0 sign-in (service provider side), on social-auth's SAMLAuth and python3-saml.

Configured from the ``SAML_*`` settings (read at request time, so one IdP per deployment, named ``SAML_IDP_NAME``).
On top of what python3-saml checks in strict mode (schema, status, one assertion, signatures and their references,
audience, destination, issuer, NotBefore/NotOnOrAfter, recipient) this backend insists on:

- a signed assertion (and a signed response when ``SAML_WANT_RESPONSE_SIGNED``), never SHA-1 signatures or digests;
- every InResponseTo in the response (on the Response and in each bearer SubjectConfirmationData, the latter being
  inside the assertion's signature) equal to the id of the AuthnRequest this browser session sent;
- no InResponseTo at all (IdP-initiated) only when ``SAML_ALLOW_IDP_INITIATED``;
- an assertion id used once: consumed ids are kept in the shared cache (Redis) until their NotOnOrAfter has passed
  (plus the clock drift python3-saml allows), so a replay is refused on every web process.

Each refusal answers a 4xx page naming the reason and writes an ``auth.sso_refused`` audit event; nothing signs in.
"""

import logging
import time

from django.conf import settings
from django.core.cache import cache
from django.shortcuts import render
from django.urls import reverse
from lxml.etree import XMLSyntaxError
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML
from social_core.backends.saml import SAMLAuth
from social_core.exceptions import SocialAuthBaseException
from xmlsec import Error as XMLSecError

from apps.compliance.audit import client_ip, record

logger = logging.getLogger(__name__)

NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
REPLAY_KEY = "saml:consumed:{}"
# Kept past NotOnOrAfter for as long as python3-saml still accepts an expired assertion, plus a margin.
REPLAY_MARGIN_SECONDS = OneLogin_Saml2_Constants.ALLOWED_CLOCK_DRIFT + 60

_VALIDATION_CODES = {
    value: name.lower()
    for name, value in vars(OneLogin_Saml2_ValidationError).items()
    if name.isupper() and isinstance(value, int)
}


def is_configured() -> bool:
    return bool(settings.SAML_IDP_SSO_URL and settings.SAML_IDP_ENTITY_ID and settings.SAML_IDP_CERT)


class SamlRefused(Exception):
    """A SAML response (or request to start one) that must not sign anyone in."""

    def __init__(self, reason: str, detail: str = "", status: int = 403):
        super().__init__(detail or reason)
        self.reason, self.detail, self.status = reason, detail or reason, status


def refuse(request, reason: str, detail: str, *, status: int = 403, idp: str = ""):
    """Audit a refused sign-in and answer the 4xx page that names the reason."""
    record("auth.sso_refused", actor="", ip=client_ip(request),
           data={"provider": "saml", "idp": idp, "reason": reason, "detail": detail[:500]})
    logger.warning("SAML sign-in refused: %s (%s)", reason, detail)
    return render(request, "accounts/sso_error.html",
                  {"message": f"SAML sign-in refused ({reason}): {detail}"}, status=status)


class SamlAuth(SAMLAuth):
    name = "saml"

    # -- configuration from the SAML_* settings -------------------------------------------------------------------
    def setting(self, name, default=None):
        values = {
            "SP_ENTITY_ID": lambda: settings.SAML_SP_ENTITY_ID or self.strategy.build_absolute_uri(
                reverse("saml-metadata")),
            "SP_PUBLIC_CERT": lambda: settings.SAML_SP_CERT,
            "SP_PRIVATE_KEY": lambda: settings.SAML_SP_KEY,
            "ENABLED_IDPS": self._enabled_idps,
            "SECURITY_CONFIG": self._security_config,
            "SP_EXTRA": lambda: {"NameIDFormat": NAMEID_UNSPECIFIED},
            "ALLOW_IDP_INITIATED": lambda: settings.SAML_ALLOW_IDP_INITIATED,
            "ORG_INFO": lambda: {},
            "TECHNICAL_CONTACT": lambda: {},
            "SUPPORT_CONTACT": lambda: {},
        }
        if name in values:
            return values[name]()
        return super().setting(name, default)

    def _enabled_idps(self):
        if not is_configured():
            return {}
        return {
            settings.SAML_IDP_NAME: {
                "entity_id": settings.SAML_IDP_ENTITY_ID,
                "url": settings.SAML_IDP_SSO_URL,
                "x509cert": settings.SAML_IDP_CERT,
                "attr_user_permanent_id": settings.SAML_USERNAME_ATTRIBUTE,
                "attr_username": settings.SAML_USERNAME_ATTRIBUTE,
                "attr_email": settings.SAML_EMAIL_ATTRIBUTE,
            }
        }

    def _security_config(self):
        signing = bool(settings.SAML_SP_KEY and settings.SAML_SP_CERT)
        return {
            "authnRequestsSigned": signing,
            "wantAssertionsSigned": True,
            "wantMessagesSigned": settings.SAML_WANT_RESPONSE_SIGNED,
            "wantNameId": True,
            "wantAttributeStatement": True,
            "rejectDeprecatedAlgorithm": True,
            "signatureAlgorithm": OneLogin_Saml2_Constants.RSA_SHA256,
            "digestAlgorithm": OneLogin_Saml2_Constants.SHA256,
            "requestedAuthnContext": False,
        }

    def generate_saml_config(self, idp=None):
        config = super().generate_saml_config(idp)
        config["debug"] = False
        config["strict"] = True
        # python3-saml refuses empty contact or organisation blocks; we publish none.
        config.pop("contactPerson", None)
        config.pop("organization", None)
        return config

    # -- start -----------------------------------------------------------------------------------------------------
    def start(self):
        request = self.strategy.request
        try:
            if not is_configured():
                raise SamlRefused("not_configured", "SAML sign-in is not configured", status=404)
            return super().start()
        except SamlRefused as error:
            return refuse(request, error.reason, error.detail, status=error.status)
        except SocialAuthBaseException as error:
            return refuse(request, "bad_request", str(error), status=400)

    # -- completion ------------------------------------------------------------------------------------------------
    def auth_complete(self, *args, **kwargs):
        post = self.strategy.request_post()
        if "SAMLResponse" in post and self.BROWSER_RETURN_FIELD not in post:
            # social-auth re-posts the response to ourselves first, so a SameSite=Lax session cookie comes along.
            return self._browser_return(post["SAMLResponse"], self.strategy.request_data().get("RelayState"))
        request = self.strategy.request
        idp_name = ""
        try:
            if not is_configured():
                raise SamlRefused("not_configured", "SAML sign-in is not configured", status=404)
            idp_name = self._idp_name()
            return self._complete(idp_name, *args, **kwargs)
        except SamlRefused as error:
            return refuse(request, error.reason, error.detail, status=error.status, idp=idp_name)
        except SocialAuthBaseException as error:  # from the pipeline: inactive user, forbidden, already associated
            return refuse(request, type(error).__name__, str(error), idp=idp_name)

    def _idp_name(self) -> str:
        relay = self.strategy.request_data().get("RelayState")
        name = None
        if relay:
            try:
                name = self.parse_relay_state(relay).get("idp")
            except SocialAuthBaseException as error:
                raise SamlRefused("bad_relay_state", "RelayState is not valid", status=400) from error
        if name is None:
            return settings.SAML_IDP_NAME
        if name != settings.SAML_IDP_NAME:
            raise SamlRefused("unknown_idp", f"unknown identity provider {str(name)[:80]!r}", status=400)
        return name

    def _complete(self, idp_name, *args, **kwargs):
        post = self.strategy.request_post()
        saml_response = post.get("SAMLResponse")
        if not saml_response or not isinstance(saml_response, str):
            raise SamlRefused("missing_response", "no SAMLResponse was posted", status=400)
        idp = self.get_idp(idp_name)
        config = self.generate_saml_config(idp)
        request_key = self._authn_request_id_session_key(idp.name)
        request_id = self.strategy.session_get(request_key)

        try:
            response = OneLogin_Saml2_Response(OneLogin_Saml2_Settings(config), saml_response)
            # InResponseTo is checked below, against every copy of it, so a stripped one cannot pass unnoticed.
            response.is_valid(self._saml_request_data(), request_id=None, raise_exceptions=True)
        except OneLogin_Saml2_ValidationError as error:
            raise SamlRefused(_VALIDATION_CODES.get(error.code, "invalid_response"), str(error)) from error
        except (OneLogin_Saml2_Error, XMLSyntaxError, XMLSecError, ValueError, TypeError) as error:
            raise SamlRefused("malformed_response", str(error) or type(error).__name__, status=400) from error

        assertion_id = response.get_assertion_id()
        if not assertion_id:
            raise SamlRefused("missing_id", "the assertion carries no ID")
        not_on_or_after = response.get_assertion_not_on_or_after()  # of the bearer confirmation python3-saml accepted
        if not not_on_or_after:
            # The Web SSO profile requires it; without it an assertion would stay usable, and replayable, for ever.
            raise SamlRefused("no_expiry", "the assertion's SubjectConfirmationData has no NotOnOrAfter")
        key = REPLAY_KEY.format(assertion_id)
        if self._replay_cache(cache.get, key) is not None:
            raise SamlRefused("replayed", f"assertion {assertion_id} was already used")

        self._check_in_response_to(response, request_id, kwargs)

        timeout = max(1, int(not_on_or_after - time.time()) + REPLAY_MARGIN_SECONDS)
        # add is atomic (SET NX): of two concurrent posts of one assertion, one loses here.
        if not self._replay_cache(cache.add, key, response.get_id() or "-", timeout=timeout):
            raise SamlRefused("replayed", f"assertion {assertion_id} was already used")
        if request_id:
            self.strategy.session_pop(request_key)

        attributes = response.get_attributes()
        attributes["name_id"] = response.get_nameid()
        # An IdP leaves out an attribute with no values: no groups attribute means no groups, so the groups it granted
        # before are taken away (fail closed) rather than kept for ever.
        attributes.setdefault(settings.SAML_GROUPS_ATTRIBUTE, [])
        self._check_entitlements(idp, attributes)
        next_url = self._relay_next()
        if next_url:
            self.strategy.session_set(kwargs.get("redirect_name", "next"), next_url)
        kwargs.update({
            "response": {"idp_name": idp.name, "attributes": attributes,
                         "session_index": response.get_session_index()},
            "backend": self,
        })
        user = self.strategy.authenticate(*args, **kwargs)
        if user is None:
            raise SamlRefused("no_user", "the sign-in pipeline produced no user")
        return user

    @staticmethod
    def _replay_cache(operation, *args, **kwargs):
        try:
            return operation(*args, **kwargs)
        except Exception as error:  # Redis down: fail closed, and say it is our side
            logger.exception("SAML replay cache unavailable")
            raise SamlRefused("replay_cache_unavailable", "sign-in is unavailable; try again shortly",
                              status=503) from error

    def _check_in_response_to(self, response, request_id, kwargs):
        values = _in_response_to_values(response)
        if values:
            if not request_id:
                raise SamlRefused("unsolicited_response",
                                  "the response answers a request this browser session did not send")
            if any(value != request_id for value in values):
                raise SamlRefused("in_response_to_mismatch",
                                  "InResponseTo does not match the request this browser session sent")
            return
        if not settings.SAML_ALLOW_IDP_INITIATED:
            raise SamlRefused("idp_initiated_disabled", "IdP-initiated sign-in is not allowed here")
        user = kwargs.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            # An unsolicited response must not silently attach an identity to someone already signed in.
            raise SamlRefused("idp_initiated_while_signed_in", "already signed in; sign out first")

    def _relay_next(self):
        relay = self.strategy.request_data().get("RelayState")
        if not relay:
            return None
        try:
            value = self.parse_relay_state(relay).get("next")
        except SocialAuthBaseException:
            return None
        return value if isinstance(value, str) else None


def _in_response_to_values(response) -> set[str]:
    """InResponseTo on the Response and in every bearer SubjectConfirmationData of the (validated) assertion."""
    values = set()
    top = response.get_in_response_to()
    if top is not None:
        values.add(top)
    document = response.decrypted_document if response.encrypted else response.document
    for data in OneLogin_Saml2_XML.query(
        document,
        "/samlp:Response/saml:Assertion/saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData",
    ):
        method = data.getparent().get("Method")
        if method and method != OneLogin_Saml2_Constants.CM_BEARER:
            continue
        value = data.get("InResponseTo")
        if value is not None:
            values.add(value)
    return values


def sp_metadata(backend) -> tuple[str, list[str]]:
    """This service provider's metadata XML and any errors python3-saml finds in it."""
    metadata, errors = backend.generate_metadata_xml()
    if isinstance(metadata, bytes):
        metadata = metadata.decode()
    return metadata, errors
