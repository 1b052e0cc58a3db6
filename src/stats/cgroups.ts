/**
 * Resource usage of a process's cgroup, read from cgroupfs: v1 controllers where the host
 * mounts them (this kind of machine is hybrid: v1 controllers and an empty v2 hierarchy),
 * v2 files otherwise. The cgroup is found through /proc/<pid>/cgroup, so the same code
 * serves the cgroupfs and systemd drivers.
 *
 * Definitions follow kubelet and cAdvisor: working set = usage - inactive file pages
 * (never below 0); available = limit - working set when a limit is set.
 */
import { readFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { nowNsBigint } from '../common/clock.js';
import type { CgroupMounts } from '../common/cgroup-mounts.js';

export { parseCgroupMounts, type CgroupMounts } from '../common/cgroup-mounts.js';

/** Where each cgroup hierarchy is mounted: v1 controllers by name, and the v2 mount. */

/** A process's cgroups: v1 paths by controller and the v2 path, as in /proc/<pid>/cgroup. */
export interface ProcCgroups {
  v1: Map<string, string>;
  v2?: string;
}

export interface PsiData {
  total: bigint;
  avg10: number;
  avg60: number;
  avg300: number;
}

export interface Psi {
  some?: PsiData;
  full?: PsiData;
}

export interface CgroupSample {
  /** Nanoseconds since the epoch. */
  timestamp: bigint;
  cpu?: { usageNs: bigint; psi?: Psi };
  memory?: {
    usage: bigint;
    workingSet: bigint;
    rss?: bigint;
    pageFaults?: bigint;
    majorPageFaults?: bigint;
    limit?: bigint;
    psi?: Psi;
    /** Processes the kernel's OOM killer killed in the cgroup (v1 memory.oom_control, v2 memory.events). */
    oomKills?: bigint;
  };
  swap?: { usage: bigint; limit?: bigint };
  pids?: bigint;
  io?: { psi: Psi };
}

/** /proc/<pid>/cgroup: "N:controller,controller:/path" (v1) and "0::/path" (v2). */
export function parseProcCgroups(text: string): ProcCgroups {
  const out: ProcCgroups = { v1: new Map() };
  for (const line of text.split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    const [, hier, controllers = '', path = '/'] = m;
    if (hier === '0' && controllers === '') out.v2 = path;
    else for (const c of controllers.split(',')) if (c !== '') out.v1.set(c, path);
  }
  return out;
}

/** The directory of `path` (as /proc/<pid>/cgroup gives it) in a hierarchy mounted at `m`. */
function dirIn(m: { mountpoint: string; root: string }, path: string): string | undefined {
  let rel = path;
  if (m.root !== '/') {
    if (path !== m.root && !path.startsWith(m.root + '/')) return undefined;
    rel = path.slice(m.root.length) || '/';
  }
  const norm = posix.normalize(rel);
  if (norm.split('/').includes('..')) return undefined;
  return join(m.mountpoint, norm);
}

/** The flat keyed files (memory.stat, cpu.stat): "key value" per line. */
export function parseFlatKeyed(text: string): Map<string, bigint> {
  const out = new Map<string, bigint>();
  for (const line of text.split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v && /^\d+$/.test(v)) out.set(k, BigInt(v));
  }
  return out;
}

/** A PSI file (cpu.pressure…): "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" and "full …". */
export function parsePsi(text: string): Psi {
  const out: Psi = {};
  for (const line of text.split('\n')) {
    const [kind, ...fields] = line.trim().split(/\s+/);
    if (kind !== 'some' && kind !== 'full') continue;
    const f = new Map(fields.map((x) => x.split('=') as [string, string]));
    const total = f.get('total');
    if (total === undefined || !/^\d+$/.test(total)) continue;
    out[kind] = { total: BigInt(total), avg10: Number(f.get('avg10') ?? 0), avg60: Number(f.get('avg60') ?? 0), avg300: Number(f.get('avg300') ?? 0) };
  }
  return out;
}

/** cgroup v1 writes "no limit" as a huge number, page-rounded below 2^63. */
const V1_UNLIMITED = 1n << 62n;

async function readText(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
}

async function readNum(file: string): Promise<bigint | undefined> {
  const t = (await readText(file))?.trim();
  return t !== undefined && /^\d+$/.test(t) ? BigInt(t) : undefined;
}

/** A v2 limit file: "max" or a number. */
async function readLimitV2(file: string): Promise<bigint | undefined> {
  const t = (await readText(file))?.trim();
  return t !== undefined && /^\d+$/.test(t) ? BigInt(t) : undefined;
}

/**
 * Reads the usage of the cgroups `cg` (a process's, from /proc/<pid>/cgroup) under the
 * hierarchies `mounts`. Parts the host does not have are left out; never throws for a
 * cgroup that vanished meanwhile (the container exited): the parts read before are kept.
 */
export async function readCgroupSample(mounts: CgroupMounts, cg: ProcCgroups, now: () => bigint = nowNsBigint): Promise<CgroupSample> {
  const sample: CgroupSample = { timestamp: now() };
  const v1 = (controller: string): string | undefined => {
    const m = mounts.v1.get(controller);
    const p = cg.v1.get(controller);
    return m && p !== undefined ? dirIn(m, p) : undefined;
  };
  const v2 = mounts.v2 && cg.v2 !== undefined ? dirIn(mounts.v2, cg.v2) : undefined;

  const cpuacct = v1('cpuacct');
  const memory = v1('memory');
  const pids = v1('pids');
  const [cpuUsage, cpuStat, cpuPsi, memPsi, ioPsi] = await Promise.all([
    cpuacct ? readNum(join(cpuacct, 'cpuacct.usage')) : undefined,
    !cpuacct && v2 ? readText(join(v2, 'cpu.stat')) : undefined,
    v2 ? readText(join(v2, 'cpu.pressure')) : undefined,
    v2 ? readText(join(v2, 'memory.pressure')) : undefined,
    v2 ? readText(join(v2, 'io.pressure')) : undefined,
  ]);
  const psi = (t: string | undefined): Psi | undefined => {
    if (t === undefined) return undefined;
    const p = parsePsi(t);
    return p.some || p.full ? p : undefined;
  };
  const usageNs = cpuUsage ?? (cpuStat !== undefined ? (parseFlatKeyed(cpuStat).get('usage_usec') ?? undefined) : undefined);
  if (usageNs !== undefined) {
    const p = psi(cpuPsi);
    sample.cpu = { usageNs: cpuUsage !== undefined ? usageNs : usageNs * 1000n, ...(p ? { psi: p } : {}) };
  }

  if (memory) {
    const [usage, statText, limit, memswUsage, memswLimit, oomText] = await Promise.all([
      readNum(join(memory, 'memory.usage_in_bytes')),
      readText(join(memory, 'memory.stat')),
      readNum(join(memory, 'memory.limit_in_bytes')),
      readNum(join(memory, 'memory.memsw.usage_in_bytes')),
      readNum(join(memory, 'memory.memsw.limit_in_bytes')),
      readText(join(memory, 'memory.oom_control')),
    ]);
    if (usage !== undefined && statText !== undefined) {
      // v1's total_* figures count the whole subtree.
      sample.memory = memorySample(usage, parseFlatKeyed(statText), 'total_', limit !== undefined && limit < V1_UNLIMITED ? limit : undefined, psi(memPsi));
      const oom = oomText !== undefined ? parseFlatKeyed(oomText).get('oom_kill') : undefined;
      if (oom !== undefined) sample.memory.oomKills = oom;
      if (memswUsage !== undefined) {
        const swapLimit = memswLimit !== undefined && limit !== undefined && memswLimit < V1_UNLIMITED ? memswLimit - limit : undefined;
        sample.swap = { usage: memswUsage > usage ? memswUsage - usage : 0n, ...(swapLimit !== undefined && swapLimit >= 0n ? { limit: swapLimit } : {}) };
      }
    }
  } else if (v2) {
    const [usage, statText, limit, swapUsage, swapLimit, eventsText] = await Promise.all([
      readNum(join(v2, 'memory.current')),
      readText(join(v2, 'memory.stat')),
      readLimitV2(join(v2, 'memory.max')),
      readNum(join(v2, 'memory.swap.current')),
      readLimitV2(join(v2, 'memory.swap.max')),
      readText(join(v2, 'memory.events')),
    ]);
    if (usage !== undefined && statText !== undefined) {
      sample.memory = memorySample(usage, parseFlatKeyed(statText), '', limit, psi(memPsi));
      const oom = eventsText !== undefined ? parseFlatKeyed(eventsText).get('oom_kill') : undefined;
      if (oom !== undefined) sample.memory.oomKills = oom;
      if (swapUsage !== undefined) sample.swap = { usage: swapUsage, ...(swapLimit !== undefined ? { limit: swapLimit } : {}) };
    }
  }

  const pidCount = pids ? await readNum(join(pids, 'pids.current')) : v2 ? await readNum(join(v2, 'pids.current')) : undefined;
  if (pidCount !== undefined) sample.pids = pidCount;
  const io = psi(ioPsi);
  if (io) sample.io = { psi: io };
  return sample;
}

/**
 * Memory figures from usage and memory.stat: v1 names (`total_rss`, with `prefix`
 * "total_", falling back to the cgroup's own) or v2 names (`anon` for rss).
 */
function memorySample(
  usage: bigint,
  st: Map<string, bigint>,
  prefix: string,
  limit: bigint | undefined,
  p: Psi | undefined,
): NonNullable<CgroupSample['memory']> {
  const get = (k: string): bigint | undefined => st.get(prefix + k) ?? st.get(k);
  const inactive = get('inactive_file') ?? 0n;
  const rss = prefix === '' ? st.get('anon') : get('rss');
  const pf = get('pgfault');
  const mpf = get('pgmajfault');
  return {
    usage,
    workingSet: usage > inactive ? usage - inactive : 0n,
    ...(rss !== undefined ? { rss } : {}),
    ...(pf !== undefined ? { pageFaults: pf } : {}),
    ...(mpf !== undefined ? { majorPageFaults: mpf } : {}),
    ...(limit !== undefined ? { limit } : {}),
    ...(p ? { psi: p } : {}),
  };
}
