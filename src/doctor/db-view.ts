/**
 * The database as `berthd doctor` reads it: opened without migrating (read-only while
 * berthd runs: WAL lets a reader in beside the writer), and summed up through the
 * modules' own repositories into the sets of IDs the node scan is judged against.
 */
import Database from 'better-sqlite3';
import { BerthError, messageOf } from '../common/errors.js';
import { ContainerRepository } from '../containers/container-repository.js';
import { BlobRepository } from '../images/content/blob-repository.js';
import { SnapshotRepository } from '../images/snapshots/snapshot-repository.js';
import type { CniNetworkList } from '../sandbox/cni/conf-dir.js';
import { SandboxRepository } from '../sandbox/sandbox-repository.js';
import type { Db } from '../store/database.js';
import { MIGRATIONS } from '../store/migrations.js';

export interface DbView {
  /** Pod sandbox ID → state. */
  sandboxes: Map<string, string>;
  /** Container ID → state. */
  containers: Map<string, string>;
  /** Snapshot row id → kind. */
  snapshots: Map<string, string>;
  blobs: Set<string>;
  /** Blob rows no image references. */
  unreferencedBlobs: string[];
  /** The cgroup parents recorded on pods. */
  cgroupParents: Set<string>;
  /** The CNI network lists pods were attached with. */
  networks: CniNetworkList[];
  /** Live init pids of containers the database knows (container ID → pid). */
  containerPids: Map<string, number>;
}

/**
 * Opens `file` as it is: never creates, never migrates. Read-only unless `writable`
 * (only with berthd stopped and its lock held). A schema of another version than this
 * berthd's is refused: its repositories would misread it.
 */
export function openDoctorDb(file: string, writable: boolean): Db {
  let db: Db;
  try {
    db = new Database(file, { readonly: !writable, fileMustExist: true });
  } catch (err) {
    throw new BerthError('FailedPrecondition', `cannot open the database ${file}: ${messageOf(err)}`, { cause: err });
  }
  try {
    db.pragma('busy_timeout = 5000');
    if (writable) db.pragma('foreign_keys = ON');
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version !== MIGRATIONS.length) {
      throw new BerthError(
        'FailedPrecondition',
        `${file}: database schema version ${version}, this berthd knows ${MIGRATIONS.length}; ` +
          (version < MIGRATIONS.length ? 'start this berthd once to migrate it, then run doctor again' : 'run the berthd that wrote it'),
      );
    }
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

/** Reads what the database knows, in one read transaction (one consistent snapshot). */
export function readDbView(db: Db): DbView {
  return db.transaction(() => {
    const sandboxes = new SandboxRepository(db).list();
    const containers = new ContainerRepository(db).list();
    const snapshots = new SnapshotRepository(db).all();
    const blobs = new BlobRepository(db);
    const networks: CniNetworkList[] = [];
    for (const s of sandboxes) {
      const list = (s.network as { list?: CniNetworkList } | null)?.list;
      if (list && typeof list.name === 'string' && Array.isArray(list.plugins)) networks.push(list);
    }
    return {
      sandboxes: new Map(sandboxes.map((s) => [s.id, s.state])),
      containers: new Map(containers.map((c) => [c.id, c.state])),
      snapshots: new Map(snapshots.map((s) => [String(s.id), s.kind])),
      blobs: new Set(blobs.digests()),
      unreferencedBlobs: blobs.unreferenced(),
      cgroupParents: new Set(sandboxes.map((s) => s.facts.cgroupParent)),
      networks,
      containerPids: new Map(containers.filter((c) => c.pid !== null && c.pid > 0).map((c) => [c.id, c.pid!])),
    };
  })();
}

/** `PRAGMA integrity_check` and `foreign_key_check`: the problems found, none when sound. */
export function integrityProblems(db: Db): string[] {
  const rows = db.pragma('integrity_check') as Array<{ integrity_check: string }>;
  const problems = rows.map((r) => r.integrity_check).filter((m) => m !== 'ok');
  const fk = db.pragma('foreign_key_check') as Array<{ table: string; rowid: number; parent: string }>;
  for (const r of fk) problems.push(`${r.table} row ${r.rowid} names a missing ${r.parent} row`);
  return problems;
}

/** Deletes an orphaned blob's row (berthd stopped, --repair): the row first, as GC does. */
export function deleteBlobRow(db: Db, digest: string): void {
  new BlobRepository(db).delete(digest);
}
