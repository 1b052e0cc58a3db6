/**
 * The streaming suite: the CRI streaming server as kubectl exec and kubectl port-forward
 * use it, over SPDY/3.1 with the test client of test/helpers/spdy-client.ts, against
 * berth and (when installed) containerd 1.6 through the same code.
 *
 * - exec first byte: from the Exec RPC to the first byte of `echo` output on stdout:
 *   Exec, the HTTP upgrade to the URL it hands out, the error and stdout streams opened
 *   (v4.channel.k8s.io), the process started in the container, its output relayed.
 *   Two warm-ups, then `EXECS` timed calls one after the other.
 * - port-forward: one pod on a bridge network of the run's own, busybox httpd serving a
 *   10 MB file of random bytes on the pod's port 8080. Each run opens one port-forward
 *   session (as `kubectl port-forward` does) and 20 connections on it at once, each
 *   fetching the file with HTTP/1.0 GET; timed from the first SYN_STREAM until the last
 *   byte of the 20th body. One warm-up transfer, then `runs` timed ones.
 */
import { randomUUID } from 'node:crypto';
import type { CriClients } from '../../test/helpers/cri-client.js';
import { upgrade, type Client } from '../../test/helpers/spdy-client.js';
import { pushFixtures } from '../test-images/oci.js';
import { containerdAvailable } from './containerd.js';
import { onBerthd, onContainerd } from './runtimes.js';
import { compare, freePort, label, median, ms, out, sleep, summary, type SuiteContext, type SuiteNet } from './suite.js';

/** Timed Exec calls per runtime. */
const EXECS = 20;
/** Concurrent port-forward connections per transfer. */
const CONNS = 20;
/** Bytes each connection fetches. */
const FILE_BYTES = 10_000_000;
const HTTP_PORT = 8080;

const RST_STREAM = 3;
const GOAWAY = 7;
const WINDOW_UPDATE = 9;

interface StreamingFigures {
  /** Exec RPC to first stdout byte, ms. */
  firstByte: number[];
  /** 20 x 10 MB over one port-forward session, ms. */
  transfer: number[];
}

/** Exec `echo` in the container and time until its first output byte arrives; the exit is awaited (not timed). */
async function execFirstByte(c: CriClients, id: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  const { url } = await c.runtime.Exec({ container_id: id, cmd: ['echo', 'first-byte'], stdout: true });
  const client = await upgrade(url, 'v4.channel.k8s.io');
  try {
    await client.synStream(1, { streamtype: 'error' });
    await client.synStream(3, { streamtype: 'stdout' });
    await client.until(() => (client.frames.some((f) => !f.control && f.streamId === 3 && f.payload.length > 0) ? true : undefined), 10_000);
    const took = ms(t0);
    if (!client.received(3).data.toString().startsWith('first-byte')) throw new Error(`exec printed ${JSON.stringify(client.received(3).data.toString())}`);
    // The exit is reported on the error stream (empty or a Success Status for 0), which then ends: FIN from berth, RST_STREAM from containerd.
    await client.until(
      () => (client.received(1).fin || client.frames.some((f) => f.control && f.type === RST_STREAM && f.streamId === 1) ? true : undefined),
      10_000,
    );
    const err = client.received(1).data.toString();
    if (err !== '' && !/"status":"Success"/.test(err)) throw new Error(`exec reported ${err}`);
    return took;
  } finally {
    client.sock.destroy();
  }
}

/** Sends a WINDOW_UPDATE of `delta` for stream `id` (0: the session), for servers that keep SPDY/3.1 windows. */
function windowUpdate(c: Client, id: number, delta: number): void {
  const p = Buffer.alloc(8);
  p.writeUInt32BE(id, 0);
  p.writeUInt32BE(delta, 4);
  c.control(WINDOW_UPDATE, 0, p);
}

/**
 * One port-forward session with CONNS connections to the pod's HTTP_PORT at once, each
 * fetching /f; resolves with the time taken once every body is complete.
 */
async function transfer(c: CriClients, pod: string): Promise<number> {
  const { url } = await c.runtime.PortForward({ pod_sandbox_id: pod, port: [HTTP_PORT] });
  const client = await upgrade(url, 'portforward.k8s.io');
  client.sock.on('error', () => undefined);
  const conns = Array.from({ length: CONNS }, (_, i) => ({ errorId: 1 + 4 * i, dataId: 3 + 4 * i, head: Buffer.alloc(0), bytes: 0, fin: false, error: '' }));
  const byData = new Map(conns.map((x) => [x.dataId, x]));
  const byError = new Map(conns.map((x) => [x.errorId, x]));
  let failure: Error | undefined;
  const done = new Promise<void>((resolve, reject) => {
    // After the client has parsed a chunk into frames: account for them and drop them (200 MB are not kept).
    client.sock.on('data', () => {
      for (const f of client.frames.splice(0)) {
        if (f.control) {
          if (f.type === RST_STREAM || f.type === GOAWAY) failure ??= new Error(`port-forward: control frame ${f.type} for stream ${f.streamId}`);
          continue;
        }
        const e = byError.get(f.streamId);
        if (e) e.error += f.payload.toString();
        const x = byData.get(f.streamId);
        if (!x) continue;
        if (f.payload.length > 0) {
          if (x.head.length < 512) x.head = Buffer.concat([x.head, f.payload.subarray(0, 512 - x.head.length)]);
          x.bytes += f.payload.length;
          windowUpdate(client, f.streamId, f.payload.length);
          windowUpdate(client, 0, f.payload.length);
        }
        if (f.flags & 1) x.fin = true;
      }
      if (failure) reject(failure);
      else if (conns.every((x) => x.fin)) resolve();
    });
    client.sock.on('close', () => reject(new Error('port-forward: the server closed the session')));
  });
  done.catch(() => undefined); // awaited below; a failure while the streams are still being opened must not go unhandled
  const t0 = process.hrtime.bigint();
  try {
    for (const [i, x] of conns.entries()) {
      const h = { port: String(HTTP_PORT), requestid: String(i) };
      await client.synStream(x.errorId, { ...h, streamtype: 'error' });
      await client.synStream(x.dataId, { ...h, streamtype: 'data' });
      client.data(x.dataId, Buffer.from('GET /f HTTP/1.0\r\n\r\n'));
    }
    await Promise.race([done, sleep(120_000).then(() => Promise.reject(new Error('port-forward: transfer not complete within 120 s')))]);
    const took = ms(t0);
    for (const x of conns) {
      const head = x.head.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (!head.startsWith('HTTP/1.') || !/^HTTP\/1\.\d 200/.test(head) || end < 0)
        throw new Error(`port-forward ${x.dataId}: ${JSON.stringify(head.slice(0, 120))} ${x.error}`);
      if (x.bytes - (end + 4) !== FILE_BYTES) throw new Error(`port-forward ${x.dataId}: ${x.bytes - (end + 4)} body bytes, expected ${FILE_BYTES}`);
    }
    return took;
  } finally {
    client.sock.destroy();
  }
}

function podConfig(logDir: string): Record<string, unknown> {
  return {
    metadata: { name: 'bench-streaming', namespace: 'bench', uid: randomUUID(), attempt: 0 },
    hostname: 'bench-streaming',
    log_directory: logDir,
    labels: { app: 'berth-bench' },
    linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
  };
}

/** The pod with httpd serving /f, the measurements, then everything removed. */
async function streamingRuns(name: string, c: CriClients, net: SuiteNet, image: string, runs: number): Promise<StreamingFigures> {
  const podCfg = podConfig(net.logDir);
  const { pod_sandbox_id: pod } = await c.runtime.RunPodSandbox({ config: podCfg });
  try {
    const config = {
      metadata: { name: 'web', attempt: 0 },
      image: { image },
      command: ['sh', '-c', `mkdir -p /w && head -c ${FILE_BYTES} /dev/urandom > /w/.f && mv /w/.f /w/f && exec httpd -f -p ${HTTP_PORT} -h /w`],
      log_path: 'web.log',
      linux: { security_context: { namespace_options: { network: 'POD' as const, pid: 'CONTAINER' as const, ipc: 'POD' as const } } },
    };
    const { container_id: id } = await c.runtime.CreateContainer({ pod_sandbox_id: pod, config, sandbox_config: podCfg });
    await c.runtime.StartContainer({ container_id: id });
    for (let i = 0; ; i++) {
      const r = await c.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', `test -s /w/f && netstat -ltn | grep -q ':${HTTP_PORT} '`], timeout: 10 });
      if (r.exit_code === 0) break;
      if (i > 100) throw new Error(`${name}: httpd did not come up in the pod`);
      await sleep(100);
    }

    const firstByte: number[] = [];
    for (let i = 0; i < EXECS + 2; i++) {
      const t = await execFirstByte(c, id);
      if (i >= 2) firstByte.push(t);
    }
    const transferMs: number[] = [];
    await transfer(c, pod); // warm-up
    for (let i = 0; i < runs; i++) transferMs.push(await transfer(c, pod));

    await c.runtime.StopContainer({ container_id: id, timeout: 0 });
    await c.runtime.RemoveContainer({ container_id: id });
    return { firstByte, transfer: transferMs };
  } finally {
    await c.runtime.StopPodSandbox({ pod_sandbox_id: pod }).catch(() => undefined);
    await c.runtime.RemovePodSandbox({ pod_sandbox_id: pod }).catch(() => undefined);
  }
}

const mbps = (t: number): number => (CONNS * FILE_BYTES) / 1e6 / (t / 1000);

function printStreaming(name: string, f: StreamingFigures): void {
  out(`${label(name)} Exec to first stdout byte (SPDY): ${summary(f.firstByte)}`);
  out(
    `${label(name)} ${CONNS} x ${FILE_BYTES / 1e6} MB port-forward, one session: ${summary(f.transfer)}; median ${mbps(median(f.transfer)).toFixed(0)} MB/s in total`,
  );
}

export async function streamingSuite(ctx: SuiteContext): Promise<void> {
  const figures: Partial<Record<'berth' | 'containerd', StreamingFigures>> = {};
  out(
    `streaming (SPDY/3.1): ${EXECS} Exec calls timed to the first output byte (after 2 warm-ups); ${ctx.runs} transfers of ${CONNS} concurrent port-forward connections x ${FILE_BYTES / 1e6} MB from busybox httpd in a pod (after 1 warm-up)`,
  );
  const image = (await pushFixtures(ctx.registryHost)).busybox.ref;
  if (ctx.runBerth) {
    figures.berth = await onBerthd(ctx, 'streaming', '10.199.0.0/24', async (b, net) => {
      await b.image.PullImage({ image: { image } });
      return streamingRuns('berth', b.clients, net, image, ctx.runs);
    });
    printStreaming('berth', figures.berth);
  }
  if (ctx.runContainerd && !containerdAvailable()) out(`${label('containerd')} not installed: no comparison`);
  else if (ctx.runContainerd) {
    const streamServerPort = await freePort();
    figures.containerd = await onContainerd(
      ctx,
      'streaming',
      '10.200.0.0/24',
      async (ctr, net) => {
        await ctr.clients.image.PullImage({ image: { image } });
        return streamingRuns('containerd', ctr.clients, net, image, ctx.runs);
      },
      { streamServerPort },
    );
    printStreaming('containerd', figures.containerd);
  }
  const { berth, containerd } = figures;
  if (berth && containerd) {
    out();
    compare('Exec to first byte', berth.firstByte, containerd.firstByte);
    compare(`${CONNS} x ${FILE_BYTES / 1e6} MB port-forward`, berth.transfer, containerd.transfer);
    out(
      `port-forward throughput berth/containerd: ${(mbps(median(berth.transfer)) / mbps(median(containerd.transfer))).toFixed(2)}x (>1: berth moves bytes faster)`,
    );
  }
}
