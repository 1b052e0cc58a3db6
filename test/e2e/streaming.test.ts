/**
 * The streaming server's own rules, seen from HTTP: loopback by default, single-use and
 * expiring URLs, SPDY/3.1 and WebSocket upgrades, protocol negotiation, and Exec's validation.
 * (The exec streams themselves are driven by crictl, the reference client, in
 * test/e2e/crictl.test.ts, and over WebSocket in test/e2e/streaming-ws.test.ts.)
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Berthd, sleep } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { grpcError } from '../helpers/cri-client.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One HTTP request; an upgrade answer (101) is reported and its socket closed. */
function http(url: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', headers });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: '' });
    });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const spdy = (protocols = 'v4.channel.k8s.io'): Record<string, string> => ({
  Connection: 'Upgrade',
  Upgrade: 'SPDY/3.1',
  'X-Stream-Protocol-Version': protocols,
});

describe('streaming server', function () {
  this.timeout(60_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  async function running(config = ''): Promise<{ b: Berthd; id: string; pod: string }> {
    const b = await Berthd.start({ config });
    cleanup.push(() => b.dispose());
    const net = testBridge(b, 'bt');
    cleanup.push(net.remove);
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const podCfg = { metadata: { name: `s${net.tag}`, namespace: 'test', uid: `u${net.tag}`, attempt: 0 }, log_directory: logDir };
    const { pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({ config: podCfg });
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: { metadata: { name: 'c', attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sleep', '1000'], log_path: 'c.log' },
      sandbox_config: podCfg,
    });
    await b.runtime.StartContainer({ container_id: id });
    cleanup.push(async () => {
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod }).catch(() => undefined);
    });
    return { b, id, pod };
  }

  it('hands out loopback, single-use URLs; refuses plain requests, other upgrades and unknown protocols', async () => {
    const { b, id } = await running();
    const url = async (): Promise<string> => (await b.runtime.Exec({ container_id: id, cmd: ['true'], stdout: true })).url;
    const u = await url();
    assert.match(u, /^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]{32}$/);
    assert.notEqual(await url(), u, 'each Exec gets its own URL');

    const plain = await http(u);
    assert.equal(plain.status, 400);
    assert.match(plain.body, /SPDY\/3\.1/);
    const other = await http(u, { Connection: 'Upgrade', Upgrade: 'h2c' });
    assert.equal(other.status, 400);
    assert.match(other.body, /SPDY\/3\.1 and WebSocket only/);
    // A WebSocket client offering no subprotocol berth speaks (see streaming-ws.test.ts).
    const ws = await http(u, {
      Connection: 'Upgrade',
      Upgrade: 'websocket',
      'Sec-WebSocket-Version': '13',
      'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
      'Sec-WebSocket-Protocol': 'v1.unknown.k8s.io',
    });
    assert.equal(ws.status, 400);
    assert.match(ws.body, /berth speaks v5\.channel\.k8s\.io/);
    // Neither used the URL up.
    const none = await http(u, spdy('v1.unknown.k8s.io'));
    assert.equal(none.status, 403);
    assert.match(none.body, /v4\.channel\.k8s\.io/);
    // That did: the URL is gone.
    assert.equal((await http(u, spdy())).status, 404);

    const ok = await http(await url(), spdy('v4.channel.k8s.io,v3.channel.k8s.io'));
    assert.equal(ok.status, 101);
    assert.equal(ok.headers['x-stream-protocol-version'], 'v4.channel.k8s.io');
    const older = await http(await url(), spdy('v2.channel.k8s.io'));
    assert.equal(older.headers['x-stream-protocol-version'], 'v2.channel.k8s.io');
    assert.equal((await http(u.replace(/[^/]+$/, 'A'.repeat(32)), spdy())).status, 404);
  });

  it('lets an unused URL expire', async () => {
    const { b, id } = await running('[streaming]\ntoken_ttl_seconds = 1\n');
    const { url } = await b.runtime.Exec({ container_id: id, cmd: ['true'], stdout: true });
    await sleep(1200);
    assert.equal((await http(url, spdy())).status, 404);
  });

  it('Exec validates before handing out a URL', async () => {
    const { b, id } = await running();
    const code = async (req: Parameters<Berthd['runtime']['Exec']>[0]): Promise<number> => (await grpcError(b.runtime.Exec(req))).code;
    assert.equal(await code({ container_id: id, cmd: [], stdout: true }), status.INVALID_ARGUMENT);
    assert.equal(await code({ container_id: id, cmd: ['true'] }), status.INVALID_ARGUMENT);
    assert.equal(await code({ container_id: id, cmd: ['true'], tty: true, stdout: true, stderr: true }), status.INVALID_ARGUMENT);
    assert.equal(await code({ container_id: 'nope', cmd: ['true'], stdout: true }), status.NOT_FOUND);
    await b.runtime.StopContainer({ container_id: id, timeout: 0 });
    assert.equal(await code({ container_id: id, cmd: ['true'], stdout: true }), status.FAILED_PRECONDITION);
  });
});
