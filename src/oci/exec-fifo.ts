/**
 * Starting a runc container without a `runc start` process: what `runc start` itself does
 * (runc 1.x, libcontainer's exec()). `runc create` leaves the container's init blocked
 * opening `<root>/<id>/exec.fifo` for writing; the start opens it for reading, which lets
 * the init write one byte, reads to the end (the init closes its end when it execs the
 * user's program, or dies), and removes the fifo. runc derives the state from that file:
 * with the fifo the container is `created`, without it (and its init alive) `running`.
 *
 * Opening the fifo is the point of no return: the init goes on whether or not its byte is
 * read. So everything that could make the start wrong is checked before: runc's own
 * state.json names the init (pid and start time, as runc checks them) and no OCI hook
 * (runc 1.2 and later run poststart hooks in `runc start`); the fifo is a fifo; the init is
 * alive and still holds the fifo, as runc's init does until it execs the user's program
 * (an init without it while the fifo is still there had its byte read by a start cut off
 * before the removal: that start is finished by removing the fifo). Any doubt before the
 * open answers `started: false`, and the caller runs `runc start`, which gives runc's own
 * answer (an init that died: "cannot start a container that has stopped"). After the open
 * the wait is bounded and notices an init that dies without writing (polling its pid, as
 * runc does every 100 ms); the fifo is read without ever blocking berthd (a non-blocking
 * descriptor read through libuv).
 */
import { close, constants, fstat, open, type Stats } from 'node:fs';
import { lstat, readdir, readFile, stat, unlink } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BerthError, errnoOf, messageOf } from '../common/errors.js';
import { processStartTicks } from '../common/proc-stat.js';

/** How the start through the fifo went: done, or not tried (why) so `runc start` must run. */
export type FifoStart = { started: true } | { started: false; reason: string };

export interface FifoStartOptions {
  /** Longest wait for the init's byte after the fifo is open. */
  timeoutMs: number;
  /** How often the init's pid is checked while waiting. Default 50 ms. */
  pollMs?: number;
}

/** The init named by runc's state.json, when the container may be started through its fifo. */
interface InitOfState {
  pid: number;
  startTicks: bigint;
}

const EXEC_FIFO = 'exec.fifo';
const HOOK_NAMES = ['prestart', 'createRuntime', 'createContainer', 'startContainer', 'poststart', 'poststop'];

/**
 * Starts the created container whose runc state dir is `dir` (`<root>/<id>`) through its
 * exec.fifo. Resolves `started: false` when it did not open the fifo (nothing was changed);
 * rejects only once the fifo was opened and the start went wrong.
 */
export async function startThroughExecFifo(dir: string, o: FifoStartOptions): Promise<FifoStart> {
  const init = await initOfState(join(dir, 'state.json'));
  if (typeof init === 'string') return { started: false, reason: init };
  const fifo = join(dir, EXEC_FIFO);
  let fifoStat: Stats;
  try {
    fifoStat = await lstat(fifo);
    if (!fifoStat.isFIFO()) return { started: false, reason: `${fifo} is not a fifo` };
  } catch (err) {
    return { started: false, reason: `${fifo}: ${errnoOf(err) ?? messageOf(err)}` };
  }
  if (processStartTicks(init.pid) !== init.startTicks) return { started: false, reason: `the init (pid ${init.pid}) is not alive` };
  const holds = await holdsFile(init.pid, fifoStat);
  if (typeof holds === 'string') return { started: false, reason: holds };
  if (!holds) {
    // runc's init holds the fifo open (O_PATH) from its start until just before it execs
    // the user's program. An init alive without it, the fifo still there: an earlier start
    // read its byte and was cut off (berthd killed) before removing the fifo. That start went
    // through; removing the fifo finishes it, so that runc says `running`.
    if (processStartTicks(init.pid) !== init.startTicks) return { started: false, reason: `the init (pid ${init.pid}) is not alive` };
    await removeFifo(fifo);
    return { started: true };
  }
  let fd: number;
  try {
    fd = await promisify(open)(fifo, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch (err) {
    return { started: false, reason: `${fifo}: ${errnoOf(err) ?? messageOf(err)}` };
  }
  // Opened: the init may be on its way. From here on the result is ours to give.
  let socket: Socket;
  try {
    const st = await promisify(fstat)(fd);
    if (!st.isFIFO() || st.dev !== fifoStat.dev || st.ino !== fifoStat.ino) {
      close(fd);
      return { started: false, reason: `${fifo} was replaced` };
    }
    // The socket owns the descriptor from here, and closes it when destroyed.
    socket = new Socket({ fd, readable: true, writable: false });
  } catch (err) {
    close(fd);
    throw new BerthError('Internal', `reading ${fifo}: ${messageOf(err)}`, { cause: err });
  }
  const bytes = await readToEnd(socket, init, fifo, o);
  if (bytes === 0) {
    // The init is gone without a word: nothing was started; `runc start` gives runc's answer.
    return { started: false, reason: `the init (pid ${init.pid}) ended without writing to ${fifo}` };
  }
  await removeFifo(fifo);
  return { started: true };
}

/** Removes the fifo of a started container, as `runc start` does last. */
async function removeFifo(fifo: string): Promise<void> {
  try {
    await unlink(fifo);
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw new BerthError('Internal', `removing ${fifo} after the start: ${messageOf(err)}`, { cause: err });
  }
}

/**
 * Whether process `pid` has a descriptor open on the file `st` describes (by device and
 * inode: the init's root is the container's, so /proc shows no host path for it); a
 * reason instead when that cannot be told (the process gone, or a descriptor that cannot
 * be followed: runc's init is not dumpable, so without CAP_SYS_PTRACE, or under an LSM
 * that refuses, /proc lists its descriptors but does not follow them). Only a positive
 * answer for every descriptor may say false, since false lets the caller remove the fifo.
 */
async function holdsFile(pid: number, st: Stats): Promise<boolean | string> {
  let fds: string[];
  try {
    fds = await readdir(`/proc/${pid}/fd`);
  } catch (err) {
    return `the descriptors of the init (pid ${pid}) cannot be listed: ${errnoOf(err) ?? messageOf(err)}`;
  }
  for (const fd of fds) {
    try {
      const s = await stat(`/proc/${pid}/fd/${fd}`);
      if (s.dev === st.dev && s.ino === st.ino) return true;
    } catch (err) {
      // Closed meanwhile is fine; anything else leaves the answer unknown.
      if (errnoOf(err) !== 'ENOENT') return `descriptor ${fd} of the init (pid ${pid}) cannot be followed: ${errnoOf(err) ?? messageOf(err)}`;
    }
  }
  return false;
}

/**
 * The bytes read from the fifo until its writer closed it; 0 when the init died (or the
 * pid stopped naming it) before writing. Rejects on timeout or a read error.
 */
function readToEnd(socket: Socket, init: InitOfState, fifo: string, o: FifoStartOptions): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let bytes = 0;
    let settled = false;
    const finish = (err: Error | undefined): void => {
      if (settled) return;
      settled = true;
      clearInterval(poll);
      clearTimeout(deadline);
      socket.destroy();
      if (err) reject(err);
      else resolve(bytes);
    };
    socket.on('data', (d: Buffer) => (bytes += d.length));
    socket.once('end', () => finish(undefined));
    socket.once('error', (err) => finish(new BerthError('Internal', `reading ${fifo}: ${messageOf(err)}`, { cause: err })));
    // A dead init never writes (or has written and closed, which 'end' reports first).
    const poll = setInterval(() => {
      if (processStartTicks(init.pid) === init.startTicks) return;
      // Let what the kernel already holds arrive before deciding.
      setImmediate(() => finish(undefined));
    }, o.pollMs ?? 50);
    const deadline = setTimeout(
      () => finish(new BerthError('DeadlineExceeded', `the container's init (pid ${init.pid}) did not answer on ${fifo} within ${o.timeoutMs} ms`)),
      o.timeoutMs,
    );
  });
}

/** The init of runc's state.json, or why the container must be started by `runc start`. */
async function initOfState(path: string): Promise<InitOfState | string> {
  let state: unknown;
  try {
    state = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    return `${path}: ${errnoOf(err) ?? messageOf(err)}`;
  }
  const s = state as { init_process_pid?: unknown; init_process_start?: unknown; config?: { Hooks?: unknown } };
  if (typeof s !== 'object' || s === null) return `${path} is not runc's state`;
  const pid = s.init_process_pid;
  const start = s.init_process_start;
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 0) return `${path} names no init pid`;
  if (typeof start !== 'number' || !Number.isSafeInteger(start) || start < 0) return `${path} names no init start time`;
  const hooks = s.config?.Hooks;
  if (hooks !== undefined && hooks !== null) {
    if (typeof hooks !== 'object') return `${path}: hooks of an unknown shape`;
    for (const [name, list] of Object.entries(hooks)) {
      if (list === null || (Array.isArray(list) && list.length === 0)) continue;
      return HOOK_NAMES.includes(name) ? `the container has ${name} hooks` : `${path}: hooks of an unknown kind (${name})`;
    }
  }
  return { pid, startTicks: BigInt(start) };
}
