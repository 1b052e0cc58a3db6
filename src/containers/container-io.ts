/**
 * What goes in and out of a running container besides its lifecycle: ExecSync (kubelet's
 * exec probes), the streaming Exec and Attach sessions, ReopenContainerLog and
 * UpdateContainerResources. Commands run through the container's OCI runtime; the
 * container's own stdio and log file are the shim's.
 */
import { rm } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { BerthError, messageOf } from '../common/errors.js';
import type { RequireStateOptions } from '../common/require-record.js';
import { spawnProcess } from '../common/process.js';
import type { OciResourceUpdate, OciRuntime } from '../oci/oci-runtime.js';
import { OciRuntimeError } from '../oci/runtime-errors.js';
import type { Shim } from '../shim/shim.js';
import type { ContainerRecord, ContainerRepository } from './container-repository.js';
import { ExecProcess } from './exec-process.js';
import { startExecSession, type ExecSession } from './exec-session.js';
import type { CriContainerConfig } from './spec.js';
import type { ContainerState } from './state.js';

/** Bytes of each output stream ExecSync keeps. */
export const EXEC_OUTPUT_CAP = (16 * 1024 * 1024) / 4;

/** CRI's LinuxContainerResources, as UpdateContainerResources passes them. */
export type CriResources = NonNullable<NonNullable<CriContainerConfig['linux']>['resources']>;

export interface ContainerIoOptions {
  repo: ContainerRepository;
  shim: Shim;
  runtimeOf(c: { sandboxId: string }): OciRuntime;
  /** The lifecycle's `requireContainer`. */
  require(idOrPrefix: string, opts: RequireStateOptions<ContainerState>): ContainerRecord;
  bundleOf(id: string): string;
}

export class ContainerIo {
  constructor(private readonly o: ContainerIoOptions) {}

  /**
   * Runs a command in a running container and returns its output and exit code
   * (kubelet's exec probes). Each stream is capped at {@link EXEC_OUTPUT_CAP} bytes; more
   * is discarded. On timeout (or the caller going away) the exec'd process itself is
   * killed, not only the runtime's `exec` client, and DeadlineExceeded is thrown.
   */
  async execSync(
    idOrPrefix: string,
    cmd: string[],
    timeoutSeconds: number,
    signal?: AbortSignal,
  ): Promise<{ stdout: Buffer; stderr: Buffer; exitCode: number }> {
    const c = this.o.require(idOrPrefix, { states: ['running'] });
    const runtime = this.o.runtimeOf(c);
    // As early as can be: the longer the head start, the less of it runc waits for.
    runtime.warmCgroupJoin();
    const pidFile = await this.o.shim.execPidFile(c.id);
    const argv = runtime.execArgv(c.id, cmd, { pidFile, tty: false });
    let child;
    try {
      child = spawnProcess(argv.file, argv.args, { stdio: ['ignore', 'out', 'out'] });
    } catch (err) {
      throw new BerthError('Internal', `cannot run ${argv.file} exec: ${messageOf(err)}`, { cause: err });
    }
    const collect = (stream: NodeJS.ReadableStream): Promise<Buffer> =>
      new Promise((resolve) => {
        const chunks: Buffer[] = [];
        let n = 0;
        stream.on('data', (d: Buffer) => {
          if (n < EXEC_OUTPUT_CAP) chunks.push(d.subarray(0, EXEC_OUTPUT_CAP - n));
          n += d.length;
        });
        stream.on('close', () => resolve(Buffer.concat(chunks)));
      });
    const out = collect(child.stdout!);
    const err = collect(child.stderr!);
    let timedOut: BerthError | undefined;
    const command = new ExecProcess(pidFile, child.pid, child.exited);
    const killExec = (why: BerthError): void => {
      timedOut ??= why;
      // The command and everything it started (`sh -c 'sleep …'`), each only if its pid
      // still names it.
      command.kill();
      // The runtime's `exec` reaps the command it started: give it a moment, or the killed
      // command lingers as a zombie that `ps`/`pgrep` in the container still see.
      const grace = setTimeout(() => child.kill('SIGKILL'), 2000);
      void child.exited.then(() => clearTimeout(grace));
    };
    const timer =
      timeoutSeconds > 0
        ? setTimeout(() => killExec(new BerthError('DeadlineExceeded', `command timed out after ${timeoutSeconds} s and was killed`)), timeoutSeconds * 1000)
        : undefined;
    const onAbort = (): void => killExec(new BerthError('DeadlineExceeded', 'the caller went away; the command was killed'));
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const st = await child.exited;
      const code = st.code ?? 128 + (st.signal ? osConstants.signals[st.signal] : 9);
      const [stdout, stderr] = await Promise.all([out, err]);
      if (timedOut) throw timedOut;
      return { stdout, stderr, exitCode: code };
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      // The command has exited and nothing reads the pid file any more: removed without
      // holding the answer back (RemoveContainer removes the dir it is in in any case).
      void rm(pidFile, { force: true }).catch(() => undefined);
    }
  }

  /**
   * Starts an interactive command in a running container for the streaming Exec. The
   * caller owns the session: it must end in {@link ExecSession.exited}, or be killed.
   */
  async openExec(idOrPrefix: string, cmd: string[], opts: { tty: boolean; stdin: boolean }): Promise<ExecSession> {
    const c = this.o.require(idOrPrefix, { states: ['running'] });
    return startExecSession({
      runtime: this.o.runtimeOf(c),
      containerId: c.id,
      cmd,
      tty: opts.tty,
      stdin: opts.stdin,
      pidFile: await this.o.shim.execPidFile(c.id),
    });
  }

  /** Attaches to a running container's main process (the streaming Attach), through its shim. */
  openAttach(idOrPrefix: string, opts: { stdin: boolean }): ExecSession {
    const c = this.o.require(idOrPrefix, { states: ['running'] });
    return this.o.shim.attach({ id: c.id, bundle: this.o.bundleOf(c.id) }, opts);
  }

  /**
   * ReopenContainerLog: after kubelet renamed the log file, the shim opens a new one at
   * the same path. Lines written before the request are in the renamed file; none is lost.
   */
  async reopenLog(idOrPrefix: string): Promise<void> {
    const c = this.o.require(idOrPrefix, { states: ['running'], refusal: ', not running: there is no log to reopen' });
    await this.o.shim.reopenLog({ id: c.id, bundle: this.o.bundleOf(c.id), logPath: c.logPath });
  }

  /**
   * UpdateContainerResources: applies CPU and memory changes to a running (or created)
   * container with the runtime's `update`, then records them in the container's config.
   */
  async updateResources(idOrPrefix: string, r: CriResources): Promise<void> {
    const c = this.o.require(idOrPrefix, { states: ['running', 'created'], refusal: '; only a created or running container can be updated' });
    const res: OciResourceUpdate = {};
    const cpu: NonNullable<OciResourceUpdate['cpu']> = {};
    if (r.cpu_shares > 0) cpu.shares = r.cpu_shares;
    if (r.cpu_quota !== 0) cpu.quota = r.cpu_quota;
    if (r.cpu_period > 0) cpu.period = r.cpu_period;
    if (r.cpuset_cpus !== '') cpu.cpus = r.cpuset_cpus;
    if (r.cpuset_mems !== '') cpu.mems = r.cpuset_mems;
    if (Object.keys(cpu).length > 0) res.cpu = cpu;
    if (r.memory_limit_in_bytes > 0) {
      res.memory = { limit: r.memory_limit_in_bytes, swap: r.memory_swap_limit_in_bytes > 0 ? r.memory_swap_limit_in_bytes : r.memory_limit_in_bytes };
    }
    try {
      await this.o.runtimeOf(c).update(c.id, res);
    } catch (err) {
      if (err instanceof OciRuntimeError) throw new BerthError('FailedPrecondition', `container ${c.id}: the runtime refused the update: ${err.detail}`);
      throw err;
    }
    this.o.repo.updateFacts(c.id, (cur) => ({ resources: mergeResources(cur.resources, r) }));
  }
}

const NO_RESOURCES: CriResources = {
  cpu_period: 0,
  cpu_quota: 0,
  cpu_shares: 0,
  memory_limit_in_bytes: 0,
  oom_score_adj: 0,
  cpuset_cpus: '',
  cpuset_mems: '',
  hugepage_limits: [],
  unified: {},
  memory_swap_limit_in_bytes: 0,
};

/**
 * The resources in force after UpdateContainerResources: the recorded ones with the
 * fields the update applies (set, i.e. non-zero or non-empty) replaced. As containerd, a
 * zero field means "unchanged": crictl sends zero for every flag not given.
 */
export function mergeResources(cur: CriResources | null, next: CriResources): CriResources {
  const out: CriResources = { ...(cur ?? NO_RESOURCES) };
  if (next.cpu_shares > 0) out.cpu_shares = next.cpu_shares;
  if (next.cpu_quota !== 0) out.cpu_quota = next.cpu_quota;
  if (next.cpu_period > 0) out.cpu_period = next.cpu_period;
  if (next.cpuset_cpus !== '') out.cpuset_cpus = next.cpuset_cpus;
  if (next.cpuset_mems !== '') out.cpuset_mems = next.cpuset_mems;
  if (next.memory_limit_in_bytes > 0) {
    out.memory_limit_in_bytes = next.memory_limit_in_bytes;
    // 0: the default, memory+swap equal to memory (no swap), as at creation.
    out.memory_swap_limit_in_bytes = next.memory_swap_limit_in_bytes;
  }
  return out;
}
