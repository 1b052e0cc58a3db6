/**
 * The OCI runtime's binary, run from a sealed in-memory copy.
 *
 * runc (and crun) protect the host's binary from the container (CVE-2019-5736: a process
 * in the container could reach it through /proc/<pid>/exe and overwrite it) by copying
 * themselves into a memfd and executing that copy before they enter the container, at
 * every `create` and every `exec`: an 8.7 MB copy and one more exec of a Go binary, some
 * 3 ms of CPU each time on this kind of machine. They skip it when /proc/self/exe already
 * is a memfd sealed against writes, growth, shrinking and new seals, which nothing can
 * change (runc's cloned_binary.c names this case: "sharing it isn't a bad thing").
 *
 * So berthd makes that copy once (its addon's sealedCopy) and runs the runtime from it,
 * by the path `/proc/<berthd>/fd/<n>`: berthd's own commands (start, exec, kill…) and
 * conmon, which gets it as `--runtime`. The copy is used only once a run of it
 * (`--version`) has worked, and only while the binary on disk is the one copied: after an
 * upgrade the plain path is used until a new copy has been checked. A copy replaced is
 * closed only after {@link RETIRE_MS}, so that a conmon given its path still finds it.
 *
 * The binary on disk is not looked at for every command: it is looked at again once a
 * watch of its directory (inotify) reports a change of its name (written, its attributes
 * changed, replaced by a rename), and at least every {@link RECHECK_MS} whatever the watch
 * says (it may be missing: no inotify watch left, a directory not there yet).
 */
import { closeSync, statSync, watch, type FSWatcher, type Stats } from 'node:fs';
import { basename, dirname } from 'node:path';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { native } from '../common/native.js';
import { execProcess } from '../common/process.js';

/** How long a replaced copy stays open (longer than any create may wait for its release). */
const RETIRE_MS = 10 * 60_000;
/** The longest the binary on disk goes unlooked-at while it is in use, when no change was reported. */
const RECHECK_MS = 1000;

interface Copy {
  fd: number;
  path: string;
  /** The binary on disk it was copied from. */
  from: string;
}

const identity = (st: Stats): string => `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;

export class SealedBinary {
  private copy: Copy | undefined;
  private preparing: Promise<void> | undefined;
  private warned = false;
  /** Set by close(): no copy is made or kept after it. */
  private closed = false;
  /** The binary on disk as last looked at, when (performance.now()), and whether a change was reported since. */
  private onDisk: string | undefined;
  private checkedAt = -Infinity;
  private changed = false;
  private watcher: FSWatcher | undefined;
  private readonly recheckMs: number;
  /** The binary on disk a copy was last made of (or tried): a failed one is not tried again until it changes. */
  private tried: string | undefined;

  constructor(
    /** The binary on disk. */
    readonly path: string,
    private readonly log?: Logger,
    opts: { recheckMs?: number } = {},
  ) {
    this.recheckMs = opts.recheckMs ?? RECHECK_MS;
    this.watch();
    this.refresh();
  }

  /** The path to execute: the checked sealed copy while it is current, else the binary on disk. */
  execPath(): string {
    const now = this.current();
    if (this.copy && this.copy.from === now) return this.copy.path;
    if (now !== undefined && now !== this.tried) this.refresh();
    return this.path;
  }

  /** The binary on disk: looked at again only after a reported change or {@link recheckMs}. */
  private current(): string | undefined {
    const t = performance.now();
    if (this.changed || t - this.checkedAt >= this.recheckMs) {
      this.changed = false;
      this.checkedAt = t;
      this.onDisk = this.identityOnDisk();
    }
    return this.onDisk;
  }

  /** Watches the binary's directory for changes of its name; without a watch, the timed look alone. */
  private watch(): void {
    const name = basename(this.path);
    try {
      this.watcher = watch(dirname(this.path), { persistent: false }, (_event, file) => {
        if (file === null || file === name) this.changed = true;
      });
    } catch {
      return;
    }
    this.watcher.on('error', () => {
      this.changed = true;
      this.watcher?.close();
      this.watcher = undefined;
    });
  }

  /** Closes the copy (berthd's shutdown; tests). */
  close(): void {
    this.closed = true;
    this.watcher?.close();
    this.watcher = undefined;
    if (this.copy) closeSync(this.copy.fd);
    this.copy = undefined;
  }

  private identityOnDisk(): string | undefined {
    try {
      return identity(statSync(this.path));
    } catch {
      return undefined;
    }
  }

  /** Makes and checks a new copy in the background, unless one is being made. */
  private refresh(): void {
    if (this.closed) return;
    this.preparing ??= this.prepare().finally(() => (this.preparing = undefined));
  }

  private async prepare(): Promise<void> {
    const from = this.identityOnDisk();
    if (from === undefined) return;
    this.tried = from;
    let fd: number;
    try {
      fd = native().sealedCopy(this.path);
    } catch (err) {
      return this.fallBack(`cannot copy it: ${messageOf(err)}`);
    }
    const path = `/proc/${process.pid}/fd/${fd}`;
    try {
      // memfds may be refused execution (vm.memfd_noexec): run it once before relying on it.
      const r = await execProcess(path, ['--version'], { timeoutMs: 10_000, maxBuffer: 4096 });
      if (r.code !== 0) throw new Error(`--version exited ${r.code ?? r.signal}: ${r.stderr.trim()}`);
    } catch (err) {
      closeSync(fd);
      return this.fallBack(`cannot run the copy: ${messageOf(err)}`);
    }
    // Closed meanwhile (shutdown), or the binary changed: this copy is not kept.
    if (this.closed || this.identityOnDisk() !== from) {
      closeSync(fd);
      return;
    }
    const old = this.copy;
    this.copy = { fd, path, from };
    if (old) setTimeout(() => closeSync(old.fd), RETIRE_MS).unref();
  }

  private fallBack(why: string): void {
    if (this.warned) return;
    this.warned = true;
    this.log?.info('running the OCI runtime from its path, not from a sealed copy', { runtime: this.path, why });
  }
}
