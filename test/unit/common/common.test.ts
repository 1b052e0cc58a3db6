import assert from 'node:assert/strict';
import { parseCidr } from '../../../src/common/cidr.js';
import { DisposableStack } from '../../../src/common/disposable.js';
import { findByIdOrPrefix } from '../../../src/common/id-prefix.js';
import { KeyedLock } from '../../../src/common/keyed-lock.js';
import { createLogger, redact } from '../../../src/common/logger.js';
import { LruMap } from '../../../src/common/lru.js';

describe('common', () => {
  it('parseCidr accepts IPv4 and IPv6 prefixes and nothing else', () => {
    assert.deepEqual(parseCidr('10.88.0.0/16'), { address: '10.88.0.0', prefix: 16, family: 4 });
    assert.deepEqual(parseCidr('fd00:1::/64'), { address: 'fd00:1::', prefix: 64, family: 6 });
    for (const bad of ['10.88.0.0', '10.88.0.0/33', 'fd00::/129', '10.0.0.0/8/8', 'x/8', '/8', '10.0.0.0/-1', '10.0.0.0/ 8', '']) {
      assert.equal(parseCidr(bad), undefined, bad);
    }
  });

  it('LruMap keeps at most max entries, pushes out the least recently used (get and set count as use), and says which', () => {
    const out: Array<[string, number]> = [];
    const m = new LruMap<string, number>(2, (k, v) => out.push([k, v]));
    m.set('a', 1).set('b', 2);
    assert.equal(m.get('a'), 1);
    m.set('c', 3);
    assert.deepEqual(out, [['b', 2]]);
    assert.equal(m.has('b'), false);
    m.set('a', 10);
    m.set('d', 4);
    assert.deepEqual(out, [
      ['b', 2],
      ['c', 3],
    ]);
    assert.deepEqual([...m.values()], [10, 4]);
    assert.equal(m.size, 2);
    assert.equal(m.get('zz'), undefined);
    assert.throws(() => new LruMap(0), RangeError);
  });

  it('the logger never writes credentials', () => {
    const lines: string[] = [];
    const log = createLogger('debug', (l) => lines.push(l));
    log.info('pull', { image: 'busybox', auth: { username: 'u', password: 'hunter2', identity_token: 'tok' }, registry_token: 'abc' });
    const rec = JSON.parse(lines[0]!);
    assert.equal(rec.image, 'busybox');
    assert.equal(rec.auth, '[redacted]');
    assert.equal(rec.registry_token, '[redacted]');
    assert.ok(!lines[0]!.includes('hunter2') && !lines[0]!.includes('tok"'));
    assert.deepEqual(redact({ nested: [{ password: 'p', user: 'u' }] }), { nested: [{ password: '[redacted]', user: 'u' }] });
  });

  it('the logger filters by level and adds child fields', () => {
    const lines: string[] = [];
    const log = createLogger('warn', (l) => lines.push(l)).child({ component: 'x' });
    log.info('hidden');
    log.warn('shown', { n: 1 });
    assert.equal(lines.length, 1);
    const rec = JSON.parse(lines[0]!);
    assert.equal(rec.level, 'warn');
    assert.equal(rec.component, 'x');
    assert.equal(rec.n, 1);
  });

  it('DisposableStack undoes in reverse order, runs every step, and move() hands them over', async () => {
    const order: string[] = [];
    const stack = new DisposableStack();
    stack.defer(() => void order.push('a'));
    stack.defer(() => {
      order.push('b');
      throw new Error('b failed');
    });
    stack.defer(async () => void order.push('c'));
    await assert.rejects(stack.dispose(), /b failed/);
    assert.deepEqual(order, ['c', 'b', 'a']);

    const kept = new DisposableStack();
    kept.defer(() => void order.push('moved'));
    const owner = kept.move();
    await kept.dispose();
    assert.ok(!order.includes('moved'));
    await owner.dispose();
    assert.ok(order.includes('moved'));
  });

  it('KeyedLock runs one operation at a time per key, others freely, and survives failures', async () => {
    const lock = new KeyedLock();
    const order: string[] = [];
    const step =
      (name: string, gate: Promise<unknown> = Promise.resolve(), fail = false) =>
      async () => {
        order.push(`${name}+`);
        await gate;
        order.push(`${name}-`);
        if (fail) throw new Error(name);
      };
    // a1 holds key a until b1, on another key, has run to its end.
    let bDone!: () => void;
    const afterB = new Promise<void>((r) => (bDone = r));
    const runs = [lock.run('a', step('a1', afterB, true)), lock.run('a', step('a2')), lock.run('b', step('b1')).finally(bDone)];
    await Promise.allSettled(runs);
    assert.deepEqual(order, ['a1+', 'b1+', 'b1-', 'a1-', 'a2+', 'a2-']);
  });

  it('findByIdOrPrefix takes full ids and unique prefixes of 3+ hex digits only', () => {
    const ids = ['abc123', 'abd456', 'ffff00'];
    const get = (id: string) => (ids.includes(id) ? id : undefined);
    const pre = (p: string) => ids.filter((i) => i.startsWith(p));
    assert.equal(findByIdOrPrefix('abd456', get, pre), 'abd456');
    assert.equal(findByIdOrPrefix('abd', get, pre), 'abd456');
    assert.equal(findByIdOrPrefix('ab', get, pre), undefined, 'too short');
    assert.equal(findByIdOrPrefix('abz', get, pre), undefined, 'not hex');
    assert.equal(findByIdOrPrefix('fff', get, pre), 'ffff00');
    assert.equal(findByIdOrPrefix('a', get, pre), undefined);
  });
});
