/**
 * Running one CNI plugin binary, bounded: a deadline and an AbortSignal kill it, its
 * output is capped, and it never sees berthd's stdio.
 *
 * The plugin runs as the leader of its own process group, so a kill reaches what it
 * spawned too (bridge and portmap run iptables; a hung plugin may have children), and
 * nothing is left behind when the call returns.
 */
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BerthError, messageOf } from '../../common/errors.js';
import { BoundedOutput, startProcess, type ChildProcess, type ExitStatus } from '../../common/process.js';
import { failureMessage } from './protocol.js';

export interface PluginRun {
  /** Absolute path of the plugin binary. */
  file: string;
  /** The protocol variables (CNI_COMMAND…); added to berthd's environment. */
  env: Record<string, string>;
  stdin: string;
  timeoutMs: number;
  signal?: AbortSignal;
  /** Cap on stdout and on stderr, each. */
  maxOutputBytes?: number;
}

const DEFAULT_MAX_OUTPUT = 1 << 20;
/** After the plugin exits, how long something it left behind may hold its stdout open. */
const EXIT_GRACE_MS = 1000;
/** After SIGKILL, how long to wait for the pipes to close before giving up on them. */
const KILL_GRACE_MS = 2000;

/** The first executable regular file named `type` in `binDirs`. */
export async function findPlugin(type: string, binDirs: string[]): Promise<string> {
  for (const dir of binDirs) {
    const file = join(dir, type);
    try {
      const st = await stat(file);
      if (!st.isFile()) continue;
      await access(file, constants.X_OK);
      return file;
    } catch {
      continue;
    }
  }
  throw new BerthError('Unavailable', `no executable "${type}" in the CNI plugin dirs ${binDirs.join(', ') || '(none configured)'}`);
}

/** A plugin process started before its turn: it waits for its input on stdin. */
export interface StartedPlugin {
  /**
   * Hands the plugin its stdin and returns its stdout. Throws BerthError: Unavailable for
   * a non-zero exit (message from the CNI error object, or stderr), DeadlineExceeded on
   * timeout (counted from here), Cancelled on abort, ResourceExhausted when it prints
   * more than the cap. Called once.
   */
  run(stdin: string): Promise<string>;
  /** Kills a plugin that will not get its turn (its process group) and waits until it is reaped. */
  cancel(): Promise<void>;
}

/**
 * Runs the plugin and returns its stdout; see {@link StartedPlugin.run}.
 */
export async function runPlugin(run: PluginRun): Promise<string> {
  return (await startPlugin(run)).run(run.stdin);
}

/**
 * Starts the plugin with its environment and holds back its stdin. A plugin reads all of
 * stdin (its network configuration: the CNI protocol gives it nothing else to act on)
 * before it does anything, so a chain can start its next plugin while the current one
 * works: the process start-up (a Go binary: exec, dynamic loading, runtime threads, some
 * ms each) overlaps the work of the plugin before it, and the plugins still act one after
 * the other, in the chain's order, each on the previous one's result.
 */
export async function startPlugin(run: Omit<PluginRun, 'stdin'>): Promise<StartedPlugin> {
  const max = run.maxOutputBytes ?? DEFAULT_MAX_OUTPUT;
  if (run.signal?.aborted) throw new BerthError('Cancelled', 'cancelled before the plugin started');

  const env: Record<string, string | undefined> = {};
  // berthd's environment (plugins need PATH for iptables…) minus any stray CNI_* of its own.
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CNI_')) env[k] = v;
  Object.assign(env, run.env);
  let child: ChildProcess;
  try {
    // Spawned off the event loop (startProcess): a chain's plugins no longer stop it.
    child = await startProcess(run.file, [], { env, stdio: ['in', 'out', 'out'], setsid: true });
  } catch (e) {
    throw new BerthError('Unavailable', `could not run ${run.file}: ${messageOf(e)}`);
  }

  let failure: BerthError | undefined;
  let ended: ExitStatus | undefined;
  let settled = false;
  let resolveDone: (out: string) => void = () => undefined;
  let rejectDone: (e: BerthError) => void = () => undefined;
  const done = new Promise<string>((resolve, reject) => {
    resolveDone = resolve;
    rejectDone = reject;
  });
  done.catch(() => undefined);
  const timers: NodeJS.Timeout[] = [];
  const out = new BoundedOutput(child.stdout, max, () =>
    fail(new BerthError('ResourceExhausted', `printed more than ${max} bytes on stdout; the plugin was killed`)),
  );
  // stderr is only quoted in errors: keep the start, drop the rest rather than kill.
  const err = new BoundedOutput(child.stderr, max);

  const killGroup = (): void => {
    try {
      // The group outlives its leader while members remain, so this is safe after exit too.
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // ESRCH: nothing left.
    }
  };
  const finish = (): void => {
    if (settled) return;
    settled = true;
    for (const t of timers) clearTimeout(t);
    run.signal?.removeEventListener('abort', onAbort);
    child.closeStdio();
    if (failure) return rejectDone(failure);
    if (ended && (ended.code !== 0 || ended.signal !== null)) {
      return rejectDone(new BerthError('Unavailable', failureMessage(out.text(), err.text(), ended)));
    }
    resolveDone(out.text());
  };
  const fail = (e: BerthError): void => {
    if (settled || failure) return;
    failure = e;
    killGroup();
    // Wait for the pipes to close (everything in the group died), but not forever.
    timers.push(setTimeout(finish, KILL_GRACE_MS));
  };
  const onAbort = (): void => fail(new BerthError('Cancelled', 'cancelled; the plugin was killed'));

  run.signal?.addEventListener('abort', onAbort, { once: true });
  // Aborted while the plugin was being started: killed at once.
  if (run.signal?.aborted) onAbort();

  void child.exited.then((status) => {
    ended = status;
    // Something the plugin started may still hold stdout open: give it a moment, then kill it.
    timers.push(
      setTimeout(() => {
        killGroup();
        finish();
      }, EXIT_GRACE_MS),
    );
  });
  void Promise.all([child.exited, out.closed, err.closed]).then(finish);

  let given = false;
  return {
    run: (stdin: string): Promise<string> => {
      if (given) throw new Error('a started CNI plugin is run once');
      given = true;
      if (!settled && !failure) {
        timers.push(setTimeout(() => fail(new BerthError('DeadlineExceeded', `timed out after ${run.timeoutMs} ms; the plugin was killed`)), run.timeoutMs));
        // A plugin may exit without reading all of stdin (EPIPE); its exit status tells.
        child.stdin?.end(stdin);
      }
      return done;
    },
    cancel: async (): Promise<void> => {
      given = true;
      fail(new BerthError('Cancelled', 'not run: the chain stopped before its turn'));
      await done.catch(() => undefined);
      await child.exited;
    },
  };
}
