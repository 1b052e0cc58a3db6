/**
 * GetContainerEvents (kubelet's evented PLEG) against a real berthd, through the raw
 * server-streaming call: the sequence of each container over a pod's whole life with the
 * statuses attached, the exits recovery finds after a restart, the stream ending when
 * berthd drains, and a subscriber that stops reading being cut off while another one
 * keeps receiving.
 */
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import * as http2 from 'node:http2';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ContainerEventResponse__Output } from '../../src/cri/gen/runtime/v1/ContainerEventResponse.js';
import { criApi } from '../../src/cri/proto.js';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';

/** One GetContainerEvents stream, as a test watches it. */
interface Subscriber {
  call: grpc.ClientReadableStream<ContainerEventResponse__Output>;
  events: ContainerEventResponse__Output[];
  /** The stream's final status, once it ended. */
  status: grpc.StatusObject | undefined;
  error: grpc.ServiceError | undefined;
}

/** Subscribes, resolving once berthd has admitted the stream (its headers came). */
async function subscribe(b: Berthd): Promise<Subscriber> {
  const call = b.runtime.raw.GetContainerEvents({}) as unknown as grpc.ClientReadableStream<ContainerEventResponse__Output>;
  const sub: Subscriber = { call, events: [], status: undefined, error: undefined };
  call.on('status', (s: grpc.StatusObject) => (sub.status = s));
  call.on('error', (e: grpc.ServiceError) => (sub.error = e));
  call.on('data', (e: ContainerEventResponse__Output) => sub.events.push(e));
  await new Promise<void>((resolve, reject) => {
    call.once('metadata', () => resolve());
    call.once('error', reject);
  });
  return sub;
}

/**
 * A subscriber that stops reading: GetContainerEvents over a bare HTTP/2 stream, paused as
 * soon as its headers come, so that flow control holds berthd's writes back. (grpc-js's
 * client keeps reading into its own buffers, so it cannot play this part.) `resume()`
 * reads on: the messages that were in flight, then the stream's status.
 */
async function stalledSubscriber(
  socket: string,
): Promise<{ resume(): Promise<{ events: ContainerEventResponse__Output[]; code: number; details: string }>; close(): void }> {
  const session = http2.connect('http://localhost', { createConnection: () => connect(socket) });
  const req = session.request({
    ':method': 'POST',
    ':path': '/runtime.v1.RuntimeService/GetContainerEvents',
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  req.end(Buffer.from([0, 0, 0, 0, 0]));
  await new Promise<void>((resolve, reject) => {
    req.once('response', () => {
      req.pause();
      resolve();
    });
    req.once('error', reject);
  });
  const decode = criApi().runtime.v1.RuntimeService.service.GetContainerEvents.responseDeserialize as (b: Buffer) => ContainerEventResponse__Output;
  return {
    resume: () =>
      new Promise((resolve, reject) => {
        const chunks: Buffer[] = [];
        req.on('data', (d: Buffer) => chunks.push(d));
        req.once('trailers', (t) => {
          const all = Buffer.concat(chunks);
          const events: ContainerEventResponse__Output[] = [];
          for (let at = 0; at + 5 <= all.length; at += 5 + all.readUInt32BE(at + 1))
            events.push(decode(all.subarray(at + 5, at + 5 + all.readUInt32BE(at + 1))));
          resolve({ events, code: Number(t['grpc-status']), details: decodeURIComponent(String(t['grpc-message'] ?? '')) });
        });
        req.once('error', reject);
        req.resume();
      }),
    close: () => session.destroy(),
  };
}

const STATE_AFTER: Record<string, string> = {
  CONTAINER_CREATED_EVENT: 'CONTAINER_CREATED',
  CONTAINER_STARTED_EVENT: 'CONTAINER_RUNNING',
  CONTAINER_STOPPED_EVENT: 'CONTAINER_EXITED',
};

const ofContainer = (s: Subscriber, id: string): ContainerEventResponse__Output[] => s.events.filter((e) => e.container_id === id);

describe('container events (GetContainerEvents)', function () {
  this.timeout(120_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  async function start(config = '', reuse?: Berthd): Promise<Berthd> {
    const b = await Berthd.start({ config, ...(reuse ? { reuse: { dir: reuse.dir } } : {}) });
    cleanup.push(() => b.dispose());
    return b;
  }

  async function pod(b: Berthd): Promise<{ pod: string; uid: string; create(name: string, cmd: string): Promise<string> }> {
    const net = testBridge(b, 'be');
    cleanup.push(net.remove);
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const uid = `u${net.tag}`;
    const metadata = { name: `p${net.tag}`, namespace: 'events', uid, attempt: 0 };
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: { metadata, hostname: `p${net.tag}`, log_directory: logDir } });
    const create = async (name: string, cmd: string): Promise<string> =>
      (
        await b.runtime.CreateContainer({
          pod_sandbox_id: id,
          config: { metadata: { name, attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sh', '-c', cmd], log_path: `${name}.log` },
          sandbox_config: { metadata, log_directory: logDir },
        })
      ).container_id;
    return { pod: id, uid, create };
  }

  it('gives every subscriber CREATED, STARTED, STOPPED, DELETED per container, in order, with the pod and its containers as they were', async () => {
    const b = await start();
    const p = await pod(b);
    const subs = [await subscribe(b), await subscribe(b)];
    const exits = await p.create('exits', 'exit 3');
    await b.runtime.StartContainer({ container_id: exits });
    await until(async () => (subs.every((s) => ofContainer(s, exits).length === 3) ? true : undefined));
    const stopped = await p.create('stopped', 'sleep 1000');
    await b.runtime.StartContainer({ container_id: stopped });
    await b.runtime.StopContainer({ container_id: stopped, timeout: 0 });
    await b.runtime.RemoveContainer({ container_id: exits });
    await b.runtime.RemoveContainer({ container_id: stopped });
    await until(async () => (subs.every((s) => ofContainer(s, exits).length === 4 && ofContainer(s, stopped).length === 4) ? true : undefined));

    assert.deepEqual(subs[0]!.events, subs[1]!.events, 'both subscribers saw the same events');
    const types = ['CONTAINER_CREATED_EVENT', 'CONTAINER_STARTED_EVENT', 'CONTAINER_STOPPED_EVENT', 'CONTAINER_DELETED_EVENT'];
    for (const [id, exitCode] of [
      [exits, 3],
      [stopped, 137],
    ] as const) {
      const evs = ofContainer(subs[0]!, id);
      assert.deepEqual(
        evs.map((e) => e.container_event_type),
        types,
        `the events of ${id}`,
      );
      for (const e of evs) {
        assert.equal(e.pod_sandbox_status?.id, p.pod, 'the pod status is attached');
        assert.equal(e.pod_sandbox_status.metadata?.uid, p.uid);
        assert.equal(e.pod_sandbox_status.state, 'SANDBOX_READY');
        const own = e.containers_statuses.find((s) => s.id === id);
        if (e.container_event_type === 'CONTAINER_DELETED_EVENT') {
          assert.equal(own, undefined, 'a deleted container is no longer among the statuses');
          continue;
        }
        assert.equal(own?.state, STATE_AFTER[e.container_event_type], `${e.container_event_type}: the status matches the event`);
        assert.ok(BigInt(e.created_at) >= BigInt(own!.created_at), 'created_at is in nanoseconds, like the statuses');
        if (e.container_event_type === 'CONTAINER_STOPPED_EVENT') assert.equal(own!.exit_code, exitCode);
        assert.ok(
          e.containers_statuses.every((s) => s.metadata?.name === 'exits' || s.metadata?.name === 'stopped'),
          'the statuses are the pod’s containers',
        );
      }
    }
    // The second container's events carry the first one too, as it was then.
    const created2 = ofContainer(subs[0]!, stopped)[0]!;
    assert.equal(created2.containers_statuses.find((s) => s.id === exits)?.state, 'CONTAINER_EXITED');
    const times = subs[0]!.events.map((e) => BigInt(e.created_at));
    assert.deepEqual(
      times,
      [...times].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)),
      'in order',
    );
    for (const s of subs) s.call.cancel();
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: p.pod });
  });

  it('sends the exit of a container that stopped while berthd was down, as STOPPED, to a subscriber after the restart; streams end when berthd drains', async () => {
    // A generous shutdown timeout: a stream that held the drain would make the stop overrun the harness's.
    const config = 'shutdown_timeout_seconds = 60\n';
    const b = await Berthd.start({ config });
    cleanup.push(async () => void (await b.stop()));
    const p = await pod(b);
    const id = await p.create('victim', 'sleep 1000');
    await b.runtime.StartContainer({ container_id: id });
    const info = JSON.parse((await b.runtime.ContainerStatus({ container_id: id, verbose: true })).info.info!) as { pid: number };
    const watching = await subscribe(b);

    await b.stop('SIGTERM');
    await until(async () => (watching.status ? true : undefined));
    assert.equal(watching.status!.code, grpc.status.OK, `the stream ended cleanly at the drain: ${watching.status!.details}`);

    process.kill(info.pid, 'SIGKILL');
    await until(async () => (existsSync(join(b.state, 'exits', id)) ? true : undefined));
    const again = await start(config, b);
    const sub = await subscribe(again);
    await until(async () => (ofContainer(sub, id).length > 0 ? true : undefined));
    const [ev] = ofContainer(sub, id);
    assert.equal(ev!.container_event_type, 'CONTAINER_STOPPED_EVENT');
    assert.equal(ev!.pod_sandbox_status?.id, p.pod);
    const own = ev!.containers_statuses.find((s) => s.id === id);
    assert.equal(own?.state, 'CONTAINER_EXITED');
    assert.equal(own.exit_code, 137);
    sub.call.cancel();
    await again.runtime.RemovePodSandbox({ pod_sandbox_id: p.pod });
  });

  it('cuts a subscriber that stops reading off with RESOURCE_EXHAUSTED while another keeps receiving', async () => {
    const b = await start('[events]\nsubscriber_queue_size = 2\n');
    const p = await pod(b);
    const slow = await stalledSubscriber(b.socket);
    cleanup.push(() => slow.close());
    const normal = await subscribe(b);
    // Events that carry the statuses of ever more containers: the slow stream's window, its
    // buffers and its queue of 2 fill long before the last one.
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) ids.push(await p.create(`c${i}`, 'sleep 1000'));
    for (const id of ids) await b.runtime.RemoveContainer({ container_id: id });
    // Removing a container that never started stops it first: CREATED, STOPPED, DELETED each.
    const total = ids.length * 3;
    // Publishing queues an event for every subscriber at once: once the normal one has the
    // last event, the slow one's overflow has been decided.
    await until(async () => (normal.events.length === total ? true : undefined));
    const expected = [
      ...ids.map((id) => `${id} CONTAINER_CREATED_EVENT`),
      ...ids.flatMap((id) => [`${id} CONTAINER_STOPPED_EVENT`, `${id} CONTAINER_DELETED_EVENT`]),
    ];
    const seen = (e: ContainerEventResponse__Output): string => `${e.container_id} ${e.container_event_type}`;
    assert.deepEqual(normal.events.map(seen), expected);
    assert.equal(normal.status, undefined, 'the normal subscriber is still connected');

    const cut = await slow.resume();
    assert.equal(cut.code, grpc.status.RESOURCE_EXHAUSTED, cut.details);
    assert.match(cut.details, /fell 2 events behind/);
    assert.ok(cut.events.length < total, `the slow subscriber got ${cut.events.length} of ${total} events`);
    assert.deepEqual(cut.events.map(seen), expected.slice(0, cut.events.length), 'what it got came in order');

    const more = await p.create('after', 'sleep 1000');
    await until(async () => (ofContainer(normal, more).length === 1 ? true : undefined));
    normal.call.cancel();
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: p.pod });
  });
});
