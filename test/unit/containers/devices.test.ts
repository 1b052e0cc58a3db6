/**
 * Device resolution (src/containers/devices.ts) against the real /dev of this machine,
 * read only: /dev/null and /dev/zero exist everywhere. Nodes made with mknod are in
 * test/integration/containers/devices.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind, type BerthError } from '../../../src/common/errors.js';
import { checkContainerPath, checkPermissions, hostDevices, resolveDevices, splitDevT } from '../../../src/containers/devices.js';

async function rejectsInvalid(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isKind(err, 'InvalidArgument'), `expected InvalidArgument, got ${String(err)}`);
    assert.match((err as BerthError).message, pattern);
    return true;
  });
}

describe('devices: checks', () => {
  it('permissions: "" is rwm; subsets of rwm pass; anything else is refused naming the field', () => {
    assert.equal(checkPermissions('', 'f'), 'rwm');
    for (const ok of ['r', 'w', 'm', 'rw', 'mr', 'rwm', 'wmr']) assert.equal(checkPermissions(ok, 'f'), ok);
    for (const bad of ['x', 'rx', 'rr', 'rwmr', 'RW', ' r']) {
      assert.throws(() => checkPermissions(bad, 'devices[2].permissions'), /devices\[2\]\.permissions/);
    }
  });

  it('container path: absolute, cleaned, no ".." (outside /dev allowed, as containerd)', () => {
    assert.equal(checkContainerPath('/dev//fuse/', 'f'), '/dev/fuse');
    assert.equal(checkContainerPath('/mydev/x', 'f'), '/mydev/x');
    assert.throws(() => checkContainerPath('dev/fuse', 'devices[0].container_path'), /devices\[0\]\.container_path "dev\/fuse" must be an absolute path/);
    assert.throws(() => checkContainerPath('/dev/../etc/passwd', 'devices[0].container_path'), /must not contain "\.\."/);
  });

  it('splits dev_t like glibc', () => {
    assert.deepEqual(splitDevT(0x10e5n), { major: 16, minor: 229 });
    // glibc's makedev: the low 8 bits of the minor, 12 bits of major, the rest of the minor, the rest of the major.
    const makedev = (ma: bigint, mi: bigint): bigint => ((ma & 0xfffn) << 8n) | ((ma & ~0xfffn) << 32n) | (mi & 0xffn) | ((mi & ~0xffn) << 12n);
    assert.deepEqual(splitDevT(makedev(0x12345n, 0x6789an)), { major: 0x12345, minor: 0x6789a });
    const st = statSync('/dev/null');
    assert.deepEqual(splitDevT(BigInt(st.rdev)), { major: 1, minor: 3 });
  });
});

describe('devices: resolution', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-devices-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('a device node: type, numbers, mode and owner from the host; the container path as asked', async () => {
    const [d] = await resolveDevices([{ host_path: '/dev/null', container_path: '/dev/mynull', permissions: 'rw' }]);
    const st = statSync('/dev/null');
    assert.deepEqual(d, { path: '/dev/mynull', type: 'c', major: 1, minor: 3, fileMode: st.mode & 0o7777, uid: st.uid, gid: st.gid, permissions: 'rw' });
  });

  it('a symlink to a device is resolved; the container path stays', async () => {
    symlinkSync('/dev/zero', join(dir, 'z'));
    const [d] = await resolveDevices([{ host_path: join(dir, 'z'), container_path: '/dev/z', permissions: '' }]);
    assert.equal(d!.path, '/dev/z');
    assert.deepEqual([d!.type, d!.major, d!.minor, d!.permissions], ['c', 1, 5, 'rwm']);
  });

  it('refuses a missing path, a regular file, an empty directory and a relative host path, naming the field', async () => {
    await rejectsInvalid(
      resolveDevices([{ host_path: '/dev/berth-nope', container_path: '/dev/x', permissions: 'rw' }]),
      /devices\[0\]\.host_path "\/dev\/berth-nope" does not exist/,
    );
    writeFileSync(join(dir, 'f'), '');
    const ok = { host_path: '/dev/null', container_path: '/dev/null', permissions: 'rw' };
    await rejectsInvalid(
      resolveDevices([ok, { host_path: join(dir, 'f'), container_path: '/dev/f', permissions: 'rw' }]),
      /devices\[1\]\.host_path ".*" is not a device node/,
    );
    mkdirSync(join(dir, 'empty'));
    await rejectsInvalid(resolveDevices([{ host_path: join(dir, 'empty'), container_path: '/dev/e', permissions: '' }]), /is a directory with no device nodes/);
    await rejectsInvalid(
      resolveDevices([{ host_path: 'dev/null', container_path: '/dev/n', permissions: '' }]),
      /devices\[0\]\.host_path "dev\/null" must be an absolute path/,
    );
    await rejectsInvalid(resolveDevices([{ host_path: '/dev/null', container_path: '/dev/n', permissions: 'rwx' }]), /devices\[0\]\.permissions "rwx"/);
  });

  it('host devices: the nodes of /dev, without pts and symlinks', async () => {
    const all = await hostDevices();
    const paths = all.map((d) => d.path);
    assert.ok(paths.includes('/dev/null'));
    assert.ok(!paths.some((p) => p.startsWith('/dev/pts/')));
    assert.ok(!paths.includes('/dev/stdin'), '/dev/stdin is a symlink');
    assert.ok(all.every((d) => d.permissions === 'rwm' && (d.type === 'c' || d.type === 'b')));
  });
});
