/**
 * conmon's processes and files as berth finds them: the line it writes on the sync pipe,
 * its pid files, its processes found by command line (to kill one that outlived a failed
 * create, or to tell whether a recorded pid is still a container's conmon), and the
 * attach link it leaves behind.
 */
import { readFileSync } from 'node:fs';
import { readFile, readdir, readlink, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BerthError, errnoOf } from '../common/errors.js';

const SYNC_MAX = 64 * 1024;

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
export function readSyncLine(stream: NodeJS.ReadableStream, signal: AbortSignal): Promise<string | undefined> {
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

export async function readPid(file: string): Promise<number | undefined> {
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
export async function findConmons(id: string): Promise<number[]> {
  const pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p)).map(Number);
  const hits = await Promise.all(pids.map(async (p) => ((await isConmonFor(p, id)) ? p : undefined)));
  return hits.filter((p): p is number => p !== undefined);
}

/**
 * Live processes other than conmon that run for container `id` in `bundle`: the OCI
 * runtime's `create` that a conmon started (its command line names both).
 */
export async function findRuntimeCreates(id: string, bundle: string): Promise<number[]> {
  const pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p)).map(Number);
  const hits = await Promise.all(
    pids.map(async (p) => {
      try {
        const argv = (await readFile(`/proc/${p}/cmdline`, 'utf8')).split('\0');
        if (argv.includes('--cid')) return undefined;
        const b = argv.indexOf('--bundle');
        return b >= 0 && argv[b + 1] === bundle && argv.includes(id) && aliveNotZombie(p) ? p : undefined;
      } catch {
        return undefined;
      }
    }),
  );
  return hits.filter((p): p is number => p !== undefined);
}

/** SIGKILLs conmon `pid` if it is still the conmon of `id`, and waits (bounded) until it is gone. */
export async function killConmon(pid: number, id: string): Promise<void> {
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
export async function removeSocketLink(socketDir: string, id: string, bundle: string): Promise<void> {
  const link = join(socketDir, id);
  try {
    if ((await readlink(link)) === bundle) await rm(link, { force: true });
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT' && errnoOf(err) !== 'EINVAL') throw err;
  }
}

export async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/** Whether a process exists and is not a zombie (a killed shim may linger unreaped). */
function aliveNotZombie(pid: number | null): boolean {
  if (pid === null || pid <= 0) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Shims found to be their container's, by pid: the container and the process's start time (field 22 of its stat). */
const knownShims = new Map<number, { id: string; start: string }>();
/** More than this many remembered shims are forgotten at once (entries of shims not asked about again stay until then). */
const KNOWN_SHIMS_MAX = 4096;

/**
 * Whether the shim `pid` of container `id` still runs: alive, not a zombie, and its
 * command line names the container (a pid may have been reused since it was recorded).
 * The command line is read once per process: a later check reads only its stat, whose
 * start time tells the same process from one that reused its pid.
 */
export function shimAlive(pid: number | null, id: string): boolean {
  if (pid === null || pid <= 0) return false;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    knownShims.delete(pid);
    return false;
  }
  // The state (field 3) and the start time (field 22), found without splitting all 52
  // fields: the exit monitor asks this of every running container's shim every 2 s.
  const from = stat.lastIndexOf(')') + 2;
  const state = stat[from];
  if (state === 'Z' || state === 'X') {
    knownShims.delete(pid);
    return false;
  }
  let at = from;
  for (let field = 3; field < 22 && at >= 0; field++) at = stat.indexOf(' ', at + 1);
  const end = at < 0 ? -1 : stat.indexOf(' ', at + 1);
  const start = at < 0 ? '' : stat.slice(at + 1, end < 0 ? undefined : end);
  const known = knownShims.get(pid);
  if (known?.id === id && known.start === start && start !== '') return true;
  let ours: boolean;
  try {
    ours = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(id);
  } catch {
    ours = false;
  }
  if (!ours) knownShims.delete(pid);
  else {
    if (knownShims.size >= KNOWN_SHIMS_MAX) knownShims.clear();
    knownShims.set(pid, { id, start });
  }
  return ours;
}
