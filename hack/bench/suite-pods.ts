/**
 * The pods suite: RunPodSandbox latency and StopPodSandbox+RemovePodSandbox latency (timed
 * together) over N pods created one after the other (after one warm-up pod), each on a
 * bridge + host-local + portmap network of the run's own; and memory: berthd's RSS idle
 * and with the N pods running, against containerd's RSS plus its runc v2 shims and pause
 * processes. containerd's sandbox image is pulled before anything is timed or sampled.
 */
import { randomUUID } from 'node:crypto';
import type { CriClients } from '../../test/helpers/cri-client.js';
import { childrenOf, containerdAvailable } from './containerd.js';
import { KUBELET_NAMESPACES } from './kubelet.js';
import { onBerthd, onContainerd } from './runtimes.js';
import { compare, compareMemory, label, median, mib, ms, out, percentile, sleep, sumMem, type Mem, type SuiteContext, type SuiteNet } from './suite.js';

function berthMem(pid: number): Mem {
  const kids = childrenOf(pid);
  const d = sumMem([pid]);
  const k = sumMem(kids);
  return { rss: d.rss + k.rss, pss: d.pss + k.pss, detail: `berthd ${mib(d.rss)}; ${kids.length} child processes` + (kids.length ? ` ${mib(k.rss)}` : '') };
}

function containerdMem(pid: number, shims: number[]): Mem {
  const pauses = shims.flatMap((s) => childrenOf(s));
  const d = sumMem([pid]);
  const s = sumMem(shims);
  const p = sumMem(pauses);
  return {
    rss: d.rss + s.rss + p.rss,
    pss: d.pss + s.pss + p.pss,
    detail: `containerd ${mib(d.rss)} + ${shims.length} shims ${mib(s.rss)} + ${pauses.length} pause ${mib(p.rss)}`,
  };
}

interface PodFigures {
  /** RunPodSandbox latencies, ms. */
  run: number[];
  /** StopPodSandbox+RemovePodSandbox latencies, ms. */
  stopRemove: number[];
  /** The StopPodSandbox part of each, ms. */
  stop: number[];
  idle: Mem;
  loaded: Mem;
}

export function podConfig(i: number, logDir: string): Record<string, unknown> {
  return {
    metadata: { name: `bench-${i}`, namespace: 'bench', uid: randomUUID(), attempt: 0 },
    hostname: `bench-${i}`,
    log_directory: logDir,
    labels: { app: 'berth-bench' },
    // What kubelet sends for a pod without shareProcessNamespace.
    linux: { security_context: { namespace_options: KUBELET_NAMESPACES } },
  };
}

/**
 * One warm-up pod (not counted), then `podCount` pods created one after the other and
 * each timed, memory sampled with all of them running, then each stopped and removed
 * (timed together). Fails unless the runtime lists no pod at the end.
 */
async function podRuns(name: string, c: CriClients, net: SuiteNet, podCount: number, mem: () => Mem, idle: Mem): Promise<PodFigures> {
  const warm = (await c.runtime.RunPodSandbox({ config: podConfig(0, net.logDir) })).pod_sandbox_id;
  await c.runtime.StopPodSandbox({ pod_sandbox_id: warm });
  await c.runtime.RemovePodSandbox({ pod_sandbox_id: warm });

  const ids: string[] = [];
  const run: number[] = [];
  for (let i = 1; i <= podCount; i++) {
    const t0 = process.hrtime.bigint();
    const { pod_sandbox_id: id } = await c.runtime.RunPodSandbox({ config: podConfig(i, net.logDir) });
    run.push(ms(t0));
    ids.push(id);
  }
  const ready = (await c.runtime.ListPodSandbox({ filter: { state: { state: 'SANDBOX_READY' } } })).items.length;
  if (ready !== podCount) throw new Error(`${name}: ${ready} pods ready, expected ${podCount}`);
  if (net.allocated().length !== podCount) throw new Error(`${name}: host-local holds ${net.allocated().length} IPs for ${podCount} pods`);
  // Let allocations settle (Go's and V8's background work) before sampling.
  await sleep(1000);
  const loaded = mem();

  const stopRemove: number[] = [];
  const stop: number[] = [];
  for (const id of ids) {
    const t0 = process.hrtime.bigint();
    await c.runtime.StopPodSandbox({ pod_sandbox_id: id });
    stop.push(ms(t0));
    await c.runtime.RemovePodSandbox({ pod_sandbox_id: id });
    stopRemove.push(ms(t0));
  }
  const left = (await c.runtime.ListPodSandbox({})).items;
  if (left.length > 0) throw new Error(`${name}: ListPodSandbox still lists ${left.map((p) => p.id).join(', ')}`);
  if (net.allocated().length > 0) throw new Error(`${name}: host-local still holds ${net.allocated().join(', ')}`);
  return { run, stopRemove, stop, idle, loaded };
}

export function latencyLine(name: string, what: string, xs: number[], extra = '', unit = 'pods'): string {
  const f = (x: number): string => x.toFixed(1);
  return `${label(name)} ${what}: median ${f(median(xs))} ms  (${xs.length} ${unit}: min ${f(Math.min(...xs))}, p90 ${f(percentile(xs, 90))}, max ${f(Math.max(...xs))} ms${extra})`;
}

function printPods(name: string, f: PodFigures): void {
  const podCount = f.run.length;
  out(latencyLine(name, 'RunPodSandbox', f.run));
  const removeOnly = f.stopRemove.map((x, i) => x - f.stop[i]!);
  out(
    latencyLine(
      name,
      'StopPodSandbox+RemovePodSandbox',
      f.stopRemove,
      `; of which Stop median ${median(f.stop).toFixed(1)}, Remove ${median(removeOnly).toFixed(1)} ms`,
    ),
  );
  out(`${label(name)} RSS idle: ${mib(f.idle.rss)}  (${f.idle.detail})`);
  out(`${label(name)} RSS with ${podCount} pods: ${mib(f.loaded.rss)}, PSS ${mib(f.loaded.pss)}  (${f.loaded.detail})`);
}

export async function podsSuite(ctx: SuiteContext, podCount: number): Promise<void> {
  const figures: Partial<Record<'berth' | 'containerd', PodFigures>> = {};
  out(`pod sandboxes: ${podCount} pods per runtime, created one after the other after one warm-up pod; bridge + host-local + portmap networks`);
  if (ctx.runBerth) {
    figures.berth = await onBerthd(ctx, 'pods', '10.177.0.0/16', (b, net) => {
      const pid = b.proc.pid!;
      return podRuns('berth', b.clients, net, podCount, () => berthMem(pid), berthMem(pid));
    });
    printPods('berth', figures.berth);
  }
  if (ctx.runContainerd && !containerdAvailable()) out(`${label('containerd')} not installed: no comparison`);
  else if (ctx.runContainerd) {
    figures.containerd = await onContainerd(ctx, 'pods', '10.178.0.0/16', (ctr, net) => {
      const mem = (): Mem => containerdMem(ctr.pid, ctr.shimPids());
      return podRuns('containerd', ctr.clients, net, podCount, mem, mem());
    });
    printPods('containerd', figures.containerd);
  }
  const { berth, containerd } = figures;
  if (berth && containerd) {
    out();
    compare('RunPodSandbox', berth.run, containerd.run);
    compare('StopPodSandbox+RemovePodSandbox', berth.stopRemove, containerd.stopRemove);
    compareMemory(`with ${podCount} pods`, 'containerd+shims+pause / berthd', containerd.loaded, berth.loaded);
    const perPod = (f: PodFigures): number => (f.loaded.rss - f.idle.rss) / podCount;
    out(
      `memory per pod (RSS with ${podCount} pods - idle, / ${podCount}): berth ${perPod(berth).toFixed(0)} KiB, containerd ${perPod(containerd).toFixed(0)} KiB`,
    );
  }
}
