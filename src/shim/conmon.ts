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
import { existsSync, watch, type FSWatcher } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { abortable } from '../common/abort.js';
import { BerthError, errnoOf, messageOf } from '../common/errors.js';
import { DisposableStack } from '../common/disposable.js';
import type { Logger } from '../common/logger.js';
import { startProcess, type ChildProcess, type ExitStatus } from '../common/process.js';
import { removeTree } from '../common/remove-tree.js';
import { settleAll } from '../common/settle-all.js';
import { traced } from '../common/trace-points.js';
import { runtimeMessage } from '../oci/runtime-errors.js';
import { requestLogReopen, resizeTerminal, startAttachSession } from './conmon-attach.js';
import { exists, findConmons, findRuntimeCreates, killConmon, parseSync, readPid, readSyncLine, removeSocketLink, shimAlive } from './conmon-process.js';
import type { ExecSession, Shim, ShimContainer, ShimCreateOptions, ShimDirs, ShimHandle } from './shim.js';

export interface ConmonShimOptions {
  /** Where the shims keep their exit files, attach links and per-container dirs. */
  dirs: ShimDirs;
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
  /** Default bound on `create`. Default 60 s. */
  createTimeoutMs?: number;
}

/** Container ids as runc accepts them, and safe as file names. */
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$/;
/** How often a waited-for exit file is read when the exit dir cannot be watched. */
const EXIT_POLL_MS = 1000;
/**
 * How often it is read while the exit dir is watched: the watch reports the file, so the
 * read is only a safety net, and reading every second for each running container was
 * most of berthd's idle CPU (a failed open per container per second).
 */
const EXIT_POLL_WATCHED_MS = 15_000;
/** How long a cut-off create may go on so that it can be undone whole. */
const CREATE_GRACE_MS = 10_000;

/** Files conmon makes in the bundle. */
const BUNDLE_FILES = ['attach', 'ctl', 'winsz'];
/** How long a log reopen may take before berth says the shim did not do it. */
const REOPEN_WAIT_MS = 1000;

export class ConmonShim implements Shim {
  private readonly conmonPath: string;
  private readonly log: Logger | undefined;

  private readonly dirs: ShimDirs;
  /** {@link sharedDirs}, by runtime root. */
  private readonly madeDirs = new Map<string, Promise<void>>();

  constructor(private readonly opts: ConmonShimOptions) {
    this.conmonPath = opts.conmonPath ?? '/usr/bin/conmon';
    this.log = opts.log;
    this.dirs = opts.dirs;
  }

  /** The container's own dir: conmon's pid files, its second exit file, the OOM marker. */
  private persistDir(id: string): string {
    return join(this.dirs.persistRoot, id);
  }

  /**
   * The dirs every create needs (exit files, persist dirs, attach links, the runtime's
   * root), made once: a create then waits for no mkdir of them. A failed attempt is
   * forgotten, so the next create tries again.
   */
  private sharedDirs(runtimeRoot: string): Promise<void> {
    let made = this.madeDirs.get(runtimeRoot);
    if (!made) {
      const { exitDir, persistRoot, socketDir } = this.dirs;
      made = Promise.all([
        ...[exitDir, persistRoot, socketDir].map((d) => mkdir(d, { recursive: true, mode: 0o700 })),
        mkdir(runtimeRoot, { recursive: true }),
      ]).then(() => undefined);
      made.catch(() => this.madeDirs.delete(runtimeRoot));
      this.madeDirs.set(runtimeRoot, made);
    }
    return made;
  }

  /** conmon's command line for `o` (exported through the class for tests and logs). */
  conmonArgs(o: ShimCreateOptions): string[] {
    const persistDir = this.persistDir(o.id);
    const runtime = o.runtime.shimArgs();
    const args = [
      '--cid',
      o.id,
      '--cuuid',
      o.id,
      '--name',
      o.id,
      '--runtime',
      runtime.path,
      ...runtime.args.flatMap((a) => ['--runtime-arg', a]),
      '--bundle',
      o.bundle,
      '--container-pidfile',
      join(persistDir, 'pidfile'),
      '--conmon-pidfile',
      join(persistDir, 'conmon.pid'),
      '--log-path',
      `k8s-file:${o.logPath}`,
      '--exit-dir',
      this.dirs.exitDir,
      '--persist-dir',
      persistDir,
      '--socket-dir-path',
      this.dirs.socketDir,
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

  create(o: ShimCreateOptions): Promise<ShimHandle> {
    // The runtime's create moves the container's init into its cgroups 10–40 ms after
    // conmon is released: the join is kept warm from now (the bundle is still being made)
    // until the create has ended, so that move does not wait for an RCU grace period.
    const cool = o.runtime.keepCgroupJoinWarm();
    return traced('berth:shim.create', { containerId: o.id }, () => this.spawnConmon(o)).finally(cool);
  }

  private async spawnConmon(o: ShimCreateOptions): Promise<ShimHandle> {
    if (!ID_RE.test(o.id)) throw new BerthError('InvalidArgument', `container id ${JSON.stringify(o.id)} is not valid for the OCI runtime`);
    if (o.logPath.includes(':')) throw new BerthError('InvalidArgument', `log path ${o.logPath} contains ':', which conmon cannot take`);
    o.signal?.throwIfAborted();
    const timeoutMs = o.timeoutMs ?? this.opts.createTimeoutMs ?? 60_000;
    const signal = o.signal ? AbortSignal.any([o.signal, AbortSignal.timeout(timeoutMs)]) : AbortSignal.timeout(timeoutMs);
    const log = this.log?.child({ container: o.id });
    const started = Date.now();
    const { exitDir, socketDir } = this.dirs;
    const persistDir = this.persistDir(o.id);

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
      await this.sharedDirs(o.runtime.root);
      // One round on the pool: the log dir, the claim of the id, and the state of its files.
      const [logDirMade, claimed, logExisted] = await Promise.allSettled([
        mkdir(dirname(o.logPath), { recursive: true }),
        // The id is claimed by making its persist dir, exclusively: the undo below force-deletes
        // the id in the runtime, which must never reach a container made by someone else (the
        // dir stays until removeFiles, i.e. after the runtime's delete). No `runc state` here:
        // it costs a process per create.
        mkdir(persistDir),
        exists(o.logPath),
      ]);
      if (claimed.status === 'rejected') {
        const err = claimed.reason as unknown;
        if (errnoOf(err) === 'EEXIST') throw new BerthError('AlreadyExists', `container ${o.id} already exists (${persistDir} is there)`);
        throw err;
      }
      // A reused id must not look exited already: cleared (only once the id is ours) while
      // conmon starts, and awaited before it is released.
      const exitCleared = rm(join(exitDir, o.id), { force: true });
      exitCleared.catch(() => undefined);

      // Undo steps, newest first on failure: files, then runtime state, then conmon.
      undo.defer(async () => {
        const files = [join(persistDir, 'pidfile'), join(persistDir, 'conmon.pid'), join(persistDir, 'exit'), join(exitDir, o.id)];
        files.push(...BUNDLE_FILES.map((f) => join(o.bundle, f)));
        if (logExisted.status === 'fulfilled' && !logExisted.value) files.push(o.logPath);
        await Promise.all(files.map((f) => rm(f, { force: true })));
        await rm(persistDir, { recursive: true, force: true });
        await removeSocketLink(socketDir, o.id, o.bundle);
      });
      // The log directory is the caller's (kubelet's): one that cannot be made (a file is
      // in the way, say) is the request's problem, not berth's.
      if (logDirMade.status === 'rejected') {
        const err = logDirMade.reason as unknown;
        throw new BerthError('FailedPrecondition', `cannot make the directory of the log file ${o.logPath}: ${messageOf(err)}`, { cause: err });
      }
      if (logExisted.status === 'rejected') throw logExisted.reason;
      let runtimeRan = false;
      undo.defer(() => (runtimeRan ? o.runtime.delete(o.id, true) : undefined));

      signal.throwIfAborted();
      const args = this.conmonArgs(o);
      log?.debug('starting conmon', { args });
      // conmon waits on its start pipe (fd 4, `_OCI_STARTPIPE`) before it forks and runs the
      // runtime, so it loads while the caller completes the bundle.
      let child: ChildProcess;
      try {
        // Spawned off the event loop (startProcess), which meanwhile goes on with the bundle.
        child = await startProcess(this.conmonPath, args, {
          cwd: persistDir,
          setsid: true,
          stdio: ['ignore', 'out', 'out', 'out', 'in'],
          // A clean environment: nothing of berthd's (LISTEN_PID, NOTIFY_SOCKET…) leaks into conmon or runc.
          // A UTF-8 locale: conmon's option parser (GLib) converts its arguments from the locale's
          // charset, and under plain C a log path with any non-ASCII byte fails it (exit 1).
          env: {
            PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
            LC_ALL: 'C.UTF-8',
            _OCI_SYNCPIPE: '3',
            _OCI_STARTPIPE: '4',
          },
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
        shimPid ??= await readPid(join(persistDir, 'conmon.pid'));
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
      await exitCleared;
      runtimeRan = true;
      startStream.write('0');

      // conmon's first process writes the pid file and exits as soon as it has forked, long
      // before the runtime's create ends: read while the create runs.
      const pidRead = childExit.then((st) => (st.code === 0 ? readPid(join(persistDir, 'conmon.pid')) : undefined));
      pidRead.catch(() => undefined);
      const [exit, sync] = await traced('berth:shim.runtime-create', { containerId: o.id }, () => abortable(Promise.all([childExit, syncLine]), signal));
      const conmonStderr = Buffer.concat(stderr).toString('utf8').trim();
      const msg = parseSync(sync);
      // The runtime's refusal comes on the sync pipe, and conmon then exits 1: the runtime's
      // message is what the caller needs, not conmon's exit.
      if (msg !== undefined && msg.pid <= 0) {
        const text = runtimeMessage(msg.message ?? 'no message');
        throw new BerthError('FailedPrecondition', /create failed/.test(text) ? text : `${o.runtime.path} create failed: ${text}`);
      }
      if (exit.code !== 0) {
        throw new BerthError('Internal', `conmon failed (exit ${exit.code ?? exit.signal}): ${conmonStderr || 'no message'}`);
      }
      shimPid = await pidRead;
      if (msg === undefined) {
        throw new BerthError('Internal', `conmon exited before reporting the container${conmonStderr ? `: ${conmonStderr}` : ''}`);
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

  async abandon(c: ShimContainer): Promise<void> {
    const conmons = await findConmons(c.id);
    await Promise.all(conmons.map((p) => killConmon(p, c.id)));
    // A `runc create` left by a killed conmon goes on: it is let finish (killed halfway it
    // leaves a cgroup that `runc delete` cannot find), then killed should it hang.
    const until = Date.now() + CREATE_GRACE_MS;
    let creates = await findRuntimeCreates(c.id, c.bundle);
    while (creates.length > 0 && Date.now() < until) {
      await sleep(50);
      creates = await findRuntimeCreates(c.id, c.bundle);
    }
    for (const p of creates) {
      this.log?.warn('killing a runtime create that outlived its shim', { container: c.id, pid: p });
      try {
        process.kill(p, 'SIGKILL');
      } catch (err) {
        if (errnoOf(err) !== 'ESRCH') throw err;
      }
    }
    if (conmons.length > 0) this.log?.info('killed the shim of a cut-off create', { container: c.id, pids: conmons });
  }

  async exitCode(id: string): Promise<number | undefined> {
    const exitDir = this.dirs.exitDir;
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

  async waitExit(id: string, signal?: AbortSignal): Promise<number> {
    const exitDir = this.dirs.exitDir;
    signal?.throwIfAborted();
    let watcher: FSWatcher | undefined;
    let wake: (() => void) | undefined;
    // A poke while the file is being read is kept, so that the wait after the read is skipped.
    let poked: boolean;
    const poke = (): void => {
      poked = true;
      wake?.();
    };
    try {
      try {
        watcher = watch(exitDir, { persistent: false }, (_e, name) => {
          if (name === null || name === id) poke();
        });
        watcher.on('error', (err) => {
          this.log?.debug('watching the exit dir failed; polling', { exitDir, error: messageOf(err) });
          watcher?.close();
          watcher = undefined;
          poke();
        });
      } catch (err) {
        this.log?.debug('cannot watch the exit dir; polling', { exitDir, error: messageOf(err) });
      }
      signal?.addEventListener('abort', poke, { once: true });
      for (;;) {
        poked = false;
        // Mostly the file is not there yet: one stat of a tmpfs file then, where an open that
        // fails made an error object with its stack for every running container each round.
        const code = existsSync(join(exitDir, id)) ? await this.exitCode(id) : undefined;
        if (code !== undefined) return code;
        signal?.throwIfAborted();
        if (poked) continue;
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, watcher ? EXIT_POLL_WATCHED_MS : EXIT_POLL_MS);
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

  async removeFiles(c: ShimContainer): Promise<void> {
    const files = [join(this.dirs.exitDir, c.id), ...BUNDLE_FILES.map((f) => join(c.bundle, f))];
    // Four places, none inside another: one round, not three.
    await settleAll([...files.map((f) => rm(f, { force: true })), removeTree(this.persistDir(c.id)), removeSocketLink(this.dirs.socketDir, c.id, c.bundle)]);
  }

  alive(id: string, shimPid: number | null): boolean {
    return shimAlive(shimPid, id);
  }

  /** conmon marks an OOM kill with a file `oom` in its persist dir (2.1) or the bundle (older). */
  async oomKilled(c: ShimContainer): Promise<boolean> {
    return existsSync(join(this.persistDir(c.id), 'oom')) || existsSync(join(c.bundle, 'oom'));
  }

  /** Through conmon's control FIFO; conmon reopens asynchronously, so this waits (bounded) for the new file. */
  async reopenLog(c: ShimContainer & { logPath: string }): Promise<void> {
    try {
      await requestLogReopen(join(c.bundle, 'ctl'));
    } catch (err) {
      throw new BerthError('Unavailable', `container ${c.id}: its shim does not answer (${messageOf(err)})`);
    }
    const until = Date.now() + REOPEN_WAIT_MS;
    while (!existsSync(c.logPath) && Date.now() < until) await sleep(10);
    if (!existsSync(c.logPath)) throw new BerthError('Unavailable', `container ${c.id}: the shim did not reopen ${c.logPath} within 1 s`);
  }

  /** Through the attach link `<socketDir>/<id>`, which keeps the socket's path short. */
  attach(c: ShimContainer, o: { stdin: boolean }): ExecSession {
    return startAttachSession({ dir: join(this.dirs.socketDir, c.id), ctlPath: join(c.bundle, 'ctl'), stdin: o.stdin });
  }

  resize(c: ShimContainer, width: number, height: number): Promise<void> {
    return resizeTerminal(join(c.bundle, 'ctl'), width, height);
  }

  /**
   * In the container's persist dir, which create made and only removeFiles removes (so it
   * is there while the container runs: no mkdir on ExecSync's path). Should it be gone all
   * the same, the runtime cannot write the pid file, kills the command and fails the exec.
   */
  execPidFile(id: string): Promise<string> {
    return Promise.resolve(join(this.persistDir(id), `exec-${randomBytes(6).toString('hex')}.pid`));
  }
}
