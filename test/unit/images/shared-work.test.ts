import assert from 'node:assert/strict';
import { isKind } from '../../../src/common/errors.js';
import { SharedWork } from '../../../src/images/shared-work.js';

/** Work that runs until its signal aborts, recording when it started and stopped. */
function endless(log: string[], name: string): (signal: AbortSignal) => Promise<string> {
  return (signal) =>
    new Promise((_, reject) => {
      log.push(`start ${name}`);
      signal.addEventListener('abort', () => {
        log.push(`stop ${name}`);
        setImmediate(() => reject(signal.reason));
      });
    });
}

describe('images: SharedWork', () => {
  it('runs once for all callers and keeps going while one still waits', async () => {
    const lifetime = new AbortController();
    const work = new SharedWork(lifetime.signal);
    const log: string[] = [];
    let finish!: (v: string) => void;
    const a = new AbortController();
    const x = work.join('k', a.signal, () => new Promise<string>((r) => ((finish = r), log.push('start'))));
    const y = work.join('k', undefined, () => Promise.resolve('second start'));
    a.abort(new Error('caller a left'));
    await assert.rejects(x.caller, /caller a left/);
    finish('done');
    assert.equal(await y.caller, 'done');
    assert.deepEqual(log, ['start']);
    await work.idle();
  });

  it('aborts the work at once when the last caller leaves, and a later caller starts afresh after it cleaned up', async () => {
    const work = new SharedWork(new AbortController().signal);
    const log: string[] = [];
    const a = new AbortController();
    const b = new AbortController();
    const x = work.join('k', a.signal, endless(log, 'one'));
    const y = work.join('k', b.signal, endless(log, 'never'));
    await Promise.resolve();
    a.abort(new Error('a'));
    await assert.rejects(x.caller, /^Error: a$/);
    assert.deepEqual(log, ['start one'], 'one caller still waits');
    b.abort(new Error('b'));
    assert.deepEqual(log, ['start one', 'stop one'], 'stopped synchronously with the last departure');
    await assert.rejects(y.caller, /^Error: b$/);
    await assert.rejects(x.shared, (err: unknown) => isKind(err, 'Cancelled'));
    const z = work.join('k', undefined, async () => 'fresh');
    assert.equal(await z.caller, 'fresh');
    await work.idle();
  });

  it('a caller already gone never starts anything alone; shutdown stops everything', async () => {
    const lifetime = new AbortController();
    const work = new SharedWork(lifetime.signal);
    const log: string[] = [];
    const gone = AbortSignal.abort(new Error('gone'));
    await assert.rejects(work.join('a', gone, endless(log, 'a')).caller, /gone/);
    const kept = work.join('b', undefined, endless(log, 'b'));
    await new Promise((r) => setImmediate(r));
    lifetime.abort(new Error('shutdown'));
    await assert.rejects(kept.caller, /shutdown/);
    await work.idle();
    assert.ok(!log.includes('start a'), `nothing ran for a caller that was gone: ${log.join(', ')}`);
  });
});
