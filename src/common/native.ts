/**
 * The loader of berthd's small native addon (native/berth_sys.c), the syscalls Node
 * lacks. Callers use it through the modules named for what they do: processes
 * (`process.ts`: posix_spawn), mounts (`mount.ts`: mount(2), umount2(2), open_tree and
 * mount_setattr), user namespaces (`userns.ts`), and the
 * streaming server's terminal, network-namespace and attach-socket calls (`sys.ts`),
 * systemd's notify socket (`sd-notify.ts`), and exit watches of any process (`pid-watch.ts`).
 *
 * The addon is built by `npm run build` (node-gyp, hack/build-native.sh); berthd cannot
 * run without it, and says so.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { messageOf } from './errors.js';

/** The arguments of spawn and spawnAsync: the file, argv, envp, cwd, the child's fds 0..n-1, setsid. */
type SpawnArgs = [file: string, argv: string[], envp: string[], cwd: string | null, fds: number[], setsid: boolean];

/** A started child: its pid, and its exit as [code, signal]. */
interface SpawnedChild {
  pid: number;
  exited: Promise<[number | null, number | null]>;
}

/** The addon's functions, as native/berth_sys.c defines them. */
export interface NativeSys {
  pipe(): [number, number];
  spawn(...args: SpawnArgs): SpawnedChild;
  /**
   * As spawn, made on a helper thread: the event loop does not wait for the child's exec.
   * `file` must be a path (holding a '/'). Rejects as spawn throws when nothing started.
   */
  spawnAsync(...args: SpawnArgs): Promise<SpawnedChild>;
  mount(source: string, target: string, fstype: string, flags: number, data: string): Promise<void>;
  umount(target: string, flags: number): Promise<void>;
  /** `rm -rf` of an absolute path as one job on the pool: never through a symlink, never into another filesystem (EXDEV). */
  removeTree(path: string): Promise<void>;
  /** New net, IPC and UTS namespaces (those with a pin path), each bind-mounted on its pin; the hostname set in the new UTS one. */
  /** …and, with `loopbackUp`, `lo` of the new network namespace up (what the CNI loopback plugin does). */
  pinNamespaces(net: string | null, ipc: string | null, uts: string | null, hostname: string | null, loopbackUp: boolean): Promise<void>;
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
  socketInNetns(nsPath: string, family: 4 | 6): number;
  attachConmon(dir: string): number;
  notifySocket(path: string, text: string): void;
  datagramBind(path: string): number;
  /** malloc_trim(0): returns the free pages of every arena to the kernel; true if any went. */
  mallocTrim(): boolean;
  /** mallopt(M_ARENA_MAX, n): at most `n` malloc arenas from now on; true if glibc took it. */
  limitArenas(n: number): boolean;
  /**
   * sync_file_range(SYNC_FILE_RANGE_WRITE): starts writing the range's dirty pages to the
   * disk and returns without waiting for them; the errno, 0 if it was taken.
   */
  startWriteback(fd: number, offset: number, length: number): number;
  /** A copy of the file at `path` in a memfd sealed against any change (close-on-exec); its descriptor. */
  sealedCopy(path: string): number;
  /**
   * A pidfd of process `pid` (any process, not only a child) watched by the event loop:
   * `onExit` runs once when it exits, and the descriptor is then closed. An errno (a
   * number) when the pidfd cannot be opened (ESRCH: no such process; ENOSYS: no pidfds).
   */
  watchExit(pid: number, onExit: () => void): object | number;
  /** Stops a watch from watchExit and closes its descriptor (idempotent). */
  unwatchExit(handle: object): void;
  /**
   * Writes "0" to a copy of descriptor `fd` (a cgroup.procs) every 4 ms on a helper
   * thread until `ms` from now; `ms` 0 stops (and drops the copy). A later call replaces
   * the descriptor and the deadline. Returns the errno of a write refused since the last
   * call (which stopped the writes), 0 if none. A write is made only while the file at
   * `cgroupsPath` (/proc/self/cgroup) still reads `cgroupsText`, the text `fd` was chosen
   * from: once berthd has been moved, that warming ends.
   */
  warmCgroupJoin(fd: number, ms: number, cgroupsPath: string, cgroupsText: string): number;
}

/** Where the build leaves the addon, from dist/src/common (or any dist-* build) up to the repository. */
export const NATIVE_ADDON = fileURLToPath(new URL('../../../native/build/Release/berth_sys.node', import.meta.url));

let loaded: NativeSys | undefined;

/** The addon, loaded on first use. */
export function native(): NativeSys {
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
  native();
}
