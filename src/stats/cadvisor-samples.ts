/**
 * The samples behind /metrics/cadvisor and ListPodSandboxMetrics/StreamPodSandboxMetrics:
 * the usage the stats RPCs read (StatsService), for every ready pod and its running
 * containers, as telemetry's plain cAdvisor samples. One collection serves every caller
 * for {@link MAX_AGE_MS}, and concurrent callers share the one in progress, so a
 * Prometheus scrape and kubelet's metrics call do not each walk the cgroups.
 *
 * A running container whose cgroup cannot be read (it exited between listing and reading)
 * gets zeroed CPU and memory figures: the scrape as a whole never fails for it.
 */
import type { ContainerUsage, PodUsage, StatsService, UsageSample } from './stats-service.js';
import type { CadvisorPodSample, CadvisorUsage } from '../telemetry/cadvisor.js';
import type { SandboxService } from '../sandbox/sandbox-service.js';

/** How long one collection is answered from before the cgroups are read again. */
export const MAX_AGE_MS = 1000;

const ZERO: Pick<CadvisorUsage, 'cpuUsageNs' | 'memoryUsage' | 'workingSet'> = { cpuUsageNs: 0n, memoryUsage: 0n, workingSet: 0n };

function usageOf(s: UsageSample | undefined, fallbackMs: number): CadvisorUsage {
  if (!s) return { timestampMs: fallbackMs, ...ZERO };
  const m = s.memory;
  const u: CadvisorUsage = { timestampMs: Number(s.timestamp / 1_000_000n) };
  if (s.cpu) u.cpuUsageNs = s.cpu.usageNs;
  if (m) {
    u.memoryUsage = m.usage;
    u.workingSet = m.workingSet;
    u.memoryLimit = m.limit ?? 0n;
    if (m.rss !== undefined) u.rss = m.rss;
    if (m.pageFaults !== undefined) u.pageFaults = m.pageFaults;
    if (m.majorPageFaults !== undefined) u.majorPageFaults = m.majorPageFaults;
    if (m.oomKills !== undefined) u.oomEvents = m.oomKills;
  }
  if (s.swap) u.swap = s.swap.usage;
  if (s.pids !== undefined) u.processes = s.pids;
  return u;
}

function containerSample(p: PodUsage, c: ContainerUsage, now: number): CadvisorPodSample['containers'][number] {
  const usage = usageOf(c.usage, now);
  if (c.writableLayer) usage.fs = { device: c.writableLayer.mountpoint, bytes: c.writableLayer.bytes };
  const md = p.sandbox.metadata;
  return {
    id: c.container.id,
    target: { container: c.container.name, id: c.container.id, image: c.container.imageRef, namespace: md.namespace, pod: md.name },
    usage,
  };
}

/** A pod's samples: its own (container "") with its network, and its running containers'. */
export function podSample(p: PodUsage, now = Date.now()): CadvisorPodSample {
  const usage = usageOf(p.usage, now);
  if (p.network) {
    usage.network = p.network.interfaces.map((i) => ({ name: i.name, rxBytes: i.rxBytes, rxErrors: i.rxErrors, txBytes: i.txBytes, txErrors: i.txErrors }));
  }
  const md = p.sandbox.metadata;
  return {
    id: p.sandbox.id,
    target: { container: '', id: p.sandbox.id, image: '', namespace: md.namespace, pod: md.name },
    usage,
    containers: p.containers.filter((c) => c.container.state === 'running').map((c) => containerSample(p, c, now)),
  };
}

/** The cached collection of every ready pod's samples. */
export class CadvisorCollector {
  private last: { at: number; pods: CadvisorPodSample[] } | undefined;
  private pending: Promise<CadvisorPodSample[]> | undefined;

  constructor(private readonly o: { stats: StatsService; sandboxes: SandboxService }) {}

  /** Every ready pod with its running containers; from the last collection if it is recent. */
  collect(): Promise<CadvisorPodSample[]> {
    if (this.last && Date.now() - this.last.at < MAX_AGE_MS) return Promise.resolve(this.last.pods);
    this.pending ??= this.o.stats
      .podsUsage(this.o.sandboxes.list().filter((s) => s.state === 'ready'))
      .then((usage) => {
        const now = Date.now();
        const pods = usage.map((p) => podSample(p, now));
        this.last = { at: now, pods };
        return pods;
      })
      .finally(() => (this.pending = undefined));
    return this.pending;
  }
}
