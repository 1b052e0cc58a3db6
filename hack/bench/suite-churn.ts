/**
 * The churn suite: N kubelet-like pods (kubelet.ts) at once, each replaced when it ends,
 * for T seconds. Half the slots run pods whose two containers exit by themselves after
 * 2–5 s (a Job); the other half run pods whose containers serve until SIGTERM and are
 * stopped after a lifetime of 3–8 s (a Deployment's rollout). Each slot drives its pod as
 * kubelet does: RunPodSandbox, PodSandboxStatus, then for each container ImageStatus,
 * CreateContainer, StartContainer; once the pod is done, StopContainer (grace 10 s) of
 * what still runs, StopPodSandbox, RemoveContainer of each, RemovePodSandbox.
 *
 * Meanwhile a PLEG loop relists every second, as kubelet's generic PLEG does:
 * ListPodSandbox, ListContainers, then PodSandboxStatus of every pod and ContainerStatus
 * of every container listed. Exits are noticed through it (so within about a second).
 *
 * Reported: pod startup (RunPodSandbox → all containers RUNNING) p50/p99, each RPC's
 * p50/p99, the daemon's RSS first/last/max (sampled every second), CPU seconds of the
 * daemon, of what it reaped (CNI plugins, runc, …) and of its shims (conmon for berth;
 * containerd-shim-runc-v2 for containerd, with the runc and pause processes they reap),
 * and the shims' RSS. With --soak-minutes the same runs for that long and RSS is printed
 * at each minute.
 */
import { status } from '@grpc/grpc-js';
import { containerdAvailable } from './containerd.js';
import type { ProcSampler } from './kubelet.js';
import { RpcTimes, SERVE_UNTIL_TERM, kubeletPod, withRuntime, type RuntimeName, type RuntimeUnderTest, type Sample } from './kubelet.js';
import { median, ms, out, percentile, type SuiteContext } from './suite.js';

export interface ChurnOptions {
  pods: number;
  seconds: number;
  /** Print RSS at each minute (soak mode). */
  perMinute: boolean;
}

export interface ChurnFigures {
  runtime: string;
  seconds: number;
  podsStarted: number;
  /** p50/p99 by RPC name, plus "pod startup" and "teardown" (StopPodSandbox+RemovePodSandbox). */
  latency: Record<string, { n: number; p50: number; p99: number }>;
  rssMiB: { first: number; last: number; max: number };
  cpuSeconds: { daemon: number; daemonChildren: number; shims: number; total: number };
  shimRssMiB: { max: number; perShimMean: number };
  /** Daemon RSS (MiB) at each minute (soak), and every sample for the plot. */
  rssPerMinute: number[];
  rssSeries: Array<[number, number]>;
  pleg: { relists: number; notFound: number };
}

const sleep = (msec: number): Promise<void> => new Promise((r) => setTimeout(r, msec));
const rand = (lo: number, hi: number): number => lo + Math.random() * (hi - lo);

/** NotFound: the pod or container went between list and status (kubelet tolerates it). */
const isNotFound = (err: unknown): boolean => (err as { code?: number }).code === status.NOT_FOUND;

async function churnRuns(rt: RuntimeUnderTest, o: ChurnOptions): Promise<ChurnFigures> {
  const c = rt.clients.runtime;
  const img = rt.clients.image;
  const t = new RpcTimes();
  /** Container state by id, as the last relist saw it. */
  const states = new Map<string, string>();
  let relists = 0;
  let notFound = 0;
  let stopping = false;

  const pleg = async (): Promise<void> => {
    while (!stopping) {
      const t0 = process.hrtime.bigint();
      const pods = (await t.time('ListPodSandbox', () => c.ListPodSandbox({}))).items;
      const ctrs = (await t.time('ListContainers', () => c.ListContainers({}))).containers;
      for (const ct of ctrs) states.set(ct.id, ct.state);
      const calls: Array<Promise<unknown>> = [
        ...pods.map((p) => t.time('PodSandboxStatus', () => c.PodSandboxStatus({ pod_sandbox_id: p.id }))),
        ...ctrs.map((ct) => t.time('ContainerStatus', () => c.ContainerStatus({ container_id: ct.id }))),
      ];
      for (const r of await Promise.allSettled(calls)) {
        if (r.status === 'rejected') {
          if (isNotFound(r.reason)) notFound++;
          else throw r.reason as Error;
        }
      }
      relists++;
      await sleep(Math.max(0, 1000 - ms(t0)));
    }
  };

  const exitedOrGone = (id: string): boolean => {
    const s = states.get(id);
    return s === 'CONTAINER_EXITED';
  };

  let podsStarted = 0;
  const deadline = Date.now() + o.seconds * 1000;
  const slot = async (k: number): Promise<void> => {
    const job = k % 2 === 0;
    for (let n = 0; Date.now() < deadline; n++) {
      const lifetimeMs = rand(job ? 2000 : 3000, job ? 5000 : 8000);
      const secs = (lifetimeMs / 1000).toFixed(1);
      const pod = kubeletPod(
        rt.dirs,
        `churn-${k}-${n}`,
        rt.image,
        job ? { scripts: [`sleep ${secs}`, `sleep ${secs}`] } : { scripts: [SERVE_UNTIL_TERM, SERVE_UNTIL_TERM] },
      );
      const t0 = process.hrtime.bigint();
      const { pod_sandbox_id: podId } = await t.time('RunPodSandbox', () => c.RunPodSandbox({ config: pod.config }));
      await t.time('PodSandboxStatus', () => c.PodSandboxStatus({ pod_sandbox_id: podId }));
      const ids: string[] = [];
      for (const config of pod.containers) {
        await t.time('ImageStatus', () => img.ImageStatus({ image: { image: rt.image } }));
        const { container_id: id } = await t.time('CreateContainer', () => c.CreateContainer({ pod_sandbox_id: podId, config, sandbox_config: pod.config }));
        ids.push(id);
        await t.time('StartContainer', () => c.StartContainer({ container_id: id }));
      }
      t.add('pod startup', ms(t0));
      podsStarted++;
      const until = Date.now() + (job ? 30_000 : lifetimeMs);
      while (Date.now() < until && !(job && ids.every(exitedOrGone))) await sleep(job ? 200 : Math.min(200, until - Date.now()));
      await Promise.all(ids.filter((id) => !exitedOrGone(id)).map((id) => t.time('StopContainer', () => c.StopContainer({ container_id: id, timeout: 10 }))));
      const t1 = process.hrtime.bigint();
      await t.time('StopPodSandbox', () => c.StopPodSandbox({ pod_sandbox_id: podId }));
      const t2 = process.hrtime.bigint();
      for (const id of ids) await t.time('RemoveContainer', () => c.RemoveContainer({ container_id: id }));
      const t3 = process.hrtime.bigint();
      await t.time('RemovePodSandbox', () => c.RemovePodSandbox({ pod_sandbox_id: podId }));
      // StopPodSandbox + RemovePodSandbox, without the RemoveContainer calls between them.
      t.add('teardown', ms(t1) - Number(t3 - t2) / 1e6);
      for (const id of ids) states.delete(id);
    }
  };

  // Warm-up: one pod through the whole path (not counted), then CPU counts start.
  {
    const pod = kubeletPod(rt.dirs, 'churn-warmup', rt.image);
    const { pod_sandbox_id: podId } = await c.RunPodSandbox({ config: pod.config });
    for (const config of pod.containers) {
      const { container_id: id } = await c.CreateContainer({ pod_sandbox_id: podId, config, sandbox_config: pod.config });
      await c.StartContainer({ container_id: id });
      await c.StopContainer({ container_id: id, timeout: 10 });
    }
    await c.StopPodSandbox({ pod_sandbox_id: podId });
    await c.RemovePodSandbox({ pod_sandbox_id: podId });
  }
  await sleep(1000);
  const sampler: ProcSampler = rt.sampler();
  sampler.reset();
  const first = sampler.sample();
  sampler.start(1000);
  const started = Date.now();
  const minuteTimer = o.perMinute
    ? setInterval(() => {
        const s = sampler.samples.at(-1)!;
        out(
          `${rt.name.padEnd(11)} minute ${Math.round((Date.now() - started) / 60000)}: daemon RSS ${(s.daemonRssKiB / 1024).toFixed(1)} MiB, ${s.shimCount} shims ${(s.shimRssKiB / 1024).toFixed(1)} MiB, CPU ${(s.cpu.daemon + s.cpu.daemonChildren + s.cpu.shims).toFixed(1)} s`,
        );
      }, 60_000)
    : undefined;
  const plegDone = pleg();
  let last: Sample;
  try {
    await Promise.all(Array.from({ length: o.pods }, (_, k) => slot(k)));
  } finally {
    stopping = true;
    clearInterval(minuteTimer);
    last = sampler.stop();
    await plegDone.catch(() => undefined);
  }
  await plegDone;
  const left = (await c.ListPodSandbox({})).items.length + (await c.ListContainers({})).containers.length;
  if (left > 0) throw new Error(`${rt.name}: ${left} pods and containers still listed after the churn`);

  const latency: ChurnFigures['latency'] = {};
  for (const [name, xs] of t.by) latency[name] = { n: xs.length, p50: median(xs), p99: percentile(xs, 99) };
  const rss = sampler.samples.map((s) => s.daemonRssKiB / 1024);
  const perMinute: number[] = [];
  for (let m = 1; m * 60 <= o.seconds; m++) {
    const s = sampler.samples.find((x) => x.t >= m * 60) ?? sampler.samples.at(-1)!;
    perMinute.push(s.daemonRssKiB / 1024);
  }
  const shimMax = Math.max(...sampler.samples.map((s) => s.shimRssKiB)) / 1024;
  const withShims = sampler.samples.filter((s) => s.shimCount > 0);
  const perShim = withShims.length ? median(withShims.map((s) => s.shimRssKiB / s.shimCount)) / 1024 : 0;
  return {
    runtime: rt.version,
    seconds: o.seconds,
    podsStarted,
    latency,
    rssMiB: { first: first.daemonRssKiB / 1024, last: last.daemonRssKiB / 1024, max: Math.max(...rss) },
    cpuSeconds: { ...last.cpu, total: last.cpu.daemon + last.cpu.daemonChildren + last.cpu.shims },
    shimRssMiB: { max: shimMax, perShimMean: perShim },
    rssPerMinute: perMinute,
    rssSeries: sampler.samples.map((s) => [Math.round(s.t), Math.round((s.daemonRssKiB / 1024) * 10) / 10]),
    pleg: { relists, notFound },
  };
}

/** The issue's goals for the churn, berth/containerd at most. */
export const CHURN_GOALS: Record<string, number> = {
  RunPodSandbox: 0.5,
  'CreateContainer+StartContainer': 0.8,
  teardown: 0.6,
  'pod startup': 0.7,
  'CPU seconds': 1,
};

const ORDER = [
  'pod startup',
  'RunPodSandbox',
  'CreateContainer',
  'StartContainer',
  'StopContainer',
  'StopPodSandbox',
  'RemoveContainer',
  'RemovePodSandbox',
  'teardown',
  'ImageStatus',
  'PodSandboxStatus',
  'ContainerStatus',
  'ListPodSandbox',
  'ListContainers',
];

export async function churnSuite(ctx: SuiteContext, o: ChurnOptions): Promise<Partial<Record<RuntimeName, ChurnFigures>>> {
  const res: Partial<Record<RuntimeName, ChurnFigures>> = {};
  out(
    `churn: ${o.pods} kubelet-like pods (2 containers each) at once per runtime, each replaced when it ends, for ${o.seconds} s; a PLEG relist every second (list + status of every pod and container)`,
  );
  const plan: Array<[RuntimeName, string]> = [];
  if (ctx.runBerth) plan.push(['berth', '10.189.0.0/24']);
  if (ctx.runContainerd) plan.push(['containerd', '10.190.0.0/24']);
  for (const [name, subnet] of plan) {
    if (name === 'containerd' && !containerdAvailable()) {
      out('containerd not installed: no comparison');
      continue;
    }
    res[name] = await withRuntime(ctx, name, subnet, (rt) => churnRuns(rt, o));
    const f = res[name];
    out(
      `${name.padEnd(11)} ${f.podsStarted} pods in ${o.seconds} s; daemon RSS first/last/max ${f.rssMiB.first.toFixed(1)} / ${f.rssMiB.last.toFixed(1)} / ${f.rssMiB.max.toFixed(1)} MiB;` +
        ` CPU ${f.cpuSeconds.total.toFixed(1)} s (daemon ${f.cpuSeconds.daemon.toFixed(1)}, reaped children ${f.cpuSeconds.daemonChildren.toFixed(1)}, shims ${f.cpuSeconds.shims.toFixed(1)});` +
        ` shims max ${f.shimRssMiB.max.toFixed(1)} MiB, ${f.shimRssMiB.perShimMean.toFixed(2)} MiB each; ${f.pleg.relists} relists`,
    );
  }
  const { berth, containerd } = res;
  const cs = (f: ChurnFigures): { p50: number; p99: number } => ({
    p50: (f.latency.CreateContainer?.p50 ?? NaN) + (f.latency.StartContainer?.p50 ?? NaN),
    p99: (f.latency.CreateContainer?.p99 ?? NaN) + (f.latency.StartContainer?.p99 ?? NaN),
  });
  const pad = 32;
  out(`${'figure (p50 / p99 ms)'.padEnd(pad)} ${'berth'.padStart(17)} ${'containerd'.padStart(17)} ${'p50 ratio'.padStart(9)}  goal`);
  const row = (name: string, b?: { p50: number; p99: number }, c?: { p50: number; p99: number }): void => {
    const cell = (x?: { p50: number; p99: number }): string => (x ? `${x.p50.toFixed(1)} / ${x.p99.toFixed(1)}` : '-');
    const ratio = b && c ? (b.p50 / c.p50).toFixed(2) : '-';
    out(
      `${name.padEnd(pad)} ${cell(b).padStart(17)} ${cell(c).padStart(17)} ${ratio.padStart(9)}  ${CHURN_GOALS[name] !== undefined ? `<= ${CHURN_GOALS[name]}` : ''}`,
    );
  };
  for (const name of ORDER) {
    row(name, berth?.latency[name], containerd?.latency[name]);
    if (name === 'StartContainer') row('CreateContainer+StartContainer', berth && cs(berth), containerd && cs(containerd));
  }
  if (berth && containerd) {
    out(
      `CPU seconds berth/containerd: ${berth.cpuSeconds.total.toFixed(1)} / ${containerd.cpuSeconds.total.toFixed(1)} = ${(berth.cpuSeconds.total / containerd.cpuSeconds.total).toFixed(2)}  (goal <= 1; per pod started: ${((berth.cpuSeconds.total / berth.podsStarted) * 1000).toFixed(0)} / ${((containerd.cpuSeconds.total / containerd.podsStarted) * 1000).toFixed(0)} ms)`,
    );
  }
  if (o.perMinute) {
    for (const [name, f] of Object.entries(res)) out(`${name.padEnd(11)} RSS at each minute (MiB): ${f.rssPerMinute.map((x) => x.toFixed(1)).join(', ')}`);
  }
  return res;
}

/** The churn's create+start p50 (the sum of the two RPCs' p50s). */
export function createStartP50(f: ChurnFigures): number {
  return (f.latency.CreateContainer?.p50 ?? NaN) + (f.latency.StartContainer?.p50 ?? NaN);
}
