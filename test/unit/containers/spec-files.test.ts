/**
 * Files berthd (host root) reads from an image's rootfs: only regular files inside it, a
 * FIFO or device node the image put there counts as absent (real nodes made with mknod).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IdFilesCache, readImageFile } from '../../../src/containers/spec-files.js';

describe('containers: files read from an image rootfs', function () {
  this.timeout(10_000);
  let dir: string;
  let rootfs: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-spec-files-'));
    rootfs = join(dir, 'rootfs');
    mkdirSync(join(rootfs, 'etc'), { recursive: true });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const mknod = (rel: string, ...args: string[]) => execFileSync('mknod', [join(rootfs, rel), ...args]);

  it('reads a regular file, bounded', async () => {
    writeFileSync(join(rootfs, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\n');
    assert.equal(await readImageFile(rootfs, 'etc/passwd', 1 << 20), 'root:x:0:0::/root:/bin/sh\n');
    assert.equal(await readImageFile(rootfs, 'etc/passwd', 4), 'root');
    assert.equal(await readImageFile(rootfs, 'etc/missing', 1 << 20), '');
  });

  it('a FIFO is absent, at once (it would block a libuv pool thread until a writer came)', async () => {
    mknod('etc/passwd', 'p');
    // A symlink (inside the rootfs) to the FIFO is no way around it.
    mknod('etc/fifo', 'p');
    symlinkSync('fifo', join(rootfs, 'etc/group'));
    // Four reads at once: were one to block, the pool's 4 threads would all be held and this would time out.
    const got = await Promise.all([0, 1].flatMap(() => [readImageFile(rootfs, 'etc/passwd', 1 << 20), readImageFile(rootfs, 'etc/group', 1 << 20)]));
    assert.deepEqual(got, ['', '', '', '']);
  });

  it('a device node is absent: the host device behind it is not read', async () => {
    mknod('etc/passwd', 'c', '1', '5'); // /dev/zero's numbers: reading it would give bytes
    mknod('etc/group', 'c', '1', '9'); // /dev/urandom's
    assert.equal(await readImageFile(rootfs, 'etc/passwd', 1 << 20), '');
    assert.equal(await readImageFile(rootfs, 'etc/group', 1 << 20), '');
  });

  it('a directory or a symlink out of the rootfs is absent', async () => {
    mkdirSync(join(rootfs, 'etc/passwd'));
    symlinkSync('/etc/hostname', join(rootfs, 'etc/group'));
    assert.equal(await readImageFile(rootfs, 'etc/passwd', 1 << 20), '');
    assert.equal(await readImageFile(rootfs, 'etc/group', 1 << 20), '');
  });

  it('IdFilesCache: passwd and group that are special files read as empty, the regular one as it is', async () => {
    mknod('etc/passwd', 'p');
    writeFileSync(join(rootfs, 'etc/group'), 'root:x:0:\n');
    const cache = new IdFilesCache();
    assert.deepEqual(await cache.read('sha256:x', rootfs), { passwd: '', group: 'root:x:0:\n' });
  });
});
