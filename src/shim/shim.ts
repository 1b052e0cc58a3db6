/**
 * The shim: the small process that sits between berthd and one container.
 *
 * berthd is a long-lived Node process that may restart or be upgraded while containers
 * keep running, so it never is the parent of a container. Each container gets a shim
 * (conmon, see `conmon.ts`) that outlives berthd and is the only thing that must stay
 * alive for the container to work. The life of a container through a shim:
 *
 * 1. **create** — berthd writes the bundle (`config.json` + rootfs) and asks the shim to
 *    create the container. The shim detaches from berthd (it is reparented to init),
 *    makes itself the container's sub-reaper, opens the CRI log file, and runs the OCI
 *    runtime's `create`. The container's init process now exists, stopped before it
 *    `exec`s the user's program. `create` resolves with the init pid and the shim's own
 *    pid, or fails with the runtime's own message and leaves nothing behind: no shim
 *    process, no runtime state, no files it made.
 * 2. **start** — the OCI runtime's `start` releases the init process, which runs the
 *    user's program. Its stdout and stderr go through the shim into the log file.
 * 3. **exit** — when the init process exits the shim records its exit code in a file
 *    named after the container in the exit directory (`128 + n` for death by signal n),
 *    then exits itself. Files survive berthd, so after a restart berthd learns of exits
 *    that happened while it was down by reading them (`exitCode`), and waits for future
 *    ones with `waitExit`.
 * 4. **kill / state** — signals and status go through the OCI runtime, which keeps its
 *    state under berth's own `runtimeRoot`; they need nothing from the shim object, so a
 *    fresh berthd (a new `Shim` instance) can manage containers an older one created.
 * 5. **delete** — the OCI runtime's `delete` removes its state (and the cgroup) once the
 *    container has stopped; `force` kills it first. Deleting what is already gone is
 *    not an error. `removeFiles` then clears the shim's own leftovers.
 *
 * Every method that runs a program is bounded by a timeout; `create` and `waitExit`
 * also take an `AbortSignal`.
 */

/** What `Shim.create` needs. The directories are made when missing. */
export interface ShimCreateOptions {
  /** The container id; also its name for the OCI runtime and its exit file's name. */
  id: string;
  /** The OCI bundle directory (holds `config.json`); the shim puts its `attach` socket and `ctl`/`winsz` FIFOs here. */
  bundle: string;
  /** The OCI runtime binary, e.g. `/usr/sbin/runc`. */
  runtimePath: string;
  /** The OCI runtime's state root (`runc --root`), under berth's state dir. */
  runtimeRoot: string;
  /** The CRI log file (the kubelet's LogPath). */
  logPath: string;
  /** Where the shim writes `<exitDir>/<id>` holding the exit code. Shared by all containers. */
  exitDir: string;
  /** A directory of this container's own: the shim's pid files and a second `exit` file. */
  persistDir: string;
  /** Where the shim links `<socketDir>/<id>` to the bundle, keeping the attach socket path short. */
  socketDir: string;
  /** Allocate a pseudo-terminal (the spec's `process.terminal` must agree). */
  terminal: boolean;
  /** Keep a stdin pipe that attach clients can write to. */
  stdin: boolean;
  /** Close stdin when the first attach client disconnects. */
  stdinOnce: boolean;
  signal?: AbortSignal;
  /** Bound on the whole creation; the default is the implementation's. */
  timeoutMs?: number;
  /**
   * Resolves once the bundle is complete (rootfs mounted, `config.json` written). The shim
   * may start its own process before, so that its start-up overlaps the caller's work, but
   * runs the runtime's `create` only after; should it reject, `create` undoes what it did
   * and rejects with that reason. Absent: the bundle is complete already.
   */
  bundleReady?: Promise<unknown>;
}

/** The files a shim keeps for one container, for {@link Shim.removeFiles}. */
export type ShimFiles = Pick<ShimCreateOptions, 'id' | 'bundle' | 'exitDir' | 'persistDir' | 'socketDir'>;

/** A created container, as the shim reports it. */
export interface ShimHandle {
  id: string;
  /** The container's init process, in the host's pid namespace. */
  pid: number;
  /** The shim (conmon) process. */
  shimPid: number;
}

/** The OCI runtime's view of a container (`runc state`). */
export interface ShimState {
  status: 'created' | 'running' | 'stopped' | 'paused' | 'unknown';
  /** The init pid; 0 once stopped. */
  pid: number;
}

/**
 * One shim per container. Implementations keep no per-container state in memory:
 * everything needed later is on disk (runtime state, exit files, pid files).
 */
export interface Shim {
  /**
   * Starts the shim and the runtime's `create`. Resolves with the init pid once the
   * container exists (not yet started). On failure throws a BerthError carrying the
   * runtime's own message and leaves nothing behind.
   */
  create(o: ShimCreateOptions): Promise<ShimHandle>;
  /** Runs the user's program (`runc start`). */
  start(id: string, runtimePath: string, runtimeRoot: string): Promise<void>;
  /**
   * Sends `signal` (a name like `TERM`/`SIGTERM` or a number) to the init process, or
   * to every process of the container with `all`. Note that an init in its own pid
   * namespace ignores signals it has no handler for, except SIGKILL.
   */
  kill(id: string, signal: string | number, runtimePath: string, runtimeRoot: string, all?: boolean): Promise<void>;
  /** The exit code recorded by the shim, or undefined while running. Reads `<exitDir>/<id>`. */
  exitCode(exitDir: string, id: string): Promise<number | undefined>;
  /** Waits for the exit file (a watch on `exitDir` plus a fallback poll); rejects with the signal's reason on abort. */
  waitExit(exitDir: string, id: string, signal?: AbortSignal): Promise<number>;
  /** Removes the runtime's state (`runc delete`, `--force` kills a live container first). Idempotent. */
  delete(id: string, runtimePath: string, runtimeRoot: string, force?: boolean): Promise<void>;
  /**
   * Removes what the shim left for a container that is gone: its exit file, its
   * persist dir, the attach link in `socketDir` and its sockets/FIFOs in the bundle
   * (conmon removes none of these itself). Call after `delete`, once the exit code is
   * recorded elsewhere; idempotent. The CRI log file is the kubelet's and stays.
   */
  removeFiles(o: ShimFiles): Promise<void>;
  /** The runtime's view of the container, or undefined when it does not know it. */
  state(id: string, runtimePath: string, runtimeRoot: string): Promise<ShimState | undefined>;
}

/** The directories shims share under berth's state dir (pods' infra processes and containers alike). */
export interface ShimDirs {
  /** Exit files, `<exitDir>/<id>`. */
  exitDir: string;
  /** Links to the attach sockets, `<socketDir>/<id>`. */
  socketDir: string;
  /** Per-container dirs: `<persistRoot>/<id>`. */
  persistRoot: string;
}

export function shimDirs(state: string): ShimDirs {
  return { exitDir: `${state}/exits`, socketDir: `${state}/attach`, persistRoot: `${state}/conmon` };
}
