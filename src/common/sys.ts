/**
 * berthd's own syscalls, from the small native addon in native/berth_sys.c:
 * - {@link spawnProcess} and {@link execProcess}: processes started with posix_spawn
 *   (vfork semantics), not Node's fork. A fork copies the page tables of berthd's
 *   whole heap; measured here it costs 4.7 ms per spawn at 170 MB RSS, against 0.5 ms.
 *   Every CreateContainer and StartContainer spawns (conmon, `runc start`), so this is
 *   on the hot path. The child gets only the descriptors asked for, default signal
 *   handling and an empty signal mask.
 * - {@link mount} and {@link umount}: mount(2) and umount2(2) on the thread pool, not a
 *   /usr/bin/mount process per container rootfs.
 * - {@link pinUserns} and {@link cloneMount}: a pinned user namespace with given id maps,
 *   and bind mounts made with open_tree/mount_setattr/move_mount (idmapped, recursively
 *   read-only), which runc 1.1 cannot make itself.
 * - for the streaming server: {@link openPty} (a terminal pair for `runc exec -t`),
 *   {@link connectInNetns} (port forwarding from inside a pod's network namespace) and
 *   {@link attachConmon} (conmon's SOCK_SEQPACKET attach socket as a stream).
 *
 * The addon is built by `npm run build` (node-gyp, hack/build-native.sh); berthd cannot
 * run without it, and says so.
 */
import { closeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { messageOf } from './errors.js';

interface NativeSys {
  pipe(): [number, number];
  spawn(
    file: string,
    argv: string[],
    envp: string[],
    cwd: string | null,
    fds: number[],
    setsid: boolean,
  ): { pid: number; exited: Promise<[number | null, number | null]> };
  mount(source: string, target: string, fstype: string, flags: number, data: string): Promise<void>;
  umount(target: string, flags: number): Promise<void>;
  pinUserns(
    pinPath: string,
    uidMap: string,
    gidMap: string,
    net: string | null,
    ipc: string | null,
    uts: string | null,
    hostname: string | null,
  ): Promise<void>;
  cloneMount(source: string, target: string, recursive: boolean, readonly: boolean, usernsPath: string | null): Promise<void>;
  openPty(): [number, number];
  setWinsize(fd: number, rows: number, cols: number): void;
  connectInNetns(nsPath: string, port: number, timeoutMs: number): Promise<number>;
  attachConmon(dir: string): number;
}

/** Where the build leaves the addon, from dist/src/common (or any dist-* build) up to the repository. */
export const NATIVE_ADDON = fileURLToPath(new URL('../../../native/build/Release/berth_sys.node', import.meta.url));

let loaded: NativeSys | undefined;

function sys(): NativeSys {
  if (loaded) return loaded;
  try {
    loaded = createRequire(import.meta.url)(NATIVE_ADDON) as NativeSys;
  } catch (err) {
    throw new Error(`berth's native addon ${NATIVE_ADDON} cannot be loaded (npm run build builds it): ${messageOf(err)}`, { cause: err });
  }
  return loaded;
}

/** Loads the addon now, so that a missing build stops berthd at start-up rather than at the first container. */
export function loadNative(): void {
  sys();
}

/** mount(2) flags berth uses. */
export const MS = { RDONLY: 1, NOSUID: 2, NODEV: 4, NOEXEC: 8, REMOUNT: 32, BIND: 4096, REC: 16384, PRIVATE: 1 << 18 } as const;
/** umount2(2) flags. */
export const MNT = { FORCE: 1, DETACH: 2 } as const;

/** mount(2). Rejects with a Node-style errno error (`code`: 'ENOENT', 'EINVAL'…). */
export function mount(source: string, target: string, fstype: string, flags: number, data = ''): Promise<void> {
  return sys().mount(source, target, fstype, flags, data);
}

/** umount2(2). Rejects with a Node-style errno error ('EINVAL' when `target` is not a mount point). */
export function umount(target: string, flags = 0): Promise<void> {
  return sys().umount(target, flags);
}

/** One line of a uid_map or gid_map: container ids [containerId, containerId+size) are host ids from hostId. */
export interface IdMap {
  containerId: number;
  hostId: number;
  size: number;
}

/** Namespaces to make together with a user namespace, owned by it, each pinned on an existing empty file. */
export interface OwnedNamespaces {
  net?: string;
  ipc?: string;
  uts?: string;
  /** Set inside the new UTS namespace (needs `uts`). */
  hostname?: string;
}

/**
 * A new user namespace with these uid and gid maps, pinned by a bind mount of its nsfs
 * file on `pinPath` (an existing empty file), with the network, IPC and UTS namespaces
 * asked for created in it (owned by it) and pinned too. No process is left in them. On
 * failure, pins already made stay for the caller to remove.
 */
export function pinUserns(pinPath: string, uids: readonly IdMap[], gids: readonly IdMap[], owned: OwnedNamespaces = {}): Promise<void> {
  const text = (m: readonly IdMap[]): string => m.map((e) => `${e.containerId} ${e.hostId} ${e.size}\n`).join('');
  return sys().pinUserns(pinPath, text(uids), text(gids), owned.net ?? null, owned.ipc ?? null, owned.uts ?? null, owned.hostname ?? null);
}

export interface CloneMountOptions {
  /** The whole tree under `source` (AT_RECURSIVE), with every attribute set on each of its mounts. */
  recursive?: boolean;
  /** Read-only (MOUNT_ATTR_RDONLY): with `recursive`, on every submount too. */
  readonly?: boolean;
  /** Idmapped (MOUNT_ATTR_IDMAP) through the user namespace pinned or living at this path. */
  usernsPath?: string;
}

/**
 * A bind of `source` onto `target` made with open_tree(OPEN_TREE_CLONE), mount_setattr
 * and move_mount: the attributes are set on the detached copy before it is attached, so
 * it never exists without them. Rejects with a Node-style errno error whose `syscall` says
 * which step failed (EINVAL from mount_setattr: the filesystem cannot be idmapped).
 */
export function cloneMount(source: string, target: string, opts: CloneMountOptions = {}): Promise<void> {
  return sys().cloneMount(source, target, opts.recursive ?? false, opts.readonly ?? false, opts.usernsPath ?? null);
}

/** A new terminal pair: [master, slave], both close-on-exec. */
export function openPty(): [number, number] {
  return sys().openPty();
}

/**
 * A TCP connection to `port` on the loopback of the network namespace pinned at
 * `nsPath` (127.0.0.1, then ::1), made by a thread that entered it; berthd stays in its own.
 */
export async function connectInNetns(nsPath: string, port: number, timeoutMs: number): Promise<Socket> {
  const fd = await sys().connectInNetns(nsPath, port, timeoutMs);
  return new Socket({ fd, readable: true, writable: true });
}

/**
 * A connection to conmon's attach socket `<dir>/attach` (SOCK_SEQPACKET), bridged to a
 * stream: reads give frames [pipe u8][length u16 BE][data]; writes are the container's
 * stdin; end() closes its stdin; destroy() detaches.
 */
export function attachConmon(dir: string): Socket {
  return new Socket({ fd: sys().attachConmon(dir), readable: true, writable: true });
}

/** Sets a terminal's size (TIOCSWINSZ on its master). */
export function setWinsize(fd: number, rows: number, cols: number): void {
  sys().setWinsize(fd, rows, cols);
}

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

/**
 * Starts `file` (looked up on PATH when it holds no '/') with `args`. Throws a Node-style
 * errno error when it cannot be started (e.g. `code` 'ENOENT' for a missing binary).
 */
export function spawnProcess(file: string, args: readonly string[], opts: SpawnOptions = {}): ChildProcess {
  const native = sys();
  const specs = opts.stdio ?? ['ignore', 'ignore', 'ignore'];
  const childFds: number[] = [];
  const ours: Array<{ fd: number; spec: 'in' | 'out' } | undefined> = [];
  const close = (fds: number[]): void => {
    for (const fd of fds) {
      try {
        closeSync(fd);
      } catch {
        // already closed
      }
    }
  };
  let child: ReturnType<NativeSys['spawn']>;
  try {
    for (const spec of specs) {
      if (spec === 'ignore' || typeof spec === 'number') {
        childFds.push(spec === 'ignore' ? -1 : spec);
        ours.push(undefined);
        continue;
      }
      const [r, w] = native.pipe();
      childFds.push(spec === 'out' ? w : r);
      ours.push({ fd: spec === 'out' ? r : w, spec });
    }
    const env = Object.entries(opts.env ?? process.env)
      .filter((e): e is [string, string] => typeof e[1] === 'string')
      .map(([k, v]) => `${k}=${v}`);
    child = native.spawn(file, [file, ...args], env, opts.cwd ?? null, childFds, opts.setsid ?? false);
  } catch (err) {
    close(ours.filter((o) => o !== undefined).map((o) => o.fd));
    throw err;
  } finally {
    close(childFds.filter((fd, i) => fd >= 0 && typeof specs[i] !== 'number'));
  }
  const stdio = ours.map((o) => {
    if (!o) return undefined;
    const s = new Socket({ fd: o.fd, readable: o.spec === 'out', writable: o.spec === 'in' });
    if (o.spec === 'in') s.on('error', () => undefined); // EPIPE once the child has gone
    return s;
  });
  return new ChildProcess(child.pid, stdio, child.exited);
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
  const child = spawnProcess(file, args, {
    stdio: [opts.input !== undefined ? 'in' : 'ignore', 'out', 'out'],
    ...(opts.env ? { env: opts.env } : {}),
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
  });
  const max = opts.maxBuffer ?? 4 << 20;
  const collect = (s: Socket | undefined): Promise<string> =>
    new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let n = 0;
      if (!s) return resolve('');
      s.on('data', (d: Buffer) => {
        if (n < max) chunks.push(d.subarray(0, max - n));
        n += d.length;
      });
      s.on('error', () => undefined);
      s.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
    });
  const [stdout, stderr] = [collect(child.stdout), collect(child.stderr)];
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
    const out = await Promise.race([Promise.all([stdout, stderr]), new Promise<undefined>((r) => setTimeout(() => r(undefined), 100).unref())]);
    if (!out) child.closeStdio();
    const [o, e] = out ?? (await Promise.all([stdout, stderr]));
    return { ...status, stdout: o, stderr: e, timedOut };
  } finally {
    clearTimeout(timer);
  }
}
