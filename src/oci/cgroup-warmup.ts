/**
 * A head start on the cgroup join of a runtime's `exec` (and anything else that moves a
 * process between cgroups right after berthd starts it).
 *
 * Every move of a process into a cgroup (a write to `cgroup.procs`, as `runc exec` makes
 * for the command in each of the container's hierarchies) takes the kernel's global
 * `cgroup_threadgroup_rwsem` for writing. That lock is a per-CPU rwsem: a writer first
 * waits for an RCU grace period, unless another writer took it less than about one grace
 * period before. Measured on this kind of machine, the first such write after a quiet
 * spell costs 6–14 ms (more under load), the next ones 0.1 ms; `runc exec` spaced like
 * kubelet's probes pays the whole grace period every time, about a quarter of its time.
 *
 * So berthd makes one such write itself the moment it starts the runtime: a move of
 * berthd into the cgroup it is in already (`0` into the `cgroup.procs` of its own cgroup,
 * read afresh from /proc/self/cgroup each time), which migrates nothing, on a libuv pool
 * thread. The grace period then runs while the runtime starts (its Go runtime, its
 * `init` entering the namespaces), and the runtime's own write finds it passed or under
 * way. Measured: `runc exec … true` 4–7 ms faster at the median.
 *
 * What it costs: the write waits for the grace period on one pool thread (at most one
 * write in flight), holding the kernel's cgroup_mutex meanwhile as any cgroup move does.
 * Where the write is refused (no cgroupfs, read-only, not root) the warm-up turns itself
 * off for good. Kernels mounted with `favordynmods` need none of it: there the writes
 * take no grace period, and this one costs microseconds.
 */
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { parseCgroupMounts } from '../common/cgroup-mounts.js';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';

/** A cgroup hierarchy berthd can move itself in: its mount and how /proc/self/cgroup names it. */
interface Hierarchy {
  mountpoint: string;
  /** The mount's root within the hierarchy (mountinfo field 4; "/" unless in a cgroup namespace's bind). */
  root: string;
  /** Matches this hierarchy's line of /proc/self/cgroup; captures the path. */
  line: RegExp;
}

/**
 * v1 controllers tried first, in this order (hierarchies that only count or restrict,
 * where berthd's cgroup is the one its service manager gave it), then the v2 hierarchy.
 * Never `name=systemd`, which is systemd's own bookkeeping.
 */
const V1_ORDER = ['pids', 'freezer', 'devices', 'blkio', 'cpu', 'cpuacct', 'memory'];

/** The hierarchy to write in, from /proc/self/mountinfo; undefined when there is none. */
export function chooseHierarchy(mountinfo: string): Hierarchy | undefined {
  const mounts = parseCgroupMounts(mountinfo);
  for (const c of V1_ORDER) {
    const m = mounts.v1.get(c);
    // The line names the hierarchy by all its controllers ("4:cpu,cpuacct:/path").
    if (m) return { ...m, line: new RegExp(`^\\d+:(?:[^:]*,)?${c}(?:,[^:]*)?:(.*)$`, 'm') };
  }
  return mounts.v2 && { ...mounts.v2, line: /^0::(.*)$/m };
}

/** The `cgroup.procs` of the cgroup that /proc/self/cgroup's `text` puts berthd in, in `h`. */
export function ownProcsFile(h: Hierarchy, text: string): string | undefined {
  const m = h.line.exec(text);
  if (!m) return undefined;
  let rel = m[1] ?? '';
  if (!rel.startsWith('/') || rel.split('/').includes('..')) return undefined;
  if (h.root !== '/') {
    if (rel !== h.root && !rel.startsWith(`${h.root}/`)) return undefined;
    rel = rel.slice(h.root.length) || '/';
  }
  return join(h.mountpoint, posix.normalize(rel), 'cgroup.procs');
}

export class CgroupJoinWarmup {
  private hierarchy: Hierarchy | undefined | null = null;
  private current: Promise<void> | undefined;
  private off = false;

  constructor(
    private readonly log?: Logger,
    /** Where berthd's mounts and cgroups are read (tests give others). */
    private readonly files = { mountinfo: '/proc/self/mountinfo', cgroup: '/proc/self/cgroup' },
  ) {}

  /** False once turned off (no hierarchy to write in, or the write refused). */
  get enabled(): boolean {
    return !this.off;
  }

  /** Settles once no warm-up write is in flight (tests, shutdown). */
  idle(): Promise<void> {
    return this.current ?? Promise.resolve();
  }

  /** Starts the warm-up write unless one is in flight (or the warm-up is off); never throws. */
  warm(): void {
    if (this.off || this.current) return;
    let file: string | undefined;
    try {
      if (this.hierarchy === null) this.hierarchy = chooseHierarchy(readFileSync(this.files.mountinfo, 'utf8'));
      if (this.hierarchy) file = ownProcsFile(this.hierarchy, readFileSync(this.files.cgroup, 'utf8'));
    } catch (err) {
      return this.turnOff(`cannot read berthd's cgroups: ${messageOf(err)}`);
    }
    if (!file) return this.turnOff('no cgroup hierarchy of berthd to write in');
    // "0": the writer's own process, i.e. berthd, into the cgroup it is in.
    this.current = writeFile(file, '0', { flag: 'r+' })
      .catch((err: unknown) => this.turnOff(`${file}: ${messageOf(err)}`))
      .finally(() => (this.current = undefined));
  }

  private turnOff(why: string): void {
    this.off = true;
    this.log?.debug('cgroup join warm-up off', { reason: why });
  }
}
