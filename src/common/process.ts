/**
 * Processes: every child berthd starts goes through {@link startProcess} or
 * {@link spawnProcess}, which use posix_spawn from berthd's native addon (vfork
 * semantics), not Node's fork; startProcess makes the spawn on a helper thread, so the
 * event loop does not wait for the child's exec. A fork
 * copies the page tables of berthd's whole heap; measured here it costs 4.7 ms per spawn
 * at 170 MB RSS, against 0.5 ms. Every CreateContainer and StartContainer spawns
 * (conmon, `runc start`), so this is on the hot path. The child gets only the
 * descriptors asked for, default signal handling and an empty signal mask.
 *
 * Output is collected one way, bounded ({@link BoundedOutput}): {@link execProcess} runs
 * a command to its end, {@link runHostTool} runs a short host tool (unshare, nsenter…).
 */
import { accessSync, closeSync, constants as fsConstants, statSync } from 'node:fs';
import { join } from 'node:path';
import { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { BerthError, messageOf } from './errors.js';
import { native, type NativeSys } from './native.js';

/**
 * What a child's descriptor 0, 1, 2, 3… is: `ignore` is /dev/null; `out` a pipe the child
 * writes and berthd reads; `in` a pipe berthd writes and the child reads; a number, a
 * descriptor of berthd's given as it is (and left open: it stays the caller's).
 */
export type StdioSpec = 'ignore' | 'out' | 'in' | number;

export interface SpawnOptions {
  /** The child's whole environment. Default: berthd's. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Default: all three /dev/null. */
  stdio?: StdioSpec[];
  /** A new session (setsid), as child_process's `detached`. */
  setsid?: boolean;
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(Object.entries(osConstants.signals).map(([k, v]) => [v, k as NodeJS.Signals]));

/** A process started by {@link spawnProcess}. Its pid is never signalled after it was reaped. */
export class ChildProcess {
  /** The child's status once it has exited and was reaped. */
  status: ExitStatus | undefined;
  readonly exited: Promise<ExitStatus>;

  constructor(
    readonly pid: number,
    /** berthd's ends of the pipes, by the child's descriptor number (undefined for `ignore`). */
    readonly stdio: ReadonlyArray<Socket | undefined>,
    exited: Promise<[number | null, number | null]>,
  ) {
    this.exited = exited.then(([code, sig]) => {
      this.status = { code, signal: sig === null ? null : (SIGNAL_NAMES.get(sig) ?? null) };
      return this.status;
    });
  }

  get stdin(): Socket | undefined {
    return this.stdio[0];
  }

  get stdout(): Socket | undefined {
    return this.stdio[1];
  }

  get stderr(): Socket | undefined {
    return this.stdio[2];
  }

  /** Signals the child unless it has already been reaped; false when it was not signalled. */
  kill(signal: NodeJS.Signals | number = 'SIGTERM'): boolean {
    if (this.status) return false;
    try {
      process.kill(this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  /** Closes berthd's ends of every pipe. */
  closeStdio(): void {
    for (const s of this.stdio) s?.destroy();
  }
}

/** berthd's ends of a child's pipes, and the child's: made before the spawn. */
interface PreparedStdio {
  specs: StdioSpec[];
  /** The child's descriptors, by number (-1: /dev/null). */
  childFds: number[];
  ours: Array<{ fd: number; spec: 'in' | 'out' } | undefined>;
}

function closeFds(fds: number[]): void {
  for (const fd of fds) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  }
}

function prepareStdio(addon: NativeSys, specs: StdioSpec[]): PreparedStdio {
  const p: PreparedStdio = { specs, childFds: [], ours: [] };
  try {
    for (const spec of specs) {
      if (spec === 'ignore' || typeof spec === 'number') {
        p.childFds.push(spec === 'ignore' ? -1 : spec);
        p.ours.push(undefined);
        continue;
      }
      const [r, w] = addon.pipe();
      p.childFds.push(spec === 'out' ? w : r);
      p.ours.push({ fd: spec === 'out' ? r : w, spec });
    }
  } catch (err) {
    closeChildEnds(p);
    closeOurEnds(p);
    throw err;
  }
  return p;
}

/** Closes the child's ends of the pipes (the addon has its own copies by then). */
function closeChildEnds(p: PreparedStdio): void {
  closeFds(p.childFds.filter((fd, i) => fd >= 0 && typeof p.specs[i] !== 'number'));
}

function closeOurEnds(p: PreparedStdio): void {
  closeFds(p.ours.filter((o) => o !== undefined).map((o) => o.fd));
}

function envOf(opts: SpawnOptions): string[] {
  return Object.entries(opts.env ?? process.env)
    .filter((e): e is [string, string] => typeof e[1] === 'string')
    .map(([k, v]) => `${k}=${v}`);
}

function childOf(p: PreparedStdio, child: { pid: number; exited: Promise<[number | null, number | null]> }): ChildProcess {
  const stdio = p.ours.map((o) => {
    if (!o) return undefined;
    const s = new Socket({ fd: o.fd, readable: o.spec === 'out', writable: o.spec === 'in' });
    if (o.spec === 'in') s.on('error', () => undefined); // EPIPE once the child has gone
    return s;
  });
  return new ChildProcess(child.pid, stdio, child.exited);
}

/**
 * Starts `file` (looked up on PATH when it holds no '/') with `args`. Throws a Node-style
 * errno error when it cannot be started (e.g. `code` 'ENOENT' for a missing binary).
 * The event loop waits until the child has exec'd; {@link startProcess} does not.
 */
export function spawnProcess(file: string, args: readonly string[], opts: SpawnOptions = {}): ChildProcess {
  const [p, child] = launch(opts, (addon, fds) => addon.spawn(file, [file, ...args], envOf(opts), opts.cwd ?? null, fds, opts.setsid ?? false));
  return childOf(p, child);
}

/**
 * The child's stdio made, then `start` called with the descriptors it gets: our ends of
 * the pipes are closed should it throw, the child's ends in any case (the addon has
 * duplicated them before it returns).
 */
function launch<T>(opts: SpawnOptions, start: (addon: NativeSys, childFds: number[]) => T): [PreparedStdio, T] {
  const addon = native();
  const p = prepareStdio(addon, opts.stdio ?? ['ignore', 'ignore', 'ignore']);
  try {
    return [p, start(addon, p.childFds)];
  } catch (err) {
    closeOurEnds(p);
    throw err;
  } finally {
    closeChildEnds(p);
  }
}

/**
 * `file` as posix_spawnp would find it: itself when it holds a '/', else the first
 * executable regular file of that name on berthd's PATH; ENOENT (as spawn's) when none is.
 */
export function resolveExecutable(file: string): string {
  if (file.includes('/')) return file;
  const dirs = (process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(':');
  for (const dir of dirs) {
    const candidate = join(dir === '' ? '.' : dir, file);
    try {
      accessSync(candidate, fsConstants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  throw Object.assign(new Error(`spawn ${file}: No such file or directory`), { code: 'ENOENT', errno: -osConstants.errno.ENOENT, syscall: 'spawn' });
}

/**
 * As {@link spawnProcess}, but the spawn is made on a helper thread of the addon: the
 * event loop goes on while posix_spawn waits for the child's exec (0.3 ms on an idle
 * machine, several ms when the child waits for a CPU; each CNI plugin, conmon and
 * `runc` call paid it on the main thread). Rejects as spawnProcess throws.
 */
export async function startProcess(file: string, args: readonly string[], opts: SpawnOptions = {}): Promise<ChildProcess> {
  const path = resolveExecutable(file);
  const [p, started] = launch(opts, (addon, fds) => addon.spawnAsync(path, [file, ...args], envOf(opts), opts.cwd ?? null, fds, opts.setsid ?? false));
  let child: Awaited<typeof started>;
  try {
    child = await started;
  } catch (err) {
    closeOurEnds(p);
    throw err;
  }
  return childOf(p, child);
}

/**
 * The output of one of a child's pipes, read to its end and kept up to `max` bytes; the
 * rest is read and dropped, so a chatty child neither blocks nor costs memory.
 */
export class BoundedOutput {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  /** Bytes the stream carried, kept or not. */
  bytes = 0;
  /** Settles when the stream has closed (or at once when there is none). */
  readonly closed: Promise<void>;

  /** `onOverflow` is called once, when the stream carries more than `max` bytes. */
  constructor(
    stream: Socket | undefined,
    readonly max: number,
    onOverflow?: () => void,
  ) {
    this.closed = new Promise((resolve) => {
      if (!stream) return resolve();
      stream.on('data', (d: Buffer) => {
        if (this.kept < max) {
          const part = d.subarray(0, max - this.kept);
          this.chunks.push(part);
          this.kept += part.length;
        }
        const before = this.bytes;
        this.bytes += d.length;
        if (before <= max && this.bytes > max) onOverflow?.();
      });
      stream.on('error', () => undefined);
      stream.on('close', () => resolve());
    });
  }

  /** What was kept so far. */
  buffer(): Buffer {
    return Buffer.concat(this.chunks);
  }

  /** What was kept so far, as UTF-8. */
  text(): string {
    return this.buffer().toString('utf8');
  }
}

export interface ExecResult extends ExitStatus {
  stdout: string;
  stderr: string;
  /** Killed (SIGKILL) for running longer than `timeoutMs`. */
  timedOut: boolean;
}

export interface ExecOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** SIGKILL after this long. Default: no bound. */
  timeoutMs?: number;
  /** Written to the child's stdin, which is then closed. Default: stdin is /dev/null. */
  input?: string | Buffer;
  /** Output kept per stream; the rest is read and dropped. Default 4 MiB. */
  maxBuffer?: number;
}

/** Runs a command to its end and collects its output (as child_process.execFile, without fork). */
export async function execProcess(file: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const child = await startProcess(file, args, {
    stdio: [opts.input !== undefined ? 'in' : 'ignore', 'out', 'out'],
    ...(opts.env ? { env: opts.env } : {}),
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
  });
  const max = opts.maxBuffer ?? 4 << 20;
  const stdout = new BoundedOutput(child.stdout, max);
  const stderr = new BoundedOutput(child.stderr, max);
  if (opts.input !== undefined) child.stdin?.end(opts.input);
  let timedOut = false;
  const timer =
    opts.timeoutMs !== undefined
      ? setTimeout(() => {
          timedOut = true;
          child.kill('SIGKILL');
        }, opts.timeoutMs)
      : undefined;
  try {
    const status = await child.exited;
    // A grandchild holding the pipes open must not hold the caller: the output so far.
    const closed = Promise.all([stdout.closed, stderr.closed]);
    const out = await Promise.race([closed, new Promise<undefined>((r) => setTimeout(() => r(undefined), 100).unref())]);
    if (!out) {
      child.closeStdio();
      await closed;
    }
    return { ...status, stdout: stdout.text(), stderr: stderr.text(), timedOut };
  } finally {
    clearTimeout(timer);
  }
}

/** What a finished host tool reported. */
export type ToolResult = Omit<ExecResult, 'timedOut'>;

/**
 * Runs a short host tool (unshare, nsenter, mknod…) to completion with `LC_ALL=C`.
 * Rejects only when the tool cannot be started (FailedPrecondition naming the Debian
 * package); a non-zero exit is the caller's to interpret. There is deliberately no
 * abort: these tools finish in milliseconds and killing one halfway (unshare's bind
 * helper) could leave a mount nobody knows about, so callers check their signal before
 * and after.
 */
export async function runHostTool(cmd: string, args: string[], pkg = 'util-linux'): Promise<ToolResult> {
  try {
    const { timedOut: _, ...res } = await execProcess(cmd, args, { env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 65536 });
    return res;
  } catch (err) {
    throw new BerthError('FailedPrecondition', `cannot run ${cmd} (Debian package ${pkg}): ${messageOf(err)}`, { cause: err });
  }
}
