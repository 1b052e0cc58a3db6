/**
 * The pod's /dev/shm: a real tmpfs mount (root).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../src/common/errors.js';
import { isMountPoint, mountPoints } from '../../../src/common/mount.js';
import { mountShm, unmountShm } from '../../../src/sandbox/pod-files.js';

/** The mountinfo fields of the mount at `path`: per-mount options, fs type, source, superblock options. */
function mountOf(path: string): { opts: string; fstype: string; source: string; superOpts: string } | undefined {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ');
    const f = (pre ?? '').split(' ');
    if (f[4] !== path || post === undefined) continue;
    const [fstype, source, superOpts] = post.split(' ');
    return { opts: f[5] as string, fstype: fstype as string, source: source as string, superOpts: superOpts as string };
  }
  return undefined;
}

describe('sandbox: pod files', () => {
  describe('on disk', () => {
    let base: string;
    beforeEach(() => (base = mkdtempSync(join(tmpdir(), 'berth-podfiles-'))));
    afterEach(() => {
      for (const p of mountPoints()
        .filter((m) => m.startsWith(base + '/'))
        .reverse())
        execFileSync('umount', ['-l', p]);
      rmSync(base, { recursive: true, force: true });
    });

    it('mounts /dev/shm as a sized tmpfs with mode 1777, nosuid, nodev, noexec', async () => {
      const shm = join(base, 'sandbox', 'shm');
      const t0 = process.hrtime.bigint();
      await mountShm(shm, 0);
      console.log(`      mountShm ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms`);
      const m = mountOf(shm);
      assert.ok(m, 'mounted');
      assert.equal(m.fstype, 'tmpfs');
      assert.equal(m.source, 'shm');
      for (const flag of ['nosuid', 'nodev', 'noexec']) assert.ok(m.opts.split(',').includes(flag), `${flag} in ${m.opts}`);
      assert.ok(m.superOpts.split(',').includes('size=65536k'), m.superOpts);
      // tmpfs lists mode= only when it is not its default 1777: check the mode itself.
      assert.equal(statSync(shm).mode & 0o7777, 0o1777);
      await assert.rejects(mountShm(shm, 0), (e) => isKind(e, 'AlreadyExists'));

      const t1 = process.hrtime.bigint();
      await unmountShm(shm);
      console.log(`      unmountShm ${(Number(process.hrtime.bigint() - t1) / 1e6).toFixed(1)} ms`);
      assert.equal(isMountPoint(shm), false);
      await unmountShm(shm);
      await unmountShm(join(base, 'missing', 'shm'));

      await mountShm(shm, 1024 * 1024);
      assert.ok(mountOf(shm)?.superOpts.split(',').includes('size=1024k'));
      await unmountShm(shm);
      assert.equal(mountOf(shm), undefined);
    });
  });
});
