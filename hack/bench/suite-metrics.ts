/**
 * The metrics suite: what observability costs.
 *
 * - With 100 running containers (10 pods on a bridge network of the run's own, 10
 *   busybox `sleep` containers each): the latency of ListPodSandboxMetrics, of a
 *   /metrics/cadvisor scrape and of a /metrics scrape (`SCRAPES` rounds of the three in
 *   turn, after one warm-up round; the RPC's time includes the harness decoding it); then the daemon's CPU while idle, in CPU seconds over
 *   `IDLE_SECONDS` s from /proc/<pid>/stat, and its RSS.
 *   containerd 1.6 runs the same pods and containers with its `[metrics]` endpoint on:
 *   its /v1/metrics scrape and ListContainerStats are timed (1.6 has no
 *   ListPodSandboxMetrics, which is tried and reported, and its ListPodSandboxStats fails
 *   for pods without a cgroup parent), and its idle CPU is counted for
 *   the daemon and for its runc v2 shims apart.
 * - Tracing off and on (berth only: containerd 1.6 has no OTLP export in its default
 *   build's CRI path to compare): a fresh berthd each time with one host-network pod and
 *   one container; its RSS idle, the medians of `STATUS_CALLS` ContainerStatus and of
 *   `RUN_PODS` RunPodSandbox (host network) + Stop + Remove, and the RSS after. "On" is
 *   `[tracing] endpoint` at an OTLP/gRPC receiver on 127.0.0.1
 *   (test/helpers/otlp-receiver.ts) with sampling_rate_per_million = 1000000.
 */
import { randomUUID } from 'node:crypto';
import { Berthd } from '../../test/helpers/berthd.js';
import type { CriClients } from '../../test/helpers/cri-client.js';
import { OtlpReceiver } from '../../test/helpers/otlp-receiver.js';
import { pushFixtures } from '../test-images/oci.js';
import { containerdAvailable, processes } from './containerd.js';
import { onBerthd, onContainerd, removeEverything } from './runtimes.js';
import { compare, cpuSeconds, freePort, label, median, ms, out, rssKiB, sleep, summary, type SuiteContext, type SuiteNet } from './suite.js';

const PODS = 10;
const PER_POD = 10;
const SCRAPES = 20;
const IDLE_SECONDS = 30;
const STATUS_CALLS = 200;
const RUN_PODS = 10;

const NS = { network: 'POD' as const, pid: 'CONTAINER' as const, ipc: 'POD' as const };

interface LoadedFigures {
  /** ListPodSandboxMetrics (berth) or ListContainerStats (containerd), ms. */
  list: number[];
  listName: string;
  /** /metrics/cadvisor (berth) or /v1/metrics (containerd), ms. */
  scrape: number[];
  scrapeName: string;
  scrapeBytes: number;
  /** berth's /metrics, ms. */
  ownScrape?: number[];
  ownScrapeBytes?: number;
  /** CPU seconds over IDLE_SECONDS: the daemon, and its shims (conmon / runc v2 shims). */
  idleCpu: number;
  idleShimCpu: number;
  shims: number;
  rss: number;
  note?: string;
}

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await f();
  return ms(t0);
}

async function scrape(url: string): Promise<number> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`GET ${url}: HTTP ${res.status}`);
  return (await res.arrayBuffer()).byteLength;
}

/** Runs PODS pods with PER_POD sleeping containers each; their ids. */
async function populate(c: CriClients, net: SuiteNet, image: string): Promise<string[]> {
  const pods: string[] = [];
  for (let p = 0; p < PODS; p++) {
    const podCfg = {
      metadata: { name: `metrics-${p}`, namespace: 'bench', uid: randomUUID(), attempt: 0 },
      hostname: `metrics-${p}`,
      log_directory: net.logDir,
      labels: { app: 'berth-bench' },
      linux: { security_context: { namespace_options: NS } },
    };
    const { pod_sandbox_id: pod } = await c.runtime.RunPodSandbox({ config: podCfg });
    pods.push(pod);
    await Promise.all(
      Array.from({ length: PER_POD }, async (_, i) => {
        const config = {
          metadata: { name: `c${i}`, attempt: 0 },
          image: { image },
          command: ['sleep', '100000'],
          log_path: `p${p}-c${i}.log`,
          linux: { security_context: { namespace_options: NS } },
        };
        const { container_id: id } = await c.runtime.CreateContainer({ pod_sandbox_id: pod, config, sandbox_config: podCfg });
        await c.runtime.StartContainer({ container_id: id });
      }),
    );
  }
  const running = (await c.runtime.ListContainers({ filter: { state: { state: 'CONTAINER_RUNNING' } } })).containers.length;
  if (running !== PODS * PER_POD) throw new Error(`${running} containers running, expected ${PODS * PER_POD}`);
  return pods;
}

/** CPU seconds of `pid` and of `others()` over IDLE_SECONDS with nothing calling. */
async function idleCpu(pid: number, others: () => number[]): Promise<{ daemon: number; others: number }> {
  const sum = (pids: number[]): number =>
    pids.reduce((a, p) => {
      try {
        return a + cpuSeconds(p);
      } catch {
        return a;
      }
    }, 0);
  const pids = others();
  const d0 = cpuSeconds(pid);
  const o0 = sum(pids);
  await sleep(IDLE_SECONDS * 1000);
  return { daemon: cpuSeconds(pid) - d0, others: sum(pids) - o0 };
}

async function samples(n: number, f: () => Promise<unknown>): Promise<number[]> {
  return (await interleaved(n, [f]))[0]!;
}

/** `n` timed rounds of calling each of `fs` in turn (after one warm-up round): all see the same moments of the machine's load. */
async function interleaved(n: number, fs: Array<() => Promise<unknown>>): Promise<number[][]> {
  for (const f of fs) await f();
  const xs = fs.map((): number[] => []);
  for (let i = 0; i < n; i++) for (const [j, f] of fs.entries()) xs[j]!.push(await timed(f));
  return xs;
}

function printLoaded(name: string, f: LoadedFigures): void {
  const n = PODS * PER_POD;
  out(`${label(name)} ${f.listName} with ${n} containers: ${summary(f.list)}`);
  out(`${label(name)} ${f.scrapeName} scrape with ${n} containers: ${summary(f.scrape)}; ${(f.scrapeBytes / 1024).toFixed(0)} KiB`);
  if (f.ownScrape) out(`${label(name)} /metrics scrape with ${n} containers: ${summary(f.ownScrape)}; ${((f.ownScrapeBytes ?? 0) / 1024).toFixed(0)} KiB`);
  out(
    `${label(name)} idle CPU with ${n} containers over ${IDLE_SECONDS} s: daemon ${f.idleCpu.toFixed(2)} CPU s (${((f.idleCpu / IDLE_SECONDS) * 100).toFixed(2)}% of a core); ${f.shims} shims ${f.idleShimCpu.toFixed(2)} CPU s`,
  );
  out(`${label(name)} daemon RSS with ${n} containers: ${(f.rss / 1024).toFixed(1)} MiB`);
  if (f.note) out(`${label(name)} ${f.note}`);
}

async function berthLoaded(ctx: SuiteContext, image: string): Promise<LoadedFigures> {
  return onBerthd(ctx, 'metrics', '10.201.0.0/24', async (b, net) => {
    await b.image.PullImage({ image: { image } });
    await populate(b.clients, net, image);
    const addr = await b.metricsAddress();
    if (!addr) throw new Error('berthd serves no metrics endpoint');
    await sleep(2000);
    let cadvisorBytes = 0;
    let ownBytes = 0;
    const [list = [], cadvisor = [], own = []] = await interleaved(SCRAPES, [
      async () => {
        const r = await b.runtime.ListPodSandboxMetrics({});
        if (r.pod_metrics.length !== PODS) throw new Error(`ListPodSandboxMetrics: ${r.pod_metrics.length} pods`);
      },
      async () => (cadvisorBytes = await scrape(`http://${addr}/metrics/cadvisor`)),
      async () => (ownBytes = await scrape(`http://${addr}/metrics`)),
    ]);
    const pid = b.proc.pid!;
    const conmons = (): number[] =>
      processes()
        .filter((p) => p.cmd.split(' ')[0]!.endsWith('conmon') && p.cmd.includes(b.dir))
        .map((p) => p.pid);
    const cpu = await idleCpu(pid, conmons);
    const figures: LoadedFigures = {
      list,
      listName: 'ListPodSandboxMetrics',
      scrape: cadvisor,
      scrapeName: '/metrics/cadvisor',
      scrapeBytes: cadvisorBytes,
      ownScrape: own,
      ownScrapeBytes: ownBytes,
      idleCpu: cpu.daemon,
      idleShimCpu: cpu.others,
      shims: conmons().length,
      rss: rssKiB(pid),
    };
    await removeEverything(b.clients);
    return figures;
  });
}

async function containerdLoaded(ctx: SuiteContext, image: string): Promise<LoadedFigures> {
  const metrics = `127.0.0.1:${await freePort()}`;
  return onContainerd(
    ctx,
    'metrics',
    '10.202.0.0/24',
    async (ctr, net) => {
      await ctr.clients.image.PullImage({ image: { image } });
      await populate(ctr.clients, net, image);
      await sleep(2000);
      let note: string | undefined;
      try {
        await ctr.clients.runtime.ListPodSandboxMetrics({});
      } catch (err) {
        note = `ListPodSandboxMetrics: ${(err as Error).message.split('\n')[0]} (ListContainerStats timed instead)`;
      }
      let bytes = 0;
      const [list = [], scrapeMs = []] = await interleaved(SCRAPES, [
        async () => {
          // Its ListPodSandboxStats needs pods with a cgroup parent ("cgroupPath is empty" otherwise): the containers' stats instead.
          const r = await ctr.clients.runtime.ListContainerStats({});
          if (r.stats.length !== PODS * PER_POD) throw new Error(`ListContainerStats: ${r.stats.length} containers`);
        },
        async () => (bytes = await scrape(`http://${metrics}/v1/metrics`)),
      ]);
      const cpu = await idleCpu(ctr.pid, () => ctr.shimPids());
      const figures: LoadedFigures = {
        list,
        listName: 'ListContainerStats',
        scrape: scrapeMs,
        scrapeName: '/v1/metrics',
        scrapeBytes: bytes,
        idleCpu: cpu.daemon,
        idleShimCpu: cpu.others,
        shims: ctr.shimPids().length,
        rss: rssKiB(ctr.pid),
        ...(note ? { note } : {}),
      };
      await removeEverything(ctr.clients);
      return figures;
    },
    { metricsAddress: metrics },
  );
}

interface TracingFigures {
  idleRss: number;
  afterRss: number;
  status: number[];
  runPod: number[];
  spans: number;
}

/** A fresh berthd (tracing as `config` says) with one host-network pod and one container: RSS and RPC latencies. */
async function tracingRun(ctx: SuiteContext, image: string, config: string, rx?: OtlpReceiver): Promise<TracingFigures> {
  const b = await Berthd.start({ logLevel: 'warn', config, ...ctx.berthOptions });
  try {
    const pid = b.proc.pid!;
    await sleep(2000);
    const idleRss = rssKiB(pid);
    await b.image.PullImage({ image: { image } });
    const podCfg = {
      metadata: { name: 'tracing', namespace: 'bench', uid: randomUUID(), attempt: 0 },
      hostname: 'tracing',
      log_directory: `${b.dir}/pod-logs`,
      linux: { security_context: { namespace_options: { network: 'NODE' as const } } },
    };
    const { pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({ config: podCfg });
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: { metadata: { name: 'c', attempt: 0 }, image: { image }, command: ['sleep', '100000'], log_path: 'c.log' },
      sandbox_config: podCfg,
    });
    await b.runtime.StartContainer({ container_id: id });
    const status = await samples(STATUS_CALLS, () => b.runtime.ContainerStatus({ container_id: id }));
    const runPod: number[] = [];
    for (let i = 0; i <= RUN_PODS; i++) {
      const cfg = { ...podCfg, metadata: { ...podCfg.metadata, name: `run-${i}`, uid: randomUUID() } };
      const t0 = process.hrtime.bigint();
      const { pod_sandbox_id: p } = await b.runtime.RunPodSandbox({ config: cfg });
      if (i > 0) runPod.push(ms(t0)); // the first is a warm-up
      await b.runtime.StopPodSandbox({ pod_sandbox_id: p });
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: p });
    }
    await sleep(2000);
    const afterRss = rssKiB(pid);
    await b.runtime.StopContainer({ container_id: id, timeout: 0 });
    await b.runtime.RemoveContainer({ container_id: id });
    await b.runtime.StopPodSandbox({ pod_sandbox_id: pod });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    return { idleRss, afterRss, status, runPod, spans: rx?.spans.length ?? 0 };
  } catch (err) {
    throw new Error(`berth tracing: ${(err as Error).message}\nberthd log:\n${b.logs().slice(-4000)}`, { cause: err });
  } finally {
    await b.dispose();
  }
}

export async function metricsSuite(ctx: SuiteContext): Promise<void> {
  const n = PODS * PER_POD;
  out(
    `metrics: ${PODS} pods x ${PER_POD} busybox containers; ${SCRAPES} calls of each (after a warm-up); idle CPU over ${IDLE_SECONDS} s; tracing off and on: ${STATUS_CALLS} ContainerStatus, ${RUN_PODS} RunPodSandbox (host network)`,
  );
  const image = (await pushFixtures(ctx.registryHost)).busybox.ref;
  let berth: LoadedFigures | undefined;
  let containerd: LoadedFigures | undefined;
  if (ctx.runBerth) {
    berth = await berthLoaded(ctx, image);
    printLoaded('berth', berth);
  }
  if (ctx.runContainerd) {
    if (!containerdAvailable()) out(`${label('containerd')} not installed: no comparison`);
    else {
      containerd = await containerdLoaded(ctx, image);
      printLoaded('containerd', containerd);
    }
  }
  if (berth && containerd) {
    out();
    compare(`metrics RPC (berth ListPodSandboxMetrics, containerd ListContainerStats), ${n} containers`, berth.list, containerd.list);
    compare(`scrape (berth /metrics/cadvisor, containerd /v1/metrics), ${n} containers`, berth.scrape, containerd.scrape);
    out(
      `idle CPU over ${IDLE_SECONDS} s with ${n} containers: berthd ${berth.idleCpu.toFixed(2)} s + ${berth.shims} conmon ${berth.idleShimCpu.toFixed(2)} s;` +
        ` containerd ${containerd.idleCpu.toFixed(2)} s + ${containerd.shims} shims ${containerd.idleShimCpu.toFixed(2)} s`,
    );
  }
  if (!ctx.runBerth) return;

  out();
  const off = await tracingRun(ctx, image, '');
  const rx = await OtlpReceiver.start();
  let on: TracingFigures;
  try {
    on = await tracingRun(ctx, image, `[tracing]\nendpoint = "${rx.endpoint}"\nsampling_rate_per_million = 1000000\n`, rx);
  } finally {
    await rx.stop();
  }
  const mib = (k: number): string => `${(k / 1024).toFixed(1)} MiB`;
  for (const [name, f] of [
    ['tracing off', off],
    ['tracing on', on],
  ] as const) {
    out(
      `berth ${name.padEnd(11)} RSS idle ${mib(f.idleRss)}, after the calls ${mib(f.afterRss)}; ContainerStatus ${summary(f.status)}; RunPodSandbox ${summary(f.runPod)}` +
        (name === 'tracing on' ? `; ${f.spans} spans received` : ''),
    );
  }
  out(
    `tracing on - off: RSS idle ${((on.idleRss - off.idleRss) / 1024).toFixed(1)} MiB, after the calls ${((on.afterRss - off.afterRss) / 1024).toFixed(1)} MiB;` +
      ` per ContainerStatus ${(median(on.status) - median(off.status)).toFixed(2)} ms, per RunPodSandbox ${(median(on.runPod) - median(off.runPod)).toFixed(1)} ms (medians)`,
  );
}
