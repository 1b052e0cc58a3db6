import type { Db } from '../../store/database.js';

export interface BlobRow {
  digest: string;
  size: number;
  media_type: string;
  created_at: number;
}

/** The content store's rows: one per verified blob on disk. Owns `blobs`. */
export class BlobRepository {
  private readonly getStmt;
  private readonly insertStmt;
  private readonly deleteStmt;
  private readonly allStmt;
  private readonly unreferencedStmt;
  private readonly usageStmt;

  constructor(db: Db) {
    this.getStmt = db.prepare<[string], BlobRow>('SELECT * FROM blobs WHERE digest = ?');
    this.insertStmt = db.prepare<[string, number, string, number]>(
      'INSERT INTO blobs (digest, size, media_type, created_at) VALUES (?, ?, ?, ?) ON CONFLICT(digest) DO NOTHING',
    );
    this.deleteStmt = db.prepare<[string]>('DELETE FROM blobs WHERE digest = ?');
    this.allStmt = db.prepare<[], { digest: string }>('SELECT digest FROM blobs');
    this.unreferencedStmt = db.prepare<[], { digest: string }>(
      'SELECT digest FROM blobs WHERE NOT EXISTS (SELECT 1 FROM image_blobs WHERE image_blobs.digest = blobs.digest)',
    );
    this.usageStmt = db.prepare<[], { bytes: number; n: number }>('SELECT coalesce(sum(size), 0) AS bytes, count(*) AS n FROM blobs');
  }

  get(digest: string): BlobRow | undefined {
    return this.getStmt.get(digest);
  }

  insert(digest: string, size: number, mediaType: string): void {
    this.insertStmt.run(digest, size, mediaType, Date.now());
  }

  delete(digest: string): void {
    this.deleteStmt.run(digest);
  }

  digests(): string[] {
    return this.allStmt.all().map((r) => r.digest);
  }

  /** Blobs no image references (candidates for collection). */
  unreferenced(): string[] {
    return this.unreferencedStmt.all().map((r) => r.digest);
  }

  usage(): { bytes: number; count: number } {
    const r = this.usageStmt.get()!;
    return { bytes: r.bytes, count: r.n };
  }
}
