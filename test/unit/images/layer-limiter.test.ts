/**
 * The layer download limiter (layer-task.ts): at most n at once, the heaviest waiting
 * task first, tasks asked for in one tick competing by weight, equals in order; a task
 * may give its place back before it ends.
 */
import assert from 'node:assert/strict';
import { Limiter } from '../../../src/images/layer-task.js';

describe('images: layer download limiter', () => {
  /** Runs tasks of these weights through a limiter of `n`, asked for in one tick; the order they start in. */
  async function order(n: number, weights: number[]): Promise<{ started: string[]; most: number }> {
    const limiter = new Limiter(n);
    const started: string[] = [];
    let running = 0;
    let most = 0;
    await Promise.all(
      weights.map((w, i) =>
        limiter.run(async () => {
          started.push(`${i}:${w}`);
          most = Math.max(most, ++running);
          await new Promise((r) => setTimeout(r, 5 + (i % 3)));
          running--;
        }, w),
      ),
    );
    return { started, most };
  }

  it('starts the heaviest first, never more than n at once', async () => {
    const r = await order(2, [1, 5, 3, 4, 2]);
    assert.deepEqual(r.started, ['1:5', '3:4', '2:3', '4:2', '0:1']);
    assert.equal(r.most, 2);
  });

  it('keeps the order asked in among equal weights, and runs all when n is large', async () => {
    assert.deepEqual((await order(1, [7, 7, 7, 9])).started, ['3:9', '0:7', '1:7', '2:7']);
    const wide = await order(10, [1, 2, 3]);
    assert.equal(wide.most, 3);
    assert.deepEqual(wide.started, ['2:3', '1:2', '0:1']);
  });

  it('a task that fails gives its place back', async () => {
    const limiter = new Limiter(1);
    const failing = limiter.run(() => Promise.reject(new Error('test: failed')), 2);
    const next = limiter.run(() => Promise.resolve('ran'), 1);
    await assert.rejects(failing, /test: failed/);
    assert.equal(await next, 'ran');
  });

  it('a task that releases its place early lets the next start while it still runs, and counts once', async () => {
    const limiter = new Limiter(1);
    const events: string[] = [];
    let finishFirst!: () => void;
    const first = limiter.run(async (release) => {
      events.push('first: start');
      release();
      release(); // a second release changes nothing
      await new Promise<void>((r) => (finishFirst = r));
      events.push('first: end');
    }, 2);
    const second = limiter.run(async () => {
      events.push('second: start');
      await new Promise((r) => setTimeout(r, 5));
      events.push('second: end');
    }, 1);
    const third = limiter.run(async () => {
      events.push('third: start');
    }, 0);
    await second;
    // The second ran while the first still held on; the third waited for the second, not
    // for a place the first's double release would have made.
    assert.deepEqual(events, ['first: start', 'second: start', 'second: end', 'third: start']);
    finishFirst();
    await Promise.all([first, third]);
    assert.deepEqual(events.slice(-1), ['first: end']);
  });
});
