/** The row documents the repositories read facts through, and the lazily read request field. */
import Database from 'better-sqlite3';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DATA_VERSION_COLUMN, RowDocuments, lazyJsonField, withChanges } from '../../../src/store/lazy-json.js';

describe('store: row documents', () => {
  let dir: string;
  let db: Database.Database;
  let other: Database.Database;
  let reads: number;
  let docs: RowDocuments<{ n: number; list: number[] }>;
  const write = (d: Database.Database, id: string, text: string): void => void d.prepare('INSERT OR REPLACE INTO t (id, doc) VALUES (?, ?)').run(id, text);
  /** PRAGMA data_version, as a repository reads it with its rows. */
  const version = (): number => db.prepare(`SELECT ${DATA_VERSION_COLUMN}`).pluck().get() as number;
  const get = (d: RowDocuments<unknown>, id: string): unknown => d.get(id, version());

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-rowdocs-'));
    db = new Database(join(dir, 'db'));
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE t (id TEXT PRIMARY KEY, doc TEXT NOT NULL)');
    other = new Database(join(dir, 'db'));
    reads = 0;
    const stmt = db.prepare<[string], string>('SELECT doc FROM t WHERE id = ?').pluck();
    docs = new RowDocuments(
      db,
      (id) => {
        reads++;
        return stmt.get(id);
      },
      (_id, text) => JSON.parse(text) as { n: number; list: number[] },
    );
  });

  afterEach(() => {
    other.close();
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads and parses a row once, again after this connection forgets it, and answers undefined for no row', () => {
    write(db, 'c1', '{"n":1,"list":[1]}');
    const a = get(docs, 'c1') as { n: number; list: number[] } | undefined;
    assert.deepEqual(a, { n: 1, list: [1] });
    assert.equal(get(docs, 'c1') as { n: number; list: number[] } | undefined, a);
    assert.equal(reads, 1);
    write(db, 'c1', '{"n":2,"list":[1]}');
    docs.forget('c1');
    assert.equal((get(docs, 'c1') as { n: number; list: number[] } | undefined)?.n, 2);
    assert.equal(reads, 2);
    assert.equal(get(docs, 'nope') as { n: number; list: number[] } | undefined, undefined);
  });

  it("reads afresh after another connection's commit (data_version)", () => {
    write(db, 'c1', '{"n":1,"list":[1]}');
    assert.equal((get(docs, 'c1') as { n: number; list: number[] } | undefined)?.n, 1);
    write(other, 'c1', '{"n":3,"list":[]}');
    assert.equal((get(docs, 'c1') as { n: number; list: number[] } | undefined)?.n, 3);
    other.prepare('DELETE FROM t WHERE id = ?').run('c1');
    assert.equal(get(docs, 'c1') as { n: number; list: number[] } | undefined, undefined);
  });

  it('hands out frozen documents: a change cannot leak into the next reader', () => {
    write(db, 'c1', '{"n":1,"list":[1,2]}');
    const f = (get(docs, 'c1') as { n: number; list: number[] } | undefined)!;
    assert.throws(() => {
      (f as { n: number }).n = 5;
    }, TypeError);
    assert.throws(() => f.list.push(3), TypeError);
    assert.deepEqual(get(docs, 'c1') as { n: number; list: number[] } | undefined, { n: 1, list: [1, 2] });
  });

  it('keeps nothing read inside a transaction: a rolled-back write is not answered afterwards', () => {
    const stmt = db.prepare<[string], string>('SELECT doc FROM t WHERE id = ?').pluck();
    const guarded = new RowDocuments(
      db,
      (id) => stmt.get(id),
      (_id, text) => JSON.parse(text) as number,
    );
    write(db, 'a', '1');
    assert.throws(
      db.transaction(() => {
        write(db, 'a', '2');
        guarded.forget('a');
        assert.equal(get(guarded, 'a'), 2);
        throw new Error('roll back');
      }),
      /roll back/,
    );
    assert.equal(get(guarded, 'a'), 1);
  });

  it('drops every entry when it holds its maximum, and still answers', () => {
    const stmt = db.prepare<[string], string>('SELECT doc FROM t WHERE id = ?').pluck();
    const small = new RowDocuments(
      db,
      (id) => (reads++, stmt.get(id)),
      (_id, text) => JSON.parse(text) as number,
      2,
    );
    for (const [id, n] of [
      ['a', 1],
      ['b', 2],
      ['c', 3],
    ] as const)
      write(db, id, String(n));
    get(small, 'a');
    get(small, 'b');
    get(small, 'c');
    assert.equal(get(small, 'c'), 3);
    assert.equal(reads, 3);
    assert.equal(get(small, 'a'), 1);
    assert.equal(reads, 4);
  });
});

describe('store: lazy JSON fields', () => {
  it('parses a lazy field on first read only, and takes a value set before', () => {
    const rec = lazyJsonField<{ id: string }, 'request', { x: number }>({ id: 'p' }, 'request', '{"x":1}');
    assert.deepEqual({ ...rec }, { id: 'p', request: { x: 1 } });
    const bad = lazyJsonField<{ id: string }, 'request', unknown>({ id: 'q' }, 'request', 'not json');
    bad.request = { y: 2 };
    assert.deepEqual(bad.request, { y: 2 });
    let loads = 0;
    const loaded = lazyJsonField<{ id: string }, 'request', { z: number }>({ id: 'r' }, 'request', () => (loads++, '{"z":3}'));
    assert.equal(loads, 0);
    assert.equal(loaded.request.z, 3);
    assert.equal(loaded.request.z, 3);
    assert.equal(loads, 1);
  });

  it('withChanges copies a record with its changes and leaves its lazy fields unread', () => {
    let loads = 0;
    const rec = lazyJsonField<{ id: string; state: string }, 'request', { z: number }>({ id: 'r', state: 'created' }, 'request', () => (loads++, '{"z":3}'));
    const next = withChanges(rec, { state: 'running' });
    assert.equal(loads, 0, 'no document read by the copy');
    assert.equal(next.state, 'running');
    assert.equal(rec.state, 'created', 'the record itself is unchanged');
    assert.equal(next.request.z, 3);
    assert.equal(loads, 1);
  });
});
