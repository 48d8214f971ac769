// A real OpenID Connect provider for the NVR server's tests: panva's certified `oidc-provider` (the version pinned in
// package-lock.json, installed by scripts/install-system-deps with `npm ci`), with
//   - the clients, signing key and audience given in a JSON config file (argv[2], written by tests/support/oidc/harness.py),
//   - a login form of its own (user name + password, checked against an account store held in memory) and automatic
//     consent (a first-party client, as an organisation's identity platform treats its own applications),
//   - JWT (RFC 9068, typ at+jwt) access tokens for the API's resource indicator (and for a second API's, which this
//     server must refuse), so scripts can call the API,
//   - an admin route, on loopback and with a secret header, that adds, changes, disables and removes accounts while
//     the provider runs, sets its clock ahead, and counts the tokens it issued.
// It listens on 127.0.0.1 only. Nothing here is used outside the tests.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
// The provider's clock can be set ahead through the admin route (a provider whose clock runs fast).
const realNow = Date.now;
let skewMs = 0;
Date.now = () => realNow() + skewMs;
const accounts = new Map(Object.entries(config.accounts || {}));

function signingKey(kid) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function sameSecret(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: { keys: [signingKey(config.kid)] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access', 'profile', 'nvr'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    nvr: ['staff_number', 'unit', 'groups'],
  },
  async findAccount(_ctx, id) {
    const account = accounts.get(id);
    if (!account || account.disabled) return undefined; // removed or disabled: every endpoint refuses its tokens
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: account.username,
          name: account.name,
          staff_number: account.staff_number,
          unit: account.unit,
          groups: account.groups || [],
        };
      },
    };
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, resourceIndicator) {
        if (!config.audiences.includes(resourceIndicator)) throw new errors.InvalidTarget();
        return {
          scope: 'nvr',
          audience: resourceIndicator,
          accessTokenTTL: config.access_token_ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  pkce: { required: () => true },
  clockTolerance: 0, // expiry exactly as configured: the tests let tokens run out
  // A refresh token to every client allowed the grant, as most identity platforms do (the server keeps it to check
  // the account at the provider), and bound to the grant, not to the browser session at the provider.
  issueRefreshToken: (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: () => false,
  ttl: {
    // Tokens from a sign-in live access_token_ttl seconds (short in the renewal test); renewed ones 10 minutes, so a
    // test's renewal cannot run out again while a loaded machine is still answering the requests that waited for it.
    AccessToken: (ctx) => (ctx?.oidc?.params?.grant_type === 'refresh_token' ? 600 : config.access_token_ttl),
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
    Interaction: 600,
    Session: 24 * 3600,
    Grant: 14 * 24 * 3600,
    AuthorizationCode: 60,
  },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>error</title><h1 id="error">${escapeHtml(out.error)}</h1>`
      + `<p>${escapeHtml(out.error_description || '')}</p>`;
  },
});

const grantsIssued = {}; // grant_type -> token endpoint successes, for the tests' exact counts
provider.on('grant.success', (ctx) => {
  const type = ctx.oidc.params.grant_type;
  grantsIssued[type] = (grantsIssued[type] || 0) + 1;
});

function send(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(type === 'application/json' ? JSON.stringify(body) : body);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > 65536) {
        reject(new Error('body too large'));
        req.destroy();
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function loginPage(uid, error) {
  return `<!doctype html><html><head><title>Sign in</title></head><body>
<h1>Organisation sign-in</h1>
${error ? `<p id="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>User name <input id="username" name="username" autocomplete="username" autofocus></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password"></label>
<button id="sign-in" type="submit">Sign in</button>
</form></body></html>`;
}

async function consent(req, res, details) {
  // First-party client: grant what it asked for without a consent screen.
  const { prompt: { details: missing }, params, session: { accountId } } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  const result = { consent: details.grantId ? {} : { grantId } };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

async function interaction(req, res, path) {
  const details = await provider.interactionDetails(req, res);
  if (path.endsWith('/login') && req.method === 'POST') {
    const form = new URLSearchParams(await readBody(req));
    const username = form.get('username') || '';
    const password = form.get('password') || '';
    const found = [...accounts.entries()].find(([, a]) => a.username === username);
    if (!found || !sameSecret(found[1].password, password)) {
      send(res, 200, loginPage(details.uid, 'Wrong user name or password.'), 'text/html; charset=utf-8');
      return;
    }
    if (found[1].disabled) {
      send(res, 200, loginPage(details.uid, 'This account is disabled.'), 'text/html; charset=utf-8');
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: found[0] } }, { mergeWithLastSubmission: false });
    return;
  }
  if (req.method !== 'GET') {
    send(res, 405, { error: 'method_not_allowed' });
    return;
  }
  if (details.prompt.name === 'login') {
    send(res, 200, loginPage(details.uid), 'text/html; charset=utf-8');
  } else if (details.prompt.name === 'consent') {
    await consent(req, res, details);
  } else {
    send(res, 400, { error: `unknown prompt ${details.prompt.name}` });
  }
}

const ACCOUNT_FIELDS = ['username', 'password', 'name', 'staff_number', 'unit', 'groups', 'disabled'];

async function admin(req, res, path) {
  const loopback = ['127.0.0.1', '::1', '::ffff:127.0.0.1'].includes(req.socket.remoteAddress);
  if (!loopback || !sameSecret(req.headers['x-admin-secret'] || '', config.admin_secret)) {
    send(res, 403, { error: 'forbidden' });
    return;
  }
  if (path === '/admin/clock' && req.method === 'PUT') {
    skewMs = Math.round(Number(JSON.parse(await readBody(req)).skew_seconds) * 1000) || 0;
    send(res, 200, { skew_seconds: skewMs / 1000 });
    return;
  }
  if (path === '/admin/grants' && req.method === 'GET') {
    send(res, 200, grantsIssued);
    return;
  }
  if (path === '/admin/accounts' && req.method === 'GET') {
    send(res, 200, Object.fromEntries(accounts));
    return;
  }
  const match = /^\/admin\/accounts\/([A-Za-z0-9._-]{1,64})$/.exec(path);
  if (!match) {
    send(res, 404, { error: 'not_found' });
    return;
  }
  const sub = match[1];
  if (req.method === 'DELETE') {
    send(res, accounts.delete(sub) ? 200 : 404, { removed: sub });
    return;
  }
  if (req.method !== 'PUT' && req.method !== 'PATCH') {
    send(res, 405, { error: 'method_not_allowed' });
    return;
  }
  const body = JSON.parse((await readBody(req)) || '{}');
  const current = req.method === 'PATCH' ? accounts.get(sub) : {};
  if (!current) {
    send(res, 404, { error: 'not_found' });
    return;
  }
  const next = { ...current };
  for (const key of ACCOUNT_FIELDS) if (key in body) next[key] = body[key];
  accounts.set(sub, next);
  send(res, 200, { [sub]: next });
}

const handler = provider.callback();
const server = http.createServer(async (req, res) => {
  const path = new URL(req.url, config.issuer).pathname;
  try {
    if (path.startsWith('/interaction/')) {
      await interaction(req, res, path);
    } else if (path.startsWith('/admin/')) {
      await admin(req, res, path);
    } else {
      handler(req, res);
    }
  } catch (err) {
    if (!res.headersSent) send(res, 400, { error: 'bad_request', error_description: String(err.message || err) });
    else res.end();
  }
});

server.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`oidc-provider ${config.issuer} listening\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
