import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isKind } from '../../../src/common/errors.js';
import { DirectoryLock } from '../../../src/store/lock.js';

const LOCK_MODULE = fileURLToPath(new URL('../../../src/store/lock.js', import.meta.url));

/** Tries the lock from another process (locks are per process). */
function tryFromChild(dir: string): string {
  const script = `import { DirectoryLock } from ${JSON.stringify(LOCK_MODULE)};
    try { DirectoryLock.acquire(${JSON.stringify(dir)}, 'root directory').release(); console.log('acquired'); }
    catch (e) { console.log(e.kind + ': ' + e.message); }`;
  return execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }).trim();
}

describe('store: directory lock', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-lock-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('is exclusive across processes and names the holder', () => {
    const lock = DirectoryLock.acquire(dir, 'root directory');
    assert.equal(readFileSync(join(dir, 'berthd.pid'), 'utf8').trim(), String(process.pid));
    const other = tryFromChild(dir);
    assert.match(other, new RegExp(`^FailedPrecondition: another berthd \\(pid ${process.pid}\\) is using root directory ${dir}`));
    lock.release();
    assert.equal(tryFromChild(dir), 'acquired');
  });

  it('is exclusive within one process too', () => {
    const lock = DirectoryLock.acquire(dir, 'state directory');
    assert.throws(
      () => DirectoryLock.acquire(dir, 'state directory'),
      (e) => isKind(e, 'FailedPrecondition'),
    );
    lock.release();
    DirectoryLock.acquire(dir, 'state directory').release();
  });

  it('is released when the holder dies, even by SIGKILL', () => {
    const script = `import { DirectoryLock } from ${JSON.stringify(LOCK_MODULE)};
      DirectoryLock.acquire(${JSON.stringify(dir)}, 'root directory'); process.kill(process.pid, 'SIGKILL');`;
    try {
      execFileSync(process.execPath, ['--input-type=module', '-e', script]);
    } catch {
      // killed, as intended
    }
    assert.equal(tryFromChild(dir), 'acquired');
  });
});
