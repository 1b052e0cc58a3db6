/**
 * The unpack worker pool: layers unpack on worker threads, and workers that stay idle
 * are terminated (each is a V8 isolate whose heap and malloc arena would otherwise stay
 * in berthd's RSS after a pull), then come back on the next job.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UnpackPool } from '../../../../src/images/snapshots/unpack-pool.js';
import { compress, LAYER, makeTar } from '../../../helpers/tar-layers.js';
import { until } from '../../../helpers/berthd.js';

describe('UnpackPool', function () {
  this.timeout(60_000);
  let dir: string;
  let pool: UnpackPool | undefined;

  beforeEach(() => {
    dir = fs.mkdtempSync(join(tmpdir(), 'berth-unpack-pool-'));
  });
  afterEach(async () => {
    await pool?.close();
    pool = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A gzip layer blob in the temp dir, and the diff ID it must unpack to. */
  async function blob(name: string, content: string): Promise<{ path: string; diffId: string }> {
    const raw = await makeTar([{ header: { name: 'etc', type: 'directory' } }, { header: { name: 'etc/greeting' }, content }]);
    const path = join(dir, `${name}.tar.gz`);
    fs.writeFileSync(path, compress(raw, 'gzip'));
    return { path, diffId: `sha256:${createHash('sha256').update(raw).digest('hex')}` };
  }

  async function unpack(p: UnpackPool, name: string): Promise<void> {
    const b = await blob(name, `hello from ${name}\n`);
    const target = join(dir, `${name}-fs`);
    fs.mkdirSync(target);
    const result = await p.run({ blobPath: b.path, compression: 'gzip', target, opts: { layer: LAYER, maxBytes: 1 << 30 } });
    assert.equal(result.diffId, b.diffId);
    assert.equal(fs.readFileSync(join(target, 'etc', 'greeting'), 'utf8'), `hello from ${name}\n`);
  }

  it('terminates workers that stay idle, and starts them again for the next layer', async () => {
    const p = (pool = new UnpackPool(2, 200));
    assert.equal(p.workers, 0, 'no worker before the first job');
    await Promise.all([unpack(p, 'a'), unpack(p, 'b')]);
    assert.ok(p.workers >= 1 && p.workers <= 2, `1 or 2 workers after two jobs, not ${p.workers}`);
    await until(async () => (p.workers === 0 ? true : undefined), 10_000);
    await unpack(p, 'c');
    assert.equal(p.workers, 1);
    await until(async () => (p.workers === 0 ? true : undefined), 10_000);
  });

  it('keeps a worker that gets a job within its idle time', async () => {
    const p = (pool = new UnpackPool(1, 5_000));
    await unpack(p, 'a');
    await unpack(p, 'b');
    assert.equal(p.workers, 1, 'the same worker ran both jobs');
  });
});
