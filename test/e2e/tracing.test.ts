/**
 * OpenTelemetry tracing end to end: berthd exports its spans over OTLP/gRPC to a receiver
 * of the test's own on 127.0.0.1. A call's span continues the W3C trace context sent in
 * its metadata; CNI plugin calls and runtime calls are its children; an unreachable
 * collector costs the calls nothing and its lost spans are counted in Status.
 */
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.js';
import { freePort } from '../helpers/registry.js';

/** Batches leave berthd every 100 ms rather than every 5 s (OTEL_BSP_SCHEDULE_DELAY, read by the SDK). */
const FAST_EXPORT = { OTEL_BSP_SCHEDULE_DELAY: '100' };

/** Calls a unary RPC of a generated client with metadata of the test's choosing. */
function callWith<Res>(client: grpc.Client, method: string, req: unknown, md: Record<string, string>): Promise<Res> {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md)) metadata.set(k, v);
  return new Promise((resolve, reject) =>
    (client as unknown as Record<string, (r: unknown, m: grpc.Metadata, cb: (e: Error | null, r: Res) => void) => void>)[method]!.call(
      client,
      req,
      metadata,
      (err, res) => (err ? reject(err) : resolve(res)),
    ),
  );
}

function tracingInfo(info: Record<string, string>): Record<string, unknown> {
  assert.ok(info.tracing, `Status verbose info has a "tracing" key: ${Object.keys(info).join(', ')}`);
  return JSON.parse(info.tracing) as Record<string, unknown>;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

describe('tracing', function () {
  this.timeout(90_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  async function withReceiver(): Promise<{ rx: OtlpReceiver; b: Berthd }> {
    const rx = await OtlpReceiver.start();
    cleanup.push(() => rx.stop());
    const b = await Berthd.start({
      config: `[tracing]\nendpoint = "${rx.endpoint}"\nsampling_rate_per_million = 1000000\nservice_name = "berth-test"\n`,
      env: FAST_EXPORT,
    });
    cleanup.push(() => b.dispose());
    return { rx, b };
  }

  const one = (rx: OtlpReceiver, f: (s: ReceivedSpan) => boolean): Promise<ReceivedSpan> => until(async () => rx.spans.find(f));

  it("continues the caller's trace: RunPodSandbox with CNI child spans, StartContainer with runtime child spans", async () => {
    const { rx, b } = await withReceiver();
    const net = testBridge(b, 'tt');
    cleanup.push(net.remove);
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });

    const traceId = randomBytes(16).toString('hex');
    const parentId = randomBytes(8).toString('hex');
    const podConfig = { metadata: { name: `p${net.tag}`, namespace: 'test', uid: `u${net.tag}`, attempt: 0 }, hostname: `p${net.tag}`, log_directory: logDir };
    const { pod_sandbox_id: pod } = await callWith<{ pod_sandbox_id: string }>(
      b.runtime.raw,
      'RunPodSandbox',
      { config: podConfig },
      { traceparent: `00-${traceId}-${parentId}-01`, tracestate: 'kubelet=1' },
    );

    const run = await one(rx, (s) => s.name === 'runtime.v1.RuntimeService/RunPodSandbox');
    assert.equal(run.traceId, traceId);
    assert.equal(run.parentSpanId, parentId);
    assert.equal(run.kind, 2, 'a SERVER span');
    assert.equal(run.attributes['rpc.system'], 'grpc');
    assert.equal(run.attributes['rpc.service'], 'runtime.v1.RuntimeService');
    assert.equal(run.attributes['rpc.method'], 'RunPodSandbox');
    assert.equal(run.attributes['rpc.grpc.status_code'], 0);
    assert.equal(run.resource['service.name'], 'berth-test');

    // The CNI plugin calls sit under the pod.network step's span, itself a child of the RPC's (the steps of the pod startup timeline are spans too).
    const network = rx.childrenOf(run).filter((s) => s.name === 'pod.network');
    assert.equal(
      network.length,
      1,
      `child spans of RunPodSandbox: ${rx
        .childrenOf(run)
        .map((s) => s.name)
        .join(', ')}`,
    );
    for (const step of ['pod.validate', 'pod.namespaces', 'pod.files']) {
      assert.ok(
        rx.childrenOf(run).some((s) => s.name === step),
        `a ${step} child span: ${rx
          .childrenOf(run)
          .map((s) => s.name)
          .join(', ')}`,
      );
    }
    const cni = rx.childrenOf(network[0]!).filter((s) => s.name.startsWith('cni '));
    const plugins = cni.map((s) => s.attributes['berth.cni.plugin']).sort();
    // lo is brought up as the network namespace is pinned: the loopback plugin is not run.
    assert.deepEqual(plugins, ['bridge'], `CNI child spans: ${cni.map((s) => s.name).join(', ')}`);
    const bridge = cni.find((s) => s.attributes['berth.cni.plugin'] === 'bridge')!;
    assert.equal(bridge.name, 'cni ADD bridge');
    assert.equal(bridge.attributes['berth.cni.command'], 'ADD');
    assert.equal(bridge.attributes['berth.pod_sandbox.id'], pod);

    // A container's start: the runtime's `start` is a child of the StartContainer span.
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: { metadata: { name: 'sleep', attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sleep', '60'], log_path: 'sleep/0.log' },
      sandbox_config: podConfig,
    });
    await b.runtime.StartContainer({ container_id: id });
    const start = await one(rx, (s) => s.name === 'runtime.v1.RuntimeService/StartContainer');
    assert.notEqual(start.traceId, traceId, 'a call without trace context starts a trace of its own');
    const verbs = await until(async () => {
      const v = rx.childrenOf(start).filter((s) => s.name.startsWith('runtime '));
      return v.length > 0 ? v : undefined;
    });
    const startVerb = verbs.find((s) => s.attributes['berth.runtime.verb'] === 'start');
    assert.ok(startVerb, `runtime child spans of StartContainer: ${verbs.map((s) => s.name).join(', ')}`);
    assert.equal(startVerb.attributes['berth.runtime.handler'], 'runc');
    assert.equal(startVerb.attributes['container.id'], id);

    await b.runtime.StopPodSandbox({ pod_sandbox_id: pod });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    // A failed call's span carries its code and is marked an error.
    await b.runtime.ContainerStatus({ container_id: 'no-such-container' }).catch(() => undefined);
    const missing = await one(rx, (s) => s.name === 'runtime.v1.RuntimeService/ContainerStatus' && s.attributes['rpc.grpc.status_code'] !== 0);
    assert.equal(missing.attributes['rpc.grpc.status_code'], grpc.status.NOT_FOUND);
    assert.equal(missing.statusCode, 2);

    const info = tracingInfo((await b.runtime.Status({ verbose: true })).info);
    assert.equal(info.enabled, true);
    assert.equal(info.exporter, 'ok');
    assert.ok(Number(info.exported_spans) > 0);
    assert.equal(info.dropped_spans, 0);
  });

  it('ignores a malformed traceparent: the span is the root of a new trace', async () => {
    const { rx, b } = await withReceiver();
    // Not Version: the harness's readiness probe sends those, traced as roots too.
    for (const bad of ['garbage', `00-${'0'.repeat(32)}-${'1'.repeat(16)}-01`, `00-${'a'.repeat(31)}-${'1'.repeat(16)}-01`, `00-${'ab'.repeat(16)}-xyz-01`]) {
      rx.spans.length = 0;
      await callWith(b.runtime.raw, 'ListPodSandbox', {}, { traceparent: bad });
      const span = await one(rx, (s) => s.name === 'runtime.v1.RuntimeService/ListPodSandbox');
      assert.equal(span.parentSpanId, '', `traceparent ${bad} gives a root span`);
      assert.match(span.traceId, /^[0-9a-f]{32}$/);
      assert.notEqual(span.traceId, '0'.repeat(32));
      assert.equal(span.attributes['rpc.grpc.status_code'], 0, 'and the call succeeds');
    }
  });

  it('an unreachable collector does not fail calls; lost spans are counted in Status', async () => {
    const closed = await freePort();
    const off = await Berthd.start();
    cleanup.push(() => off.dispose());
    const on = await Berthd.start({ config: `[tracing]\nendpoint = "127.0.0.1:${closed}"\nsampling_rate_per_million = 1000000\n`, env: FAST_EXPORT });
    cleanup.push(() => on.dispose());

    const time = async (b: Berthd): Promise<number[]> => {
      const ms: number[] = [];
      for (let i = 0; i < 20; i++) {
        const t0 = process.hrtime.bigint();
        await b.runtime.Version({ version: 'v1' });
        ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      return ms;
    };
    const offMs = await time(off);
    const onMs = await time(on);
    console.log(`      Version median: tracing off ${median(offMs).toFixed(2)} ms, unreachable collector ${median(onMs).toFixed(2)} ms`);

    const info = await until(async () => {
      const i = tracingInfo((await on.runtime.Status({ verbose: true })).info);
      return Number(i.dropped_spans) >= 20 ? i : undefined;
    }, 30_000);
    assert.equal(info.exporter, 'failing');
    assert.equal(info.exported_spans, 0);
    assert.equal(typeof info.last_error, 'string');
    assert.deepEqual(tracingInfo((await off.runtime.Status({ verbose: true })).info), { enabled: false });
  });
});
