/**
 * Whom berth trusts on the way to a registry: credentials go to token servers over HTTPS
 * only (plain HTTP only to the loopback registry's own host), and registry TLS takes
 * configured CAs and client certificates (per registry, and docker-style certs.d).
 * Everything listens on 127.0.0.1; certificates are made with openssl per run.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pushRandomImage, type PushedImage } from '../../hack/test-images/oci.js';
import { Berthd } from '../helpers/berthd.js';
import { grpcError } from '../helpers/cri-client.js';
import { startRegistry, startRegistryProxy, type Registry } from '../helpers/registry.js';

/** A CA, a server certificate for 127.0.0.1 signed by it, and a client certificate signed by a second CA. */
function makePki(dir: string): Record<'ca' | 'serverCert' | 'serverKey' | 'clientCa' | 'clientCert' | 'clientKey', string> {
  const f = (n: string): string => join(dir, n);
  const ssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'pipe' });
  for (const ca of ['ca', 'client-ca']) {
    ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f(`${ca}.key`), '-out', f(`${ca}.crt`), '-days', '1', '-subj', `/CN=berth-test-${ca}`);
  }
  writeFileSync(f('server.ext'), 'subjectAltName=IP:127.0.0.1\n');
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1');
  ssl(
    'x509',
    '-req',
    '-in',
    f('server.csr'),
    '-CA',
    f('ca.crt'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-out',
    f('server.crt'),
    '-days',
    '1',
    '-extfile',
    f('server.ext'),
  );
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('client.key'), '-out', f('client.csr'), '-subj', '/CN=berth-node');
  ssl(
    'x509',
    '-req',
    '-in',
    f('client.csr'),
    '-CA',
    f('client-ca.crt'),
    '-CAkey',
    f('client-ca.key'),
    '-CAcreateserial',
    '-out',
    f('client.crt'),
    '-days',
    '1',
  );
  return {
    ca: f('ca.crt'),
    serverCert: f('server.crt'),
    serverKey: f('server.key'),
    clientCa: f('client-ca.crt'),
    clientCert: f('client.crt'),
    clientKey: f('client.key'),
  };
}

describe('registry trust', function () {
  this.timeout(120_000);
  let registry: Registry;
  let image: PushedImage;
  let work: string;
  const cleanup: Array<() => Promise<void> | void> = [];

  before(async function () {
    this.timeout(300_000);
    work = mkdtempSync(join(tmpdir(), 'berth-trust-'));
    registry = await startRegistry();
    image = await pushRandomImage(registry.host, 'trust/small', 'latest', 1, 4096, 'gzip');
  });
  after(async () => {
    await registry?.stop();
    rmSync(work, { recursive: true, force: true });
  });
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });

  async function start(config = ''): Promise<Berthd> {
    const b = await Berthd.start({ config });
    cleanup.push(() => b.dispose());
    return b;
  }
  async function listen(server: http.Server | https.Server): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    cleanup.push(
      () =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        }),
    );
    return (server.address() as AddressInfo).port;
  }

  describe('token servers', () => {
    it('never sends credentials to a token server over plain HTTP on another port, and logs the other host', async () => {
      const received: http.IncomingHttpHeaders[] = [];
      const tokenServer = http.createServer((req, res) => {
        received.push(req.headers);
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ token: 'stolen', expires_in: 60 }));
      });
      const port = await listen(tokenServer);
      const p = await startRegistryProxy(registry.host, { bearer: { user: 'alice', password: 'pw', realm: `http://127.0.0.1:${port}/token` } });
      cleanup.push(() => p.stop());
      const b = await start('[images]\npull_attempts = 1\n');
      const ref = `${p.host}/${image.name}:latest`;
      const e = await grpcError(b.image.PullImage({ image: { image: ref }, auth: { username: 'alice', password: 'pw' } }));
      assert.equal(e.code, status.UNAUTHENTICATED, e.details);
      assert.match(
        e.details,
        new RegExp(`names the token server 127\\.0\\.0\\.1:${port} over plain HTTP; berth sends credentials to token servers over HTTPS only`),
      );
      const withIdentity = await grpcError(b.image.PullImage({ image: { image: ref }, auth: { identity_token: 'refresh-me' } }));
      assert.equal(withIdentity.code, status.UNAUTHENTICATED, withIdentity.details);
      assert.deepEqual(received, [], 'the token server heard nothing');
      assert.match(b.logs(), new RegExp(`registry uses a token server on another host.*127\\.0\\.0\\.1:${port}`));
      assert.ok(!b.logs().includes('refresh-me') && !b.logs().includes(Buffer.from('alice:pw').toString('base64')), 'no credentials in the logs');
    });

    it('still answers the loopback registry’s own plain-HTTP token server', async () => {
      const p = await startRegistryProxy(registry.host, { bearer: { user: 'alice', password: 'pw' } });
      cleanup.push(() => p.stop());
      const b = await start();
      const r = await b.image.PullImage({ image: { image: `${p.host}/${image.name}:latest` }, auth: { username: 'alice', password: 'pw' } });
      assert.equal(r.image_ref, image.id);
      assert.equal(p.tokens[0]?.user, 'alice');
    });
  });

  describe('TLS', () => {
    let pki: ReturnType<typeof makePki>;
    let host: string;

    before(async () => {
      pki = makePki(work);
    });
    beforeEach(async () => {
      // An HTTPS front for the registry that requires a client certificate from the client CA.
      const { readFileSync } = await import('node:fs');
      const server = https.createServer(
        { cert: readFileSync(pki.serverCert), key: readFileSync(pki.serverKey), ca: readFileSync(pki.clientCa), requestCert: true, rejectUnauthorized: true },
        (req, res) => {
          const up = http.request(
            { host: '127.0.0.1', port: Number(registry.host.split(':')[1]), path: req.url, method: req.method, headers: req.headers },
            (u) => {
              res.writeHead(u.statusCode ?? 502, u.headers);
              u.pipe(res);
            },
          );
          up.on('error', () => res.destroy());
          req.pipe(up);
        },
      );
      host = `127.0.0.1:${await listen(server)}`;
    });

    const ref = (): string => `${host}/${image.name}:latest`;

    it('refuses the registry without its CA, and without a client certificate', async () => {
      const none = await start(`[images]\npull_attempts = 1\n[registries."${host}"]\nplain_http = false\n`);
      const e = await grpcError(none.image.PullImage({ image: { image: ref() } }));
      assert.equal(e.code, status.UNAVAILABLE, e.details);
      assert.match(e.details, /certificate/i);
      const caOnly = await start(`[images]\npull_attempts = 1\n[registries."${host}"]\nplain_http = false\nca_file = "${pki.ca}"\n`);
      const e2 = await grpcError(caOnly.image.PullImage({ image: { image: ref() } }));
      assert.equal(e2.code, status.UNAVAILABLE, e2.details);
    });

    it('pulls with ca_file, cert_file and key_file', async () => {
      const b = await start(
        `[registries."${host}"]\nplain_http = false\nca_file = "${pki.ca}"\ncert_file = "${pki.clientCert}"\nkey_file = "${pki.clientKey}"\n`,
      );
      assert.equal((await b.image.PullImage({ image: { image: ref() } })).image_ref, image.id);
    });

    it('pulls with a docker-style certs.d/<host>/ beside the config file', async () => {
      const b = await start(`[registries."${host}"]\nplain_http = false\n`);
      const dir = join(b.configFile, '..', 'certs.d', host);
      mkdirSync(dir, { recursive: true });
      const { copyFileSync } = await import('node:fs');
      copyFileSync(pki.ca, join(dir, 'ca.crt'));
      copyFileSync(pki.clientCert, join(dir, 'client.cert'));
      copyFileSync(pki.clientKey, join(dir, 'client.key'));
      assert.equal((await b.image.PullImage({ image: { image: ref() } })).image_ref, image.id);
    });

    it('refuses a half-configured client certificate, naming the key', async () => {
      const b = await start(`[images]\npull_attempts = 1\n[registries."${host}"]\nplain_http = false\ncert_file = "${pki.clientCert}"\n`);
      const e = await grpcError(b.image.PullImage({ image: { image: ref() } }));
      assert.equal(e.code, status.FAILED_PRECONDITION, e.details);
      assert.match(e.details, new RegExp(`registries."${host.replace(/\./g, '\\.')}": cert_file and key_file go together`));
    });
  });
});
