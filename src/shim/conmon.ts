/**
 * The {@link Shim} over conmon (containers/conmon 2.1, the monitor of CRI-O and Podman).
 *
 * How berth drives conmon, from its source (src/conmon.c, cli.c, parent_pipe_fd.c):
 * - berthd spawns `conmon` with the sync pipe as fd 3 and `_OCI_SYNCPIPE=3`. conmon
 *   forks once more and the direct child exits at once (after writing `--conmon-pidfile`
 *   with the grandchild's pid); the grandchild calls setsid, becomes a sub-reaper, is
 *   reparented to init and runs `<runtime> <--runtime-arg…> create --bundle B
 *   --pid-file P <id>`.
 * - The start pipe, fd 4 with `_OCI_STARTPIPE=4`: conmon blocks in read(2) on it right
 *   after parsing its options (it has opened the log file, nothing more) and before it
 *   forks, so berthd spawns it early and writes one byte once the bundle is complete;
 *   conmon's start-up then overlaps the mount and config.json. End of file releases it
 *   too, so an unreleased conmon is SIGKILLed before berthd's end of the pipe closes.
 * - When `create` succeeds conmon writes `{"pid": N}\n` on the sync pipe (N read from the
 *   container pidfile) and keeps the pipe open; when it fails it writes
 *   `{"pid": -1, "message": "<runtime stderr>"}\n` — only if the runtime printed
 *   something — and exits. So read one line, never wait for end of file on success.
 * - At exit it writes the code (`WEXITSTATUS`, or `128 + signal`, or -1) atomically
 *   (g_file_set_contents: temp file + rename) to `<exit-dir>/<cid>` and `<persist-dir>/exit`.
 * - The log path is parsed with strtok(":"), so a path holding ':' is cut short; berth
 *   refuses such paths. `--cuuid` is required; the attach socket is `<bundle>/attach`,
 *   reached through the symlink `<socket-dir-path>/<cuuid>` that conmon does not remove.
 */
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, readFile, readdir, readlink, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { abortable } from '../common/abort.js';
import { BerthError, errnoOf, messageOf } from '../common/errors.js';
import { DisposableStack } from '../common/disposable.js';
import type { Logger } from '../common/logger.js';
import { execProcess, spawnProcess, type ChildProcess, type ExitStatus } from '../common/process.js';
import type { Shim, ShimCreateOptions, ShimFiles, ShimHandle, ShimState } from './shim.js';

export interface ConmonShimOptions {
  /** Default `/usr/bin/conmon`. */
  conmonPath?: string;
  log?: Logger;
  /** conmon's own `--log-level` (error, warn, info, debug, trace). Default `warn`. */
  conmonLogLevel?: string;
  /** conmon logs to syslog (its stderr is /dev/null once it detaches). */
  syslog?: boolean;
  /** Let the runtime manage cgroups through systemd (`--systemd-cgroup`). */
  systemdCgroup?: boolean;
  /** `--no-pivot`: for root filesystems where pivot_root fails (ramfs). */
  noPivot?: boolean;
  /** Bound on one OCI runtime command (start, kill, state, delete). Default 30 s. */
  runtimeTimeoutMs?: number;
  /** Default bound on `create`. Default 60 s. */
  createTimeoutMs?: number;
}

/** Container ids as runc accepts them, and safe as file names. */
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$/;
const SYNC_MAX = 64 * 1024;
const EXIT_POLL_MS = 1000;
/** How long a cut-off create may go on so that it can be undone whole. */
const CREATE_GRACE_MS = 10_000;

/** Files conmon makes in the bundle. */
const BUNDLE_FILES = ['attach', 'ctl', 'winsz'];

export class ConmonShim implements Shim {
  private readonly conmonPath: string;
  private readonly log: Logger | undefined;

  constructor(private readonly opts: ConmonShimOptions = {}) {
    this.conmonPath = opts.conmonPath ?? '/usr/bin/conmon';
    this.log = opts.log;
  }

  /** conmon's command line for `o` (exported through the class for tests and logs). */
  conmonArgs(o: ShimCreateOptions): string[] {
    const args = [
      '--cid',
      o.id,
      '--cuuid',
      o.id,
      '--name',
      o.id,
      '--runtime',
      o.runtimePath,
      '--runtime-arg',
      `--root=${o.runtimeRoot}`,
      '--bundle',
      o.bundle,
      '--container-pidfile',
      join(o.persistDir, 'pidfile'),
      '--conmon-pidfile',
      join(o.persistDir, 'conmon.pid'),
      '--log-path',
      `k8s-file:${o.logPath}`,
      '--exit-dir',
      o.exitDir,
      '--persist-dir',
      o.persistDir,
      '--socket-dir-path',
      o.socketDir,
      '--log-level',
      this.opts.conmonLogLevel ?? 'warn',
    ];
    if (this.opts.syslog) args.push('--syslog');
    if (this.opts.systemdCgroup) args.push('--systemd-cgroup');
    if (this.opts.noPivot) args.push('--no-pivot');
    if (o.terminal) args.push('--terminal');
    if (o.stdin) args.push('--stdin');
    if (o.stdin && !o.stdinOnce) args.push('--leave-stdin-open');
    return args;
  }

  async create(o: ShimCreateOptions): Promise<ShimHandle> {
    if (!ID_RE.test(o.id)) throw new BerthError('InvalidArgument', `container id ${JSON.stringify(o.id)} is not valid for the OCI runtime`);
    if (o.logPath.includes(':')) throw new BerthError('InvalidArgument', `log path ${o.logPath} contains ':', which conmon cannot take`);
    o.signal?.throwIfAborted();
    const timeoutMs = o.timeoutMs ?? this.opts.createTimeoutMs ?? 60_000;
    const signal = o.signal ? AbortSignal.any([o.signal, AbortSignal.timeout(timeoutMs)]) : AbortSignal.timeout(timeoutMs);
    const log = this.log?.child({ container: o.id });
    const started = Date.now();

    const undo = new DisposableStack();
    // The caller's failure is rethrown as it is, after the undo; never left unhandled.
    let bundleFailed: { reason: unknown } | undefined;
    const bundleReady = Promise.resolve(o.bundleReady).then(
      () => undefined,
      (reason: unknown) => {
        bundleFailed = { reason };
        throw reason;
      },
    );
    bundleReady.catch(() => undefined);
    try {
      await Promise.all([o.exitDir, dirname(o.persistDir), o.socketDir, o.runtimeRoot, dirname(o.logPath)].map((d) => mkdir(d, { recursive: true })));
      // The id is claimed by making its persist dir, exclusively: the undo below force-deletes
      // the id in the runtime, which must never reach a container made by someone else (the
      // dir stays until removeFiles, i.e. after the runtime's delete). No `runc state` here:
      // it costs a process per create.
      try {
        await mkdir(o.persistDir);
      } catch (err) {
        if (errnoOf(err) === 'EEXIST') throw new BerthError('AlreadyExists', `container ${o.id} already exists (${o.persistDir} is there)`);
        throw err;
      }
      // A reused id must not look exited already.
      const [logExisted] = await Promise.all([exists(o.logPath), rm(join(o.exitDir, o.id), { force: true })]);

      // Undo steps, newest first on failure: files, then runtime state, then conmon.
      undo.defer(async () => {
        const files = [join(o.persistDir, 'pidfile'), join(o.persistDir, 'conmon.pid'), join(o.persistDir, 'exit'), join(o.exitDir, o.id)];
        files.push(...BUNDLE_FILES.map((f) => join(o.bundle, f)));
        if (!logExisted) files.push(o.logPath);
        await Promise.all(files.map((f) => rm(f, { force: true })));
        await rm(o.persistDir, { recursive: true, force: true });
        await removeSocketLink(o.socketDir, o.id, o.bundle);
      });
      let runtimeRan = false;
      undo.defer(() => (runtimeRan ? this.delete(o.id, o.runtimePath, o.runtimeRoot, true) : undefined));

      signal.throwIfAborted();
      const args = this.conmonArgs(o);
      log?.debug('starting conmon', { args });
      // conmon waits on its start pipe (fd 4, `_OCI_STARTPIPE`) before it forks and runs the
      // runtime, so it loads while the caller completes the bundle.
      let child: ChildProcess;
      try {
        child = spawnProcess(this.conmonPath, args, {
          cwd: o.persistDir,
          setsid: true,
          stdio: ['ignore', 'out', 'out', 'out', 'in'],
          // A clean environment: nothing of berthd's (LISTEN_PID, NOTIFY_SOCKET…) leaks into conmon or runc.
          env: { PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', _OCI_SYNCPIPE: '3', _OCI_STARTPIPE: '4' },
        });
      } catch (err) {
        throw new BerthError('Internal', `cannot run conmon (${this.conmonPath}): ${messageOf(err)}`, { cause: err });
      }
      const stderr: Buffer[] = [];
      child.stderr?.on('data', (b: Buffer) => stderr.push(b));
      child.stdout?.resume();
      const syncStream = child.stdio[3]!;
      const startStream = child.stdio[4]!;
      undo.defer(() => child.closeStdio());

      // Cut off by the caller, conmon and runc go on for a while under a longer bound: a
      // runc create killed halfway leaves a cgroup that `runc delete` cannot find, so
      // the undo lets it finish and deletes the container whole.
      const grace = AbortSignal.timeout(timeoutMs + CREATE_GRACE_MS);
      const childExit: Promise<ExitStatus> = abortable(child.exited, grace);
      childExit.catch(() => undefined);
      const syncLine = readSyncLine(syncStream, grace);
      syncLine.catch(() => undefined);
      let shimPid: number | undefined;
      undo.defer(async () => {
        // Not released yet, conmon sits in read(2) on its start pipe and has made nothing:
        // it is killed before its end of the pipe closes, since end of file would release it.
        if (!runtimeRan) child.kill('SIGKILL');
        await Promise.allSettled([childExit, syncLine]);
        child.kill('SIGKILL');
        if (!runtimeRan) return;
        shimPid ??= await readPid(join(o.persistDir, 'conmon.pid'));
        const pids = shimPid !== undefined ? [shimPid] : await findConmons(o.id);
        await Promise.all(pids.map((p) => killConmon(p, o.id)));
      });

      // Release conmon once the bundle is complete (or learn that conmon failed first).
      const early = await abortable(Promise.race([bundleReady, childExit]), signal);
      if (early !== undefined) {
        // It exits before release only on a failure of its own (bad options, runtime path);
        // an exit 0 would mean it went on, so then the undo treats the runtime as run.
        if (early.code === 0) runtimeRan = true;
        throw new BerthError(
          'Internal',
          `conmon failed (exit ${early.code ?? early.signal}): ${Buffer.concat(stderr).toString('utf8').trim() || 'no message'}`,
        );
      }
      runtimeRan = true;
      startStream.write('0');

      const [exit, sync] = await abortable(Promise.all([childExit, syncLine]), signal);
      const conmonStderr = Buffer.concat(stderr).toString('utf8').trim();
      if (exit.code !== 0) {
        throw new BerthError('Internal', `conmon failed (exit ${exit.code ?? exit.signal}): ${conmonStderr || 'no message'}`);
      }
      shimPid = await readPid(join(o.persistDir, 'conmon.pid'));
      const msg = parseSync(sync);
      if (msg === undefined) {
        throw new BerthError('Internal', `conmon exited before reporting the container${conmonStderr ? `: ${conmonStderr}` : ''}`);
      }
      if (msg.pid <= 0) {
        const text = runtimeMessage(msg.message ?? 'no message');
        throw new BerthError('FailedPrecondition', /create failed/.test(text) ? text : `${o.runtimePath} create failed: ${text}`);
      }
      if (shimPid === undefined) throw new BerthError('Internal', 'conmon did not write its pid file');
      log?.debug('container created', { pid: msg.pid, shimPid, ms: Date.now() - started });
      undo.move();
      child.closeStdio();
      return { id: o.id, pid: msg.pid, shimPid };
    } catch (err) {
      await undo.dispose().catch((e: unknown) => log?.warn('cleanup after a failed create', { error: messageOf(e) }));
      if (bundleFailed !== undefined && bundleFailed.reason === err) throw err;
      if (err instanceof BerthError) throw err;
      if (signal.aborted) {
        if (o.signal?.aborted) throw new BerthError('Cancelled', `creating container ${o.id} was cancelled`, { cause: err });
        throw new BerthError('DeadlineExceeded', `creating container ${o.id} took longer than ${timeoutMs} ms`, { cause: err });
      }
      throw new BerthError('Internal', `creating container ${o.id}: ${messageOf(err)}`, { cause: err });
    }
  }

  async removeFiles(o: ShimFiles): Promise<void> {
    const files = [join(o.exitDir, o.id), ...BUNDLE_FILES.map((f) => join(o.bundle, f))];
    await Promise.all(files.map((f) => rm(f, { force: true })));
    await rm(o.persistDir, { recursive: true, force: true });
    await removeSocketLink(o.socketDir, o.id, o.bundle);
  }

  async start(id: string, runtimePath: string, runtimeRoot: string): Promise<void> {
    await this.runtime(runtimePath, runtimeRoot, ['start', id]);
  }

  async kill(id: string, signal: string | number, runtimePath: string, runtimeRoot: string, all = false): Promise<void> {
    const sig = typeof signal === 'number' ? String(signal) : signal.replace(/^SIG/i, '').toUpperCase();
    if (!/^([A-Z0-9+-]+)$/.test(sig)) throw new BerthError('InvalidArgument', `bad signal ${String(signal)}`);
    await this.runtime(runtimePath, runtimeRoot, ['kill', ...(all ? ['--all'] : []), id, sig]);
  }

  async exitCode(exitDir: string, id: string): Promise<number | undefined> {
    let text: string;
    try {
      text = await readFile(join(exitDir, id), 'utf8');
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return undefined;
      throw err;
    }
    const t = text.trim();
    if (!/^-?\d+$/.test(t)) {
      // conmon writes atomically, so this is damage rather than a half-written file.
      throw new BerthError('DataLoss', `exit file ${join(exitDir, id)} holds ${JSON.stringify(t.slice(0, 40))}`);
    }
    return Number(t);
  }

  async waitExit(exitDir: string, id: string, signal?: AbortSignal): Promise<number> {
    signal?.throwIfAborted();
    let watcher: FSWatcher | undefined;
    let wake: (() => void) | undefined;
    const poke = (): void => wake?.();
    try {
      try {
        watcher = watch(exitDir, { persistent: false }, (_e, name) => {
          if (name === null || name === id) poke();
        });
        watcher.on('error', () => undefined);
      } catch (err) {
        this.log?.debug('cannot watch the exit dir; polling', { exitDir, error: messageOf(err) });
      }
      signal?.addEventListener('abort', poke, { once: true });
      for (;;) {
        const code = await this.exitCode(exitDir, id);
        if (code !== undefined) return code;
        signal?.throwIfAborted();
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, EXIT_POLL_MS);
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        wake = undefined;
      }
    } finally {
      signal?.removeEventListener('abort', poke);
      watcher?.close();
    }
  }

  async delete(id: string, runtimePath: string, runtimeRoot: string, force = false): Promise<void> {
    try {
      await this.runtime(runtimePath, runtimeRoot, ['delete', ...(force ? ['--force'] : []), id]);
    } catch (err) {
      if (err instanceof BerthError && err.kind === 'NotFound') return;
      throw err;
    }
  }

  async state(id: string, runtimePath: string, runtimeRoot: string): Promise<ShimState | undefined> {
    let out: string;
    try {
      out = await this.runtime(runtimePath, runtimeRoot, ['state', id]);
    } catch (err) {
      if (err instanceof BerthError && err.kind === 'NotFound') return undefined;
      throw err;
    }
    let j: { status?: unknown; pid?: unknown };
    try {
      j = JSON.parse(out) as typeof j;
    } catch {
      throw new BerthError('Internal', `${runtimePath} state ${id} printed no JSON: ${out.slice(0, 200)}`);
    }
    const known = ['created', 'running', 'stopped', 'paused'] as const;
    const status = known.find((s) => s === j.status) ?? 'unknown';
    return { status, pid: typeof j.pid === 'number' ? j.pid : 0 };
  }

  /** Runs `<runtime> --root <root> <args>`, returning stdout; errors carry the runtime's message and a kind. */
  private async runtime(runtimePath: string, runtimeRoot: string, args: string[]): Promise<string> {
    const timeout = this.opts.runtimeTimeoutMs ?? 30_000;
    const argv = ['--root', runtimeRoot, ...args];
    this.log?.debug('runtime', { runtime: runtimePath, args: argv });
    const cmd = `${runtimePath} ${args[0] ?? ''} ${args.at(-1) ?? ''}`.trim();
    let r;
    try {
      r = await execProcess(runtimePath, argv, { timeoutMs: timeout });
    } catch (err) {
      throw new BerthError('Internal', `${cmd}: ${messageOf(err)}`, { cause: err });
    }
    if (r.timedOut) throw new BerthError('DeadlineExceeded', `${cmd} took longer than ${timeout} ms`);
    if (r.code === 0) return r.stdout;
    const msg = runtimeMessage(r.stderr || `exited with ${r.code ?? r.signal}`);
    throw new BerthError(runtimeErrorKind(msg), `${cmd}: ${msg}`);
  }
}

/** The kind of a runtime failure, from its message. */
export function runtimeErrorKind(msg: string): BerthError['kind'] {
  if (/does not exist|not found/i.test(msg) && !/executable file not found/i.test(msg)) return 'NotFound';
  if (/not running|not stopped|cannot (start|delete)|already (running|exists)|is paused/i.test(msg)) return 'FailedPrecondition';
  return 'Internal';
}

/**
 * The human part of a runtime's stderr: runc prints logrus lines
 * (`time="…" level=error msg="…"`); keep the `msg` of each, or the text as it is.
 */
export function runtimeMessage(stderr: string): string {
  const msgs: string[] = [];
  for (const line of stderr.split('\n')) {
    const m = /\bmsg="((?:[^"\\]|\\.)*)"/.exec(line);
    if (m?.[1] !== undefined) {
      msgs.push(m[1].replace(/\\(.)/g, '$1'));
    } else if (line.trim() !== '') {
      msgs.push(line.trim());
    }
  }
  return msgs.join('; ') || stderr.trim();
}

/** The first line conmon wrote on the sync pipe. Accepts both the legacy `pid` key and API v1's `data`. */
export function parseSync(line: string | undefined): { pid: number; message?: string } | undefined {
  if (line === undefined || line.trim() === '') return undefined;
  let j: { pid?: unknown; data?: unknown; message?: unknown };
  try {
    j = JSON.parse(line) as typeof j;
  } catch {
    throw new BerthError('Internal', `conmon wrote ${JSON.stringify(line.slice(0, 200))} on the sync pipe`);
  }
  const pid = typeof j.pid === 'number' ? j.pid : typeof j.data === 'number' ? j.data : undefined;
  if (pid === undefined) throw new BerthError('Internal', `conmon wrote no pid on the sync pipe: ${line.slice(0, 200)}`);
  return typeof j.message === 'string' ? { pid, message: j.message } : { pid };
}

/** Reads up to the first newline, or to end of file (undefined when nothing came). */
function readSyncLine(stream: NodeJS.ReadableStream, signal: AbortSignal): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const done = (fn: () => void): void => {
      stream.removeListener('data', onData);
      stream.removeListener('end', onEnd);
      stream.removeListener('close', onEnd);
      stream.removeListener('error', onError);
      signal.removeEventListener('abort', onAbort);
      fn();
    };
    const onData = (b: Buffer | string): void => {
      buf += b.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) done(() => resolve(buf.slice(0, nl)));
      else if (buf.length > SYNC_MAX) done(() => reject(new BerthError('Internal', 'conmon wrote too much on the sync pipe')));
    };
    const onEnd = (): void => done(() => resolve(buf === '' ? undefined : buf));
    const onError = (err: Error): void => done(() => reject(err));
    const onAbort = (): void => done(() => reject(signal.reason));
    if (signal.aborted) return reject(signal.reason);
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('close', onEnd);
    stream.once('error', onError);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function readPid(file: string): Promise<number | undefined> {
  try {
    const n = Number((await readFile(file, 'utf8')).trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw err;
  }
}

/** True while `pid` is a conmon for container `id` (guards against a reused pid). */
async function isConmonFor(pid: number, id: string): Promise<boolean> {
  try {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    const i = argv.indexOf('--cid');
    return i >= 0 && argv[i + 1] === id;
  } catch {
    return false;
  }
}

/** Live conmon processes for container `id`, found by their command line. */
async function findConmons(id: string): Promise<number[]> {
  const pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p)).map(Number);
  const hits = await Promise.all(pids.map(async (p) => ((await isConmonFor(p, id)) ? p : undefined)));
  return hits.filter((p): p is number => p !== undefined);
}

/** SIGKILLs conmon `pid` if it is still the conmon of `id`, and waits (bounded) until it is gone. */
async function killConmon(pid: number, id: string): Promise<void> {
  for (let i = 0; i < 100 && (await isConmonFor(pid, id)); i++) {
    if (i === 0 || i % 20 === 0) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch (err) {
        if (errnoOf(err) === 'ESRCH') return;
        throw err;
      }
    }
    await sleep(20);
  }
}

/** Removes `<socketDir>/<id>` if it is conmon's link to this bundle. */
async function removeSocketLink(socketDir: string, id: string, bundle: string): Promise<void> {
  const link = join(socketDir, id);
  try {
    if ((await readlink(link)) === bundle) await rm(link, { force: true });
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT' && errnoOf(err) !== 'EINVAL') throw err;
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}
