// A machine MCP client with the official MCP TypeScript SDK v2 (@modelcontextprotocol/client
// 2.4.0, MCP 2026-07-28): connect to the MCP server, get 401, let the SDK discover Ostiary and
// obtain a token without a browser, then call the read tool. Three providers:
//
//   --mode client-credentials   ClientCredentialsProvider (client_secret_basic; MCP extension
//                               io.modelcontextprotocol/oauth-client-credentials)
//   --mode private-key-jwt      PrivateKeyJwtProvider (RFC 7523 §2.2 client assertions)
//   --mode cross-app            CrossAppAccessProvider (enterprise-managed authorization): the
//                               assertion callback plays the IdP's token exchange and signs an
//                               ID-JAG with the IdP's key
//
//   node machine_flow.mjs --server-url URL --issuer URL --mode MODE --client-id ID
//   secrets in the environment: E2E_CLIENT_SECRET, E2E_PRIVATE_JWK (JSON), E2E_IDP_ISSUER and
//   E2E_IDP_PRIVATE_JWK (JSON) as the mode needs.
//
// Prints one JSON line on stdout and exits 0; on failure "machine_flow: FAILED: ..." on stderr.

import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';

import {
  Client,
  ClientCredentialsProvider,
  CrossAppAccessProvider,
  PrivateKeyJwtProvider,
  StreamableHTTPClientTransport,
} from '@modelcontextprotocol/client';
import { SignJWT, importJWK } from 'jose';

const watchdog = setTimeout(() => {
  process.stderr.write('machine_flow: FAILED: timed out after 40s\n');
  process.exit(3);
}, 40_000);

const { values: args } = parseArgs({
  options: {
    'server-url': { type: 'string' },
    issuer: { type: 'string' },
    mode: { type: 'string' },
    'client-id': { type: 'string' },
  },
});

function provider() {
  const clientId = args['client-id'];
  const expectedIssuer = args.issuer;
  if (args.mode === 'client-credentials') {
    return new ClientCredentialsProvider({ clientId, clientSecret: process.env.E2E_CLIENT_SECRET, expectedIssuer });
  }
  if (args.mode === 'private-key-jwt') {
    return new PrivateKeyJwtProvider({
      clientId, privateKey: JSON.parse(process.env.E2E_PRIVATE_JWK), algorithm: 'RS256', expectedIssuer,
    });
  }
  if (args.mode === 'cross-app') {
    return new CrossAppAccessProvider({
      clientId,
      clientSecret: process.env.E2E_CLIENT_SECRET,
      expectedIssuer,
      assertion: async (ctx) => {
        const jwk = JSON.parse(process.env.E2E_IDP_PRIVATE_JWK);
        const key = await importJWK(jwk, 'RS256');
        return new SignJWT({ resource: ctx.resourceUrl, client_id: clientId, scope: 'mcp:read', email: 'lin@acme.example' })
          .setProtectedHeader({ alg: 'RS256', kid: jwk.kid, typ: 'oauth-id-jag+jwt' })
          .setIssuer(process.env.E2E_IDP_ISSUER)
          .setSubject('lin-42')
          .setAudience(ctx.authorizationServerUrl)
          .setJti(randomUUID())
          .setIssuedAt()
          .setExpirationTime('5m')
          .sign(key);
      },
    });
  }
  throw new Error(`unknown --mode ${args.mode}`);
}

try {
  const authProvider = provider();
  const client = new Client({ name: `Ostiary e2e (TypeScript SDK v2, ${args.mode})`, version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(args['server-url']), { authProvider });
  await client.connect(transport);
  const result = await client.callTool({ name: 'list_notes', arguments: {} });
  if (result.isError) throw new Error(`list_notes failed: ${JSON.stringify(result.content)}`);
  const tokens = await authProvider.tokens();
  await client.close();
  process.stdout.write(JSON.stringify({ mode: args.mode, access_token: tokens?.access_token ?? null, refresh_token: tokens?.refresh_token ?? null }) + '\n');
  clearTimeout(watchdog);
  process.exit(0);
} catch (error) {
  process.stderr.write(`machine_flow: FAILED: ${error?.stack || error}\n`);
  process.exit(1);
}
