/**
 * An OCI runtime handler (runc, crun) as berth drives it: the one owner of the runtime's
 * command line. Each handler has a state root of berth's own (`--root`), so berth never
 * sees or touches containers of another engine on the same host. `create` is not here:
 * the shim (conmon) runs it, with the path and root it gets from {@link OciRuntime}.
 *
 * Every command is bounded by a timeout; failures are `OciRuntimeError`s whose kind
 * and message come from the runtime's own output (runtime-errors.ts).
 */
import { join } from 'node:path';
import { BerthError, messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { execProcess } from '../common/process.js';
import { traced } from '../common/trace-points.js';
import type { CgroupJoinWarmup } from './cgroup-warmup.js';
import { startThroughExecFifo } from './exec-fifo.js';
import { runtimeFailure } from './runtime-errors.js';
import { SealedBinary } from './sealed-binary.js';

export interface OciRuntimeOptions {
  /** The handler's name (the CRI runtime_handler, e.g. "runc"). */
  handler: string;
  /** The runtime binary. */
  path: string;
  /** Its state root, under berth's state dir. */
  root: string;
  /** Bound on one command (start, kill, state, delete, update). Default 30 s. */
  timeoutMs?: number;
  log?: Logger;
  /**
   * Run the binary from a sealed in-memory copy (sealed-binary.ts), which spares the
   * runtime its own copy at every create and exec. berthd sets it; default off.
   */
  sealedCopy?: boolean;
  /** A head start on the cgroup join of each `exec` (cgroup-warmup.ts), shared by the handlers. berthd sets it; default none. */
  cgroupWarmup?: CgroupJoinWarmup;
  /**
   * Start runc containers through their exec.fifo, as `runc start` does, without running
   * `runc start` (exec-fifo.ts): only when the binary says it is runc 1.x and the
   * container has no OCI hooks; `runc start` whenever anything is not as expected. berthd
   * sets it from `runtimes.<handler>.fifo_start`; default off.
   */
  fifoStart?: boolean;
}

/** The runtime's view of a container (`runc state`). */
export interface OciState {
  status: 'created' | 'running' | 'stopped' | 'paused' | 'unknown';
  /** The init pid; 0 once stopped. */
  pid: number;
}

/** `linux.resources` of the OCI spec, as `update --resources` takes them (the parts berth changes). */
export interface OciResourceUpdate {
  cpu?: { shares?: number; quota?: number; period?: number; cpus?: string; mems?: string };
  memory?: { limit: number; swap: number };
}

/** A command line: the binary and its arguments. */
export interface Argv {
  file: string;
  args: string[];
}

/** The state root berth gives handler `handler` (`runc --root`): `<state>/runtime/<handler>`, one dir per container ID. */
export function runtimeStateRoot(state: string, handler: string): string {
  return join(state, 'runtime', handler);
}

export class OciRuntime {
  readonly handler: string;
  readonly path: string;
  readonly root: string;
  private readonly timeoutMs: number;
  private readonly log: Logger | undefined;
  private readonly sealed: SealedBinary | undefined;
  private readonly warmup: CgroupJoinWarmup | undefined;
  private readonly fifoStart: boolean;
  /** Whether the binary is runc 1.x (`--version`), asked once at the first start. */
  private isRunc: Promise<boolean> | undefined;

  constructor(o: OciRuntimeOptions) {
    this.handler = o.handler;
    this.path = o.path;
    this.root = o.root;
    this.timeoutMs = o.timeoutMs ?? 30_000;
    this.log = o.log;
    this.sealed = o.sealedCopy ? new SealedBinary(o.path, o.log) : undefined;
    this.warmup = o.cgroupWarmup;
    this.fifoStart = o.fifoStart ?? false;
  }

  /** The path the binary is run by: {@link path}, or its sealed copy's. */
  private execPath(): string {
    return this.sealed?.execPath() ?? this.path;
  }

  /** Closes what the runtime holds (its sealed copy). */
  close(): void {
    this.sealed?.close();
  }

  /**
   * Runs the user's program of a created container: through its exec.fifo when
   * {@link OciRuntimeOptions.fifoStart} allows and the container qualifies, else by
   * `<runtime> start`.
   */
  async start(id: string): Promise<void> {
    if (this.fifoStart && /^[A-Za-z0-9][A-Za-z0-9_.+-]*$/.test(id) && (await this.runcOne())) {
      // Traced as the `start` it stands for (timelines, metrics and spans read the same either way).
      const r = await traced('berth:runtime', { handler: this.handler, verb: 'start', containerId: id }, () =>
        startThroughExecFifo(join(this.root, id), { timeoutMs: this.timeoutMs }),
      );
      if (r.started) {
        this.log?.debug('runtime start through exec.fifo', { container: id });
        return;
      }
      this.log?.debug('runtime start through exec.fifo not taken; running the start command', { container: id, reason: r.reason });
    }
    await this.run(id, ['start', id]);
  }

  /**
   * Whether the binary is runc 1.x, by its `--version`: an answer is kept; a failure to ask
   * (a timeout under load, the binary not there yet) counts as no for this start only.
   */
  private runcOne(): Promise<boolean> {
    this.isRunc ??= execProcess(this.execPath(), ['--version'], { timeoutMs: this.timeoutMs }).then(
      (r) => r.code === 0 && /^runc version 1\.\d+/.test(r.stdout),
      () => {
        this.isRunc = undefined;
        return false;
      },
    );
    return this.isRunc;
  }

  /**
   * Sends `signal` (a name like `TERM`/`SIGTERM` or a number) to the init process, or
   * to every process of the container with `all`. An init in its own pid namespace
   * ignores signals it has no handler for, except SIGKILL.
   */
  async kill(id: string, signal: string | number, all = false): Promise<void> {
    const sig = typeof signal === 'number' ? String(signal) : signal.replace(/^SIG/i, '').toUpperCase();
    if (!/^([A-Z0-9+-]+)$/.test(sig)) throw new BerthError('InvalidArgument', `bad signal ${String(signal)}`);
    await this.run(id, ['kill', ...(all ? ['--all'] : []), id, sig]);
  }

  /** Removes the runtime's state and cgroup (`--force` kills a live container first). Idempotent. */
  async delete(id: string, force = false): Promise<void> {
    try {
      await this.run(id, ['delete', ...(force ? ['--force'] : []), id]);
    } catch (err) {
      if (err instanceof BerthError && err.kind === 'NotFound') return;
      throw err;
    }
  }

  /** The runtime's view of the container, or undefined when it does not know it. */
  async state(id: string): Promise<OciState | undefined> {
    let out: string;
    try {
      out = await this.run(id, ['state', id]);
    } catch (err) {
      if (err instanceof BerthError && err.kind === 'NotFound') return undefined;
      throw err;
    }
    let j: { status?: unknown; pid?: unknown };
    try {
      j = JSON.parse(out) as typeof j;
    } catch {
      throw new BerthError('Internal', `${this.path} state ${id} printed no JSON: ${out.slice(0, 200)}`);
    }
    const known = ['created', 'running', 'stopped', 'paused'] as const;
    const status = known.find((s) => s === j.status) ?? 'unknown';
    return { status, pid: typeof j.pid === 'number' ? j.pid : 0 };
  }

  /** Changes the resources of a created or running container; the runtime's refusal is an `OciRuntimeError`. */
  async update(id: string, resources: OciResourceUpdate): Promise<void> {
    await this.run(id, ['update', '--resources', '-', id], JSON.stringify(resources));
  }

  /**
   * The command line that runs `cmd` in a running container in the foreground: its exit
   * code is the command's, and the command's pid is written to `pidFile` (so that it and
   * what it starts can be killed). With `tty` the runtime wants a terminal as its stdio.
   */
  execArgv(id: string, cmd: readonly string[], o: { pidFile: string; tty: boolean }): Argv {
    return { file: this.execPath(), args: ['--root', this.root, 'exec', '--pid-file', o.pidFile, ...(o.tty ? ['--tty'] : []), id, ...cmd] };
  }

  /**
   * Call just before the runtime moves a process into a container's cgroups: before a
   * command line of {@link execArgv} starts. Gives that move a head start
   * (cgroup-warmup.ts); a shim's create takes {@link keepCgroupJoinWarm}.
   */
  warmCgroupJoin(): void {
    this.warmup?.warm();
  }

  /**
   * Call when a shim's create begins; call the returned function once the runtime's
   * create has ended. Keeps the cgroup join warm all along (cgroup-warmup.ts): the
   * runtime's create moves the container's init into its cgroups at a time berthd
   * does not see.
   */
  keepCgroupJoinWarm(): () => void {
    return this.warmup?.hold() ?? (() => undefined);
  }

  /** How a shim is told to run this runtime: the binary, and the global arguments each of its commands takes. */
  shimArgs(): { path: string; args: string[] } {
    return { path: this.execPath(), args: [`--root=${this.root}`] };
  }

  /**
   * Runs `<runtime> --root <root> <args>` about container `id`, returning stdout; errors
   * carry the runtime's message and a kind, and name the command as "<runtime> <verb> <id>".
   */
  private async run(id: string, args: string[], input?: string): Promise<string> {
    const argv = ['--root', this.root, ...args];
    this.log?.debug('runtime', { runtime: this.path, args: argv });
    const cmd = `${this.path} ${args[0] ?? ''} ${id}`;
    let r;
    try {
      r = await traced('berth:runtime', { handler: this.handler, verb: args[0] ?? '', containerId: id }, () =>
        execProcess(this.execPath(), argv, { timeoutMs: this.timeoutMs, ...(input !== undefined ? { input, maxBuffer: 64 * 1024 } : {}) }),
      );
    } catch (err) {
      throw new BerthError('Internal', `${cmd}: ${messageOf(err)}`, { cause: err });
    }
    if (r.timedOut) throw new BerthError('DeadlineExceeded', `${cmd} took longer than ${this.timeoutMs} ms`);
    if (r.code === 0) return r.stdout;
    throw runtimeFailure(cmd, r.stderr, r);
  }
}

/** The configured runtime handlers, by name. */
export class OciRuntimes {
  private readonly byHandler: ReadonlyMap<string, OciRuntime>;

  /** `defaultHandler` serves containers whose pod is gone (and so whose handler is unknown). */
  constructor(
    runtimes: readonly OciRuntime[],
    readonly defaultHandler: string,
  ) {
    this.byHandler = new Map(runtimes.map((r) => [r.handler, r]));
  }

  /** The runtime of a handler; FailedPrecondition when none is configured. */
  get(handler: string): OciRuntime {
    const rt = this.byHandler.get(handler);
    if (!rt) throw new BerthError('FailedPrecondition', `runtime handler "${handler}" is not configured`);
    return rt;
  }

  has(handler: string): boolean {
    return this.byHandler.has(handler);
  }

  /** The configured handler names, in configuration order. */
  handlers(): string[] {
    return [...this.byHandler.keys()];
  }
}
