// One interactive MCP client session against Ostiary with the official MCP TypeScript SDK v2
// (@modelcontextprotocol/client 2.4.0), pinned to MCP 2026-07-28, the way a native MCP client
// runs it:
//
//   1. connect (server/discover, 401), let the SDK's auth() discover Ostiary (RFC 9728 -> RFC
//      8414), identify the client by its Client ID Metadata Document URL or by dynamic
//      registration (RFC 7591), open the authorization URL in headless Chromium, sign in,
//      Allow, catch the redirect on a loopback callback (RFC 8252 §7.3) and hand the callback's
//      parameters to finishAuth() (RFC 9207 iss check, PKCE, RFC 8707 resource);
//   2. reconnect, list the tools and call the read tool;
//   3. call the write tool: 403 insufficient_scope, the transport's step-up re-authorizes for
//      the union of scopes, the browser consents again, finishAuth(), the call is retried;
//   4. wait until the access token has expired (the MCP server then answers 401 invalid_token)
//      and call a tool again: the SDK refreshes (refresh_token grant) without a browser.
//
// With --dpop the provider's dpop() returns one DpopSession (a fresh ES256 key, kept for the whole
// flow, as the SDK wants one per client registration): the SDK signs a DPoP proof into every token
// request and presents the DPoP-bound tokens with `Authorization: DPoP` and a fresh proof per
// request (RFC 9449). Before the token expires the script also sends the MCP server a few requests
// of its own with the SDK's token (`dpop_probes`: a good proof, then the token as a bearer token,
// without a proof, with another key's proof, and with a proof the SDK already used).
//
//   node v2_client_flow.mjs --server-url http://127.0.0.1:8001/mcp --mode dcr|cimd \
//        --callback-port 8123 [--client-metadata-url https://localhost:8443/client.json] \
//        [--username alice] [--dpop]  (password in the E2E_PASSWORD environment variable)
//
// Prints one JSON line (the summary) on stdout and exits 0; on any failure prints
// "v2_client_flow: FAILED: ..." on stderr and exits non-zero. Everything is bounded in time.

import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

import { Client, DpopSession, StreamableHTTPClientTransport, UnauthorizedError } from '@modelcontextprotocol/client';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];
const PROTOCOL_VERSION = '2026-07-28';
const OVERALL_TIMEOUT_MS = 100_000; // two consents and one access-token lifetime (30 s in the test)
const STEP_TIMEOUT_MS = 15_000;
const MAX_TOKEN_WAIT_MS = 70_000;
const CLIENT_NAME = 'Ostiary e2e (MCP TypeScript SDK v2)';

function fail(message) {
  process.stderr.write(`v2_client_flow: FAILED: ${message}\n`);
  process.exit(1);
}

let step = 'start';
const watchdog = setTimeout(() => {
  process.stderr.write(`v2_client_flow: FAILED: timed out after ${OVERALL_TIMEOUT_MS / 1000}s (step: ${step})\n`);
  process.exit(3);
}, OVERALL_TIMEOUT_MS);

function withTimeout(promise, what, ms = STEP_TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000}s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function decodeJwtPayload(jwt) {
  const parts = jwt.split('.');
  if (parts.length !== 3) throw new Error('the access token is not a JWT');
  return JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
}

// A DPoP proof as sent (RFC 9449 §4.2): its header and claims, for the summary.
function decodeProof(proof) {
  const parts = proof.split('.');
  const [header, claims] = parts.slice(0, 2).map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  return { header, claims, parts: parts.length };
}

// -- arguments ---------------------------------------------------------------------------------

const { values: args } = parseArgs({
  options: {
    'server-url': { type: 'string' },
    mode: { type: 'string' },
    'callback-port': { type: 'string' },
    'client-metadata-url': { type: 'string' },
    username: { type: 'string', default: 'alice' },
    dpop: { type: 'boolean', default: false },
  },
});
const serverUrl = args['server-url'];
const mode = args.mode;
const callbackPort = Number(args['callback-port']);
const password = process.env.E2E_PASSWORD;
if (!serverUrl) fail('--server-url is required');
if (mode !== 'dcr' && mode !== 'cimd') fail('--mode must be dcr or cimd');
if (!Number.isInteger(callbackPort) || callbackPort <= 0) fail('--callback-port is required');
if (mode === 'cimd' && !args['client-metadata-url']) fail('--client-metadata-url is required with --mode cimd');
if (!password) fail('E2E_PASSWORD is not set');
const callbackUrl = `http://127.0.0.1:${callbackPort}/callback`;

// -- what happened, for the summary ------------------------------------------------------------

const trace = []; // every HTTP exchange the SDK made: discovery, registration, token, MCP
const consents = []; // what each consent page showed
const authorizations = []; // every authorization URL the SDK sent the browser to
let lastMcpProof; // the last DPoP proof the SDK sent the MCP server, and its token (for a replay)

// The SDK's fetch for the MCP server and for auth() (the transport hands it to both).
async function tracingFetch(url, init) {
  const method = (init?.method ?? 'GET').toUpperCase();
  const entry = { method, url: String(url) };
  const headers = new Headers(init?.headers);
  const proof = headers.get('dpop'); // RFC 9449 §4.1: the DPoP header, at the AS and the server
  if (proof) entry.dpop = decodeProof(proof);
  if (entry.url === serverUrl) {
    // MCP 2026-07-28 (SEP-2243): the standard headers on every request POST.
    entry.mcp_method = headers.get('mcp-method');
    entry.mcp_protocol_version = headers.get('mcp-protocol-version');
    const authorization = headers.get('authorization') ?? '';
    entry.bearer = authorization.startsWith('Bearer ');
    entry.auth_scheme = authorization ? authorization.split(' ')[0] : null;
    if (authorization) {
      const token = authorization.slice(authorization.indexOf(' ') + 1);
      entry.token_jti = decodeJwtPayload(token).jti; // which access token it was
      if (proof) lastMcpProof = { proof, token };
    }
  } else if (method === 'POST' && init?.body instanceof URLSearchParams) {
    const form = init.body;
    entry.grant_type = form.get('grant_type');
    entry.form_keys = [...new Set(form.keys())].sort();
    entry.resource = form.get('resource');
    entry.scope = form.get('scope');
  } else if (method === 'POST' && typeof init?.body === 'string') {
    try {
      entry.json = JSON.parse(init.body);
    } catch {
      // not JSON: nothing to record
    }
  }
  const response = await withTimeout(fetch(url, init), `${method} ${url}`);
  entry.status = response.status;
  const challenge = response.headers.get('www-authenticate');
  if (challenge) entry.www_authenticate = challenge;
  const nonce = response.headers.get('dpop-nonce');
  if (nonce) entry.dpop_nonce = nonce;
  if (entry.grant_type) {
    // A token response (a copy: the SDK reads the original): the token type or the error.
    const body = await response
      .clone()
      .json()
      .catch(() => null);
    entry.token_type = body?.token_type ?? null;
    entry.error = body?.error ?? null;
  }
  trace.push(entry);
  return response;
}

// -- the loopback callback: one redirect per authorization -------------------------------------

function startCallbackServer() {
  const arrived = [];
  const waiting = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, callbackUrl);
    if (url.pathname === '/callback') {
      const params = Object.fromEntries(url.searchParams);
      const waiter = waiting.shift();
      if (waiter) waiter(params);
      else arrived.push(params);
    }
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end('<!doctype html><title>Done</title><p>You can close this window.');
  });
  const next = () => (arrived.length ? Promise.resolve(arrived.shift()) : new Promise((resolve) => waiting.push(resolve)));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(callbackPort, '127.0.0.1', () => resolve({ server, next }));
  });
}

// -- the OAuthClientProvider -------------------------------------------------------------------

class MemoryProvider {
  constructor({ clientMetadataUrl, onRedirect, dpopSession }) {
    if (clientMetadataUrl) this.clientMetadataUrl = clientMetadataUrl;
    // OAuthClientProvider.dpop(): the transports check for the method itself, so it exists only
    // in DPoP mode. The same session (key) for the whole flow: token requests and MCP requests.
    if (dpopSession) this.dpop = () => dpopSession;
    this._onRedirect = onRedirect;
    this._state = undefined;
    this.savedClientInformation = [];
    this.savedTokens = [];
  }

  get redirectUrl() {
    return callbackUrl;
  }

  get clientMetadata() {
    return {
      client_name: CLIENT_NAME,
      redirect_uris: [callbackUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      // application_type is left to the SDK (SEP-837: loopback redirect -> native).
    };
  }

  state() {
    this._state = randomBytes(16).toString('base64url');
    return this._state;
  }

  get expectedState() {
    return this._state;
  }

  clientInformation() {
    return this._clientInformation;
  }

  saveClientInformation(info) {
    this._clientInformation = info;
    this.savedClientInformation.push(info);
  }

  tokens() {
    return this._tokens;
  }

  saveTokens(tokens) {
    this._tokens = tokens;
    this.savedTokens.push(tokens);
  }

  redirectToAuthorization(url) {
    this._onRedirect(url);
  }

  saveCodeVerifier(verifier) {
    this._codeVerifier = verifier;
  }

  codeVerifier() {
    if (!this._codeVerifier) throw new Error('no PKCE code verifier saved');
    return this._codeVerifier;
  }

  saveDiscoveryState(state) {
    this._discovery = state;
  }

  discoveryState() {
    return this._discovery;
  }

  invalidateCredentials(scope) {
    // Ostiary should never make the SDK drop credentials in this flow: record it, the test fails.
    trace.push({ invalidated: scope });
    if (scope === 'all' || scope === 'client') this._clientInformation = undefined;
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this._codeVerifier = undefined;
    if (scope === 'all' || scope === 'discovery') this._discovery = undefined;
  }
}

// -- the user in the browser -------------------------------------------------------------------

async function signInAndAllow(browser, url) {
  const page = await browser.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  try {
    const requested = [];
    page.on('request', (request) => {
      if (request.isNavigationRequest() && request.frame() === page.mainFrame()) requested.push(request.url());
    });
    await page.goto(url);
    const signIn = page.getByRole('button', { name: 'Sign in' });
    let signedIn = false;
    if (await signIn.count()) {
      await page.getByLabel('Username').fill(args.username);
      await page.getByLabel('Password').fill(password);
      await signIn.click();
      signedIn = true;
    }
    // The consent page, or an error page (role=alert, e.g. a refused client): whichever comes first.
    const allow = page.getByRole('button', { name: 'Allow' });
    const shown = await allow
      .or(page.getByRole('alert'))
      .first()
      .waitFor()
      .then(() => allow.isVisible(), () => false);
    if (!shown) {
      const text = (await page.locator('body').innerText().catch(() => '')).slice(0, 800);
      throw new Error(`no consent page (at ${page.url()}): ${text}`);
    }
    const text = await page.locator('main').innerText().catch(() => page.locator('body').innerText());
    const scopes = await page
      .locator('[data-scope]')
      .evaluateAll((els) => els.map((e) => [e.dataset.scope, e.dataset.scopeStatus]));
    const clientHost = await page.locator('.client-host').allInnerTexts();
    const notices = await page.locator('p.notice').allInnerTexts();
    await allow.click();
    await page.waitForURL((u) => String(u).startsWith(callbackUrl));
    // The first URL the browser asked for is the SDK's authorization request.
    consents.push({ signed_in: signedIn, text, scopes, client_host: clientHost, notices, first_request: requested[0] ?? null });
  } finally {
    await page.close();
  }
}

// -- the flow ----------------------------------------------------------------------------------

function isUnauthorized(error) {
  return error instanceof UnauthorizedError || error?.name === 'UnauthorizedError';
}

function toolSummary(result) {
  return { is_error: Boolean(result.isError), content: result.content, structured: result.structuredContent ?? null };
}

function tokenSummary(tokens) {
  const claims = decodeJwtPayload(tokens.access_token);
  return {
    access_token: tokens.access_token,
    refresh_token: tokens.refresh_token ?? null,
    token_type: tokens.token_type,
    scope: tokens.scope ?? null,
    expires_in: tokens.expires_in ?? null,
    claims: {
      iss: claims.iss, aud: claims.aud, sub: claims.sub, client_id: claims.client_id, scope: claims.scope,
      exp: claims.exp, jti: claims.jti, cnf: claims.cnf ?? null,
    },
  };
}

// One request to the MCP server outside the SDK (tools/list), with these headers; what it answered.
async function probe(headers) {
  const response = await withTimeout(
    fetch(serverUrl, {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        Accept: 'application/json, text/event-stream',
        'MCP-Protocol-Version': PROTOCOL_VERSION,
        'Mcp-Method': 'tools/list',
        ...headers,
      },
      // MCP 2026-07-28: every request carries the protocol version and capabilities in _meta.
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: 1,
        method: 'tools/list',
        params: { _meta: { 'io.modelcontextprotocol/protocolVersion': PROTOCOL_VERSION, 'io.modelcontextprotocol/clientCapabilities': {} } },
      }),
    }),
    'a probe of the MCP server',
  );
  const text = await response.text();
  let error = null;
  try {
    error = JSON.parse(text).error ?? null;
  } catch {
    // not JSON
  }
  return { status: response.status, www_authenticate: response.headers.get('www-authenticate'), error };
}

// RFC 9449 §7.1 at the MCP server, with the SDK's (unexpired) DPoP-bound token: a fresh proof of
// the session's key is accepted; the token as a bearer token, without a proof, with a proof of
// another key, or with a proof the SDK already used (§11.1) is not.
async function dpopProbes(session, token) {
  const proofFor = (s, accessToken) => s.buildProof({ htm: 'POST', htu: serverUrl, accessToken });
  if (!lastMcpProof) throw new Error('the SDK sent the MCP server no DPoP proof');
  const replayed = lastMcpProof;
  const other = await DpopSession.create();
  return {
    good_proof: await probe({ Authorization: `DPoP ${token}`, DPoP: await proofFor(session, token) }),
    as_bearer: await probe({ Authorization: `Bearer ${token}` }),
    no_proof: await probe({ Authorization: `DPoP ${token}` }),
    other_key: await probe({ Authorization: `DPoP ${token}`, DPoP: await proofFor(other, token) }),
    other_key_thumbprint: other.thumbprint,
    replayed_proof: await probe({ Authorization: `DPoP ${replayed.token}`, DPoP: replayed.proof }),
    replayed_jti: decodeProof(replayed.proof).claims.jti,
  };
}

async function main() {
  step = 'start the callback listener';
  const callback = await startCallbackServer();
  step = 'launch chromium';
  const browser = await withTimeout(
    chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS }),
    'launching chromium',
  );
  const context = await browser.newContext(); // one profile: it keeps the Ostiary session
  let browserStep;
  step = 'create the DPoP session';
  const dpopSession = args.dpop ? await DpopSession.create() : undefined;
  const provider = new MemoryProvider({
    dpopSession,
    clientMetadataUrl: mode === 'cimd' ? args['client-metadata-url'] : undefined,
    onRedirect(url) {
      // The SDK calls this inside auth(); the user acts in the browser meanwhile.
      authorizations.push(url.href);
      browserStep = signInAndAllow(context, url.href);
      browserStep.catch(() => {}); // awaited below; keep an early failure from being unhandled
    },
  });
  const callbacks = [];

  // The browser part of one authorization, then finishAuth() on `transport` with the callback's
  // parameters: the SDK checks iss itself (RFC 9207 §2.4) before it redeems the code.
  async function authorizeInBrowser(transport, expectedAuthorizations) {
    if (authorizations.length !== expectedAuthorizations || !browserStep) {
      throw new Error(`expected authorization #${expectedAuthorizations}, the SDK asked for ${authorizations.length}`);
    }
    await withTimeout(browserStep, 'signing in and consenting', 2 * STEP_TIMEOUT_MS);
    browserStep = undefined;
    const params = await withTimeout(callback.next(), 'the redirect to the callback');
    callbacks.push({ iss: params.iss ?? null, has_code: Boolean(params.code), state_ok: params.state === provider.expectedState, error: params.error ?? null });
    if (params.error) throw new Error(`authorization failed: ${params.error} ${params.error_description ?? ''}`);
    if (params.state !== provider.expectedState) throw new Error(`state mismatch: ${params.state} != ${provider.expectedState}`);
    await withTimeout(transport.finishAuth(new URLSearchParams(params)), 'the token request');
  }

  const newTransport = () =>
    new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider, fetch: tracingFetch });
  const newClient = () =>
    new Client(
      { name: 'ostiary-e2e-ts-v2', version: '1.0.0' },
      { capabilities: {}, versionNegotiation: { mode: { pin: PROTOCOL_VERSION } } },
    );
  let client = newClient();
  try {
    step = 'connect (expecting 401 and an authorization redirect)';
    let transport = newTransport();
    try {
      await withTimeout(client.connect(transport), 'connecting');
      throw new Error('the MCP server let the client in without authorization');
    } catch (error) {
      if (!isUnauthorized(error)) throw error;
    }
    step = 'first authorization: sign in and consent';
    await authorizeInBrowser(transport, 1);
    const firstTokens = tokenSummary(provider.tokens());
    await transport.close();

    step = 'reconnect with the access token';
    client = newClient();
    transport = newTransport();
    await withTimeout(client.connect(transport), 'reconnecting');
    const era = client.getProtocolEra?.() ?? null;
    const protocolVersion = client.getNegotiatedProtocolVersion?.() ?? null;
    step = 'list tools';
    const tools = await withTimeout(client.listTools(), 'tools/list');
    step = 'call the read tool';
    const firstList = await withTimeout(client.callTool({ name: 'list_notes', arguments: {} }), 'tools/call list_notes');

    step = 'call the write tool (expecting 403 insufficient_scope and a step-up authorization)';
    let stepUpError = null;
    try {
      await withTimeout(client.callTool({ name: 'add_note', arguments: { text: 'buy milk' } }), 'tools/call add_note');
      throw new Error('add_note succeeded without the scope it needs');
    } catch (error) {
      if (!isUnauthorized(error)) throw error;
      stepUpError = error.name;
    }
    step = 'second authorization: consent to the new scope';
    await authorizeInBrowser(transport, 2);
    const stepUpTokens = tokenSummary(provider.tokens());
    step = 'call the write tool again';
    const added = await withTimeout(client.callTool({ name: 'add_note', arguments: { text: 'buy milk' } }), 'tools/call add_note (retry)');
    const secondList = await withTimeout(client.callTool({ name: 'list_notes', arguments: {} }), 'tools/call list_notes');
    let probes = null;
    if (dpopSession) {
      step = 'probe the MCP server with the DPoP-bound token';
      probes = await dpopProbes(dpopSession, stepUpTokens.access_token);
    }

    step = 'wait for the access token to expire';
    const expiresAt = stepUpTokens.claims.exp * 1000;
    if (expiresAt - Date.now() > MAX_TOKEN_WAIT_MS) throw new Error(`the access token lives too long for this test (exp ${stepUpTokens.claims.exp})`);
    await sleep(Math.max(0, expiresAt - Date.now()) + 1000);
    // The MCP server itself now refuses the stored token (a request outside the SDK).
    let expiredProbe;
    for (let attempt = 0; attempt < 10; attempt++) {
      // A DPoP-bound token with its scheme and a good proof: only the expiry can be refused.
      const authorization = dpopSession
        ? { Authorization: `DPoP ${stepUpTokens.access_token}`, DPoP: await dpopSession.buildProof({ htm: 'POST', htu: serverUrl, accessToken: stepUpTokens.access_token }) }
        : { Authorization: `Bearer ${stepUpTokens.access_token}` };
      const response = await fetch(serverUrl, {
        method: 'POST',
        headers: {
          ...authorization,
          'Content-Type': 'application/json',
          Accept: 'application/json, text/event-stream',
        },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
      });
      await response.text();
      expiredProbe = { status: response.status, www_authenticate: response.headers.get('www-authenticate') };
      if (response.status === 401) break;
      await sleep(500);
    }

    step = 'call the read tool with the expired token (expecting a refresh)';
    const traceBeforeRefresh = trace.length;
    const afterRefreshList = await withTimeout(client.callTool({ name: 'list_notes', arguments: {} }), 'tools/call list_notes (refresh)');
    const refreshedAt = Date.now();
    const refreshedTokens = tokenSummary(provider.tokens());
    step = 'call the write tool with the refreshed token';
    const afterRefreshAdd = await withTimeout(client.callTool({ name: 'add_note', arguments: { text: 'buy bread' } }), 'tools/call add_note (refreshed)');
    await client.close();

    const discovery = provider.discoveryState();
    const asMetadata = discovery?.authorizationServerMetadata;
    const summary = {
      mode,
      protocol_era: era,
      protocol_version: protocolVersion,
      client_id: provider.clientInformation()?.client_id,
      client_metadata_url: provider.clientMetadataUrl ?? null,
      registered: provider.savedClientInformation.map((info) => ({
        client_id: info.client_id,
        has_secret: info.client_secret !== undefined,
        redirect_uris: info.redirect_uris ?? null,
        token_endpoint_auth_method: info.token_endpoint_auth_method ?? null,
        application_type: info.application_type ?? null,
        issuer: info.issuer ?? null,
      })),
      issuer: asMetadata?.issuer ?? null,
      client_id_metadata_document_supported: asMetadata?.client_id_metadata_document_supported ?? null,
      iss_parameter_supported: asMetadata?.authorization_response_iss_parameter_supported ?? null,
      as_dpop_algs: asMetadata?.dpop_signing_alg_values_supported ?? null,
      resource_dpop_algs: discovery?.resourceMetadata?.dpop_signing_alg_values_supported ?? null,
      dpop: dpopSession ? { thumbprint: dpopSession.thumbprint, alg: dpopSession.alg, public_jwk: dpopSession.publicJwk } : null,
      dpop_probes: probes,
      authorizations,
      callbacks,
      consents,
      step_up_error: stepUpError,
      tokens: { first: firstTokens, step_up: stepUpTokens, refreshed: refreshedTokens },
      saved_tokens: provider.savedTokens.length,
      refreshed_at_ms: refreshedAt,
      expired_probe: expiredProbe,
      refresh_trace: trace.slice(traceBeforeRefresh),
      tools: tools.tools.map((t) => t.name).sort(),
      tool_results: {
        first_list: toolSummary(firstList),
        added: toolSummary(added),
        second_list: toolSummary(secondList),
        after_refresh_list: toolSummary(afterRefreshList),
        after_refresh_add: toolSummary(afterRefreshAdd),
      },
      trace,
    };
    process.stdout.write(JSON.stringify(summary) + '\n');
  } finally {
    await browser.close().catch(() => {});
    callback.server.close();
  }
}

main().then(
  () => {
    clearTimeout(watchdog);
    process.exit(0);
  },
  (error) => fail(`${step}: ${error?.stack ?? error}\ntrace: ${JSON.stringify(trace).slice(-3000)}`),
);
