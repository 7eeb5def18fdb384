"""Single sign-on: SAML 2.0 and OpenID Connect through social-auth, LDAP / Active Directory through
django-auth-ldap. Whatever the protocol, the identity provider's groups reach Django groups (and so roles and
access principals) through one function, :func:`apps.accounts.sso.groups.apply_idp_groups`."""
