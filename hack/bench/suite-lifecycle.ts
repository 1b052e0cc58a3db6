/**
 * The lifecycle suite: kubelet-like pods (see kubelet.ts: network POD, pid CONTAINER,
 * ipc POD, DNS config, a cgroup parent, two containers with kubelet's mounts, resources
 * and log paths), created and torn down whole, one at a time, as kubelet would:
 * RunPodSandbox, then CreateContainer + StartContainer for each container in turn, a few
 * ExecSync `true`, StopContainer of both (they exit on SIGTERM), StopPodSandbox,
 * RemovePodSandbox. Both runtimes are up at once and take turns pod by pod. One warm-up
 * pod each is not counted. Each figure is the median over the pods (per container for
 * Create+Start, per call for ExecSync).
 */
import { containerdAvailable } from './containerd.js';
import { RpcTimes, kubeletPod, withRuntime, type RuntimeName, type RuntimeUnderTest } from './kubelet.js';
import { median, ms, out, percentile, type SuiteContext } from './suite.js';

export interface LifecycleFigures {
  runtime: string;
  pods: number;
  /** Medians, ms. */
  median: Record<LifecycleFigure, number>;
  p90: Record<LifecycleFigure, number>;
}

export const LIFECYCLE_FIGURES = [
  'RunPodSandbox',
  'CreateContainer+StartContainer',
  'StopPodSandbox+RemovePodSandbox',
  'ExecSync true',
  'pod startup',
] as const;
export type LifecycleFigure = (typeof LIFECYCLE_FIGURES)[number];

/** The goals, berth/containerd at most. */
export const LIFECYCLE_GOALS: Record<LifecycleFigure, number> = {
  RunPodSandbox: 0.5,
  'CreateContainer+StartContainer': 0.8,
  'StopPodSandbox+RemovePodSandbox': 0.6,
  'ExecSync true': 0.8,
  'pod startup': 0.7,
};

async function onePod(rt: RuntimeUnderTest, i: number, t: RpcTimes, execs: number): Promise<void> {
  const c = rt.clients.runtime;
  const pod = kubeletPod(rt.dirs, `life-${i}`, rt.image);
  const t0 = process.hrtime.bigint();
  const { pod_sandbox_id: podId } = await c.RunPodSandbox({ config: pod.config });
  t.add('RunPodSandbox', ms(t0));
  const ids: string[] = [];
  for (const config of pod.containers) {
    const t1 = process.hrtime.bigint();
    const { container_id: id } = await c.CreateContainer({ pod_sandbox_id: podId, config, sandbox_config: pod.config });
    await c.StartContainer({ container_id: id });
    t.add('CreateContainer+StartContainer', ms(t1));
    ids.push(id);
  }
  t.add('pod startup', ms(t0));
  const running = (await c.ListContainers({ filter: { pod_sandbox_id: podId, state: { state: 'CONTAINER_RUNNING' } } })).containers.length;
  if (running !== ids.length) throw new Error(`${rt.name}: ${running} of ${ids.length} containers of pod ${podId} running after StartContainer`);
  for (let k = 0; k < execs; k++) {
    const r = await t.time('ExecSync true', () => c.ExecSync({ container_id: ids[0]!, cmd: ['true'], timeout: 10 }));
    if (r.exit_code !== 0) throw new Error(`${rt.name}: ExecSync ["true"] exited ${r.exit_code}: ${r.stderr.toString()}`);
  }
  // kubelet: stop the containers (grace period; they exit on SIGTERM), then the sandbox, then remove.
  await Promise.all(ids.map((id) => c.StopContainer({ container_id: id, timeout: 10 })));
  const t2 = process.hrtime.bigint();
  await c.StopPodSandbox({ pod_sandbox_id: podId });
  await c.RemovePodSandbox({ pod_sandbox_id: podId });
  t.add('StopPodSandbox+RemovePodSandbox', ms(t2));
}

/** Each runtime's figures from its timed pods. */
function figures(rt: RuntimeUnderTest, pods: number, t: RpcTimes): LifecycleFigures {
  const med = {} as Record<LifecycleFigure, number>;
  const p90 = {} as Record<LifecycleFigure, number>;
  for (const f of LIFECYCLE_FIGURES) {
    med[f] = median(t.get(f));
    p90[f] = percentile(t.get(f), 90);
  }
  return { runtime: rt.version, pods, median: med, p90 };
}

/**
 * The runtimes take turns pod by pod (and which goes first alternates), so that both
 * meet the machine in the same state: here the page cache, the dentry cache and ext4's
 * inode allocator carry what earlier pods left, and a runtime timed alone after another
 * (or after an earlier run) meets a different disk than the one timed first.
 */
async function lifecycleRuns(rts: RuntimeUnderTest[], pods: number, execs: number): Promise<Partial<Record<RuntimeName, LifecycleFigures>>> {
  for (const rt of rts) await onePod(rt, 0, new RpcTimes(), 1); // warm-up
  const times = rts.map(() => new RpcTimes());
  for (let i = 1; i <= pods; i++) {
    const order = i % 2 === 1 ? rts.keys() : [...rts.keys()].reverse();
    for (const k of order) await onePod(rts[k]!, i, times[k]!, execs);
  }
  const res: Partial<Record<RuntimeName, LifecycleFigures>> = {};
  for (const [k, rt] of rts.entries()) {
    const left = (await rt.clients.runtime.ListPodSandbox({})).items.length + (await rt.clients.runtime.ListContainers({})).containers.length;
    if (left > 0) throw new Error(`${rt.name}: ${left} pods and containers still listed after the lifecycle suite`);
    res[rt.name] = figures(rt, pods, times[k]!);
  }
  return res;
}

/** Runs `fn` with every runtime of `plan` up at once (see withRuntime). */
function withRuntimes<T>(
  ctx: SuiteContext,
  plan: ReadonlyArray<readonly [RuntimeName, string]>,
  fn: (rts: RuntimeUnderTest[]) => Promise<T>,
  up: RuntimeUnderTest[] = [],
): Promise<T> {
  const [first, ...rest] = plan;
  if (!first) return fn(up);
  return withRuntime(ctx, first[0], first[1], (rt) => withRuntimes(ctx, rest, fn, [...up, rt]));
}

export async function lifecycleSuite(ctx: SuiteContext, pods: number, execs: number): Promise<Partial<Record<RuntimeName, LifecycleFigures>>> {
  out(
    `lifecycle: ${pods} kubelet-like pods (2 containers each) per runtime, created and torn down whole one at a time, the runtimes taking turns pod by pod, after one warm-up pod each; ${execs} ExecSync per pod`,
  );
  const plan: Array<[RuntimeName, string]> = [];
  if (ctx.runBerth) plan.push(['berth', '10.187.0.0/24']);
  if (ctx.runContainerd && containerdAvailable()) plan.push(['containerd', '10.188.0.0/24']);
  else if (ctx.runContainerd) out('containerd not installed: no comparison');
  const res = await withRuntimes(ctx, plan, (rts) => lifecycleRuns(rts, pods, execs));
  const pad = 34;
  out(`${'figure (median ms, p90 in brackets)'.padEnd(pad)} ${'berth'.padStart(16)} ${'containerd'.padStart(16)} ${'ratio'.padStart(6)}  goal`);
  for (const f of LIFECYCLE_FIGURES) {
    const cell = (x: LifecycleFigures | undefined): string => (x ? `${x.median[f].toFixed(1)} (${x.p90[f].toFixed(1)})` : '-');
    const ratio = res.berth && res.containerd ? (res.berth.median[f] / res.containerd.median[f]).toFixed(2) : '-';
    out(`${f.padEnd(pad)} ${cell(res.berth).padStart(16)} ${cell(res.containerd).padStart(16)} ${ratio.padStart(6)}  <= ${LIFECYCLE_GOALS[f]}`);
  }
  return res;
}
