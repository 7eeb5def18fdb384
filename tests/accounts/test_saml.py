"""SAML 2.0 sign-in end to end: a real simplesamlphp IdP (php -S), our site as Django's live server, and a
requests.Session as the browser. Every negative case starts from a genuine response the IdP issued, mutated (and
checked to have changed) before it is posted; where the point is a check other than the signature, the mutated
assertion is re-signed with the IdP's own key, so only that check can refuse it."""

import base64
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import lxml.html
import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from apps.compliance.models import AuditEvent
from tests.accounts.saml_idp import RSA_SHA1, SimpleSamlIdp, make_keypair

NS = {"samlp": C.NS_SAMLP, "saml": C.NS_SAML, "ds": C.NS_DS}
IDP_NAME = "corp"
ALICE = {"password": "alice-pass", "uid": "alice", "mail": "alice@example.org",
         "groups": ["HR-Staff", "Engineers"]}
GROUP_MAP = {"HR-Staff": "hr", "Engineers": "power_user", "Finance-Team": "finance"}


# -- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sp_keys():
    return make_keypair("ragsite-test-sp")


def _start_idp(tmp_path_factory, live_server, sp_keys, name):
    idp = SimpleSamlIdp(tmp_path_factory.mktemp(name), sp_entity_id=f"{live_server.url}/auth/saml/metadata/",
                        acs_url=f"{live_server.url}/auth/complete/saml/", sp_cert_pem=sp_keys[1])
    return idp.start()


@pytest.fixture(scope="session")
def idp(tmp_path_factory, live_server, sp_keys):
    server = _start_idp(tmp_path_factory, live_server, sp_keys, "idp")
    yield server
    server.stop()


@pytest.fixture
def rogue_idp(tmp_path_factory, live_server, sp_keys):
    """Another simplesamlphp: its own entity id and key, trusting our SP, but not trusted by it."""
    server = _start_idp(tmp_path_factory, live_server, sp_keys, "rogue")
    server.set_users({"alice": ALICE})
    yield server
    server.stop()


@pytest.fixture
def saml(settings, idp, sp_keys, roles):
    from social_core.backends import utils as backend_utils

    settings.SAML_IDP_NAME = IDP_NAME
    settings.SAML_SP_ENTITY_ID = idp.sp_entity_id
    settings.SAML_SP_KEY, settings.SAML_SP_CERT = sp_keys
    settings.SAML_IDP_ENTITY_ID = idp.entity_id
    settings.SAML_IDP_SSO_URL = idp.sso_url
    settings.SAML_IDP_CERT = idp.cert_pem
    settings.SAML_ALLOW_IDP_INITIATED = False
    settings.SAML_WANT_RESPONSE_SIGNED = False
    settings.SSO_GROUP_MAP = GROUP_MAP
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "apps.accounts.sso.saml.SamlAuth"]
    backend_utils.BACKENDSCACHE.clear()  # social-auth caches the backend list it loaded
    idp.set_users({"alice": ALICE, "bob": {"password": "bob-pass", "uid": "bob", "mail": "bob@example.org",
                                           "groups": []}})
    yield idp
    backend_utils.BACKENDSCACHE.clear()


# -- the browser ---------------------------------------------------------------------------------------------------
def _form(response):
    doc = lxml.html.fromstring(response.content, base_url=response.url)
    assert doc.forms, f"no form in {response.url}: {response.text[:500]}"
    form = doc.forms[0]
    return form.action, dict(form.form_values())


def start_sign_in(browser, live_server):
    """Our sign-in page -> POST /auth/login/saml/ -> redirect to the IdP -> its login form."""
    page = browser.get(f"{live_server.url}/auth/saml/login/", timeout=30)
    assert page.status_code == 200, page.text
    action, fields = _form(page)
    return browser.post(action, data=fields, timeout=30)


def login_at_idp(browser, login_page, username, password):
    """Post the IdP's login form; return the fields of the auto-submitting SAMLResponse form and where it goes."""
    assert login_page.status_code == 200 and 'name="password"' in login_page.text, login_page.text[:1000]
    action, fields = _form(login_page)
    fields.update(username=username, password=password)
    answer = browser.post(action, data=fields, timeout=30)
    assert answer.status_code == 200, answer.text[:1000]
    acs, posted = _form(answer)
    assert "SAMLResponse" in posted, answer.text[:1000]
    return acs, posted


def genuine_response(browser, live_server, username="alice", password=ALICE["password"]):
    return login_at_idp(browser, start_sign_in(browser, live_server), username, password)


def post_to_acs(browser, acs, fields):
    """The IdP's form post, then social-auth's same-site re-post; returns the final answer (redirects not followed)."""
    first = browser.post(acs, data=fields, timeout=30, allow_redirects=False)
    if first.status_code != 200 or "psa_saml_browser_return" not in first.text:
        return first
    action, again = _form(first)
    return browser.post(action, data=again, timeout=30, allow_redirects=False)


def sign_in(browser, live_server, username="alice", password=ALICE["password"]):
    acs, fields = genuine_response(browser, live_server, username, password)
    return post_to_acs(browser, acs, fields)


# -- XML helpers ---------------------------------------------------------------------------------------------------
def decode(fields) -> etree._Element:
    return etree.fromstring(base64.b64decode(fields["SAMLResponse"]))


def encode(fields, root) -> dict:
    return {**fields, "SAMLResponse": base64.b64encode(etree.tostring(root)).decode()}


def mutated(fields, mutate, *, resign_with=None, algorithm=C.RSA_SHA256, digest=C.SHA256) -> dict:
    """Apply ``mutate(root)`` to the genuine response; assert the XML changed; optionally strip the signatures and
    sign the assertion and the response again with ``resign_with`` = (key, cert)."""
    original = decode(fields)
    root = copy.deepcopy(original)
    mutate(root)
    assert etree.tostring(root, method="c14n") != etree.tostring(original, method="c14n"), "mutation changed nothing"
    if resign_with is not None:
        key, cert = resign_with
        for signature in root.findall(".//ds:Signature", NS):
            signature.getparent().remove(signature)
        assertion = root.find("saml:Assertion", NS)
        signed = etree.fromstring(OneLogin_Saml2_Utils.add_sign(etree.tostring(assertion), key, cert,
                                                                sign_algorithm=algorithm, digest_algorithm=digest))
        root.replace(assertion, signed)
        root = etree.fromstring(OneLogin_Saml2_Utils.add_sign(etree.tostring(root), key, cert,
                                                              sign_algorithm=algorithm, digest_algorithm=digest))
    return encode(fields, root)


def set_attr(xpath, name, value):
    def mutate(root):
        nodes = root.xpath(xpath, namespaces=NS)
        assert nodes, xpath
        for node in nodes:
            node.set(name, value)
    return mutate


# -- assertions ----------------------------------------------------------------------------------------------------
def signed_in_user_ids():
    ids = set()
    for session in Session.objects.all():
        user_id = session.get_decoded().get("_auth_user_id")
        if user_id:
            ids.add(user_id)
    return ids


def assert_refused(answer, reason, *, status=403):
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:2000])
    assert answer.status_code == status, (answer.status_code, answer.text[:2000])
    assert "Sign-in refused" in answer.text and reason in answer.text, answer.text[:2000]
    event = AuditEvent.objects.filter(action="auth.sso_refused").order_by("-seq").first()
    assert event is not None, "no auth.sso_refused audit event"
    assert event.data["reason"] == reason, event.data
    assert event.data["provider"] == "saml"
    assert not signed_in_user_ids(), "a refused response left a signed-in session"
    assert not AuditEvent.objects.filter(action="auth.login").exists()


def groups_of(username):
    return set(get_user_model().objects.get(username=username).groups.values_list("name", flat=True))


# -- the positive flow ---------------------------------------------------------------------------------------------
def test_metadata_names_our_acs_and_certificate(saml, live_server, sp_keys):
    answer = requests.get(f"{live_server.url}/auth/saml/metadata/", timeout=30)
    assert answer.status_code == 200, answer.text
    root = etree.fromstring(answer.content)
    assert root.get("entityID") == saml.sp_entity_id
    acs = root.find(".//{urn:oasis:names:tc:SAML:2.0:metadata}AssertionConsumerService")
    assert acs.get("Location") == saml.acs_url
    assert sp_keys[1].splitlines()[1] in answer.text  # our signing certificate


def test_sign_in_creates_user_with_mapped_groups_then_follows_idp_changes(saml, live_server):
    browser = requests.Session()
    answer = sign_in(browser, live_server)
    assert answer.status_code == 302, answer.text[:2000]
    user = get_user_model().objects.get(username="alice")
    assert user.email == "alice@example.org"
    assert groups_of("alice") == {"hr", "power_user"}
    assert signed_in_user_ids() == {str(user.pk)}
    login = AuditEvent.objects.get(action="auth.login")
    assert login.actor_id == user.pk and "SamlAuth" in login.data["backend"]
    granted = AuditEvent.objects.get(action="auth.sso_groups")
    assert granted.data == {"provider": "saml", "added": ["hr", "power_user"], "removed": []}
    # the session really is signed in: the API answers through it
    assert browser.get(f"{live_server.url}/api/v1/sources/", timeout=30).status_code == 200

    # The IdP stops asserting HR-Staff and starts asserting Finance-Team; a hand-given group stays.
    from django.contrib.auth.models import Group
    user.groups.add(Group.objects.get(name="readonly"))
    saml.set_users({"alice": {**ALICE, "groups": ["Engineers", "Finance-Team"]}})
    answer = sign_in(requests.Session(), live_server)
    assert answer.status_code == 302, answer.text[:2000]
    assert groups_of("alice") == {"power_user", "finance", "readonly"}
    change = AuditEvent.objects.filter(action="auth.sso_groups").order_by("-seq").first()
    assert change.data == {"provider": "saml", "added": ["finance"], "removed": ["hr"]}
    assert get_user_model().objects.filter(username="alice").count() == 1


@pytest.mark.parametrize("groups", [[], None], ids=["empty groups attribute", "no groups attribute"])
def test_a_user_the_idp_gives_no_groups_loses_the_ones_it_gave(saml, live_server, groups):
    assert sign_in(requests.Session(), live_server).status_code == 302
    assert groups_of("alice") == {"hr", "power_user"}
    user = {key: value for key, value in ALICE.items() if key != "groups"}
    if groups is not None:
        user["groups"] = groups
    saml.set_users({"alice": user})
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)
    attribute = decode(fields).find(".//saml:Attribute[@Name='groups']", NS)
    if groups is None:
        assert attribute is None
    else:
        assert attribute is not None and not attribute.findall("saml:AttributeValue", NS)
    answer = post_to_acs(browser, acs, fields)
    assert answer.status_code == 302, answer.text[:2000]
    assert groups_of("alice") == set()


def test_starting_without_an_idp_name_is_400(saml, live_server):
    browser = requests.Session()
    page = browser.get(f"{live_server.url}/auth/saml/login/", timeout=30)
    action, fields = _form(page)
    fields.pop("idp")
    assert_refused(browser.post(action, data=fields, timeout=30), "bad_request", status=400)


def test_sign_in_page_without_configuration_is_404(settings, live_server, transactional_db):
    settings.SAML_IDP_SSO_URL = ""
    answer = requests.get(f"{live_server.url}/auth/saml/login/", timeout=30)
    assert answer.status_code == 404 and "not configured" in answer.text


# -- refused responses ---------------------------------------------------------------------------------------------
def test_unsigned_response_is_refused(saml, live_server):
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)

    def strip(root):
        for signature in root.findall(".//ds:Signature", NS):
            signature.getparent().remove(signature)
    assert_refused(post_to_acs(browser, acs, mutated(fields, strip)), "no_signed_assertion")


def test_response_signed_only_on_the_message_is_refused(saml, live_server):
    """The IdP key signs the response but not the assertion: assertions must carry their own signature."""
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)

    def strip_and_sign_response(root):
        for signature in root.findall(".//ds:Signature", NS):
            signature.getparent().remove(signature)
    body = mutated(fields, strip_and_sign_response)
    root = etree.fromstring(OneLogin_Saml2_Utils.add_sign(base64.b64decode(body["SAMLResponse"]), saml.key_pem,
                                                          saml.cert_pem))
    assert_refused(post_to_acs(browser, acs, encode(fields, root)), "no_signed_assertion")


def test_signature_wrapping_is_refused(saml, live_server):
    """XSW: the genuine signed assertion is hidden inside the forged one's signature, whose NameID is mallory."""
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)

    def wrap(root):
        genuine = root.find("saml:Assertion", NS)
        forged = copy.deepcopy(genuine)
        forged.set("ID", "_evil" + genuine.get("ID"))
        forged.find("saml:Subject/saml:NameID", NS).text = "mallory"
        for value in forged.xpath(".//saml:Attribute[@Name='uid']/saml:AttributeValue", namespaces=NS):
            value.text = "mallory"
        signature = forged.find("ds:Signature", NS)
        for child in list(signature):
            if child.tag.endswith("Object"):
                signature.remove(child)
        obj = etree.SubElement(signature, f"{{{C.NS_DS}}}Object")
        obj.append(genuine)  # moves the genuine assertion inside the forged signature
        root.append(forged)
    assert_refused(post_to_acs(browser, acs, mutated(fields, wrap)), "wrong_number_of_assertions")
    assert not get_user_model().objects.filter(username="mallory").exists()


def test_signature_wrapping_with_two_assertions_side_by_side_is_refused(saml, live_server):
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)

    def wrap(root):
        genuine = root.find("saml:Assertion", NS)
        forged = copy.deepcopy(genuine)
        forged.set("ID", "_evil" + genuine.get("ID"))
        forged.remove(forged.find("ds:Signature", NS))
        forged.find("saml:Subject/saml:NameID", NS).text = "mallory"
        genuine.addprevious(forged)
    assert_refused(post_to_acs(browser, acs, mutated(fields, wrap)), "wrong_number_of_assertions")


def test_tampered_name_id_is_refused(saml, live_server):
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)

    def rename(root):
        root.find("saml:Assertion/saml:Subject/saml:NameID", NS).text = "bob"
    assert_refused(post_to_acs(browser, acs, mutated(fields, rename)), "invalid_signature")


def test_tampered_attributes_are_refused(saml, live_server):
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)

    def add_group(root):
        attribute = root.find(".//saml:Attribute[@Name='groups']", NS)
        extra = copy.deepcopy(attribute[0])
        extra.text = "Finance-Team"
        attribute.append(extra)
    assert_refused(post_to_acs(browser, acs, mutated(fields, add_group)), "invalid_signature")
    assert not get_user_model().objects.filter(groups__name="finance").exists()


@pytest.mark.parametrize(("case", "xpath", "attribute", "value", "reason"), [
    ("wrong audience", "//saml:Audience", None, "http://other-sp.example.org/metadata/", "wrong_audience"),
    ("wrong destination", "/samlp:Response", "Destination", "http://other-sp.example.org/acs/", "wrong_destination"),
    ("expired", "//saml:Conditions", "NotOnOrAfter", "2020-01-01T00:00:00Z", "assertion_expired"),
    ("not yet valid", "//saml:Conditions", "NotBefore", "2099-01-01T00:00:00Z", "assertion_too_early"),
    ("expired confirmation", "//saml:SubjectConfirmationData", "NotOnOrAfter", "2020-01-01T00:00:00Z",
     "wrong_subjectconfirmation"),
])
def test_semantic_checks_refuse_responses_signed_by_the_genuine_idp(saml, live_server, case, xpath, attribute,
                                                                     value, reason):
    """Re-signed with the IdP's own key, so the signature is valid and only the named check can refuse it."""
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)

    def mutate(root):
        nodes = root.xpath(xpath, namespaces=NS)
        assert nodes, xpath
        for node in nodes:
            if attribute is None:
                node.text = value
            else:
                node.set(attribute, value)
    body = mutated(fields, mutate, resign_with=(saml.key_pem, saml.cert_pem))
    assert_refused(post_to_acs(browser, acs, body), reason)


def test_assertion_without_expiry_is_refused(saml, live_server):
    """No NotOnOrAfter on the bearer confirmation (re-signed by the IdP key): it would be replayable for ever."""
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)

    def strip(root):
        for data in root.xpath("//saml:SubjectConfirmationData", namespaces=NS):
            del data.attrib["NotOnOrAfter"]
    body = mutated(fields, strip, resign_with=(saml.key_pem, saml.cert_pem))
    assert_refused(post_to_acs(browser, acs, body), "no_expiry")


def test_replay_cache_down_fails_closed(saml, live_server, settings):
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    answer = post_to_acs(browser, acs, fields)
    assert answer.status_code == 503 and "replay_cache_unavailable" in answer.text, answer.text[:1000]
    assert AuditEvent.objects.get(action="auth.sso_refused").data["reason"] == "replay_cache_unavailable"
    assert not signed_in_user_ids()


def test_resigned_response_without_mutation_is_accepted(saml, live_server):
    """The control for the re-signing above: the same re-signing of an unchanged response signs in."""
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)
    body = mutated(fields, set_attr("/samlp:Response", "Consent", C.NS_SAML + "consent:unspecified"),
                   resign_with=(saml.key_pem, saml.cert_pem))
    answer = post_to_acs(browser, acs, body)
    assert answer.status_code == 302, answer.text[:2000]
    assert len(signed_in_user_ids()) == 1


def test_replayed_response_is_refused(saml, live_server):
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)
    assert post_to_acs(browser, acs, fields).status_code == 302
    Session.objects.all().delete()
    # the attacker's browser, and then the victim's own again
    attacker = requests.Session()
    start_sign_in(attacker, live_server)  # even with a request of its own pending
    answer = post_to_acs(attacker, acs, fields)
    assert 400 <= answer.status_code < 500 and "replayed" in answer.text
    event = AuditEvent.objects.filter(action="auth.sso_refused").order_by("-seq").first()
    assert event.data["reason"] == "replayed"
    assert not signed_in_user_ids()
    assert "replayed" in post_to_acs(browser, acs, fields).text


def test_concurrent_posts_of_one_response_sign_in_once(saml, live_server):
    """The same response posted twice at once from the browser that asked for it: both pass every other check, the
    atomic cache add lets exactly one through."""
    from concurrent.futures import ThreadPoolExecutor

    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)
    first = browser.post(acs, data=fields, timeout=30, allow_redirects=False)
    action, again = _form(first)
    cookies = browser.cookies.get_dict()

    def post(_):
        return requests.post(action, data=again, cookies=cookies, timeout=30, allow_redirects=False)
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(post, range(2)))
    assert sorted(a.status_code for a in answers) == [302, 403], [a.text[:300] for a in answers]
    refused = next(a for a in answers if a.status_code == 403)
    assert "replayed" in refused.text
    assert AuditEvent.objects.filter(action="auth.login").count() == 1


def test_response_signature_required_when_configured(saml, live_server, settings):
    settings.SAML_WANT_RESPONSE_SIGNED = True
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)

    def strip_response_signature(root):
        root.remove(root.find("ds:Signature", NS))
    assert decode(fields).find("saml:Assertion/ds:Signature", NS) is not None
    assert_refused(post_to_acs(browser, acs, mutated(fields, strip_response_signature)), "no_signed_message")
    # the genuine response, signed on both levels, passes
    browser = requests.Session()
    assert sign_in(browser, live_server).status_code == 302


def test_replay_is_refused_even_for_idp_initiated_responses(saml, live_server, settings):
    """With IdP-initiated sign-in allowed there is no InResponseTo to tie a response to a browser: only the
    consumed-assertion cache stops a replay."""
    settings.SAML_ALLOW_IDP_INITIATED = True
    browser = requests.Session()
    login_page = browser.get(f"{saml.sso_url}?spentityid={saml.sp_entity_id}", timeout=30)
    acs, fields = login_at_idp(browser, login_page, "alice", "alice-pass")
    assert "InResponseTo" not in base64.b64decode(fields["SAMLResponse"]).decode()
    assert post_to_acs(requests.Session(), acs, fields).status_code == 302
    Session.objects.all().delete()
    assert_replayed = post_to_acs(requests.Session(), acs, fields)
    assert assert_replayed.status_code == 403 and "replayed" in assert_replayed.text
    assert AuditEvent.objects.filter(action="auth.sso_refused").order_by("-seq").first().data["reason"] == "replayed"
    assert not signed_in_user_ids()


def test_in_response_to_mismatch_is_refused(saml, live_server):
    """A genuine response to another browser's request, posted by a browser with its own request pending."""
    victim, attacker = requests.Session(), requests.Session()
    acs, fields = genuine_response(victim, live_server)
    start_sign_in(attacker, live_server)
    assert_refused(post_to_acs(attacker, acs, fields), "in_response_to_mismatch")


def test_response_to_no_request_is_refused(saml, live_server):
    victim = requests.Session()
    acs, fields = genuine_response(victim, live_server)
    assert_refused(post_to_acs(requests.Session(), acs, fields), "unsolicited_response")


def test_stripped_in_response_to_is_still_checked(saml, live_server):
    """Response/@InResponseTo removed (and the response re-signed by the IdP key): the copy inside the assertion's
    SubjectConfirmationData still ties it to the other browser's request."""
    victim, attacker = requests.Session(), requests.Session()
    acs, fields = genuine_response(victim, live_server)
    start_sign_in(attacker, live_server)

    def strip(root):
        del root.attrib["InResponseTo"]
    body = mutated(fields, strip, resign_with=(saml.key_pem, saml.cert_pem))
    assert_refused(post_to_acs(attacker, acs, body), "in_response_to_mismatch")


def test_sha1_signed_response_is_refused(saml, live_server):
    """A genuine response the IdP signed with RSA-SHA1."""
    browser = requests.Session()
    with saml.signature_algorithm(RSA_SHA1):
        acs, fields = genuine_response(browser, live_server)
    assert C.RSA_SHA1 in base64.b64decode(fields["SAMLResponse"]).decode()
    assert_refused(post_to_acs(browser, acs, fields), "deprecated_signature_method")


def test_sha1_digest_is_refused(saml, live_server):
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)
    body = mutated(fields, set_attr("/samlp:Response", "Consent", C.NS_SAML + "consent:unspecified"),
                   resign_with=(saml.key_pem, saml.cert_pem), digest=C.SHA1)
    assert_refused(post_to_acs(browser, acs, body), "deprecated_digest_method")


def test_idp_initiated_sign_in_is_refused_by_default(saml, live_server):
    browser = requests.Session()
    login_page = browser.get(f"{saml.sso_url}?spentityid={saml.sp_entity_id}", timeout=30)
    acs, fields = login_at_idp(browser, login_page, "alice", "alice-pass")
    assert "InResponseTo" not in base64.b64decode(fields["SAMLResponse"]).decode()
    assert_refused(post_to_acs(browser, acs, fields), "idp_initiated_disabled")


def test_idp_initiated_sign_in_when_allowed(saml, live_server, settings):
    settings.SAML_ALLOW_IDP_INITIATED = True
    browser = requests.Session()
    login_page = browser.get(f"{saml.sso_url}?spentityid={saml.sp_entity_id}", timeout=30)
    answer = post_to_acs(browser, *login_at_idp(browser, login_page, "alice", "alice-pass"))
    assert answer.status_code == 302, answer.text[:2000]
    assert groups_of("alice") == {"hr", "power_user"}


def test_response_from_unknown_idp_is_refused(saml, rogue_idp, live_server):
    """A genuine response from another simplesamlphp (its own entity id and key), posted with our IdP's name."""
    browser = requests.Session()
    start_sign_in(browser, live_server)  # a request of ours is pending in this browser
    login_page = browser.get(f"{rogue_idp.sso_url}?spentityid={rogue_idp.sp_entity_id}", timeout=30)
    acs, fields = login_at_idp(browser, login_page, "alice", "alice-pass")
    assert rogue_idp.entity_id in base64.b64decode(fields["SAMLResponse"]).decode()
    fields["RelayState"] = f'{{"idp": "{IDP_NAME}"}}'
    assert_refused(post_to_acs(browser, acs, fields), "wrong_issuer")


def test_response_signed_by_unknown_key_with_our_idp_entity_id_is_refused(saml, live_server):
    """Our IdP's entity id, but signed with a key that is not its certificate's."""
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)
    body = mutated(fields, set_attr("/samlp:Response", "Consent", C.NS_SAML + "consent:unspecified"),
                   resign_with=make_keypair("impostor"))
    assert_refused(post_to_acs(browser, acs, body), "invalid_signature")


def test_unknown_idp_name_and_garbage_are_4xx(saml, live_server):
    browser = requests.Session()
    acs, fields = genuine_response(browser, live_server)
    assert_refused(post_to_acs(browser, acs, {**fields, "RelayState": '{"idp": "elsewhere"}'}), "unknown_idp",
                   status=400)
    assert_refused(post_to_acs(browser, acs, {**fields, "SAMLResponse": "bm90IHhtbA=="}), "malformed_response",
                   status=400)
    assert_refused(post_to_acs(browser, acs, {**fields, "SAMLResponse": "%%%"}), "malformed_response", status=400)


# -- configuration from the environment ----------------------------------------------------------------------------
def _settings_in_subprocess(env, tmp_path):
    full = {k: v for k, v in os.environ.items() if not k.startswith("SAML_")}
    full.update(env, DATA_DIR=str(tmp_path))
    code = ("from django.conf import settings as s; import json; print(json.dumps({'backends': "
            "s.AUTHENTICATION_BACKENDS, 'idp_cert': s.SAML_IDP_CERT, 'sp_key': s.SAML_SP_KEY, "
            "'idp_initiated': s.SAML_ALLOW_IDP_INITIATED}))")
    return subprocess.run([sys.executable, "manage.py", "shell", "-c", code], env=full, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])


def test_environment_switches_saml_on_with_files(tmp_path):
    key, cert = make_keypair("env-sp")
    (tmp_path / "sp.key").write_text(key)
    (tmp_path / "idp.crt").write_text(cert)
    off = _settings_in_subprocess({}, tmp_path)
    assert off.returncode == 0, off.stderr
    assert "apps.accounts.sso.saml.SamlAuth" not in json.loads(off.stdout.strip().splitlines()[-1])["backends"]
    on = _settings_in_subprocess({"SAML_IDP_SSO_URL": "https://idp.example.org/sso",
                                  "SAML_IDP_ENTITY_ID": "https://idp.example.org/metadata",
                                  "SAML_IDP_CERT_FILE": str(tmp_path / "idp.crt"),
                                  "SAML_SP_KEY_FILE": str(tmp_path / "sp.key")}, tmp_path)
    assert on.returncode == 0, on.stderr
    loaded = json.loads(on.stdout.strip().splitlines()[-1])
    assert "apps.accounts.sso.saml.SamlAuth" in loaded["backends"]
    assert loaded["idp_cert"] == cert.strip() and loaded["sp_key"] == key.strip()
    assert loaded["idp_initiated"] is False


def test_half_configured_saml_fails_at_start_up(tmp_path):
    result = _settings_in_subprocess({"SAML_IDP_SSO_URL": "https://idp.example.org/sso"}, tmp_path)
    assert result.returncode != 0
    assert "SAML_IDP_ENTITY_ID and SAML_IDP_CERT" in result.stderr
