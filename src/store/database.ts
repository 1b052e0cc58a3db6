/**
 * The one SQLite database that is berth's single source of truth.
 *
 * - WAL journal, so readers never wait for the writer;
 * - foreign keys enforced;
 * - `synchronous=NORMAL`: a transaction that returned is in the OS's page cache (it
 *   survives a kill -9 of berthd); an acknowledged RPC survives a power cut too, because
 *   the CRI wrapper fdatasyncs the WAL off the event loop before answering (wal-sync.ts).
 *   FULL made every commit wait for an fsync on the main thread.
 *
 * better-sqlite3 is synchronous: never `await` inside a transaction.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { MIGRATIONS, type Migration } from './migrations.js';

export type Db = Database.Database;

export class SchemaTooNewError extends Error {
  constructor(file: string, found: number, known: number) {
    super(
      `${file}: database schema version ${found} is newer than this berthd knows (${known}); ` +
        'it was written by a newer berth: run that version, or restore a backup',
    );
    this.name = 'SchemaTooNewError';
  }
}

export interface OpenOptions {
  /** Migrations to apply; tests pass a prefix of the list to build old versions. */
  migrations?: readonly Migration[];
}

/** Opens (creating if needed) the database at `file` and brings its schema up to date. */
export function openDatabase(file: string, opts: OpenOptions = {}): Db {
  if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const db = new Database(file);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    migrate(db, file, opts.migrations ?? MIGRATIONS);
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

/** The schema version recorded in the database (0 for a new file). */
export function schemaVersion(db: Db): number {
  return db.pragma('user_version', { simple: true }) as number;
}

function migrate(db: Db, file: string, migrations: readonly Migration[]): void {
  const known = migrations.length;
  const current = schemaVersion(db);
  if (current > known) throw new SchemaTooNewError(file, current, known);
  for (const m of migrations.slice(current)) {
    // Each migration and its version bump commit together, or not at all.
    db.transaction(() => {
      m.up(db);
      db.pragma(`user_version = ${m.version}`);
    })();
  }
}
