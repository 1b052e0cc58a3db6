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
 * 4. **while it runs** — the shim holds the container's stdio: `attach` joins it (the
 *    streaming Attach), `resize` changes its terminal, `reopenLog` makes it open a new
 *    log file after kubelet rotated the old one. Signals, status and `exec` are the OCI
 *    runtime's ({@link OciRuntime}); they need nothing from the shim, so a fresh berthd
 *    (a new `Shim` instance) can manage containers an older one created.
 * 5. **delete** — the OCI runtime's `delete` removes its state (and the cgroup) once the
 *    container has stopped; `oomKilled` tells whether the kernel's OOM killer ended it.
 *    `removeFiles` then clears the shim's own leftovers.
 *
 * The shim keeps its files in directories shared by all containers ({@link ShimDirs},
 * given to the implementation once); callers name a container by its id and bundle only.
 * `create` is bounded by a timeout; `create` and `waitExit` take an `AbortSignal`.
 */
import type { Readable, Writable } from 'node:stream';
import type { OciRuntime } from '../oci/oci-runtime.js';

/** What `Shim.create` needs. The directories are made when missing. */
export interface ShimCreateOptions {
  /** The container id; also its name for the OCI runtime and its exit file's name. */
  id: string;
  /** The OCI bundle directory (holds `config.json`); the shim keeps its sockets and FIFOs here. */
  bundle: string;
  /** The OCI runtime the shim runs `create` with (and that deletes what a failed create left). */
  runtime: OciRuntime;
  /** The CRI log file (the kubelet's LogPath). */
  logPath: string;
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

/** A container as the shim knows it after `create`: its id and its bundle. */
export interface ShimContainer {
  id: string;
  bundle: string;
}

/** A created container, as the shim reports it. */
export interface ShimHandle {
  id: string;
  /** The container's init process, in the host's pid namespace. */
  pid: number;
  /** The shim (conmon) process. */
  shimPid: number;
}

/**
 * A stream to a process in a container: a command started by the OCI runtime's exec, or
 * the container's main process reached through the shim (attach).
 */
export interface ExecSession {
  /** The command's stdin (present when asked for); ending it closes the command's stdin. */
  stdin?: Writable;
  /** Its stdout, or with a terminal everything the terminal prints. */
  stdout: Readable;
  /** Its stderr (never with a terminal). */
  stderr?: Readable;
  /** Resizes the terminal (no-op without one). */
  resize(width: number, height: number): void;
  /** The exit code: the command's, 128+signal when killed, runc's own (with its message on stderr) when it could not start it. */
  exited: Promise<number>;
  /** Kills the command and everything it started. */
  kill(): void;
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
  /**
   * For a container whose creation was cut off (berthd killed halfway): kills its shim
   * process, found without a pid file, and waits (bounded) until the runtime's `create`
   * the shim may have started is over, so that the runtime's `delete` after this finds
   * whatever was made. Idempotent; nothing to kill is no error.
   */
  abandon(c: ShimContainer): Promise<void>;
  /** The exit code recorded by the shim, or undefined while running. */
  exitCode(id: string): Promise<number | undefined>;
  /** Waits for the exit file (a watch plus a fallback poll); rejects with the signal's reason on abort. */
  waitExit(id: string, signal?: AbortSignal): Promise<number>;
  /**
   * Whether the shim process `shimPid` of container `id` still runs (not a zombie, and
   * still this container's: a pid may have been reused since it was recorded).
   */
  alive(id: string, shimPid: number | null): boolean;
  /** Whether the container's main process was killed by the OOM killer (the shim's marker). */
  oomKilled(c: ShimContainer): Promise<boolean>;
  /**
   * Makes the shim reopen the container's log file at `logPath` (after kubelet renamed
   * it), and resolves once the new file exists. Unavailable when the shim does not answer.
   */
  reopenLog(c: ShimContainer & { logPath: string }): Promise<void>;
  /**
   * Attaches to the container's main process: its output, and its stdin when `stdin`
   * (and the container was created with stdin). Ends when the container exits or the
   * caller detaches (`kill`); never stops the container. `exited` resolves with 0.
   */
  attach(c: ShimContainer, o: { stdin: boolean }): ExecSession;
  /** Resizes the container's terminal; a container without one, or a gone shim, ignores it. */
  resize(c: ShimContainer, width: number, height: number): Promise<void>;
  /**
   * A fresh path for the pid file of a command run in the container (the runtime's
   * `exec --pid-file`), in a directory of the container's own that `removeFiles` clears.
   * The caller removes the file once the command has ended.
   */
  execPidFile(id: string): Promise<string>;
  /**
   * Removes what the shim left for a container that is gone: its exit file, its own
   * directory, its attach link and its sockets/FIFOs in the bundle (conmon removes none
   * of these itself). Call after the runtime's `delete`, once the exit code is recorded
   * elsewhere; idempotent. The CRI log file is the kubelet's and stays.
   */
  removeFiles(c: ShimContainer): Promise<void>;
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
