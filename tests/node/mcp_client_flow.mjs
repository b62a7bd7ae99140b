// One MCP client session against Ostiary with the official MCP TypeScript SDK, the way a native
// MCP client runs it: connect to the MCP server, get 401, let the SDK's auth() discover the
// authorization server (RFC 9728 -> RFC 8414), identify the client by dynamic registration
// (RFC 7591) or by a Client ID Metadata Document URL (MCP 2025-11-25), open the authorization URL
// in headless Chromium, sign in, Allow, catch the redirect on a loopback callback (RFC 8252 §7.3),
// finish auth (PKCE, RFC 8707 resource), then list the tools and call the read tool.
//
//   node mcp_client_flow.mjs --server-url http://127.0.0.1:8001/mcp --mode dcr|cimd \
//        --callback-port 8123 [--client-metadata-url https://localhost:8443/client.json] \
//        [--username alice]          (password in the E2E_PASSWORD environment variable)
//
// Prints one JSON line (the summary) on stdout and exits 0; on any failure prints
// "mcp_client_flow: FAILED: ..." on stderr and exits non-zero. Everything is bounded in time.

import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
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
const OVERALL_TIMEOUT_MS = 45_000;
const STEP_TIMEOUT_MS = 15_000;
const CLIENT_NAME = 'Ostiary e2e (MCP TypeScript SDK)';

function fail(message) {
  process.stderr.write(`mcp_client_flow: FAILED: ${message}\n`);
  process.exit(1);
}

const watchdog = setTimeout(() => {
  process.stderr.write(`mcp_client_flow: FAILED: timed out after ${OVERALL_TIMEOUT_MS / 1000}s (step: ${step})\n`);
  process.exit(3);
}, OVERALL_TIMEOUT_MS);
let step = 'start';

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

// -- arguments ---------------------------------------------------------------------------------

const { values: args } = parseArgs({
  options: {
    'server-url': { type: 'string' },
    mode: { type: 'string' },
    'callback-port': { type: 'string' },
    'client-metadata-url': { type: 'string' },
    username: { type: 'string', default: 'alice' },
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

// The SDK's fetch for the MCP server and its auth() (the transport hands it to both).
async function tracingFetch(url, init) {
  const method = (init?.method ?? 'GET').toUpperCase();
  const response = await withTimeout(fetch(url, init), `${method} ${url}`);
  const entry = { method, url: String(url), status: response.status };
  const challenge = response.headers.get('www-authenticate');
  if (challenge) entry.www_authenticate = challenge;
  trace.push(entry);
  return response;
}

// -- the loopback callback ---------------------------------------------------------------------

function startCallbackServer() {
  let deliver;
  const received = new Promise((resolve) => {
    deliver = resolve;
  });
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, callbackUrl);
    if (url.pathname === '/callback') deliver(Object.fromEntries(url.searchParams));
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end('<!doctype html><title>Done</title><p>You can close this window.');
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(callbackPort, '127.0.0.1', () => {
      resolve({ server, received }); // one authorization, one redirect
    });
  });
}

// -- the OAuthClientProvider -------------------------------------------------------------------

class MemoryProvider {
  constructor({ clientMetadataUrl, onRedirect }) {
    if (clientMetadataUrl) this.clientMetadataUrl = clientMetadataUrl;
    this._onRedirect = onRedirect;
    this._state = undefined;
    this.savedClientInformation = [];
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
    const notice = await page.locator('p.notice').allInnerTexts();
    consents.push({ signed_in: signedIn, text, scopes, client_host: clientHost, notices: notice });
    await allow.click();
    await page.waitForURL((u) => String(u).startsWith(callbackUrl));
  } finally {
    await page.close();
  }
}

// -- the flow ----------------------------------------------------------------------------------

async function main() {
  step = 'start the callback listener';
  const callback = await startCallbackServer();
  step = 'launch chromium';
  const browser = await withTimeout(
    chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS }),
    'launching chromium',
  );
  const context = await browser.newContext();
  let browserStep;
  const provider = new MemoryProvider({
    clientMetadataUrl: mode === 'cimd' ? args['client-metadata-url'] : undefined,
    onRedirect(url) {
      // The SDK calls this inside auth(); the user acts in the browser meanwhile.
      browserStep = signInAndAllow(context, url.href);
      browserStep.catch(() => {}); // awaited below; keep an early failure from being unhandled
      trace.push({ authorization_url: url.href });
    },
  });
  const client = new Client({ name: 'ostiary-e2e-ts', version: '1.0.0' }, { capabilities: {} });
  try {
    step = 'connect (expecting 401 and an authorization redirect)';
    let transport = new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider, fetch: tracingFetch });
    try {
      await withTimeout(client.connect(transport), 'connecting');
      throw new Error('the MCP server let the client in without authorization');
    } catch (error) {
      if (!(error instanceof UnauthorizedError)) throw error;
    }
    if (!browserStep) throw new Error('the SDK never asked to open an authorization URL');

    step = 'sign in and consent in the browser';
    await withTimeout(browserStep, 'signing in and consenting', 2 * STEP_TIMEOUT_MS);
    step = 'wait for the callback';
    const params = await withTimeout(callback.received, 'the redirect to the callback');
    if (params.error) throw new Error(`authorization failed: ${params.error} ${params.error_description ?? ''}`);
    if (!params.code) throw new Error(`the callback carried no code: ${JSON.stringify(params)}`);
    if (params.state !== provider.expectedState) throw new Error(`state mismatch: ${params.state} != ${provider.expectedState}`);
    const asMetadata = provider.discoveryState()?.authorizationServerMetadata;
    if (asMetadata?.authorization_response_iss_parameter_supported && params.iss !== asMetadata.issuer) {
      throw new Error(`RFC 9207 iss mismatch: ${params.iss} != ${asMetadata.issuer}`);
    }

    step = 'finish auth (token request)';
    await withTimeout(transport.finishAuth(params.code), 'the token request');
    await transport.close();

    step = 'reconnect with the access token';
    transport = new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider, fetch: tracingFetch });
    await withTimeout(client.connect(transport), 'reconnecting');
    step = 'list tools';
    const tools = await withTimeout(client.listTools(), 'tools/list');
    step = 'call the read tool';
    const result = await withTimeout(client.callTool({ name: 'list_notes', arguments: {} }), 'tools/call list_notes');
    await client.close();

    const tokens = provider.tokens();
    const claims = decodeJwtPayload(tokens.access_token);
    const summary = {
      mode,
      client_id: provider.clientInformation()?.client_id,
      client_metadata_url: provider.clientMetadataUrl ?? null,
      registered: provider.savedClientInformation.map((info) => ({
        client_id: info.client_id,
        has_secret: info.client_secret !== undefined,
        redirect_uris: info.redirect_uris ?? null,
        token_endpoint_auth_method: info.token_endpoint_auth_method ?? null,
      })),
      issuer: asMetadata?.issuer ?? null,
      client_id_metadata_document_supported: asMetadata?.client_id_metadata_document_supported ?? null,
      callback: { iss: params.iss ?? null }, // code present and state checked, or we failed above
      tokens: {
        token_type: tokens.token_type,
        scope: tokens.scope ?? null,
        expires_in: tokens.expires_in ?? null,
        has_refresh_token: Boolean(tokens.refresh_token),
      },
      access_token_claims: {
        iss: claims.iss,
        aud: claims.aud,
        sub: claims.sub,
        client_id: claims.client_id,
        scope: claims.scope,
      },
      tools: tools.tools.map((t) => t.name).sort(),
      tool_results: {
        list_notes: { is_error: Boolean(result.isError), content: result.content, structured: result.structuredContent ?? null },
      },
      consents,
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
  (error) => fail(`${step}: ${error?.stack ?? error}`),
);
