/**
 * Conversions and filters shared by the stats RPCs (one file each: container-stats.ts,
 * list-container-stats.ts, stream-container-stats.ts and the pod sandbox ones). Filters
 * work as in ListContainers / ListPodSandbox: an id (or unique prefix), a pod id (prefix), labels
 * (all must match). Containers being created are not listed; a stopped container keeps
 * its writable layer's figure and has no CPU or memory figures.
 */
import type { ContainerRecord } from '../../containers/container-repository.js';
import type { SandboxRecord } from '../../sandbox/sandbox-repository.js';
import type { CgroupSample, Psi } from '../../stats/cgroups.js';
import type { ContainerUsage, InterfaceUsage, PodUsage, StatsService, UsageSample } from '../../stats/stats-service.js';
import type { CriDeps } from '../deps.js';
import type { ContainerStats } from '../gen/runtime/v1/ContainerStats.js';
import type { ContainerStatsFilter__Output } from '../gen/runtime/v1/ContainerStatsFilter.js';
import type { CpuUsage } from '../gen/runtime/v1/CpuUsage.js';
import type { MemoryUsage } from '../gen/runtime/v1/MemoryUsage.js';
import type { NetworkInterfaceUsage } from '../gen/runtime/v1/NetworkInterfaceUsage.js';
import type { PodSandboxStats } from '../gen/runtime/v1/PodSandboxStats.js';
import type { PodSandboxStatsFilter__Output } from '../gen/runtime/v1/PodSandboxStatsFilter.js';
import type { PsiStats } from '../gen/runtime/v1/PsiStats.js';

/** What the stats handlers read. */
export type Deps = Pick<CriDeps, 'containers' | 'sandboxes'> & { stats: StatsService };

const u64 = (v: bigint | undefined): { value: string } | null => (v === undefined ? null : { value: v.toString() });

function psi(p: Psi | undefined): PsiStats | null {
  if (!p) return null;
  const d = (x: Psi['some']): PsiStats['Some'] => (x ? { Total: x.total.toString(), Avg10: x.avg10, Avg60: x.avg60, Avg300: x.avg300 } : null);
  return { Some: d(p.some), Full: d(p.full) };
}

function cpuUsage(s: UsageSample): CpuUsage | null {
  if (!s.cpu) return null;
  return { timestamp: s.timestamp.toString(), usage_core_nano_seconds: u64(s.cpu.usageNs), usage_nano_cores: u64(s.nanoCores), psi: psi(s.cpu.psi) };
}

function memoryUsage(s: CgroupSample): MemoryUsage | null {
  const m = s.memory;
  if (!m) return null;
  return {
    timestamp: s.timestamp.toString(),
    working_set_bytes: u64(m.workingSet),
    available_bytes: u64(m.limit !== undefined ? (m.limit > m.workingSet ? m.limit - m.workingSet : 0n) : undefined),
    usage_bytes: u64(m.usage),
    rss_bytes: u64(m.rss),
    page_faults: u64(m.pageFaults),
    major_page_faults: u64(m.majorPageFaults),
    psi: psi(m.psi),
  };
}

export function toContainerStats(u: ContainerUsage): ContainerStats {
  const c = u.container;
  const s = u.usage;
  return {
    attributes: { id: c.id, metadata: { name: c.name, attempt: c.attempt }, labels: c.facts.labels, annotations: c.facts.annotations },
    cpu: s ? cpuUsage(s) : null,
    memory: s ? memoryUsage(s) : null,
    swap: s?.swap
      ? {
          timestamp: s.timestamp.toString(),
          swap_usage_bytes: u64(s.swap.usage),
          swap_available_bytes: u64(s.swap.limit !== undefined ? (s.swap.limit > s.swap.usage ? s.swap.limit - s.swap.usage : 0n) : undefined),
        }
      : null,
    io: s?.io ? { timestamp: s.timestamp.toString(), psi: psi(s.io.psi) } : null,
    writable_layer: u.writableLayer
      ? {
          timestamp: u.writableLayer.timestamp.toString(),
          fs_id: { mountpoint: u.writableLayer.mountpoint },
          used_bytes: u64(u.writableLayer.bytes),
          inodes_used: u64(u.writableLayer.inodes),
        }
      : null,
  };
}

function iface(i: InterfaceUsage): NetworkInterfaceUsage {
  return { name: i.name, rx_bytes: u64(i.rxBytes), rx_errors: u64(i.rxErrors), tx_bytes: u64(i.txBytes), tx_errors: u64(i.txErrors) };
}

export function toPodStats(p: PodUsage): PodSandboxStats {
  const sb = p.sandbox;
  const s = p.usage;
  return {
    attributes: {
      id: sb.id,
      metadata: { name: sb.metadata.name, uid: sb.metadata.uid, namespace: sb.metadata.namespace, attempt: sb.metadata.attempt },
      labels: sb.facts.labels,
      annotations: sb.facts.annotations,
    },
    linux: {
      cpu: s ? cpuUsage(s) : null,
      memory: s ? memoryUsage(s) : null,
      network: p.network
        ? {
            timestamp: p.network.timestamp.toString(),
            default_interface: p.network.defaultInterface ? iface(p.network.defaultInterface) : null,
            interfaces: p.network.interfaces.map(iface),
          }
        : null,
      process: s?.pids !== undefined ? { timestamp: s.timestamp.toString(), process_count: u64(s.pids) } : null,
      io: s?.io ? { timestamp: s.timestamp.toString(), psi: psi(s.io.psi) } : null,
      containers: p.containers.map(toContainerStats),
    },
    windows: null,
  };
}

const labelsMatch = (labels: Record<string, string> | undefined, selector: Record<string, string> | undefined): boolean =>
  Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v);

export function filterContainers(d: Deps, f: ContainerStatsFilter__Output | null): ContainerRecord[] {
  let recs = d.containers.list();
  if (f?.id) {
    const one = d.containers.find(f.id);
    recs = one ? [one] : [];
  }
  if (f?.pod_sandbox_id) recs = recs.filter((c) => c.sandboxId.startsWith(f.pod_sandbox_id));
  return recs.filter((c) => c.state !== 'creating' && c.state !== 'removing' && labelsMatch(c.facts.labels, f?.label_selector));
}

export function filterPods(d: Deps, f: PodSandboxStatsFilter__Output | null): SandboxRecord[] {
  let recs = d.sandboxes.list();
  if (f?.id) {
    const one = d.sandboxes.find(f.id);
    recs = one ? [one] : [];
  }
  return recs.filter((s) => s.state !== 'creating' && labelsMatch(s.facts.labels, f?.label_selector));
}

export const unfiltered = (f: { id?: string; pod_sandbox_id?: string; label_selector?: Record<string, string> } | null): boolean =>
  !f || (!f.id && !f.pod_sandbox_id && Object.keys(f.label_selector ?? {}).length === 0);
