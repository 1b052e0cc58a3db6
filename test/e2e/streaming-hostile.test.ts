/**
 * The streaming server facing clients that misbehave, against a running berthd, with the
 * SPDY client of test/helpers/spdy-client.ts: what a client sends or leaves unread
 * costs berthd bounded memory, and leaves the container as it was.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';
import { type Client, upgrade } from '../helpers/spdy-client.js';

const SYN_REPLY = 2;
const MiB = 1024 * 1024;

/** Resident memory of a process, in bytes. */
function rss(pid: number): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!;
  return Number(kb) * 1024;
}

/** Bytes waiting in the kernel, unread, on the TCP connection from 127.0.0.1:`from` to 127.0.0.1:`to` (its Recv-Q). */
function unreadOn(to: number, from: number): number {
  const out = execFileSync('ss', ['-tnH', 'state', 'established', 'src', `127.0.0.1:${to}`, 'dst', `127.0.0.1:${from}`], { encoding: 'utf8' });
  const line = out.trim().split('\n')[0] ?? '';
  return Number(line.trim().split(/\s+/)[0] ?? 0) || 0;
}

/** Opens the channels of a v4 exec or attach: each named stream gets its SYN_REPLY. */
async function openChannels(c: Client, names: string[]): Promise<Map<string, number>> {
  const ids = new Map<string, number>();
  let id = 1;
  for (const n of names) {
    ids.set(n, id);
    await c.synStream(id, { streamtype: n });
    id += 2;
  }
  await c.until(() => ([...ids.values()].every((i) => c.frames.some((f) => f.control && f.type === SYN_REPLY && f.streamId === i)) ? true : undefined), 10_000);
  return ids;
}

describe('streaming server against hostile clients', function () {
  this.timeout(120_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  async function running(command: string[], extra: Record<string, unknown> = {}): Promise<{ b: Berthd; id: string }> {
    const b = await Berthd.start({ logLevel: 'info' });
    cleanup.push(() => b.dispose());
    const net = testBridge(b, 'bh');
    cleanup.push(net.remove);
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const podCfg = { metadata: { name: `h${net.tag}`, namespace: 'test', uid: `u${net.tag}`, attempt: 0 }, log_directory: logDir };
    const { pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({ config: podCfg });
    cleanup.push(async () => {
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod }).catch(() => undefined);
    });
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: { metadata: { name: 'c', attempt: 0 }, image: { image: reg.fx.busybox.ref }, command, log_path: 'c.log', ...extra },
      sandbox_config: podCfg,
    });
    await b.runtime.StartContainer({ container_id: id });
    return { b, id };
  }

  it('256 MiB of stdin for a command that reads none: berthd stops reading, grows < 48 MiB, and keeps answering', async () => {
    const { b, id } = await running(['sleep', '1000']);
    const { url } = await b.runtime.Exec({ container_id: id, cmd: ['sleep', '1000'], stdin: true, stdout: true });
    const c = await upgrade(url, 'v4.channel.k8s.io');
    cleanup.push(() => void c.sock.destroy());
    const ids = await openChannels(c, ['error', 'stdin', 'stdout']);
    const pid = b.proc.pid!;
    const before = rss(pid);
    const total = 256 * MiB;
    const chunk = Buffer.alloc(32 * 1024, 0x61);
    for (let off = 0; off < total; off += chunk.length) c.data(ids.get('stdin')!, chunk);
    const port = Number(new URL(url).port);
    let peak = 0;
    // Until berthd holds back (bytes pile up unread in its socket) or has taken everything.
    const outcome = await until(async () => {
      peak = Math.max(peak, rss(pid));
      assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status?.state, 'CONTAINER_RUNNING');
      if (c.sock.writableLength === 0) return 'took everything';
      return unreadOn(port, c.sock.localPort!) > 256 * 1024 ? 'held back' : undefined;
    }, 60_000);
    assert.equal(outcome, 'held back');
    for (let i = 0; i < 5; i++) {
      await b.runtime.Version({});
      peak = Math.max(peak, rss(pid));
    }
    assert.ok(peak - before < 48 * MiB, `berthd grew by ${((peak - before) / MiB).toFixed(1)} MiB`);
    assert.ok(c.sock.writableLength > total / 2, `${c.sock.writableLength} bytes are still with the client`);
  });

  it('16 PINGs of 8 MiB are refused from their frame header, and a garbage header block ends its session within a second', async () => {
    const { b, id } = await running(['sleep', '1000']);
    const pid = b.proc.pid!;
    const before = rss(pid);
    const head = Buffer.alloc(8);
    head.writeUInt16BE(0x8003, 0);
    head.writeUInt16BE(6, 2);
    head.writeUInt32BE(8 * MiB, 4);
    const payload = Buffer.alloc(8 * MiB, 1);
    payload.writeUInt32BE(1, 0);
    const clients: Client[] = [];
    for (let i = 0; i < 16; i++) {
      const { url } = await b.runtime.Exec({ container_id: id, cmd: ['true'], stdout: true });
      const c = await upgrade(url, 'v4.channel.k8s.io');
      cleanup.push(() => void c.sock.destroy());
      c.sock.on('error', () => undefined);
      c.sock.pause(); // a client that reads nothing back
      c.sock.write(Buffer.concat([head, payload]));
      clients.push(c);
    }
    await until(async () => (clients.every((c) => c.sock.closed) ? true : undefined), 10_000);
    assert.ok(rss(pid) - before < 16 * MiB, `berthd grew by ${((rss(pid) - before) / MiB).toFixed(1)} MiB`);

    const { url } = await b.runtime.Exec({ container_id: id, cmd: ['true'], stdout: true });
    const c = await upgrade(url, 'v4.channel.k8s.io');
    cleanup.push(() => void c.sock.destroy());
    const syn = Buffer.alloc(10);
    syn.writeUInt32BE(1, 0);
    c.control(1, 0, Buffer.concat([syn, Buffer.from('garbage, not a zlib stream')]));
    const goaway = await c.until(() => c.frames.find((f) => f.control && f.type === 7), 1000);
    assert.equal(goaway.payload.readUInt32BE(4), 1, 'GOAWAY with PROTOCOL_ERROR');
    await until(async () => (c.sock.closed ? true : undefined), 1000);
    assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status?.state, 'CONTAINER_RUNNING');
  });

  it('attach without stdin leaves the container’s stdin open', async () => {
    // With stdin_once, conmon closes the container's stdin when an attach connection ends
    // its input: one that only watches the output must not do that as it starts.
    const { b, id } = await running(['sh', '-c', 'echo ready; while read l; do echo "got:$l"; done; echo bye'], { stdin: true, stdin_once: true });
    const watch = await b.runtime.Attach({ container_id: id, stdout: true });
    const c1 = await upgrade(watch.url, 'v4.channel.k8s.io');
    cleanup.push(() => void c1.sock.destroy());
    const out1 = (await openChannels(c1, ['error', 'stdout'])).get('stdout')!;
    const talk = await b.runtime.Attach({ container_id: id, stdin: true, stdout: true });
    const c2 = await upgrade(talk.url, 'v4.channel.k8s.io');
    cleanup.push(() => void c2.sock.destroy());
    const ids = await openChannels(c2, ['error', 'stdin', 'stdout']);
    c2.data(ids.get('stdin')!, Buffer.from('ping\n'));
    await c2.until(() => (c2.received(ids.get('stdout')!).data.toString().includes('got:ping') ? true : undefined), 10_000);
    // Both attached clients see the output; the container still reads its stdin.
    await c1.until(() => (c1.received(out1).data.toString().includes('got:ping') ? true : undefined), 10_000);
    assert.doesNotMatch(c1.received(out1).data.toString(), /bye/);
    assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status?.state, 'CONTAINER_RUNNING');
  });
});
