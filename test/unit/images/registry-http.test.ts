/**
 * The registry HTTP layer (http.ts) against servers of the test's own on 127.0.0.1: the
 * address policy on the real connect path (a name is refused in the agent's lookup, a
 * literal before the request, and no connection is made), and the bound on keep-alive
 * agents (the least recently used one is closed once idle, and its origin still works).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../src/common/errors.js';
import { defaultRegistryConfig } from '../../../src/config/schema.js';
import { AddressPolicy } from '../../../src/images/registry/address-policy.js';
import { agentCount, MAX_AGENTS, readBody, send } from '../../../src/images/registry/http.js';
import { RegistryTls } from '../../../src/images/registry/tls.js';

interface TestServer {
  port: number;
  host: string;
  connections: Socket[];
  server: http.Server;
}

describe('images: registry HTTP layer', function () {
  this.timeout(20_000);
  const servers: Array<http.Server | https.Server> = [];
  // One host's settings for all: plain HTTP uses none, and building them costs tens of ms a host.
  const tls = new RegistryTls({}, '').for('127.0.0.1');

  afterEach(async () => {
    for (const s of servers.splice(0)) {
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    }
  });

  async function serve(handler: http.RequestListener = (_req, res) => res.end('ok')): Promise<TestServer> {
    const server = http.createServer(handler);
    servers.push(server);
    const connections: Socket[] = [];
    server.on('connection', (s: Socket) => connections.push(s));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    return { port, host: `127.0.0.1:${port}`, connections, server };
  }

  function get(url: string, policy: AddressPolicy) {
    const u = new URL(url);
    return send({ method: 'GET', url: u, headers: {}, stallMs: 15_000, tls, tlsFor: () => tls, maxRedirects: 0, policy });
  }

  async function getText(url: string, policy: AddressPolicy): Promise<string> {
    const res = await get(url, policy);
    return (await readBody(res, 1 << 20, url)).toString();
  }

  async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) assert.fail(`not within ${ms} ms: ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  describe('the address policy on the connect path', () => {
    // A registry of no special class (its name resolves, here by a table, to a public address).
    const publicRegistry = (): AddressPolicy => new AddressPolicy('registry.example', async () => ['203.0.113.9']);

    it('a loopback name is refused in the lookup, a loopback literal before the request: no connection is made', async () => {
      const s = await serve();
      await assert.rejects(get(`http://localhost:${s.port}/v2/`, publicRegistry()), (e) => {
        assert.ok(isKind(e, 'PermissionDenied'), String(e));
        assert.match(
          (e as Error).message,
          /^refusing to connect to localhost \((127\.0\.0\.1|::1)\), a loopback address, for registry registry\.example, which is not on one/,
        );
        return true;
      });
      await assert.rejects(get(`http://127.0.0.1:${s.port}/v2/`, publicRegistry()), (e) => {
        assert.ok(isKind(e, 'PermissionDenied'), String(e));
        assert.match((e as Error).message, /^refusing to connect to 127\.0\.0\.1, a loopback address, for registry registry\.example/);
        return true;
      });
      assert.equal(s.connections.length, 0, 'no connection was attempted');
      // For a registry on loopback, the same URLs are reached (and through a name, the lookup passes).
      assert.equal(await getText(`http://localhost:${s.port}/v2/`, new AddressPolicy(s.host)), 'ok');
      assert.equal(await getText(`http://127.0.0.1:${s.port}/v2/`, new AddressPolicy('localhost:5000')), 'ok');
      assert.ok(s.connections.length >= 1);
    });

    it('the same over HTTPS (the TLS agents connect through the same lookup)', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'berth-reghttp-'));
      try {
        execFileSync(
          'openssl',
          ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'k.pem'), '-out', join(dir, 'c.pem'), '-days', '1', '-subj', '/CN=localhost'],
          {
            stdio: 'pipe',
          },
        );
        const server = https.createServer({ key: readFileSync(join(dir, 'k.pem')), cert: readFileSync(join(dir, 'c.pem')) }, (_req, res) => res.end('ok'));
        servers.push(server);
        let connections = 0;
        server.on('connection', () => connections++);
        await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
        const host = `localhost:${(server.address() as AddressInfo).port}`;
        const insecure = new RegistryTls({ [host]: { ...defaultRegistryConfig(), insecure_skip_verify: true } }, dir).for(host);
        const u = new URL(`https://${host}/v2/`);
        const opts = (policy: AddressPolicy) => ({
          method: 'GET' as const,
          url: u,
          headers: {},
          stallMs: 15_000,
          tls: insecure,
          tlsFor: () => insecure,
          maxRedirects: 0,
          policy,
        });
        await assert.rejects(
          send(opts(publicRegistry())),
          (e) => isKind(e, 'PermissionDenied') && /^refusing to connect to localhost \((127\.0\.0\.1|::1)\), a loopback address/.test((e as Error).message),
        );
        assert.equal(connections, 0, 'no connection was attempted');
        assert.equal((await readBody(await send(opts(new AddressPolicy(host))), 100, 'ok')).toString(), 'ok');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe(`keep-alive agents: at most ${MAX_AGENTS}, least recently used first out`, () => {
    it('an idle agent pushed out is closed at once, and its origin still works afterwards', async () => {
      const a = await serve();
      const policy = new AddressPolicy('127.0.0.1');
      assert.equal(await getText(`http://${a.host}/x`, policy), 'ok');
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(a.connections.length, 1);
      assert.ok(!a.connections[0]!.destroyed, 'kept alive');
      // MAX_AGENTS other origins push it out.
      const others = await Promise.all(Array.from({ length: MAX_AGENTS }, () => serve()));
      for (const o of others) assert.equal(await getText(`http://${o.host}/y`, policy), 'ok');
      assert.ok(agentCount() <= MAX_AGENTS, `${agentCount()} agents`);
      await until(() => a.connections[0]!.destroyed, 5000, 'the pushed-out agent closes its idle connection');
      assert.equal(await getText(`http://${a.host}/again`, policy), 'ok');
      assert.equal(a.connections.length, 2, 'a new connection, by a new agent');
    });

    it('a busy agent pushed out finishes its response undisturbed, then is closed', async () => {
      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      const b = await serve((_req, res) => {
        res.writeHead(200, { 'content-length': '10' });
        res.write('01234');
        void released.then(() => res.end('56789'));
      });
      const policy = new AddressPolicy('127.0.0.1');
      const res = await get(`http://${b.host}/slow`, policy);
      const body = readBody(res, 1 << 20, 'slow');
      const others = await Promise.all(Array.from({ length: MAX_AGENTS }, () => serve()));
      for (const o of others) assert.equal(await getText(`http://${o.host}/y`, policy), 'ok');
      await new Promise((r) => setTimeout(r, 100));
      assert.ok(!b.connections[0]!.destroyed, 'the response in flight keeps its connection');
      release();
      assert.equal((await body).toString(), '0123456789');
      await until(() => b.connections[0]!.destroyed, 5000, 'the pushed-out agent closes once idle');
    });
  });
});
