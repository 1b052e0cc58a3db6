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
 * A shim's `create` is warmed longer ({@link CgroupJoinWarmup.hold}): the runtime's
 * create moves the container's init into its cgroups some 10–40 ms after it is started
 * (its Go runtime, the config, the init's exec), later than one write keeps the lock on
 * its fast-for-writers path (about one grace period after the write: a second write
 * 10 ms after the first costs 0.1 ms here, 20 ms after it the whole 6–8 ms again). So
 * while a create is held the write is made again every {@link HOLD_INTERVAL_MS} ms: the
 * first one pays the grace period while berthd makes the bundle, the others cost about
 * 0.05 ms each, made by a helper thread of the addon (no event loop or pool round trip).
 * Measured with `runc create` of a kubelet-like spec: 47 → 37 ms at the median; in
 * runc's own timeline the wait of its init's first stage for the cgroup join (7–14 ms
 * under perf sched and strace) is gone.
 *
 * What it costs: the write waits for the grace period on one pool thread (at most one
 * write in flight), holding the kernel's cgroup_mutex meanwhile as any cgroup move does;
 * while a create is held, one write of the helper thread every {@link HOLD_INTERVAL_MS}
 * ms (about 15 ms of CPU per second of warming, some 0.6 ms per create). Where the write is refused (no cgroupfs, read-only, not root) the warm-up turns itself
 * off for good. Kernels mounted with `favordynmods` need none of it: there the writes
 * take no grace period, and this one costs microseconds.
 */
import { closeSync, openSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { parseCgroupMounts } from '../common/cgroup-mounts.js';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { native } from '../common/native.js';

/** A cgroup hierarchy berthd can move itself in: its mount and how /proc/self/cgroup names it. */
interface Hierarchy {
  mountpoint: string;
  /** The mount's root within the hierarchy (mountinfo field 4; "/" unless in a cgroup namespace's bind). */
  root: string;
  /** Matches this hierarchy's line of /proc/self/cgroup; captures the path. */
  line: RegExp;
}

/**
 * How often a held warm-up writes again: well under the time the kernel keeps the lock
 * on its fast-for-writers path after a write (about one RCU grace period, 6–8 ms here).
 */
export const HOLD_INTERVAL_MS = 4;
/** The longest one hold goes on, should its holder never let go. */
const HOLD_MAX_MS = 10_000;

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
  /** Holds not yet let go ({@link hold}); the helper thread writes while there are any. */
  private holders = 0;

  constructor(
    private readonly log?: Logger,
    /** Where berthd's mounts and cgroups are read (tests give others). */
    private readonly files = { mountinfo: '/proc/self/mountinfo', cgroup: '/proc/self/cgroup' },
  ) {}

  /** False once turned off (no hierarchy to write in, or the write refused). */
  get enabled(): boolean {
    return !this.off;
  }

  /** Settles once no warm-up write of {@link warm} is in flight (tests, shutdown). */
  idle(): Promise<void> {
    return this.current ?? Promise.resolve();
  }

  /** Starts the warm-up write unless one is in flight or a hold is on (or the warm-up is off); never throws. */
  warm(): void {
    if (this.off || this.current || this.holders > 0) return;
    const file = this.procsFile();
    if (!file) return;
    // "0": the writer's own process, i.e. berthd, into the cgroup it is in.
    this.current = writeFile(file, '0', { flag: 'r+' })
      .catch((err: unknown) => this.turnOff(`${file}: ${messageOf(err)}`))
      .finally(() => (this.current = undefined));
  }

  /**
   * Keeps the join warm until the returned function is called (or {@link HOLD_MAX_MS}
   * passed): a write now, then one every {@link HOLD_INTERVAL_MS} ms while any hold is
   * on, made by the addon's helper thread (warmCgroupJoin): through fs/promises each write
   * cost berthd 0.5 ms of CPU (the timer, the pool's round trip), 110 ms per second of
   * warming. Each new hold reads /proc/self/cgroup afresh and hands the helper the file
   * of the cgroup berthd is in now. For a shim's create, from its start until the
   * runtime's create has ended. Never throws; letting go twice is letting go once.
   */
  hold(): () => void {
    if (this.off) return () => undefined;
    if (!this.arm(HOLD_MAX_MS)) return () => undefined;
    this.holders++;
    let held = true;
    const letGo = (): void => {
      if (!held) return;
      held = false;
      clearTimeout(bound);
      if (--this.holders === 0) this.arm(0);
    };
    const bound = setTimeout(letGo, HOLD_MAX_MS);
    bound.unref();
    return letGo;
  }

  /** Hands the helper thread berthd's cgroup.procs and `ms` of warming (0: stop); false once off. */
  private arm(ms: number): boolean {
    if (ms === 0) {
      try {
        this.report(native().warmCgroupJoin(0, 0, '', ''));
      } catch (err) {
        this.turnOff(`the helper thread: ${messageOf(err)}`);
      }
      return !this.off;
    }
    const chosen = this.chosenProcs();
    if (!chosen) return false;
    const { file, cgroups } = chosen;
    let fd: number;
    try {
      fd = openSync(file, 'r+');
    } catch (err) {
      this.turnOff(`${file}: ${messageOf(err)}`);
      return false;
    }
    try {
      // The text the file was chosen from: the helper writes only while berthd's cgroups still read so.
      this.report(native().warmCgroupJoin(fd, ms, this.files.cgroup, cgroups));
    } catch (err) {
      this.turnOff(`the helper thread: ${messageOf(err)}`);
    } finally {
      closeSync(fd);
    }
    if (this.off) this.arm(0);
    return !this.off;
  }

  /** A write the helper thread had refused (its errno) turns the warm-up off. */
  private report(errno: number): void {
    if (errno !== 0) this.turnOff(`a write to cgroup.procs was refused (errno ${errno})`);
  }

  /** The `cgroup.procs` to write in, read afresh; undefined (and the warm-up off) when there is none. */
  private procsFile(): string | undefined {
    return this.chosenProcs()?.file;
  }

  /** procsFile, with the text of berthd's cgroups file it was chosen from. */
  private chosenProcs(): { file: string; cgroups: string } | undefined {
    let file: string | undefined;
    let cgroups = '';
    try {
      if (this.hierarchy === null) this.hierarchy = chooseHierarchy(readFileSync(this.files.mountinfo, 'utf8'));
      if (this.hierarchy) {
        cgroups = readFileSync(this.files.cgroup, 'utf8');
        file = ownProcsFile(this.hierarchy, cgroups);
      }
    } catch (err) {
      this.turnOff(`cannot read berthd's cgroups: ${messageOf(err)}`);
      return undefined;
    }
    if (!file) this.turnOff('no cgroup hierarchy of berthd to write in');
    return file ? { file, cgroups } : undefined;
  }

  private turnOff(why: string): void {
    this.off = true;
    this.log?.debug('cgroup join warm-up off', { reason: why });
  }
}
