/**
 * Files berthd (host root) reads from an image's rootfs: only regular files inside it, a
 * FIFO or device node the image put there counts as absent (real nodes made with mknod).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { isKind } from '../../../src/common/errors.js';
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

  it('an absolute symlink resolves inside the rootfs, as the container sees it (never the host file)', async () => {
    mkdirSync(join(rootfs, 'srv'));
    writeFileSync(join(rootfs, 'srv/passwd'), 'img:x:7:7::/:/bin/sh\n');
    symlinkSync('/srv/passwd', join(rootfs, 'etc/passwd'));
    symlinkSync('../../../../../etc/hostname', join(rootfs, 'etc/group'));
    assert.equal(await readImageFile(rootfs, 'etc/passwd', 1 << 20), 'img:x:7:7::/:/bin/sh\n');
    assert.equal(await readImageFile(rootfs, 'etc/group', 1 << 20), '');
  });

  describe('IdFilesCache: a passwd or group that exists and is not a regular file refuses the image', () => {
    const refused = async (cache: IdFilesCache, message: RegExp): Promise<void> => {
      await assert.rejects(cache.read('sha256:x', rootfs), (err: unknown) => {
        assert.ok(isKind(err, 'FailedPrecondition'), String(err));
        assert.match(err.message, message);
        return true;
      });
      // Known from then on: refused without a rootfs.
      assert.throws(
        () => cache.get('sha256:x'),
        (err: unknown) => isKind(err, 'FailedPrecondition') && message.test(err.message),
      );
    };

    it('a FIFO passwd, at once (runc would block in it until the create timeout)', async () => {
      mknod('etc/passwd', 'p');
      writeFileSync(join(rootfs, 'etc/group'), 'root:x:0:\n');
      await refused(new IdFilesCache(), /^the image's \/etc\/passwd is a FIFO \(named pipe\), not a regular file: .*rebuild the image/);
    });

    it('a device node, a directory, a socket', async () => {
      mknod('etc/group', 'c', '1', '5');
      await refused(new IdFilesCache(), /the image's \/etc\/group is a character device, not a regular file/);
      rmSync(join(rootfs, 'etc/group'));
      mkdirSync(join(rootfs, 'etc/group'));
      await refused(new IdFilesCache(), /the image's \/etc\/group is a directory/);
      rmSync(join(rootfs, 'etc/group'), { recursive: true });
      const server = createServer().listen(join(rootfs, 'etc/passwd'));
      await once(server, 'listening');
      try {
        await refused(new IdFilesCache(), /the image's \/etc\/passwd is a socket/);
      } finally {
        server.close();
      }
    });

    it('a FIFO behind symlinks, absolute and relative, is found inside the rootfs and named', async () => {
      mkdirSync(join(rootfs, 'srv'));
      mknod('srv/fifo', 'p');
      symlinkSync('/srv/../srv/link', join(rootfs, 'etc/group'));
      symlinkSync('fifo', join(rootfs, 'srv/link'));
      await refused(new IdFilesCache(), /the image's \/etc\/group \(resolved to \/srv\/fifo\) is a FIFO/);
    });

    it('absent, or regular through symlinks: read and kept', async () => {
      writeFileSync(join(rootfs, 'etc/group.real'), 'root:x:0:\n');
      symlinkSync('/etc/group.real', join(rootfs, 'etc/group'));
      const cache = new IdFilesCache();
      assert.deepEqual(await cache.read('sha256:x', rootfs), { passwd: '', group: 'root:x:0:\n' });
      assert.deepEqual(cache.get('sha256:x'), { passwd: '', group: 'root:x:0:\n' });
    });
  });
});
