/**
 * The metrics endpoint and the CRI metrics RPCs end to end, on a real berthd with a real
 * pod whose container burns CPU:
 * - ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics answer the
 *   cAdvisor names and labels, and /metrics/cadvisor serves the same series;
 * - Debian's `prometheus`, started here on 127.0.0.1 with a temporary config and storage,
 *   scrapes /metrics and /metrics/cadvisor every second; its HTTP API then shows berth's
 *   series, a ContainerStatus NotFound counted under its code, and the container's CPU
 *   rising. Skipped, with the reason printed, when prometheus is not installed;
 * - `[metrics] address = ""` turns the endpoint off, and verbose Status says so; a port
 *   already taken leaves berthd serving CRI without it, and Status says why.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { StreamPodSandboxMetricsResponse__Output } from '../../src/cri/gen/runtime/v1/StreamPodSandboxMetricsResponse.js';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { grpcError } from '../helpers/cri-client.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';

/** A free TCP port on 127.0.0.1 (bound then released). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

async function get(url: string): Promise<{ status: number; type: string; text: string }> {
  const res = await fetch(url);
  return { status: res.status, type: res.headers.get('content-type') ?? '', text: await res.text() };
}

/** One instant query's vector: each series's labels and value. */
async function query(base: string, q: string): Promise<Array<{ metric: Record<string, string>; value: number }>> {
  const res = await fetch(`${base}/api/v1/query?query=${encodeURIComponent(q)}`);
  const body = (await res.json()) as { status: string; data?: { result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
  assert.equal(body.status, 'success', JSON.stringify(body));
  return body.data!.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
}

describe('metrics', function () {
  this.timeout(120_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  /** berthd with one pod running a container `burn` that spins a CPU. */
  async function burningPod(): Promise<{ b: Berthd; pod: string; burn: string; address: string }> {
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    const net = testBridge(b, 'bm');
    cleanup.push(net.remove);
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const podCfg = {
      metadata: { name: `metrics-${net.tag}`, namespace: 'observed', uid: `u${net.tag}`, attempt: 0 },
      hostname: 'metrics',
      log_directory: logDir,
      linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
    };
    const { pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({ config: podCfg as never });
    cleanup.push(async () => {
      await b.runtime.StopPodSandbox({ pod_sandbox_id: pod }).catch(() => undefined);
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod }).catch(() => undefined);
    });
    const { container_id: burn } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: {
        metadata: { name: 'burn', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sh', '-c', 'while :; do :; done'],
        log_path: 'burn.log',
      },
      sandbox_config: podCfg as never,
    });
    await b.runtime.StartContainer({ container_id: burn });
    const address = await b.metricsAddress();
    assert.ok(address?.startsWith('127.0.0.1:'), `metrics address ${address}`);
    return { b, pod, burn, address: address! };
  }

  it('answers the CRI metrics RPCs and /metrics/cadvisor with the same cAdvisor series, and NOT_FOUND for unknown ids', async () => {
    const { b, pod, burn, address } = await burningPod();

    // Verbose Status counts what berthd holds now: the one pod, its running container and its shim.
    const counts = JSON.parse((await b.runtime.Status({ verbose: true })).info['counts']!) as Record<string, unknown>;
    assert.deepEqual(counts.podsByState, { ready: 1 });
    assert.deepEqual(counts.containersByState, { running: 1 });
    assert.equal(counts.liveShims, 1);
    assert.equal(counts.pullsInProgress, 0);
    assert.equal(counts.eventSubscribers, 0);
    assert.equal(counts.streamingSessions, 0);

    const { descriptors } = await b.runtime.ListMetricDescriptors({});
    const names = descriptors.map((d) => d.name);
    for (const n of ['container_cpu_usage_seconds_total', 'container_memory_working_set_bytes', 'container_memory_rss', 'container_spec_memory_limit_bytes']) {
      assert.ok(names.includes(n), `${n} in ${names.join(', ')}`);
    }
    const cpuDesc = descriptors.find((d) => d.name === 'container_cpu_usage_seconds_total')!;
    assert.deepEqual(cpuDesc.label_keys, ['container', 'id', 'image', 'namespace', 'pod']);

    // CPU seconds are whole over CRI: wait until the container has used more than one.
    const podMetrics = await until(
      async () => {
        const pm = (await b.runtime.ListPodSandboxMetrics({})).pod_metrics.find((p) => p.pod_sandbox_id === pod);
        const cpu = pm?.container_metrics.find((c) => c.container_id === burn)?.metrics.find((m) => m.name === 'container_cpu_usage_seconds_total');
        return cpu && Number(cpu.value!.value) >= 1 ? pm : undefined;
      },
      30_000,
      250,
    );
    const cm = podMetrics!.container_metrics.find((c) => c.container_id === burn)!;
    const cpu = cm.metrics.find((m) => m.name === 'container_cpu_usage_seconds_total')!;
    assert.equal(cpu.metric_type, 'COUNTER');
    assert.deepEqual(cpu.label_values.slice(0, 2), ['burn', burn]);
    assert.equal(cpu.label_values[3], 'observed');
    assert.ok(BigInt(cpu.timestamp) > 1_600_000_000n * 1_000_000_000n, `timestamp ${cpu.timestamp} in ns`);
    const ws = cm.metrics.find((m) => m.name === 'container_memory_working_set_bytes')!;
    assert.equal(ws.metric_type, 'GAUGE');
    assert.ok(Number(ws.value!.value) > 0);

    const streamed: string[] = [];
    for await (const res of b.runtime.raw.StreamPodSandboxMetrics({}) as AsyncIterable<StreamPodSandboxMetricsResponse__Output>) {
      streamed.push(...res.pod_sandbox_metrics.map((p) => p.pod_sandbox_id));
    }
    assert.deepEqual(streamed, [pod]);

    const scrape = await get(`http://${address}/metrics/cadvisor`);
    assert.equal(scrape.status, 200);
    assert.match(scrape.type, /^text\/plain; version=0\.0\.4/);
    const line = scrape.text.split('\n').find((l) => l.startsWith('container_cpu_usage_seconds_total{') && l.includes(`id="${burn}"`));
    assert.ok(line, scrape.text);
    assert.match(line, /container="burn"/);
    assert.match(line, /namespace="observed"/);
    assert.match(line, new RegExp(`image="${reg.fx.busybox.ref.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"`));
    assert.ok(Number(line.split(' ').pop()) >= 1, line);
    assert.equal((await get(`http://${address}/nope`)).status, 404);

    assert.equal((await grpcError(b.runtime.ContainerStats({ container_id: 'f'.repeat(64) }))).code, status.NOT_FOUND);
    assert.equal((await grpcError(b.runtime.PodSandboxStats({ pod_sandbox_id: 'f'.repeat(64) }))).code, status.NOT_FOUND);
  });

  it("is scraped by Debian's prometheus, which finds berth's series, a NotFound under its code, and a container's rising CPU", async function () {
    const probe = spawnSync('prometheus', ['--version'], { encoding: 'utf8' });
    if (probe.error) {
      console.log(`      skipped: prometheus is not installed (${probe.error.message}); hack/install.sh installs it`);
      this.skip();
    }
    const { b, burn, address } = await burningPod();
    assert.equal((await grpcError(b.runtime.ContainerStatus({ container_id: 'f'.repeat(64) }))).code, status.NOT_FOUND);

    const dir = mkdtempSync(join(tmpdir(), 'berth-prometheus-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(
      join(dir, 'prometheus.yml'),
      [
        'global:',
        '  scrape_interval: 1s',
        '  scrape_timeout: 1s',
        'scrape_configs:',
        '  - job_name: berth',
        '    metrics_path: /metrics',
        `    static_configs: [{ targets: ["${address}"] }]`,
        '  - job_name: cadvisor',
        '    metrics_path: /metrics/cadvisor',
        `    static_configs: [{ targets: ["${address}"] }]`,
        '',
      ].join('\n'),
    );
    const port = await freePort();
    const prom: ChildProcess = spawn(
      'prometheus',
      [
        `--config.file=${join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let promLog = '';
    prom.stderr!.on('data', (d: Buffer) => (promLog += d.toString()));
    const exited = new Promise<void>((resolve) => prom.once('exit', () => resolve()));
    cleanup.unshift(async () => {
      if (prom.exitCode === null && prom.signalCode === null) prom.kill('SIGTERM');
      await exited;
    });
    const base = `http://127.0.0.1:${port}`;

    // Both targets up.
    await until(
      async () => {
        const up = await query(base, 'up').catch(() => []);
        return up.length === 2 && up.every((u) => u.value === 1) ? up : undefined;
      },
      30_000,
      250,
    ).catch((err: unknown) => assert.fail(`targets not up: ${String(err)}\n${promLog}`));

    const notFound = await until(async () => {
      const r = await query(base, 'grpc_server_handled_total{grpc_method="ContainerStatus",grpc_code="NotFound"}');
      return r.length === 1 && r[0]!.value >= 1 ? r[0]! : undefined;
    });
    assert.equal(notFound.metric.grpc_service, 'runtime.v1.RuntimeService');
    assert.equal(notFound.metric.grpc_type, 'unary');
    const started = await query(base, 'grpc_server_started_total{grpc_method="RunPodSandbox"}');
    assert.equal(started[0]?.value, 1);
    const pulls = await query(base, 'berth_image_pulls_started_total');
    assert.equal(pulls[0]?.value, 1);
    const latency = await query(base, 'grpc_server_handling_seconds_count{grpc_method="StartContainer"}');
    assert.equal(latency[0]?.value, 1);
    assert.equal((await query(base, 'berth_pods{state="ready"}'))[0]?.value, 1);
    assert.equal((await query(base, 'berth_containers{state="running"}'))[0]?.value, 1);
    assert.ok((await query(base, 'berth_shims_live'))[0]!.value >= 1);
    assert.ok((await query(base, 'berth_database_size_bytes'))[0]!.value > 0);
    assert.ok((await query(base, 'berth_process_resident_memory_bytes'))[0]!.value > 20 * 1024 * 1024);
    assert.ok((await query(base, 'berth_db_write_duration_seconds_count{table="containers"}'))[0]!.value >= 1);
    assert.ok((await query(base, 'berth_shim_create_duration_seconds_count'))[0]!.value >= 1);
    assert.equal((await query(base, 'berth_recovery_duration_seconds')).length, 1);

    // The burning container's CPU counter rises between scrapes.
    const cpuQuery = `container_cpu_usage_seconds_total{job="cadvisor",id="${burn}"}`;
    const first = await until(async () => (await query(base, cpuQuery))[0]);
    assert.equal(first.metric.container, 'burn');
    assert.equal(first.metric.namespace, 'observed');
    const later = await until(async () => {
      const r = (await query(base, cpuQuery))[0];
      return r && r.value > first.value + 0.5 ? r : undefined;
    });
    assert.ok(later.value > first.value);
    const rate = await until(async () => (await query(base, `rate(${cpuQuery}[5s])`))[0]);
    // A spinning loop; a loose bound, as the test host's two cores are shared.
    assert.ok(rate.value > 0.05, `CPU rate ${rate.value}`);
    assert.ok((await query(base, `container_memory_working_set_bytes{job="cadvisor",id="${burn}"}`))[0]!.value > 0);
  });

  it('turns the endpoint off with address "", and says so in verbose Status', async () => {
    const b = await Berthd.start({ dropIns: { '50-metrics.toml': '[metrics]\naddress = ""\n' } });
    cleanup.push(() => b.dispose());
    assert.equal(await b.metricsAddress(), undefined);
    const info = JSON.parse((await b.runtime.Status({ verbose: true })).info['metrics']!) as { serving: boolean; error?: string };
    assert.equal(info.serving, false);
    // The RPCs still answer: there is nothing to list.
    assert.deepEqual((await b.runtime.ListPodSandboxMetrics({})).pod_metrics, []);
  });

  it('starts without the endpoint when its port is taken, and says why in verbose Status', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    cleanup.push(() => new Promise<void>((resolve) => taken.close(() => resolve())));
    const address = `127.0.0.1:${(taken.address() as AddressInfo).port}`;
    const b = await Berthd.start({ dropIns: { '50-metrics.toml': `[metrics]\naddress = "${address}"\n` } });
    cleanup.push(() => b.dispose());
    const info = JSON.parse((await b.runtime.Status({ verbose: true })).info['metrics']!) as { serving: boolean; error?: string };
    assert.equal(info.serving, false);
    assert.match(info.error ?? '', new RegExp(`^${address}: .*EADDRINUSE`));
    assert.ok(
      b.records().some((r) => r.msg === 'metrics endpoint not serving'),
      b.logs(),
    );
  });
});
