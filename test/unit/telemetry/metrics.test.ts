/**
 * The metrics exposition: the text format (names, labels, escaping, histograms), the gRPC
 * series under containerd's names with gRPC code names, the series the trace points feed
 * (pull progress included), the cAdvisor families and their KEP-2371 shapes. Where
 * Prometheus's `promtool` is installed, it checks the rendered text too.
 */
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { traced, tracedSync } from '../../../src/common/trace-points.js';
import { metricDescriptors, toPodSandboxMetrics } from '../../../src/cri/metrics/convert.js';
import { cadvisorFamilies, CADVISOR_METRICS, type CadvisorPodSample } from '../../../src/telemetry/cadvisor.js';
import { Counter, Gauge, Histogram, render } from '../../../src/telemetry/exposition.js';
import { BerthMetrics, grpcCodeName } from '../../../src/telemetry/metrics.js';
import { parseHostPort } from '../../../src/telemetry/metrics-server.js';

/** promtool's verdict on a text exposition, or undefined when promtool is not installed. */
function promtool(text: string): { ok: boolean; output: string } | undefined {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  if (r.error) return undefined;
  // promtool exits 3 for lint advice (e.g. a counter without _total), 1 for a parse error.
  return { ok: r.status === 0 || r.status === 3, output: r.stdout + r.stderr };
}

/** The value of the sample line `series` (name and labels as rendered). */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

const sources = {
  serviceOf: (m: string) => (m === 'PullImage' ? 'runtime.v1.ImageService' : 'runtime.v1.RuntimeService'),
  podsByState: () => ({ ready: 2, notready: 1 }),
  containersByState: () => ({ running: 3 }),
  liveShims: () => 3,
  databaseBytes: () => 4096,
};

describe('telemetry: metrics exposition', () => {
  let metrics: BerthMetrics | undefined;
  afterEach(() => {
    metrics?.close();
    metrics = undefined;
  });

  it('writes counters, gauges and histograms in the text format, escaping label values', () => {
    const c = new Counter('x_total', 'Help with \\ and\nnewline.', ['a']);
    c.inc({ a: 'quote " back \\ nl \n' }, 2);
    const g = new Gauge('y', 'A gauge.');
    g.set({}, 1.5);
    const h = new Histogram('z_seconds', 'A histogram.', ['m'], [0.1, 1]);
    h.observe({ m: 'A' }, 0.05);
    h.observe({ m: 'A' }, 0.5);
    h.observe({ m: 'A' }, 5);
    const text = render([c, g, h]);
    assert.equal(
      text,
      [
        '# HELP x_total Help with \\\\ and\\nnewline.',
        '# TYPE x_total counter',
        'x_total{a="quote \\" back \\\\ nl \\n"} 2',
        '# HELP y A gauge.',
        '# TYPE y gauge',
        'y 1.5',
        '# HELP z_seconds A histogram.',
        '# TYPE z_seconds histogram',
        'z_seconds_bucket{m="A",le="0.1"} 1',
        'z_seconds_bucket{m="A",le="1"} 2',
        'z_seconds_bucket{m="A",le="+Inf"} 3',
        'z_seconds_sum{m="A"} 5.55',
        'z_seconds_count{m="A"} 3',
        '',
      ].join('\n'),
    );
    const check = promtool(text);
    if (check) assert.ok(check.ok, check.output);
  });

  it('names gRPC codes as containerd labels them', () => {
    assert.equal(grpcCodeName(grpc.status.OK), 'OK');
    assert.equal(grpcCodeName(grpc.status.CANCELLED), 'Canceled');
    assert.equal(grpcCodeName(grpc.status.NOT_FOUND), 'NotFound');
    assert.equal(grpcCodeName(grpc.status.FAILED_PRECONDITION), 'FailedPrecondition');
    assert.equal(grpcCodeName(grpc.status.UNAUTHENTICATED), 'Unauthenticated');
    // Every grpc-js code has a name of the same spelling (but for Go's "Canceled").
    for (const [name, code] of Object.entries(grpc.status)) {
      if (typeof code !== 'number') continue;
      const want = name === 'CANCELLED' ? 'canceled' : name.replace(/_/g, '').toLowerCase();
      assert.equal(grpcCodeName(code).toLowerCase(), want, name);
    }
  });

  it('counts RPCs under grpc_server_* with type, service, method and code, and times them', () => {
    metrics = new BerthMetrics(sources);
    metrics.begin('ContainerStatus', new grpc.Metadata(), false).end(grpc.status.NOT_FOUND, 'container "x" not found');
    metrics.begin('ContainerStatus', new grpc.Metadata(), false).end(grpc.status.OK);
    metrics.begin('PullImage', new grpc.Metadata(), false).end(grpc.status.OK);
    metrics.begin('GetContainerEvents', new grpc.Metadata(), true).end(grpc.status.CANCELLED);
    const text = metrics.render();
    const rt = 'grpc_type="unary",grpc_service="runtime.v1.RuntimeService",grpc_method="ContainerStatus"';
    assert.equal(sample(text, `grpc_server_started_total{${rt}}`), 2);
    assert.equal(sample(text, `grpc_server_handled_total{${rt},grpc_code="NotFound"}`), 1);
    assert.equal(sample(text, `grpc_server_handled_total{${rt},grpc_code="OK"}`), 1);
    assert.equal(sample(text, `grpc_server_handling_seconds_count{${rt}}`), 2);
    assert.equal(sample(text, 'grpc_server_handled_total{grpc_type="unary",grpc_service="runtime.v1.ImageService",grpc_method="PullImage",grpc_code="OK"}'), 1);
    assert.equal(
      sample(
        text,
        'grpc_server_handled_total{grpc_type="server_stream",grpc_service="runtime.v1.RuntimeService",grpc_method="GetContainerEvents",grpc_code="Canceled"}',
      ),
      1,
    );
    assert.equal(sample(text, 'berth_pods{state="ready"}'), 2);
    assert.equal(sample(text, 'berth_containers{state="running"}'), 3);
    assert.equal(sample(text, 'berth_shims_live'), 3);
    assert.equal(sample(text, 'berth_database_size_bytes'), 4096);
    assert.ok(sample(text, 'berth_process_resident_memory_bytes')! > 10 * 1024 * 1024);
    assert.ok(sample(text, 'berth_process_heap_bytes{kind="used"}')! > 0);
    const check = promtool(text);
    if (check) assert.ok(check.ok, check.output);
  });

  it('feeds pull, step and database series from the trace points, with a pull in progress showing its bytes', async () => {
    metrics = new BerthMetrics(sources);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let fetched!: () => void;
    const fetchedSome = new Promise<void>((r) => (fetched = r));
    const pull = traced('berth:image.pull', { image: 'docker.io/library/busybox:latest' }, async () => {
      const step = { image: 'docker.io/library/busybox:latest', digest: 'sha256:aa', bytes: 0 };
      await traced('berth:image.fetch', step, async () => {
        step.bytes += 1000;
        fetched();
        await gate;
        step.bytes += 500;
      });
      await traced('berth:image.unpack', { image: 'docker.io/library/busybox:latest', digest: 'sha256:aa' }, async () => undefined);
    });
    await fetchedSome;
    let text = metrics.render();
    assert.equal(sample(text, 'berth_image_pulls_in_progress'), 1);
    assert.equal(sample(text, 'berth_image_pull_progress_bytes{image="docker.io/library/busybox:latest"}'), 1000);
    release();
    await pull;
    await assert.rejects(traced('berth:image.pull', { image: 'x' }, () => Promise.reject(new Error('unauthorized'))));
    tracedSync('berth:db.write', { table: 'containers' }, () => 1);
    await traced('berth:cni', { plugin: 'bridge', command: 'ADD', podId: 'p' }, async () => undefined);
    await traced('berth:runtime', { handler: 'runc', verb: 'start', containerId: 'c' }, async () => undefined);
    text = metrics.render();
    assert.equal(sample(text, 'berth_image_pulls_in_progress'), 0);
    assert.equal(sample(text, 'berth_image_pull_progress_bytes{image="docker.io/library/busybox:latest"}'), undefined);
    assert.equal(sample(text, 'berth_image_pulls_started_total'), 2);
    assert.equal(sample(text, 'berth_image_pulls_failed_total'), 1);
    assert.equal(sample(text, 'berth_image_pull_bytes_total'), 1500);
    assert.equal(sample(text, 'berth_image_pull_duration_seconds_count'), 1);
    assert.equal(sample(text, 'berth_image_layer_fetch_duration_seconds_count'), 1);
    assert.equal(sample(text, 'berth_image_layer_unpack_duration_seconds_count'), 1);
    assert.equal(sample(text, 'berth_db_write_duration_seconds_count{table="containers"}'), 1);
    assert.equal(sample(text, 'berth_cni_plugin_duration_seconds_count{plugin="bridge",command="ADD"}'), 1);
    assert.equal(sample(text, 'berth_runtime_call_duration_seconds_count{handler="runc",verb="start"}'), 1);
    // Closed metrics no longer listen.
    metrics.close();
    tracedSync('berth:db.write', { table: 'containers' }, () => 1);
    assert.equal(sample(metrics.render(), 'berth_db_write_duration_seconds_count{table="containers"}'), 1);
  });

  it('writes cAdvisor series for pods and containers, and the same metrics in KEP-2371 shapes', () => {
    const pods: CadvisorPodSample[] = [
      {
        id: 'pod1',
        target: { container: '', id: 'pod1', image: '', namespace: 'ns', pod: 'web' },
        usage: {
          timestampMs: 1_700_000_000_000,
          cpuUsageNs: 3_500_000_000n,
          network: [{ name: 'eth0', rxBytes: 10n, rxErrors: 0n, txBytes: 20n, txErrors: 1n }],
        },
        containers: [
          {
            id: 'c1',
            target: { container: 'app', id: 'c1', image: 'busybox', namespace: 'ns', pod: 'web' },
            usage: {
              timestampMs: 1_700_000_000_000,
              cpuUsageNs: 2_250_000_000n,
              memoryUsage: 300n,
              workingSet: 200n,
              rss: 100n,
              memoryLimit: 0n,
              oomEvents: 0n,
              pageFaults: 7n,
              fs: { device: '/var/lib/berth/snapshots', bytes: 4096n },
            },
          },
        ],
      },
    ];
    const text = render(cadvisorFamilies(pods));
    const c1 = 'container="app",id="c1",image="busybox",namespace="ns",pod="web"';
    assert.equal(sample(text, `container_cpu_usage_seconds_total{${c1}}`), 2.25);
    assert.equal(sample(text, `container_memory_working_set_bytes{${c1}}`), 200);
    assert.equal(sample(text, `container_memory_rss{${c1}}`), 100);
    assert.equal(sample(text, `container_spec_memory_limit_bytes{${c1}}`), 0);
    assert.equal(sample(text, `container_oom_events_total{${c1}}`), 0);
    assert.equal(sample(text, `container_memory_failures_total{${c1},failure_type="pgfault",scope="container"}`), 7);
    assert.equal(sample(text, `container_fs_usage_bytes{${c1},device="/var/lib/berth/snapshots"}`), 4096);
    const pod = 'container="",id="pod1",image="",namespace="ns",pod="web"';
    assert.equal(sample(text, `container_cpu_usage_seconds_total{${pod}}`), 3.5);
    assert.equal(sample(text, `container_network_receive_bytes_total{${pod},interface="eth0"}`), 10);
    assert.equal(sample(text, `container_network_transmit_errors_total{${pod},interface="eth0"}`), 1);
    const check = promtool(text);
    if (check) assert.ok(check.ok, check.output);

    const descriptors = metricDescriptors();
    assert.deepEqual(
      descriptors.map((d) => d.name),
      CADVISOR_METRICS.map((m) => m.name),
    );
    const net = descriptors.find((d) => d.name === 'container_network_receive_bytes_total')!;
    assert.deepEqual(net.label_keys, ['container', 'id', 'image', 'namespace', 'pod', 'interface']);
    const m = toPodSandboxMetrics(pods[0]!);
    assert.equal(m.pod_sandbox_id, 'pod1');
    const rx = m.metrics!.find((x) => x.name === 'container_network_receive_bytes_total')!;
    assert.deepEqual(rx.label_values, ['', 'pod1', '', 'ns', 'web', 'eth0']);
    assert.equal(rx.metric_type, 'COUNTER');
    assert.equal(rx.timestamp, '1700000000000000000');
    const cpu = m.container_metrics![0]!.metrics!.find((x) => x.name === 'container_cpu_usage_seconds_total')!;
    assert.deepEqual(cpu.value, { value: '2' });
    assert.deepEqual(cpu.label_values, ['app', 'c1', 'busybox', 'ns', 'web']);
    const ws = m.container_metrics![0]!.metrics!.find((x) => x.name === 'container_memory_working_set_bytes')!;
    assert.equal(ws.metric_type, 'GAUGE');
    assert.deepEqual(ws.value, { value: '200' });
  });

  it('parses listen addresses', () => {
    assert.deepEqual(parseHostPort('127.0.0.1:9102'), { host: '127.0.0.1', port: 9102 });
    assert.deepEqual(parseHostPort('[::1]:0'), { host: '::1', port: 0 });
    assert.equal(parseHostPort('127.0.0.1'), undefined);
    assert.equal(parseHostPort('127.0.0.1:70000'), undefined);
  });
});
