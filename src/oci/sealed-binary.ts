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
 */
import { closeSync, statSync, type Stats } from 'node:fs';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { native } from '../common/native.js';
import { execProcess } from '../common/process.js';

/** How long a replaced copy stays open (longer than any create may wait for its release). */
const RETIRE_MS = 10 * 60_000;

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

  constructor(
    /** The binary on disk. */
    readonly path: string,
    private readonly log?: Logger,
  ) {
    this.refresh();
  }

  /** The path to execute: the checked sealed copy while it is current, else the binary on disk. */
  execPath(): string {
    const now = this.identityOnDisk();
    if (this.copy && this.copy.from === now) return this.copy.path;
    if (now !== undefined) this.refresh();
    return this.path;
  }

  /** Closes the copy (berthd's shutdown; tests). */
  close(): void {
    this.closed = true;
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
