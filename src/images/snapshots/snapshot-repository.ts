import { tracedSync } from '../../common/trace-points.js';
import type { Db } from '../../store/database.js';

export interface SnapshotRow {
  id: number;
  key: string | null;
  parent_id: number | null;
  kind: 'preparing' | 'committed' | 'active';
  size_bytes: number;
  inodes: number;
  created_at: number;
}

/** Rows of the snapshotter. Owns `snapshots`. */
export class SnapshotRepository {
  private readonly byKey;
  private readonly byId;
  private readonly insertPreparing;
  private readonly commitStmt;
  private readonly deleteStmt;
  private readonly allStmt;
  private readonly usageStmt;
  private readonly referencedKeysStmt;

  constructor(private readonly db: Db) {
    this.byKey = db.prepare<[string], SnapshotRow>('SELECT * FROM snapshots WHERE key = ?');
    this.byId = db.prepare<[number], SnapshotRow>('SELECT * FROM snapshots WHERE id = ?');
    this.insertPreparing = db.prepare<[number]>("INSERT INTO snapshots (kind, created_at) VALUES ('preparing', ?)");
    this.commitStmt = db.prepare<[string, number | null, number, number, number]>(
      "UPDATE snapshots SET kind = 'committed', key = ?, parent_id = ?, size_bytes = ?, inodes = ? WHERE id = ? AND kind = 'preparing'",
    );
    this.deleteStmt = db.prepare<[number]>('DELETE FROM snapshots WHERE id = ?');
    this.allStmt = db.prepare<[], SnapshotRow>('SELECT * FROM snapshots');
    this.usageStmt = db.prepare<[], { bytes: number; inodes: number }>(
      'SELECT coalesce(sum(size_bytes), 0) AS bytes, coalesce(sum(inodes), 0) AS inodes FROM snapshots',
    );
    // An image mounted as a volume keeps its layers even should its image row go.
    this.referencedKeysStmt = db.prepare<[], { chain_id: string }>('SELECT chain_id FROM image_layers UNION SELECT chain_id FROM image_volumes');
  }

  get(key: string): SnapshotRow | undefined {
    return this.byKey.get(key);
  }

  getById(id: number): SnapshotRow | undefined {
    return this.byId.get(id);
  }

  /** Records a container's writable snapshot on `parentId`; returns its id. */
  prepareActive(key: string, parentId: number): number {
    return Number(
      this.db
        .prepare<[string, number, number]>("INSERT INTO snapshots (kind, key, parent_id, created_at) VALUES ('active', ?, ?, ?)")
        .run(key, parentId, Date.now()).lastInsertRowid,
    );
  }

  /** Records the intent to build a snapshot; returns its id (its directory name). */
  prepare(): number {
    return Number(this.insertPreparing.run(Date.now()).lastInsertRowid);
  }

  commit(id: number, key: string, parentId: number | null, sizeBytes: number, inodes: number): void {
    const r = this.commitStmt.run(key, parentId, sizeBytes, inodes, id);
    if (r.changes !== 1) throw new Error(`snapshot ${id} was not preparing`);
  }

  delete(id: number): void {
    this.deleteStmt.run(id);
  }

  all(): SnapshotRow[] {
    return this.allStmt.all();
  }

  /** Chain IDs some image lists as one of its layers, or a container mounts as an image volume's top. */
  referencedByImages(): Set<string> {
    return new Set(this.referencedKeysStmt.all().map((r) => r.chain_id));
  }

  usage(): { bytes: number; inodes: number } {
    return this.usageStmt.get()!;
  }

  transaction<T>(fn: () => T): T {
    return tracedSync('berth:db.write', { table: 'snapshots' }, this.db.transaction(fn));
  }
}
