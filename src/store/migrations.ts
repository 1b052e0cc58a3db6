/**
 * Numbered schema migrations, applied in order inside one transaction each; the
 * database's `user_version` records how many have been applied. Rules:
 * - append only: a released migration is never edited, a fix is a new migration;
 * - `version` equals the position in the list, starting at 1;
 * - every migration has a test in test/unit/store/migrations.test.ts;
 * - the tables are documented in SCHEMA.md.
 */
import type Database from 'better-sqlite3';

export interface Migration {
  version: number;
  name: string;
  up(db: Database.Database): void;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'runtime settings',
    up(db) {
      db.exec(`
        CREATE TABLE runtime_settings (
          key        TEXT PRIMARY KEY NOT NULL,
          value      TEXT NOT NULL,
          updated_at INTEGER NOT NULL
        ) STRICT;
      `);
    },
  },
];
