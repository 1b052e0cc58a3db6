/** The parsed-document cache the repositories read facts through, and the lazily parsed request field. */
import assert from 'node:assert/strict';
import { ParsedJsonCache, lazyJsonField } from '../../../src/store/lazy-json.js';

describe('store: parsed JSON documents', () => {
  it('parses a row once while its text stays the same, and afresh when it changes', () => {
    let parses = 0;
    const cache = new ParsedJsonCache((_id, text) => {
      parses++;
      return JSON.parse(text) as { n: number; list: number[] };
    });
    const a = cache.get('c1', '{"n":1,"list":[1]}');
    assert.equal(cache.get('c1', '{"n":1,"list":[1]}'), a);
    assert.equal(parses, 1);
    const b = cache.get('c1', '{"n":2,"list":[1]}');
    assert.equal(b.n, 2);
    assert.equal(parses, 2);
    // Another row with the same text is a document of its own.
    assert.notEqual(cache.get('c2', '{"n":2,"list":[1]}'), b);
    cache.delete('c1');
    cache.get('c1', '{"n":2,"list":[1]}');
    assert.equal(parses, 4);
  });

  it('hands out frozen documents: a change cannot leak into the next reader', () => {
    const cache = new ParsedJsonCache((_id, text) => JSON.parse(text) as { labels: Record<string, string>; list: number[] });
    const f = cache.get('c1', '{"labels":{"a":"1"},"list":[1,2]}');
    assert.throws(() => {
      (f.labels as Record<string, string>).a = '2';
    }, TypeError);
    assert.throws(() => f.list.push(3), TypeError);
    assert.deepEqual(cache.get('c1', '{"labels":{"a":"1"},"list":[1,2]}'), { labels: { a: '1' }, list: [1, 2] });
  });

  it('drops every entry when it holds its maximum, and still answers', () => {
    let parses = 0;
    const cache = new ParsedJsonCache((_id, text) => {
      parses++;
      return JSON.parse(text) as number;
    }, 2);
    cache.get('a', '1');
    cache.get('b', '2');
    cache.get('c', '3');
    assert.equal(cache.get('c', '3'), 3);
    assert.equal(parses, 3);
    assert.equal(cache.get('a', '1'), 1);
    assert.equal(parses, 4);
  });

  it('parses a lazy field on first read only, and takes a value set before', () => {
    const rec = lazyJsonField<{ id: string }, 'request', { x: number }>({ id: 'p' }, 'request', '{"x":1}');
    assert.deepEqual({ ...rec }, { id: 'p', request: { x: 1 } });
    const bad = lazyJsonField<{ id: string }, 'request', unknown>({ id: 'q' }, 'request', 'not json');
    bad.request = { y: 2 };
    assert.deepEqual(bad.request, { y: 2 });
  });
});
