/**
 * Container and pod statistics for ContainerStats, ListContainerStats, PodSandboxStats
 * and ListPodSandboxStats (kubelet's CRI stats provider, `crictl stats`, `kubectl top`):
 * - CPU, memory, swap, process count and PSI from the container's cgroup (./cgroups.ts);
 *   usage_nano_cores from the previous sample of the same container, as containerd does
 *   (absent on the first one, which kubelet handles by computing it itself);
 * - the writable layer's disk use (bytes in blocks, as du; inodes), walked at most every
 *   {@link LAYER_USAGE_TTL_MS} per container, in the background once it is known, since a
 *   layer with many files takes a while (containerd refreshes on a 10 s period too);
 * - for pods: the pod cgroup (kubelet's cgroup_parent) when there is one, else the sum of
 *   its containers; the network interfaces of the pod's network namespace, read through
 *   a running container's /proc/<pid>/net/dev.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { nowNsBigint } from '../common/clock.js';
import { measure } from '../common/disk-usage.js';
import type { Logger } from '../common/logger.js';

export { measure };
import { messageOf } from '../common/errors.js';
import type { ContainerRecord } from '../containers/container-repository.js';
import type { ContainerService } from '../containers/container-service.js';
import type { ImageService } from '../images/image-service.js';
import type { SandboxRecord } from '../sandbox/sandbox-repository.js';
import type { SandboxService } from '../sandbox/sandbox-service.js';
import { parseCgroupMounts, parseProcCgroups, readCgroupSample, type CgroupMounts, type CgroupSample, type ProcCgroups } from './cgroups.js';

/** How old a writable layer's measured use may be before it is walked again. */
export const LAYER_USAGE_TTL_MS = 10_000;

export interface UsageSample extends CgroupSample {
  /** CPU use since the previous sample, in nanocores (1e9 = one core busy). */
  nanoCores?: bigint;
}

export interface LayerUsage {
  timestamp: bigint;
  mountpoint: string;
  bytes: bigint;
  inodes: bigint;
}

export interface ContainerUsage {
  container: ContainerRecord;
  /** Absent when the container has no live cgroup (not started, exited, or gone). */
  usage?: UsageSample;
  writableLayer?: LayerUsage;
}

export interface InterfaceUsage {
  name: string;
  rxBytes: bigint;
  rxErrors: bigint;
  txBytes: bigint;
  txErrors: bigint;
}

export interface PodUsage {
  sandbox: SandboxRecord;
  usage?: UsageSample;
  network?: { timestamp: bigint; interfaces: InterfaceUsage[]; defaultInterface?: InterfaceUsage };
  containers: ContainerUsage[];
}

export interface StatsServiceOptions {
  containers: ContainerService;
  sandboxes: SandboxService;
  images: ImageService;
  cgroupDriver: 'cgroupfs' | 'systemd';
  log: Logger;
  /** Where procfs is mounted ("/proc"); a fixture tree in unit tests. */
  procRoot?: string;
}

/** The interface CNI plugins are asked to make in each pod (kubelet's default). */
const POD_INTERFACE = 'eth0';

export class StatsService {
  private mounts: CgroupMounts | undefined;
  private readonly lastCpu = new Map<string, { at: bigint; usageNs: bigint }>();
  private readonly layers = new Map<string, { at: number; usage?: LayerUsage; pending?: Promise<LayerUsage | undefined> }>();

  private readonly proc: string;

  constructor(private readonly o: StatsServiceOptions) {
    this.proc = o.procRoot ?? '/proc';
  }

  /** The cgroup mounts, read once (they do not change while berthd runs). */
  private async cgroupMounts(): Promise<CgroupMounts> {
    this.mounts ??= parseCgroupMounts(await readFile(join(this.proc, 'self', 'mountinfo'), 'utf8'));
    return this.mounts;
  }

  async containerUsage(c: ContainerRecord): Promise<ContainerUsage> {
    const [usage, writableLayer] = await Promise.all([this.containerCgroupUsage(c), this.layerUsage(c.id)]);
    return { container: c, ...(usage ? { usage } : {}), ...(writableLayer ? { writableLayer } : {}) };
  }

  /** Usage of each container; forgets the CPU samples and layer sizes of containers no longer listed. */
  async containersUsage(list: ContainerRecord[], all: boolean): Promise<ContainerUsage[]> {
    const out = await Promise.all(list.map((c) => this.containerUsage(c)));
    if (all) this.prune(new Set(this.o.containers.list().map((c) => c.id)), new Set(this.o.sandboxes.list().map((s) => s.id)));
    return out;
  }

  async podUsage(sb: SandboxRecord): Promise<PodUsage> {
    const containers = await Promise.all(
      this.o.containers
        .list()
        .filter((c) => c.sandboxId === sb.id)
        .map((c) => this.containerUsage(c)),
    );
    const parent = sb.facts.cgroupParent;
    let usage: UsageSample | undefined;
    if (parent !== '') {
      const mounts = await this.cgroupMounts();
      const sample = await readCgroupSample(mounts, this.parentCgroups(mounts, parent));
      if (sample.cpu || sample.memory) usage = this.withRate(`pod:${sb.id}`, sample);
    }
    if (!usage) {
      const sum = sumSamples(containers.flatMap((c) => (c.usage ? [c.usage] : [])));
      if (sum) usage = this.withRate(`pod:${sb.id}`, sum);
    }
    const network = await this.podNetwork(sb, containers);
    return { sandbox: sb, containers, ...(usage ? { usage } : {}), ...(network ? { network } : {}) };
  }

  async podsUsage(list: SandboxRecord[]): Promise<PodUsage[]> {
    return Promise.all(list.map((s) => this.podUsage(s)));
  }

  private prune(containers: Set<string>, pods: Set<string>): void {
    for (const k of this.lastCpu.keys()) {
      const live = k.startsWith('pod:') ? pods.has(k.slice(4)) : containers.has(k);
      if (!live) this.lastCpu.delete(k);
    }
    for (const k of this.layers.keys()) if (!containers.has(k)) this.layers.delete(k);
  }

  /** The cgroups of a live container's process, checked to be the container's own (not a reused pid's). */
  private async containerCgroups(c: ContainerRecord): Promise<ProcCgroups | undefined> {
    if ((c.state !== 'running' && c.state !== 'created') || !c.pid) return undefined;
    let text: string;
    try {
      text = await readFile(join(this.proc, String(c.pid), 'cgroup'), 'utf8');
    } catch {
      return undefined;
    }
    const cg = parseProcCgroups(text);
    const paths = [...cg.v1.values(), ...(cg.v2 !== undefined ? [cg.v2] : [])];
    return paths.some((p) => p.includes(c.id)) ? cg : undefined;
  }

  private async containerCgroupUsage(c: ContainerRecord): Promise<UsageSample | undefined> {
    const cg = await this.containerCgroups(c);
    if (!cg) return undefined;
    const sample = await readCgroupSample(await this.cgroupMounts(), cg);
    if (!sample.cpu && !sample.memory) return undefined;
    return this.withRate(c.id, sample);
  }

  /** Adds nanoCores from the previous sample under `key`, and keeps this one. */
  private withRate(key: string, sample: CgroupSample): UsageSample {
    if (!sample.cpu) return sample;
    const prev = this.lastCpu.get(key);
    this.lastCpu.set(key, { at: sample.timestamp, usageNs: sample.cpu.usageNs });
    if (!prev || sample.timestamp <= prev.at || sample.cpu.usageNs < prev.usageNs) return sample;
    return { ...sample, nanoCores: ((sample.cpu.usageNs - prev.usageNs) * 1_000_000_000n) / (sample.timestamp - prev.at) };
  }

  /** kubelet's cgroup_parent as paths per hierarchy: a cgroupfs path, or a systemd slice expanded to its path. */
  private parentCgroups(mounts: CgroupMounts, parent: string): ProcCgroups {
    const path = this.o.cgroupDriver === 'systemd' ? slicePath(parent) : join('/', parent);
    return { v1: new Map([...mounts.v1.keys()].map((k) => [k, path])), v2: path };
  }

  /** The writable layer's disk use, measured at most every LAYER_USAGE_TTL_MS. */
  private async layerUsage(id: string): Promise<LayerUsage | undefined> {
    const dir = this.o.images.containerLayerDir(id);
    if (!dir) return undefined;
    const entry = this.layers.get(id) ?? { at: 0 };
    this.layers.set(id, entry);
    const fresh = Date.now() - entry.at < LAYER_USAGE_TTL_MS;
    if (!fresh && !entry.pending) {
      entry.pending = measure(dir)
        .then((u) => {
          entry.at = Date.now();
          const usage = { timestamp: nowNsBigint(), mountpoint: this.o.images.usage().mountpoint, ...u };
          entry.usage = usage;
          return usage;
        })
        .catch((err: unknown) => {
          this.o.log.debug('cannot measure a writable layer', { container: id, error: messageOf(err) });
          return undefined;
        })
        .finally(() => (entry.pending = undefined));
    }
    // Once known, a stale figure is answered while the walk runs.
    return entry.usage ?? (await entry.pending);
  }

  private async podNetwork(sb: SandboxRecord, containers: ContainerUsage[]): Promise<PodUsage['network']> {
    if (sb.facts.namespaces.network === 'NODE' || sb.nsDir === null) return undefined;
    for (const { container: c, usage } of containers) {
      if (!usage || !c.pid) continue;
      let text: string;
      try {
        text = await readFile(join(this.proc, String(c.pid), 'net', 'dev'), 'utf8');
      } catch {
        continue;
      }
      const interfaces = parseNetDev(text).filter((i) => i.name !== 'lo');
      const def = interfaces.find((i) => i.name === POD_INTERFACE);
      return { timestamp: nowNsBigint(), interfaces, ...(def ? { defaultInterface: def } : {}) };
    }
    return undefined;
  }
}

/** A systemd slice name as its cgroup path: "a-b-c.slice" is /a.slice/a-b.slice/a-b-c.slice. */
export function slicePath(slice: string): string {
  if (!slice.endsWith('.slice') || slice === '-.slice') return '/';
  const parts = slice.slice(0, -'.slice'.length).split('-');
  const out: string[] = [];
  for (let i = 1; i <= parts.length; i++) out.push(`${parts.slice(0, i).join('-')}.slice`);
  return '/' + out.join('/');
}

/** /proc/net/dev: per interface, receive then transmit counters. */
export function parseNetDev(text: string): InterfaceUsage[] {
  const out: InterfaceUsage[] = [];
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const name = line.slice(0, colon).trim();
    const f = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/);
    if (name === '' || f.length < 16 || !f.every((x) => /^\d+$/.test(x))) continue;
    out.push({ name, rxBytes: BigInt(f[0]!), rxErrors: BigInt(f[2]!), txBytes: BigInt(f[8]!), txErrors: BigInt(f[10]!) });
  }
  return out;
}

/** Sum of containers' samples, for a pod without a cgroup of its own. */
export function sumSamples(samples: CgroupSample[]): CgroupSample | undefined {
  if (samples.length === 0) return undefined;
  const add = (a: bigint | undefined, b: bigint | undefined): bigint | undefined => (a === undefined ? b : b === undefined ? a : a + b);
  const out: CgroupSample = { timestamp: samples.reduce((t, s) => (s.timestamp > t ? s.timestamp : t), 0n) };
  for (const s of samples) {
    if (s.cpu) out.cpu = { usageNs: (out.cpu?.usageNs ?? 0n) + s.cpu.usageNs };
    if (s.memory) {
      const m = out.memory;
      const rss = add(m?.rss, s.memory.rss);
      const pf = add(m?.pageFaults, s.memory.pageFaults);
      const mpf = add(m?.majorPageFaults, s.memory.majorPageFaults);
      out.memory = {
        usage: (m?.usage ?? 0n) + s.memory.usage,
        workingSet: (m?.workingSet ?? 0n) + s.memory.workingSet,
        ...(rss !== undefined ? { rss } : {}),
        ...(pf !== undefined ? { pageFaults: pf } : {}),
        ...(mpf !== undefined ? { majorPageFaults: mpf } : {}),
      };
    }
    if (s.pids !== undefined) out.pids = (out.pids ?? 0n) + s.pids;
  }
  return out;
}
