/**
 * The process an exec started, known well enough to kill it safely. The runtime's `exec`
 * writes the command's pid to a pid file; a pid alone is a weak name, because once that
 * process is reaped the kernel may hand its pid to any new process on the node, and a
 * later kill would hit that one.
 *
 * So the process is identified once, while it is known to be the exec's: its pid from the
 * pid file, its parent being the runtime's `exec` client berth spawned (runc exec stays
 * the command's sub-reaper while it waits for it), and its start time from /proc. A kill
 * signals a pid only if the process there still has the start time recorded; the same
 * holds for every descendant, recorded by the same /proc walk that finds it.
 *
 * Why not pidfds: Node has no pidfd API, and a pidfd opened from a pid is only as good as
 * the moment it is opened, which is the moment the start time is recorded here; the
 * descendants would need the same /proc walk. The start-time check costs one read of
 * /proc/<pid>/stat per signal and no native code.
 */
import { readFileSync, readdirSync } from 'node:fs';

/** A process by pid and start time (clock ticks after boot, field 22 of /proc/<pid>/stat). */
export interface ProcessIdentity {
  pid: number;
  startTicks: bigint;
}

interface ProcStat {
  state: string;
  ppid: number;
  startTicks: bigint;
}

function procStat(pid: number): ProcStat | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Fields are counted after the command name's last ')': it may hold spaces and parentheses.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = rest[22 - 3];
  if (rest[0] === undefined || rest[1] === undefined || ticks === undefined || !/^\d+$/.test(ticks)) return undefined;
  return { state: rest[0], ppid: Number(rest[1]), startTicks: BigInt(ticks) };
}

/**
 * The identity of live process `pid`; with `parent`, only if it is that process's child.
 * Undefined for a process that is gone or a zombie (its pid is as good as free).
 */
export function identify(pid: number, parent?: number): ProcessIdentity | undefined {
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  const st = procStat(pid);
  if (!st || st.state === 'Z' || st.state === 'X') return undefined;
  if (parent !== undefined && st.ppid !== parent) return undefined;
  return { pid, startTicks: st.startTicks };
}

/** SIGKILLs `p` if the process at its pid is still the one it names; whether a signal was sent. */
export function killIfSame(p: ProcessIdentity): boolean {
  if (procStat(p.pid)?.startTicks !== p.startTicks) return false;
  try {
    process.kill(p.pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}

/** Every descendant of `root` that is alive, by one walk of /proc. */
export function descendantsOf(root: ProcessIdentity): ProcessIdentity[] {
  const children = new Map<number, ProcessIdentity[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = procStat(Number(name));
    if (!st || st.state === 'Z' || st.state === 'X') continue;
    // A child starts after its parent; an older process under the same ppid is another's.
    const list = children.get(st.ppid) ?? [];
    list.push({ pid: Number(name), startTicks: st.startTicks });
    children.set(st.ppid, list);
  }
  const out: ProcessIdentity[] = [];
  const stack = [root];
  while (stack.length > 0) {
    const parent = stack.pop()!;
    for (const c of children.get(parent.pid) ?? []) {
      if (c.startTicks < parent.startTicks) continue;
      out.push(c);
      stack.push(c);
    }
  }
  return out;
}

/**
 * SIGKILLs `root` and everything it started, each only if still the process recorded;
 * when `root` itself is no longer there, nothing is signalled (its pid, and so its
 * children's parent pid, may be another's by now). Returns how many were signalled.
 */
export function killTree(root: ProcessIdentity): number {
  if (procStat(root.pid)?.startTicks !== root.startTicks) return 0;
  let n = 0;
  for (const p of [root, ...descendantsOf(root)]) if (killIfSame(p)) n++;
  return n;
}

/**
 * When the pid file is first looked for. Most execs (kubelet's probes) have ended by then
 * and cost no poll: no wake-up of the event loop and no file read while they run. A kill
 * before then identifies the command itself ({@link ExecProcess.kill}), and that is as
 * safe as an earlier record: the runtime's client is berthd's child and not yet reaped
 * (no kill is made after its exit), so its pid names it still, and a process whose parent
 * it is can only be the command it started.
 */
const PID_FILE_FIRST_POLL_MS = 50;
/** How often the pid file is looked for after that, until it names the command. */
const PID_FILE_POLL_MS = 10;

/**
 * Follows an exec's pid file from the spawn of the runtime's `exec` client (pid
 * `runtimePid`) until it names the command, and records the command's identity then.
 */
export class ExecProcess {
  private identity: ProcessIdentity | undefined;
  private timer: NodeJS.Timeout;
  private ended = false;

  constructor(
    private readonly pidFile: string,
    private readonly runtimePid: number,
    exited: Promise<unknown>,
  ) {
    const poll = (): void => {
      if (!this.ended && !this.record()) this.timer = setTimeout(poll, PID_FILE_POLL_MS).unref();
    };
    this.timer = setTimeout(poll, PID_FILE_FIRST_POLL_MS).unref();
    void exited.finally(() => {
      this.ended = true;
      clearTimeout(this.timer);
    });
  }

  /** The command's identity, once recorded. */
  get process(): ProcessIdentity | undefined {
    return this.identity;
  }

  private record(): boolean {
    if (this.identity) return true;
    let pid: number;
    try {
      pid = Number(readFileSync(this.pidFile, 'utf8').trim());
    } catch {
      return false;
    }
    this.identity = identify(pid, this.runtimePid);
    return this.identity !== undefined;
  }

  /**
   * SIGKILLs the command and its descendants (children it started would otherwise be
   * reparented to the container's init and live on). Nothing is signalled for a command
   * never identified, or one whose pid now names another process.
   */
  kill(): number {
    clearTimeout(this.timer);
    this.record();
    return this.identity ? killTree(this.identity) : 0;
  }
}
