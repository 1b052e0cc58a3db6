/**
 * Durable acknowledgements without stopping the event loop.
 *
 * better-sqlite3 commits on the main thread; with `synchronous=FULL` every commit waited
 * for an fsync there (6.6 ms each on this kind of VM, measured), and a pod with two
 * containers commits about 30 times over its life: under a churn the event loop stood
 * still for most of its time and every other call (status, list) queued behind it.
 *
 * So the database runs with `synchronous=NORMAL` (WAL: a commit is in the OS's page cache
 * when it returns, which survives a berthd crash or kill -9; SQLite still syncs at each
 * checkpoint), and the durability of an *acknowledgement* is restored here: before an RPC
 * answers, {@link WalSync.sync} fdatasyncs the WAL file on the libuv pool, so what the
 * answer reports is on disk as it was with FULL. Concurrent callers share one fdatasync
 * (group commit); a call that changed nothing, and found nothing unsynced, costs one
 * `total_changes()` read.
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { Db } from './database.js';

export class WalSync {
  private readonly totalChanges: () => number;
  /** total_changes() covered by the last completed fdatasync. */
  private synced = 0;
  private running: Promise<void> | undefined;
  private handle: FileHandle | undefined;
  private closed = false;

  constructor(
    db: Db,
    /** The database's WAL file (`<file>-wal`). */
    private readonly walFile: string,
  ) {
    const stmt = db.prepare('SELECT total_changes() AS n').pluck();
    this.totalChanges = () => stmt.get() as number;
    this.synced = this.totalChanges();
  }

  /** Resolves once every commit made before the call has reached the disk. */
  async sync(): Promise<void> {
    const target = this.totalChanges();
    while (this.synced < target && !this.closed) {
      if (this.running) {
        await this.running;
        continue;
      }
      this.running = this.flush().finally(() => (this.running = undefined));
      await this.running;
    }
  }

  private async flush(): Promise<void> {
    // Commits made from here on may or may not be covered: count only those before.
    const upTo = this.totalChanges();
    this.handle ??= await open(this.walFile, 'r+');
    await this.handle.datasync();
    this.synced = Math.max(this.synced, upTo);
  }

  /** Waits for a sync in flight, then closes the WAL file (before the database closes). */
  async close(): Promise<void> {
    this.closed = true;
    await this.running?.catch(() => undefined);
    await this.handle?.close();
    this.handle = undefined;
  }
}
