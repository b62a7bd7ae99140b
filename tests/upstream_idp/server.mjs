// panva's oidc-provider as an organisation's identity provider for Ostiary's upstream sign-in
// tests, on 127.0.0.1 only. Its development interactions are the sign-in and consent pages: any
// login name signs in (the password is not checked), and the account's claims are derived from it.
//
// Env: PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI (Ostiary's /login/NAME/callback).
import { generateKeyPairSync, randomUUID } from 'node:crypto';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const PORT = Number.parseInt(process.env.PORT, 10);
const ISSUER = `http://${HOST}:${PORT}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const configuration = {
  jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' }] },
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: [process.env.REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['groups'] },
  conformIdTokenClaims: false, // the ID token carries the claims of the granted scopes
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    async claims() {
      return { sub, email: `${sub}@acme.example`, email_verified: true, groups: ['writers'] };
    },
  }),
  features: { devInteractions: { enabled: true } },
};

const provider = new Provider(ISSUER, configuration);
provider.listen(PORT, HOST, () => console.log(`oidc-provider ${ISSUER} listening`));
