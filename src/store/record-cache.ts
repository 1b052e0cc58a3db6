/**
 * Records of a table's rows kept in memory between changes, so that the status and list
 * RPCs kubelet's PLEG makes every second for every pod and container answer without a
 * SQLite statement per row (a row read cost ~35 µs here, most of what such a call does
 * besides gRPC itself).
 *
 * It stays true because:
 * - the owning repository, the only writer of its table on this connection, calls
 *   {@link RecordCache.forget} (or {@link RecordCache.clear}) before each write;
 * - nothing read inside a transaction is kept (the transaction could still roll back, or
 *   see its own uncommitted writes);
 * - a commit of another connection changes `PRAGMA data_version`, which empties the
 *   cache. None is expected (berthd holds its root's lock, and `berthd doctor` opens the
 *   database read-only while berthd runs), so it is read at most once a second: the
 *   statement cost about as much as the row read it saves when read with every record.
 * Records handed out are shared, so callers treat them as read-only (a change is a new
 * record made by the repository, as `withChanges` does); lists are handed out as copies.
 */
import type { Db } from './database.js';

export class RecordCache<R> {
  private readonly byId = new Map<string, R>();
  private listed: R[] | undefined;
  private version: number | undefined;
  /** When `PRAGMA data_version` was last read (ms, performance.now()). */
  private checkedAt = -Infinity;
  private readonly versionStmt;

  constructor(
    private readonly db: Db,
    /** Records kept at most; all are dropped when it is reached. */
    private readonly max = 4096,
    /** How long another connection's commit may go unseen (ms). */
    private readonly checkEveryMs = 1000,
  ) {
    this.versionStmt = db.prepare<[], number>('PRAGMA data_version').pluck();
  }

  /** Empties the cache when another connection committed since the last check. */
  private check(): void {
    const now = performance.now();
    if (now - this.checkedAt < this.checkEveryMs) return;
    this.checkedAt = now;
    const v = this.versionStmt.get();
    if (v !== this.version) {
      this.byId.clear();
      this.listed = undefined;
      this.version = v;
    }
  }

  /** The record of `id`: the kept one, else `read(id)` (kept when read outside a transaction). */
  get(id: string, read: (id: string) => R | undefined): R | undefined {
    this.check();
    const hit = this.byId.get(id);
    if (hit !== undefined) return hit;
    const rec = read(id);
    if (rec !== undefined && !this.db.inTransaction) {
      if (this.byId.size >= this.max) this.byId.clear();
      this.byId.set(id, rec);
    }
    return rec;
  }

  /** Every record (a copy of the kept list, else `read()`, kept when read outside a transaction). */
  all(read: () => R[]): R[] {
    this.check();
    if (this.listed !== undefined) return this.listed.slice();
    const recs = read();
    if (!this.db.inTransaction) this.listed = recs.slice();
    return recs;
  }

  /** The row `id` is about to be written or deleted (call before the write, inside its transaction). */
  forget(id: string): void {
    this.byId.delete(id);
    this.listed = undefined;
  }

  /** Any row may change (a write of many rows). */
  clear(): void {
    this.byId.clear();
    this.listed = undefined;
  }
}
