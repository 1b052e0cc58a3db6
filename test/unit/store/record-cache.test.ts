/** The record cache the repositories answer status and list reads from. */
import Database from 'better-sqlite3';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RecordCache } from '../../../src/store/record-cache.js';

interface Rec {
  id: string;
  n: number;
}

describe('store: record cache', () => {
  let dir: string;
  let db: Database.Database;
  let other: Database.Database;
  let reads: number;
  let cache: RecordCache<Rec>;
  const write = (d: Database.Database, id: string, n: number): void => void d.prepare('INSERT OR REPLACE INTO t (id, n) VALUES (?, ?)').run(id, n);
  const read = (id: string): Rec | undefined => {
    reads++;
    return db.prepare<[string], Rec>('SELECT id, n FROM t WHERE id = ?').get(id);
  };
  const readAll = (): Rec[] => {
    reads++;
    return db.prepare<[], Rec>('SELECT id, n FROM t ORDER BY id').all();
  };

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-recordcache-'));
    db = new Database(join(dir, 'db'));
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER NOT NULL)');
    other = new Database(join(dir, 'db'));
    reads = 0;
    cache = new RecordCache<Rec>(db, 4096, 0);
  });

  afterEach(() => {
    other.close();
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads a record once and hands out the same one until it is forgotten; a missing row is not kept', () => {
    write(db, 'a', 1);
    const r = cache.get('a', read);
    assert.deepEqual(r, { id: 'a', n: 1 });
    assert.equal(cache.get('a', read), r);
    assert.equal(reads, 1);
    cache.forget('a');
    write(db, 'a', 2);
    assert.deepEqual(cache.get('a', read), { id: 'a', n: 2 });
    assert.equal(reads, 2);
    assert.equal(cache.get('b', read), undefined);
    assert.equal(cache.get('b', read), undefined);
    assert.equal(reads, 4);
  });

  it('keeps the list until any record is forgotten, and hands out copies of it', () => {
    write(db, 'a', 1);
    write(db, 'b', 2);
    const l1 = cache.all(readAll);
    l1.pop();
    const l2 = cache.all(readAll);
    assert.deepEqual(l2, [
      { id: 'a', n: 1 },
      { id: 'b', n: 2 },
    ]);
    assert.equal(reads, 1);
    assert.notEqual(l2, cache.all(readAll));
    cache.forget('b');
    write(db, 'b', 3);
    assert.deepEqual(cache.all(readAll), [
      { id: 'a', n: 1 },
      { id: 'b', n: 3 },
    ]);
    assert.equal(reads, 2);
  });

  it('keeps nothing read inside a transaction (it could roll back)', () => {
    write(db, 'a', 1);
    assert.throws(
      db.transaction(() => {
        cache.forget('a');
        write(db, 'a', 5);
        assert.deepEqual(cache.get('a', read), { id: 'a', n: 5 });
        assert.deepEqual(cache.all(readAll), [{ id: 'a', n: 5 }]);
        throw new Error('roll back');
      }),
      /roll back/,
    );
    assert.deepEqual(cache.get('a', read), { id: 'a', n: 1 });
    assert.deepEqual(cache.all(readAll), [{ id: 'a', n: 1 }]);
    assert.equal(reads, 4);
  });

  it("empties itself when another connection commits (PRAGMA data_version), not on this connection's own writes", () => {
    write(db, 'a', 1);
    cache.get('a', read);
    cache.all(readAll);
    write(db, 'b', 1);
    cache.get('a', read);
    cache.all(readAll);
    assert.equal(reads, 2);
    write(other, 'a', 9);
    assert.deepEqual(cache.get('a', read), { id: 'a', n: 9 });
    assert.deepEqual(cache.all(readAll), [
      { id: 'a', n: 9 },
      { id: 'b', n: 1 },
    ]);
    assert.equal(reads, 4);
  });

  it('looks for commits of other connections at most as often as it was told', async () => {
    const slow = new RecordCache<Rec>(db, 4096, 200);
    write(db, 'a', 1);
    slow.get('a', read);
    write(other, 'a', 9);
    assert.deepEqual(slow.get('a', read), { id: 'a', n: 1 }, 'within the interval: the kept record');
    await new Promise((r) => setTimeout(r, 250));
    assert.deepEqual(slow.get('a', read), { id: 'a', n: 9 });
    assert.equal(reads, 2);
  });

  it('drops everything when it reaches its bound', () => {
    const small = new RecordCache<Rec>(db, 2, 0);
    for (const id of ['a', 'b', 'c']) write(db, id, 1);
    small.get('a', read);
    small.get('b', read);
    small.get('c', read);
    assert.equal(reads, 3);
    small.get('c', read);
    assert.equal(reads, 3);
    small.get('a', read);
    assert.equal(reads, 4);
  });
});
