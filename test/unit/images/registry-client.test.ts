/**
 * RegistryClient against hostile registries of the test's own (HTTP and HTTPS servers
 * on 127.0.0.1 in this process): what a registry or its token server sends is bounded
 * before it reaches a message, a cache or a connection that never ends.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../src/common/errors.js';
import { defaultConfig, defaultRegistryConfig, type RegistryConfig } from '../../../src/config/schema.js';
import { parseReference } from '../../../src/images/reference.js';
import { MAX_CACHED_TOKENS, MAX_TOKEN_BYTES, MAX_TOKEN_TTL_SECONDS, TokenCache } from '../../../src/images/registry/auth.js';
import { RegistryClient } from '../../../src/images/registry/client.js';

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, port: number) => void;

describe('images: registry client against a hostile registry', function () {
  this.timeout(20_000);
  let dir: string;
  const servers: Array<http.Server | https.Server> = [];

  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-regclient-'))));
  afterEach(async () => {
    for (const s of servers.splice(0)) {
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    }
    rmSync(dir, { recursive: true, force: true });
  });

  async function listen(server: http.Server | https.Server, handler: Handler): Promise<number> {
    servers.push(server);
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => handler(req, res, (server.address() as AddressInfo).port));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return (server.address() as AddressInfo).port;
  }

  function client(registries: Record<string, RegistryConfig> = {}): RegistryClient {
    return new RegistryClient({ images: { ...defaultConfig().images, pull_attempts: 1, registry_certs_dir: dir }, registries: () => registries, backoffMs: 1 });
  }

  async function fetchManifest(c: RegistryClient, host: string): Promise<unknown> {
    const ref = parseReference(`${host}/test/app:v1`);
    const ep = c.endpoints(ref, undefined).at(-1)!;
    return c.fetchManifest(ep, ref.path, 'v1', ['application/vnd.oci.image.manifest.v1+json'], 1 << 20, undefined, 'test/app:v1');
  }

  /** A registry that asks for a bearer token from /token on itself, answered by `token`. */
  const bearer =
    (token: Handler): Handler =>
    (req, res, port) => {
      if (req.url?.startsWith('/token')) return token(req, res, port);
      if (!req.headers.authorization) {
        res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="test"` });
        return void res.end();
      }
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"nope"}]}');
    };

  it('drops the connection of a token server that refuses with a body that never ends', async () => {
    let closed!: () => void;
    const bodyClosed = new Promise<void>((r) => (closed = r));
    const port = await listen(
      http.createServer(),
      bearer((_req, res) => {
        res.writeHead(403, { 'content-type': 'text/plain' });
        const chunk = Buffer.alloc(64 * 1024, 'x');
        const pump = (): void => {
          while (!res.destroyed && res.write(chunk));
        };
        res.on('drain', pump);
        res.on('close', closed);
        pump();
      }),
    );
    await assert.rejects(
      fetchManifest(client(), `127.0.0.1:${port}`),
      (e) => isKind(e, 'Unauthenticated') && /the token service of registry 127\.0\.0\.1:\d+ refused the credentials \(403\)/.test((e as Error).message),
    );
    // The client hung up: with the body drained instead, this would never come.
    await bodyClosed;
  });

  it('refuses a token over 64 KiB and accepts one at the limit', async () => {
    let size = MAX_TOKEN_BYTES + 1;
    const port = await listen(
      // Node's own 16 KiB header limit would refuse the token at the limit.
      http.createServer({ maxHeaderSize: 4 * MAX_TOKEN_BYTES }),
      bearer((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ token: 'a'.repeat(size), expires_in: 300 }));
      }),
    );
    await assert.rejects(
      fetchManifest(client(), `127.0.0.1:${port}`),
      (e) =>
        isKind(e, 'Unauthenticated') &&
        new RegExp(`sent a token of ${MAX_TOKEN_BYTES + 1} bytes, over the ${MAX_TOKEN_BYTES} bytes`).test((e as Error).message),
    );
    size = MAX_TOKEN_BYTES;
    // At the limit the token is used: the registry then answers 404 for the manifest.
    await assert.rejects(fetchManifest(client(), `127.0.0.1:${port}`), (e) => isKind(e, 'NotFound') && /MANIFEST_UNKNOWN: nope/.test((e as Error).message));
  });

  it('keeps a token at most a day, whatever expires_in says', () => {
    const cache = new TokenCache();
    const before = Date.now();
    cache.set('huge', 'Bearer a', 1e12);
    cache.set('infinite', 'Bearer b', Infinity); // JSON's 1e400
    cache.set('nan', 'Bearer c', NaN);
    cache.set('short', 'Bearer d', 300);
    const after = Date.now();
    assert.ok(cache.expiresAt('huge')! <= after + MAX_TOKEN_TTL_SECONDS * 1000);
    assert.ok(cache.expiresAt('huge')! >= before + (MAX_TOKEN_TTL_SECONDS - 10) * 1000);
    assert.ok(cache.expiresAt('infinite')! <= after + 60_000);
    assert.ok(cache.expiresAt('nan')! <= after + 60_000);
    assert.ok(cache.expiresAt('short')! <= after + 300_000 && cache.expiresAt('short')! >= before + 290_000);
    assert.equal(cache.get('nan'), 'Bearer c');
  });

  it('keeps at most MAX_CACHED_TOKENS tokens, forgetting the least recently used first', () => {
    const cache = new TokenCache();
    for (let i = 0; i < MAX_CACHED_TOKENS; i++) cache.set(`scope-${i}`, `Bearer ${i}`, 300);
    assert.equal(cache.get('scope-0'), 'Bearer 0', 'the oldest, used again, becomes the most recent');
    cache.set('one more', 'Bearer x', 300);
    assert.equal(cache.get('scope-1'), undefined, 'the least recently used went');
    assert.equal(cache.get('scope-0'), 'Bearer 0');
    assert.equal(cache.get('scope-2'), 'Bearer 2');
    assert.equal(cache.get('one more'), 'Bearer x');
  });

  it('clips registry error text in its messages', async () => {
    const port = await listen(http.createServer(), (_req, res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'C'.repeat(30_000), message: 'm'.repeat(30_000) }] }));
    });
    await assert.rejects(fetchManifest(client(), `127.0.0.1:${port}`), (e) => {
      const msg = (e as Error).message;
      return isKind(e, 'NotFound') && /\(C{200}\.\.\. \(29800 more characters\): m{200}\.\.\. \(29800 more characters\)\)$/.test(msg) && msg.length < 700;
    });
    const port2 = await listen(http.createServer(), (_req, res) => {
      // JSON without "errors": the body itself is the text.
      res.writeHead(403, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ detail: 'x'.repeat(60_000) }));
    });
    await assert.rejects(fetchManifest(client(), `127.0.0.1:${port2}`), (e) => {
      const msg = (e as Error).message;
      return isKind(e, 'PermissionDenied') && /\(\{"detail":"x{189}\.\.\. \(59813 more characters\)\)$/.test(msg) && msg.length < 500;
    });
  });

  it('refuses a redirect from HTTPS down to plain HTTP', async () => {
    const key = join(dir, 'k.pem');
    const cert = join(dir, 'c.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1'], {
      stdio: 'pipe',
    });
    const plainHits: string[] = [];
    const plainPort = await listen(http.createServer(), (req, res) => {
      plainHits.push(req.url ?? '');
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
      res.end('{}');
    });
    const port = await listen(https.createServer({ key: readFileSync(key), cert: readFileSync(cert) }), (req, res) => {
      res.writeHead(307, { location: `http://127.0.0.1:${plainPort}${req.url}` });
      res.end();
    });
    const host = `127.0.0.1:${port}`;
    const c = client({ [host]: { ...defaultRegistryConfig(), plain_http: false, insecure_skip_verify: true } });
    await assert.rejects(
      fetchManifest(c, host),
      (e) =>
        isKind(e, 'Unavailable') &&
        new RegExp(`refusing a redirect from HTTPS to plain HTTP \\(http://127\\.0\\.0\\.1:${plainPort}\\)`).test((e as Error).message),
    );
    assert.deepEqual(plainHits, []);
    // A registry configured as plain HTTP is still reached over plain HTTP.
    const ok = (await fetchManifest(client(), `127.0.0.1:${plainPort}`)) as { data: Buffer };
    assert.equal(ok.data.toString(), '{}');
  });

  describe('redirects and token realms to special addresses (address-policy.ts)', () => {
    const refusedBy = (target: string, cls: string, registry: string) => (e: unknown) => {
      assert.ok(isKind(e, 'PermissionDenied'), String(e));
      assert.match(
        (e as Error).message,
        new RegExp(
          `refusing to connect to ${target.replace(/[.[\]]/g, '\\$&')}, a ${cls} address, for registry ${registry.replace(/\./g, '\\.')}, which is not on one`,
        ),
      );
      return true;
    };

    // Link-local targets: a registry on loopback is not link-local, so they are refused by the
    // check, before any connect (fe80::1 without a zone could not be connected to anyway:
    // the kernel answers EINVAL, which would show as a network error, not this refusal).
    it('a registry on 127.0.0.1 redirecting a manifest to a link-local address: refused before connecting', async () => {
      const port = await listen(http.createServer(), (req, res) => {
        res.writeHead(307, { location: `http://[fe80::1]:${port}${req.url}` });
        res.end();
      });
      await assert.rejects(fetchManifest(client(), `127.0.0.1:${port}`), refusedBy('fe80::1', 'link-local', `127.0.0.1:${port}`));
    });

    it('a token realm on a link-local or unspecified address: refused, no token request made', async () => {
      for (const realmHost of ['[fe80::a9fe:a9fe]', '[::ffff:0.0.0.0]', '0.0.0.0']) {
        const tokenHits: string[] = [];
        const port = await listen(http.createServer(), (req, res) => {
          if (req.url?.startsWith('/token')) {
            tokenHits.push(String(req.headers.authorization));
            return void res.end('{"token":"t"}');
          }
          res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${realmHost}:${port}/token",service="test"` });
          res.end();
        });
        const ref = parseReference(`127.0.0.1:${port}/test/app:v1`);
        const c = client();
        // Anonymous: with credentials, the rule for plain-HTTP token servers refuses first.
        const ep = c.endpoints(ref, undefined).at(-1)!;
        const [shown, cls] =
          realmHost === '0.0.0.0'
            ? ['0.0.0.0', 'unspecified']
            : realmHost === '[::ffff:0.0.0.0]'
              ? ['::ffff:0:0', 'unspecified']
              : ['fe80::a9fe:a9fe', 'link-local'];
        await assert.rejects(
          c.fetchManifest(ep, ref.path, 'v1', ['application/json'], 1 << 20, undefined, 'test/app:v1'),
          refusedBy(shown, cls, `127.0.0.1:${port}`),
        );
        assert.deepEqual(tokenHits, [], `${realmHost}: no token request reached anything`);
      }
    });

    it('a registry named localhost (resolved: loopback) may redirect to 127.0.0.1 storage, and one on 127.0.0.1 to localhost', async () => {
      const storagePort = await listen(http.createServer(), (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
        res.end('{"from":"storage"}');
      });
      const port = await listen(http.createServer(), (req, res) => {
        res.writeHead(307, { location: `http://${req.headers.host?.startsWith('localhost') ? '127.0.0.1' : 'localhost'}:${storagePort}/blob` });
        res.end();
      });
      for (const host of [`localhost:${port}`, `127.0.0.1:${port}`]) {
        const got = (await fetchManifest(client(), host)) as { data: Buffer };
        assert.equal(got.data.toString(), '{"from":"storage"}', host);
      }
    });
  });

  it("describes a blob's first GET for the unpack worker with the credentials in force, and none once the registry redirects blobs", () => {
    const c = client();
    const ref = parseReference('127.0.0.1:5999/test/app:v1');
    const ep = c.endpoints(ref, { registryToken: 'tok-1' }).at(-1)!;
    const req = c.blobRequest(ep, ref.path, `sha256:${'a'.repeat(64)}`);
    assert.ok(req);
    assert.equal(req.url, `http://127.0.0.1:5999/v2/test/app/blobs/sha256:${'a'.repeat(64)}`);
    assert.equal(req.headers.authorization, 'Bearer tok-1');
    assert.equal('secureContext' in req.tls, false, 'the built TLS context stays on this thread');
    c.blobRedirected(ep);
    assert.equal(c.blobRequest(ep, ref.path, `sha256:${'b'.repeat(64)}`), undefined);
  });
});
