// A real OpenID Provider for ragsite's OIDC sign-in tests: panva/oidc-provider (certified by the OpenID
// Foundation) with one confidential client and a plain login form a test can drive with `requests`.
//
// Configuration (environment):
//   IDP_PORT           port to listen on (127.0.0.1)
//   IDP_CLIENT_ID      the one client's id
//   IDP_CLIENT_SECRET  its secret (client_secret_basic or client_secret_post)
//   IDP_REDIRECT_URI   its only redirect URI, e.g. http://localhost:8000/auth/complete/oidc/
//   IDP_ACCOUNTS_FILE  JSON {"<login>": {"password", "sub", "email", "preferred_username", "name", "groups"}},
//                      read again at every sign-in, so a test changes a user's groups by rewriting the file.
//
// Interactions: GET /interaction/<uid> shows the login form (fields `login`, `password`; POST .../login) and a
// cancel button (POST .../abort: the provider answers the client with error=access_denied). Consent is granted
// automatically: the client is first-party.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const port = Number(process.env.IDP_PORT);
const clientId = process.env.IDP_CLIENT_ID;
const clientSecret = process.env.IDP_CLIENT_SECRET;
const redirectUri = process.env.IDP_REDIRECT_URI;
const accountsFile = process.env.IDP_ACCOUNTS_FILE;
for (const [name, value] of Object.entries({ IDP_PORT: port, IDP_CLIENT_ID: clientId,
  IDP_CLIENT_SECRET: clientSecret, IDP_REDIRECT_URI: redirectUri, IDP_ACCOUNTS_FILE: accountsFile })) {
  if (!value) {
    console.error(`${name} is required`);
    process.exit(2);
  }
}

const accounts = () => JSON.parse(fs.readFileSync(accountsFile, 'utf8'));

function accountBySub(sub) {
  return Object.values(accounts()).find((account) => account.sub === sub);
}

// A fresh RS256 signing key per run (the client fetches it from jwks_uri).
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' };

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name', 'given_name', 'family_name'],
    groups: ['groups'],
  },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  pkce: { required: () => false },
  async findAccount(ctx, sub) {
    const account = accountBySub(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        const current = accountBySub(sub) || account;
        return {
          sub,
          email: current.email,
          email_verified: true,
          preferred_username: current.preferred_username,
          name: current.name,
          groups: current.groups || [],
        };
      },
    };
  },
});

for (const event of ['server_error', 'grant.error', 'authorization.error', 'userinfo.error']) {
  provider.on(event, (ctx, error) => console.error(`${event}: ${error?.name} ${error?.message} ${error?.error_description || ''}`));
}

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(res, uid, message = '', status = 200) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(`<!doctype html><title>Test IdP sign-in</title><h1>Sign in</h1><p class="error">${escape(message)}</p>
<form method="post" action="/interaction/${uid}/login">
<input name="login" autofocus><input name="password" type="password"><button>Sign in</button></form>
<form method="post" action="/interaction/${uid}/abort"><button>Cancel</button></form>`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    res.writeHead(400).end('interaction mismatch');
    return;
  }
  const { prompt, params, session } = details;
  if (action === 'abort' && req.method === 'POST') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (action === 'login' && req.method === 'POST') {
    const form = await readForm(req);
    const account = accounts()[form.get('login') || ''];
    if (!account || account.password !== form.get('password')) {
      loginPage(res, uid, 'Invalid user name or password.', 401);
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: account.sub } },
      { mergeWithLastSubmission: false });
    return;
  }
  if (!action && req.method === 'GET') {
    if (prompt.name === 'login') {
      loginPage(res, uid);
      return;
    }
    if (prompt.name === 'consent') {
      // First-party client: grant what it asked for without a consent screen.
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
      if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
      const grantId = await grant.save();
      await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      return;
    }
  }
  res.writeHead(405).end('unsupported interaction step');
}

const providerCallback = provider.callback();
const server = http.createServer((req, res) => {
  const match = req.url.match(/^\/interaction\/([^/?]+)(?:\/(login|abort))?(?:\?.*)?$/);
  if (!match) {
    providerCallback(req, res);
    return;
  }
  interaction(req, res, match[1], match[2]).catch((error) => {
    console.error(`interaction error: ${error?.name} ${error?.message}`);
    if (!res.headersSent) res.writeHead(400, { 'Content-Type': 'text/plain' });
    res.end(`interaction failed: ${error?.message}`);
  });
});

server.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
