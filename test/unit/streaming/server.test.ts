/**
 * The streaming server's URLs: random, single-use, expiring tokens, bound to their kind,
 * and the refusals of a plain request, a non-SPDY upgrade and a protocol in common with
 * none. The server listens on 127.0.0.1 inside the test; the container and pod services
 * behind it are fakes that record what was opened.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import type { Socket } from 'node:net';
import { createLogger } from '../../../src/common/logger.js';
import { defaultConfig } from '../../../src/config/schema.js';
import type { ContainerService } from '../../../src/containers/container-service.js';
import type { SandboxService } from '../../../src/sandbox/sandbox-service.js';
import { StreamingServer, type ExecRequestInfo } from '../../../src/streaming/server.js';

const REQ: ExecRequestInfo = { containerId: 'c'.repeat(64), cmd: ['sh'], tty: false, stdin: false, stdout: true, stderr: true };

interface Answer {
  status: number;
  body: string;
  protocol?: string;
}

/** One request to `url`: a plain GET, or an upgrade to `upgrade` offering `protocols`. */
async function ask(url: string, upgrade?: string, protocols = 'v4.channel.k8s.io'): Promise<Answer> {
  const headers: Record<string, string> = upgrade ? { connection: 'Upgrade', upgrade, 'x-stream-protocol-version': protocols } : {};
  const req = http.request(url, { headers, agent: false });
  req.end();
  return new Promise<Answer>((resolve, reject) => {
    req.once('error', reject);
    req.once('upgrade', (res: http.IncomingMessage, socket: Socket) => {
      socket.destroy();
      resolve({ status: res.statusCode!, body: '', protocol: String(res.headers['x-stream-protocol-version']) });
    });
    req.once('response', (res: http.IncomingMessage) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.once('end', () => resolve({ status: res.statusCode!, body }));
    });
  });
}

describe('streaming: server tokens', () => {
  let server: StreamingServer;
  const opened: string[] = [];

  async function start(ttlSeconds: number): Promise<void> {
    const config = { ...defaultConfig().streaming, address: '127.0.0.1', port: 0, token_ttl_seconds: ttlSeconds, stream_creation_timeout_seconds: 1 };
    server = new StreamingServer({
      config,
      containers: {
        openExec: async (id: string) => {
          opened.push(`exec ${id}`);
          throw new Error('fake: no exec here');
        },
        openAttach: (id: string) => {
          opened.push(`attach ${id}`);
          throw new Error('fake: no attach here');
        },
      } as unknown as ContainerService,
      sandboxes: {} as SandboxService,
      log: createLogger('error', () => undefined),
    });
    await server.start();
  }

  afterEach(async () => {
    opened.length = 0;
    await server.close();
  });

  it('hands out URLs on its own address with a long random token each', async () => {
    await start(60);
    const a = new URL(server.execUrl(REQ));
    const b = new URL(server.execUrl(REQ));
    assert.equal(a.hostname, '127.0.0.1');
    assert.match(a.pathname, /^\/exec\/[A-Za-z0-9_-]{32}$/);
    assert.notEqual(a.pathname, b.pathname);
    assert.match(new URL(server.attachUrl(REQ)).pathname, /^\/attach\//);
    assert.match(new URL(server.portForwardUrl('p'.repeat(64))).pathname, /^\/portforward\//);
  });

  it('answers a plain request 400 for a live token and 404 for an unknown one, using neither up', async () => {
    await start(60);
    const url = server.execUrl(REQ);
    assert.deepEqual(await ask(url), { status: 400, body: 'this URL takes an HTTP upgrade to SPDY/3.1 or WebSocket\n' });
    assert.deepEqual(await ask(`${server.baseUrl}/exec/${'A'.repeat(32)}`), { status: 404, body: 'unknown or expired streaming URL\n' });
    assert.equal((await ask(url, 'SPDY/3.1')).status, 101);
  });

  it('is single-use: the second upgrade of a URL is refused', async () => {
    await start(60);
    const url = server.execUrl(REQ);
    const first = await ask(url, 'SPDY/3.1', 'v5.channel.k8s.io, v4.channel.k8s.io');
    assert.deepEqual([first.status, first.protocol], [101, 'v4.channel.k8s.io']);
    assert.deepEqual(await ask(url, 'SPDY/3.1'), { status: 404, body: 'unknown or expired streaming URL\n' });
    assert.deepEqual(opened, [], 'the exec starts only once the client opens its streams');
  });

  it('refuses an upgrade to anything but SPDY/3.1 or WebSocket and keeps the token for a retry', async () => {
    await start(60);
    const url = server.attachUrl(REQ);
    const h2 = await ask(url, 'h2c');
    assert.equal(h2.status, 400);
    assert.match(h2.body, /speaks SPDY\/3\.1 and WebSocket only, not "h2c"/);
    assert.equal((await ask(url, 'SPDY/3.1')).status, 101);
  });

  it('uses a token up on a protocol in common with none, naming both lists', async () => {
    await start(60);
    const url = server.execUrl(REQ);
    const r = await ask(url, 'SPDY/3.1', 'v1.channel.k8s.io');
    assert.equal(r.status, 403);
    assert.match(r.body, /no stream protocol in common: offered v1\.channel\.k8s\.io, supported v4\.channel\.k8s\.io, v3/);
    assert.equal((await ask(url, 'SPDY/3.1')).status, 404);
  });

  it('binds a token to its kind: an exec token on /attach is not found, and still works on /exec', async () => {
    await start(60);
    const url = server.execUrl(REQ);
    const token = url.split('/').pop()!;
    assert.equal((await ask(`${server.baseUrl}/attach/${token}`, 'SPDY/3.1')).status, 404);
    assert.equal((await ask(url, 'SPDY/3.1')).status, 101);
  });

  it('refuses an expired token', async () => {
    await start(0);
    assert.deepEqual(await ask(server.execUrl(REQ), 'SPDY/3.1'), { status: 404, body: 'unknown or expired streaming URL\n' });
  });

  it('closes: open streams are cut and the port stops answering', async () => {
    await start(60);
    const base = server.baseUrl;
    await server.close();
    const req = http.request(`${base}/exec/x`, { agent: false });
    req.end();
    const [err] = (await once(req, 'error')) as [NodeJS.ErrnoException];
    assert.equal(err.code, 'ECONNREFUSED');
    await start(60);
  });
});
