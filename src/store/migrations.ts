/**
 * Numbered schema migrations, applied in order inside one transaction each; the
 * database's `user_version` records how many have been applied. Rules:
 * - append only: a released migration is never edited, a fix is a new migration;
 * - `version` equals the position in the list, starting at 1;
 * - every migration has a test in test/unit/store/migrations.test.ts;
 * - the tables are documented in SCHEMA.md.
 */
import type Database from 'better-sqlite3';
import { containerFactsV1, podFactsV1 } from './typed-records-v6.js';

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
  {
    version: 2,
    name: 'images: blobs, snapshots, images and their names and layers',
    up(db) {
      db.exec(`
        CREATE TABLE blobs (
          digest     TEXT PRIMARY KEY NOT NULL,
          size       INTEGER NOT NULL,
          media_type TEXT NOT NULL,
          created_at INTEGER NOT NULL
        ) STRICT;

        CREATE TABLE snapshots (
          id         INTEGER PRIMARY KEY AUTOINCREMENT,
          key        TEXT UNIQUE,
          parent_id  INTEGER REFERENCES snapshots(id),
          kind       TEXT NOT NULL CHECK (kind IN ('preparing', 'committed', 'active')),
          size_bytes INTEGER NOT NULL DEFAULT 0,
          inodes     INTEGER NOT NULL DEFAULT 0,
          created_at INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX snapshots_by_parent ON snapshots(parent_id);

        CREATE TABLE images (
          id              TEXT PRIMARY KEY NOT NULL,
          manifest_digest TEXT NOT NULL,
          config          TEXT NOT NULL,
          size            INTEGER NOT NULL,
          pinned          INTEGER NOT NULL DEFAULT 0,
          created_at      INTEGER NOT NULL
        ) STRICT;

        CREATE TABLE image_names (
          name     TEXT PRIMARY KEY NOT NULL,
          kind     TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
          image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
        ) STRICT;
        CREATE INDEX image_names_by_image ON image_names(image_id);

        CREATE TABLE image_blobs (
          image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
          digest   TEXT NOT NULL REFERENCES blobs(digest),
          PRIMARY KEY (image_id, digest)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX image_blobs_by_digest ON image_blobs(digest);

        CREATE TABLE image_layers (
          image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
          idx         INTEGER NOT NULL,
          blob_digest TEXT NOT NULL,
          diff_id     TEXT NOT NULL,
          chain_id    TEXT NOT NULL REFERENCES snapshots(key),
          PRIMARY KEY (image_id, idx)
        ) STRICT;
        CREATE INDEX image_layers_by_chain ON image_layers(chain_id);
      `);
    },
  },
  {
    version: 3,
    name: 'pod sandboxes',
    up(db) {
      db.exec(`
        CREATE TABLE sandboxes (
          id              TEXT PRIMARY KEY NOT NULL,
          name            TEXT NOT NULL,
          namespace       TEXT NOT NULL,
          uid             TEXT NOT NULL,
          attempt         INTEGER NOT NULL,
          state           TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'notready', 'removing')),
          config          TEXT NOT NULL,
          runtime_handler TEXT NOT NULL,
          ns_dir          TEXT,
          network         TEXT,
          ips             TEXT NOT NULL DEFAULT '[]',
          acknowledged    INTEGER NOT NULL DEFAULT 0,
          created_at      TEXT NOT NULL,
          UNIQUE (name, namespace, uid, attempt)
        ) STRICT;
      `);
    },
  },
  {
    version: 4,
    name: 'containers',
    up(db) {
      db.exec(`
        CREATE TABLE containers (
          id          TEXT PRIMARY KEY NOT NULL,
          sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id),
          name        TEXT NOT NULL,
          attempt     INTEGER NOT NULL,
          image_id    TEXT NOT NULL,
          image_ref   TEXT NOT NULL,
          state       TEXT NOT NULL CHECK (state IN ('creating', 'created', 'running', 'exited', 'unknown', 'removing')),
          config      TEXT NOT NULL,
          log_path    TEXT NOT NULL,
          pid         INTEGER,
          shim_pid    INTEGER,
          exit_code   INTEGER,
          reason      TEXT NOT NULL DEFAULT '',
          message     TEXT NOT NULL DEFAULT '',
          created_at  TEXT NOT NULL,
          started_at  TEXT NOT NULL DEFAULT '0',
          finished_at TEXT NOT NULL DEFAULT '0',
          UNIQUE (sandbox_id, name, attempt)
        ) STRICT;
        CREATE INDEX containers_by_sandbox ON containers(sandbox_id);
      `);
    },
  },
  {
    version: 5,
    name: 'image volumes',
    up(db) {
      db.exec(`
        CREATE TABLE image_volumes (
          container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
          idx          INTEGER NOT NULL,
          image_id     TEXT NOT NULL,
          chain_id     TEXT NOT NULL,
          PRIMARY KEY (container_id, idx)
        ) STRICT;
        CREATE INDEX image_volumes_by_image ON image_volumes(image_id);
      `);
    },
  },
  {
    version: 6,
    name: 'typed records: the facts of pods and containers decided at creation',
    up(db) {
      db.exec(`
        ALTER TABLE sandboxes ADD COLUMN facts TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE containers ADD COLUMN facts TEXT NOT NULL DEFAULT '{}';
      `);
      const setPod = db.prepare<[string, string]>('UPDATE sandboxes SET facts = ? WHERE id = ?');
      for (const r of db.prepare<[], { id: string; name: string; config: string }>('SELECT id, name, config FROM sandboxes').all()) {
        setPod.run(JSON.stringify(podFactsV1(JSON.parse(r.config) as Record<string, unknown>, r.name)), r.id);
      }
      const setContainer = db.prepare<[string, string]>('UPDATE containers SET facts = ? WHERE id = ?');
      for (const r of db.prepare<[], { id: string; config: string }>('SELECT id, config FROM containers').all()) {
        setContainer.run(JSON.stringify(containerFactsV1(JSON.parse(r.config) as Record<string, unknown>)), r.id);
      }
    },
  },
];
