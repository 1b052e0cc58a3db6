/**
 * PullImage's credentials: a registry token goes into a header, so one with characters a
 * header cannot carry is INVALID_ARGUMENT (found by the gRPC fuzz test: it was INTERNAL,
 * from Node's header check).
 */
import assert from 'node:assert/strict';
import { credentialsFrom } from '../../../../src/cri/image/convert.js';

const auth = (over: Record<string, string>) => ({ username: '', password: '', auth: '', server_address: '', identity_token: '', registry_token: '', ...over });

describe('cri/image: credentialsFrom', () => {
  it('passes a bearer token of visible ASCII, and username and password', () => {
    assert.deepEqual(credentialsFrom(auth({ registry_token: 'eyJhbGciOi.J9-_~+/=' })), { registryToken: 'eyJhbGciOi.J9-_~+/=' });
    assert.deepEqual(credentialsFrom(auth({ username: 'u', password: 'p w\n' })), { username: 'u', password: 'p w\n' });
    assert.equal(credentialsFrom(auth({})), undefined);
  });

  it('refuses a registry token a header cannot carry', () => {
    for (const t of ['a\nb', 'a b', 'é', '\0', '\ud800', 'tok\r\nX-Evil: 1']) {
      assert.throws(
        () => credentialsFrom(auth({ registry_token: t })),
        { kind: 'InvalidArgument', message: /auth\.registry_token holds characters/ },
        JSON.stringify(t),
      );
    }
  });
});
