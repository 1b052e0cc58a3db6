/**
 * Following containers until they exit. The shim writes a container's exit code into a
 * file; berth waits for that file and records the exit. Should the shim die first (kill -9
 * of conmon), no exit file will come: each followed container's shim is watched through
 * a pidfd (common/pid-watch.ts), which tells its exit as it happens and costs nothing
 * while it runs (where pidfds cannot be used, one timer checks the shims of all followed
 * containers in /proc instead), and a container whose shim is gone is followed through
 * the OCI runtime instead, ending `unknown` once the runtime says it stopped. After a
 * restart, recovery follows each running container again, which watches its shim anew. A
 * container is never left RUNNING when it is not.
 */
import { nowNs } from '../common/clock.js';
import { watchExit, type ExitWatch } from '../common/pid-watch.js';
import { processStartNs } from '../common/proc-stat.js';
import type { KeyedLock } from '../common/keyed-lock.js';
import { BerthError, messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { OciRuntime } from '../oci/oci-runtime.js';
import type { Shim } from '../shim/shim.js';
import type { ContainerEvents } from './container-events.js';
import type { ContainerRecord, ContainerRepository } from './container-repository.js';

/** How often the shims of followed containers are checked (without pidfds), and a container whose shim died is asked about. */
const SHIM_CHECK_MS = 2000;

export interface ExitMonitorOptions {
  repo: ContainerRepository;
  shim: Shim;
  /** The runtime of a container. */
  runtimeOf(c: { sandboxId: string }): OciRuntime;
  /** The containers' locks, shared with the lifecycle. */
  locks: KeyedLock;
  /** The container's bundle (where the shim keeps its files). */
  bundleOf(id: string): string;
  log: Logger;
  /** Where stops are published. */
  events: ContainerEvents;
  /** Frees what an exited container no longer needs before its removal (see {@link ExitMonitor.retire}). */
  retire(c: ContainerRecord): Promise<void>;
}

export class ExitMonitor {
  private readonly lifetime = new AbortController();
  private readonly watching = new Map<string, Promise<void>>();
  /**
   * Shims of followed containers: `gone` is aborted when a shim is. Each is watched through
   * a pidfd (`watch`), or, where that cannot be, checked by one timer for all.
   */
  private readonly shims = new Map<string, { pid: number | null; gone: AbortController; watch: ExitWatch | undefined }>();
  private shimCheck: NodeJS.Timeout | undefined;
  /** Exited containers already retired (see {@link retire}); forgotten at removal or restart. */
  private readonly retiredIds = new Set<string>();

  constructor(private readonly o: ExitMonitorOptions) {}

  /** Follows a container's exit file and records the exit when it comes (see {@link followExit}). */
  watch(id: string): void {
    if (this.watching.has(id)) return;
    const p = this.followExit(id)
      .catch((err: unknown) => {
        if (!this.lifetime.signal.aborted) this.o.log.error('lost track of a container exit', { container: id, error: messageOf(err) });
      })
      .finally(() => this.watching.delete(id));
    this.watching.set(id, p);
  }

  /** Whether the shim of a container still runs. */
  shimAlive(c: Pick<ContainerRecord, 'id' | 'shimPid'>): boolean {
    return this.o.shim.alive(c.id, c.shimPid);
  }

  /**
   * Waits for a container's exit file and records the exit. Should its shim die
   * first, the runtime is asked instead, and once it says the container stopped, the
   * container becomes `unknown` with a message, its exit code having died with the shim.
   */
  private async followExit(id: string): Promise<void> {
    const lifetime = this.lifetime.signal;
    const shimPid = this.o.repo.get(id)?.shimPid ?? null;
    const shimGone = new AbortController();
    const shim = { pid: shimPid, gone: shimGone, watch: this.watchShim(id, shimPid, shimGone) };
    this.shims.set(id, shim);
    if (shim.watch === undefined) this.shimCheck ??= setInterval(() => this.checkShims(), SHIM_CHECK_MS).unref();
    try {
      return await this.recordExit(id, await this.o.shim.waitExit(id, AbortSignal.any([lifetime, shimGone.signal])));
    } catch (err) {
      if (lifetime.aborted || !shimGone.signal.aborted) throw err;
    } finally {
      shim.watch?.close();
      this.shims.delete(id);
      if (this.shimCheck !== undefined && ![...this.shims.values()].some((x) => x.watch === undefined)) {
        clearInterval(this.shimCheck);
        this.shimCheck = undefined;
      }
    }
    // The shim writes the exit file just before it goes: its exit (told at once by its
    // pidfd) may come before the file's.
    const written = await this.o.shim.exitCode(id);
    if (written !== undefined) return this.recordExit(id, written);
    this.o.log.warn('the shim of a running container died; following the container through the runtime', {
      container: id,
      shim_pid: shimPid,
      noticed_by: shim.watch === undefined ? 'proc' : 'pidfd',
    });
    for (;;) {
      // The shim may have written the exit file since.
      const code = await this.o.shim.exitCode(id);
      if (code !== undefined) return this.recordExit(id, code);
      const c = this.o.repo.get(id);
      if (c?.state !== 'running' && c?.state !== 'created') return;
      const st = await this.o
        .runtimeOf(c)
        .state(id)
        .catch((err: unknown) => {
          this.o.log.debug('runtime state failed; asking again', { container: id, error: messageOf(err) });
          return { status: 'unknown', pid: 0 } as const;
        });
      if (!st || st.status === 'stopped') {
        return this.o.locks.run(id, async () => {
          const cur = this.o.repo.get(id);
          if (cur?.state !== 'running' && cur?.state !== 'created') return;
          const late = await this.o.shim.exitCode(id);
          if (late !== undefined) return this.recordExit(id, late);
          this.o.repo.update(id, () => ({
            state: 'unknown',
            reason: 'Unknown',
            message: `its shim (pid ${shimPid ?? '?'}) died, then the container stopped: the exit code is unknown`,
            finishedAt: nowNs(),
            pid: 0,
          }));
          this.o.events.publish('stopped', cur);
          this.o.log.warn('container stopped without its shim; exit code unknown', { container: id });
        });
      }
      await new Promise((r) => setTimeout(r, SHIM_CHECK_MS).unref());
      if (lifetime.aborted) return;
    }
  }

  /**
   * Recovery of a created or running container: an exit while berthd was down is recorded
   * with its code; a created one that the runtime runs is recorded running; a container whose shim and runtime state are both gone without an
   * exit file becomes `unknown`; one that runs (or just stopped, its shim about to write
   * the exit file) is followed again.
   */
  async reconcile(c: ContainerRecord): Promise<void> {
    const code = await this.o.shim.exitCode(c.id);
    if (code !== undefined) return this.recordExit(c.id, code);
    const st = await this.o.runtimeOf(c).state(c.id);
    if (c.state === 'created' && (st?.status === 'running' || st?.status === 'paused')) {
      // A StartContainer cut off after the runtime started it: the runtime is right.
      this.adoptStart(c, st.pid);
      this.o.log.warn('a container recorded created runs: its start was interrupted; recorded running', { container: c.id, pid: st.pid });
      return this.watch(c.id);
    }
    if ((!st || st.status === 'stopped') && !this.shimAlive(c)) {
      // The shim may have written the exit file since it was read.
      const late = await this.o.shim.exitCode(c.id);
      if (late !== undefined) await this.recordExit(c.id, late);
      else {
        this.o.repo.update(c.id, () => ({
          state: 'unknown',
          reason: 'Unknown',
          message: 'the container stopped while berthd was down and no exit code was recorded (its shim died)',
        }));
        this.o.events.publish('stopped', c);
      }
    } else if (c.state === 'running' || !st || st.status === 'stopped') {
      this.watch(c.id);
    }
  }

  /**
   * Records as running a container the runtime started without berth recording it (an
   * interrupted StartContainer), dated by its init process's start time.
   */
  adoptStart(c: ContainerRecord, pid: number): void {
    const created = BigInt(c.createdAt);
    const began = pid > 0 ? processStartNs(pid) : undefined;
    const startedAt = began === undefined ? nowNs() : String(began > created ? began : created);
    this.o.repo.update(c.id, () => ({ state: 'running', startedAt, ...(pid > 0 ? { pid } : {}) }));
    this.o.events.publish('started', c);
  }

  /** StartContainer's fallback: when the runtime runs `c` already, it is recorded running and followed (true). */
  async adoptIfRunning(c: ContainerRecord): Promise<boolean> {
    const st = await this.o
      .runtimeOf(c)
      .state(c.id)
      .catch(() => undefined);
    if (st?.status !== 'running') return false;
    this.adoptStart(c, st.pid);
    this.o.log.warn('StartContainer: the runtime runs the container already (an interrupted start); recorded running', { container: c.id });
    this.watch(c.id);
    return true;
  }

  /**
   * Watches the shim `pid` of container `id` through a pidfd: `gone` is aborted when it
   * exits, or now when it is gone already. Undefined when it cannot be watched so (no
   * pidfds, no pid recorded): the timer then checks it.
   */
  private watchShim(id: string, pid: number | null, gone: AbortController): ExitWatch | undefined {
    if (pid === null || pid <= 0) return undefined;
    const w = watchExit(pid, () => {
      this.o.log.debug('shim exited (pidfd)', { container: id, shim_pid: pid });
      gone.abort();
    });
    if (w === undefined) return undefined;
    // No process has the pid: the shim is gone, unless the shim says otherwise (a shim
    // whose pid is not a process of this host's view, or one that died just now): then the
    // timer asks it, as where there are no pidfds.
    if (w === 'gone') {
      if (this.o.shim.alive(id, pid)) return undefined;
      gone.abort();
      return { close: () => undefined };
    }
    // The pidfd names the process that had the pid when it was opened: it is the shim if
    // the shim is there now (a process keeps its pid while it lives).
    if (!this.o.shim.alive(id, pid)) {
      w.close();
      gone.abort();
      return { close: () => undefined };
    }
    return w;
  }

  /** One pass over the shims no pidfd watches: a dead one stops the wait for its exit file. */
  private checkShims(): void {
    for (const [id, s] of this.shims) if (s.watch === undefined && !this.o.shim.alive(id, s.pid)) s.gone.abort();
  }

  /** Marks a container exited with its code, publishing the stop once; idempotent. */
  async recordExit(id: string, code: number): Promise<void> {
    const c = this.o.repo.get(id);
    if (!c || c.state === 'exited' || c.state === 'removing') return;
    const oom = await this.o.shim.oomKilled({ id, bundle: this.o.bundleOf(id) });
    // Read again: the exit may have been recorded meanwhile (the monitor and StopContainer race).
    const cur = this.o.repo.get(id);
    if (!cur || cur.state === 'exited' || cur.state === 'removing') return;
    const reason = oom ? 'OOMKilled' : code === 0 ? 'Completed' : 'Error';
    this.o.repo.update(id, () => ({ state: 'exited', exitCode: code, reason, finishedAt: nowNs(), pid: 0 }));
    // An `unknown` container's stop was published when it was found stopped.
    if (cur.state !== 'unknown') this.o.events.publish('stopped', cur);
    this.o.log.info('container exited', { container: id, exit_code: code, reason });
    this.retire(id);
  }

  /**
   * Once a container has exited, what only a live container needs goes: the runtime's
   * record of it (its state, its cgroup, and any process left in a shared PID namespace:
   * runc's delete kills those), then its rootfs mount. In the background and under the
   * container's lock, as containerd deletes the task when it exits: RemoveContainer then
   * has no runtime process and no overlay unmount (a sync of the upper filesystem) to
   * wait for. Nothing becomes untracked: the row stays until RemoveContainer, which does
   * both again (each idempotent) when this did not happen, failed, or was cut off.
   */
  private retire(id: string): void {
    this.o.locks
      .run(id, async () => {
        const c = this.o.repo.get(id);
        if (c?.state !== 'exited' || this.lifetime.signal.aborted) return;
        await this.o.retire(c);
        this.retiredIds.add(id);
      })
      .catch((err: unknown) => {
        if (!this.lifetime.signal.aborted)
          this.o.log.warn('retiring an exited container failed; RemoveContainer finishes it', { container: id, error: messageOf(err) });
      });
  }

  /** Whether an exited container was retired since berthd started (RemoveContainer need not do it again). */
  retired(id: string): boolean {
    return this.retiredIds.has(id);
  }

  /** Forgets a removed container. */
  forget(id: string): void {
    this.retiredIds.delete(id);
  }

  /** The exit code once the shim records it within `ms`; undefined when it does not. Rethrows `outer`'s reason on abort. */
  async exitWithin(id: string, ms: number, outer?: AbortSignal): Promise<number | undefined> {
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(new BerthError('DeadlineExceeded', 'stop timeout')), ms);
    const onOuter = (): void => ac.abort(outer!.reason);
    outer?.addEventListener('abort', onOuter, { once: true });
    try {
      return await this.o.shim.waitExit(id, ac.signal);
    } catch {
      if (outer?.aborted) throw outer.reason;
      return undefined;
    } finally {
      clearTimeout(t);
      outer?.removeEventListener('abort', onOuter);
    }
  }

  /** For a container whose shim is gone: waits until the runtime says it stopped; 137 (killed) then. */
  async stoppedWithin(id: string, rt: OciRuntime, ms: number): Promise<number | undefined> {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      const st = await rt.state(id).catch(() => undefined);
      if (!st || st.status === 'stopped') return 137;
      await new Promise((r) => setTimeout(r, 50));
    }
    return undefined;
  }

  /**
   * After SIGKILL and no exit within `waitedMs`: when the runtime still has the
   * container live (a process in uninterruptible sleep, a frozen cgroup), no exit is
   * recorded, since that would let the pod's resources go while its processes hold them.
   * The stop fails with DeadlineExceeded, as containerd's does when its wait for the
   * killed task runs out, and the container stays RUNNING; the exit monitor records the
   * real exit when it comes, and a retried StopContainer sees it.
   */
  async refuseIfStillLive(c: ContainerRecord, rt: OciRuntime, waitedMs: number): Promise<void> {
    const st = await rt.state(c.id).catch((err: unknown) => {
      this.o.log.warn('runtime state after SIGKILL failed', { container: c.id, error: messageOf(err) });
      return { status: 'unknown' as const, pid: 0 };
    });
    if (st === undefined || st.status === 'stopped') return;
    // The shim may have written the exit file while the runtime was asked.
    if ((await this.o.shim.exitCode(c.id)) !== undefined) return;
    this.o.log.warn('container still live after SIGKILL; its exit is not recorded', { container: c.id, runtime_state: st.status, pid: st.pid });
    throw new BerthError(
      'DeadlineExceeded',
      `container ${c.id}: still ${st.status} in the runtime ${waitedMs / 1000} s after SIGKILL (pid ${st.pid}: a process in uninterruptible sleep, or a frozen cgroup); it stays ${c.state}, retry StopContainer`,
    );
  }

  /**
   * StopContainer of an `unknown` container (its shim and its runtime state were lost):
   * as containerd does, it becomes EXITED with the unknown exit code 255, keeping its
   * reason and message, without waiting for a timeout. Should the runtime still know a
   * live process of it, that is killed first.
   */
  async stopLost(c: ContainerRecord, rt: OciRuntime): Promise<void> {
    const UNKNOWN_EXIT_CODE = 255;
    const st = await rt.state(c.id);
    if (st && st.status !== 'stopped') {
      await rt.kill(c.id, 'KILL', true).catch(() => undefined);
      if ((await this.stoppedWithin(c.id, rt, 10_000)) === undefined)
        throw new BerthError('Internal', `container ${c.id}: the runtime still reports it ${st.status} after SIGKILL`);
    }
    this.o.repo.update(c.id, (cur) => ({
      state: 'exited',
      exitCode: UNKNOWN_EXIT_CODE,
      finishedAt: BigInt(cur.finishedAt) > 0n ? cur.finishedAt : nowNs(),
      pid: 0,
    }));
    this.o.log.info('lost container stopped', { container: c.id, exit_code: UNKNOWN_EXIT_CODE, reason: c.reason });
  }

  /** Stops following (shutdown). */
  close(): void {
    this.lifetime.abort(new BerthError('Unavailable', 'berthd is shutting down'));
    clearInterval(this.shimCheck);
  }
}
