/**
 * The cgroup join warm-up (src/oci/cgroup-warmup.ts): which hierarchy and which
 * cgroup.procs it writes in (pure, from mountinfo and /proc/self/cgroup texts), and on
 * this host a real warm-up write, which must leave the process in the cgroups it was in.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CgroupJoinWarmup, chooseHierarchy, ownProcsFile } from '../../../src/oci/cgroup-warmup.js';

const line = (id: number, root: string, mountpoint: string, fstype: string, opts: string): string =>
  `${id} 25 0:${id} ${root} ${mountpoint} rw,nosuid - ${fstype} ${fstype} ${opts}`;

const HYBRID = [
  line(30, '/', '/sys/fs/cgroup/unified', 'cgroup2', 'rw'),
  line(31, '/', '/sys/fs/cgroup/systemd', 'cgroup', 'rw,xattr,name=systemd'),
  line(32, '/', '/sys/fs/cgroup/cpu,cpuacct', 'cgroup', 'rw,cpu,cpuacct'),
  line(33, '/', '/sys/fs/cgroup/pids', 'cgroup', 'rw,pids'),
  line(34, '/', '/sys/fs/cgroup/memory', 'cgroup', 'rw,memory'),
].join('\n');

const SELF = [
  '12:pids:/system.slice/berth.service',
  '4:cpu,cpuacct:/system.slice/berth.service',
  '1:name=systemd:/system.slice/berth.service',
  '0::/system.slice/berth.service',
].join('\n');

describe('oci: cgroup join warm-up (pure)', () => {
  it('writes in a v1 controller hierarchy on a hybrid host, never in name=systemd, in the cgroup berthd is in', () => {
    const h = chooseHierarchy(HYBRID)!;
    assert.equal(h.mountpoint, '/sys/fs/cgroup/pids');
    assert.equal(ownProcsFile(h, SELF), '/sys/fs/cgroup/pids/system.slice/berth.service/cgroup.procs');
  });

  it('finds a controller in a hierarchy shared with others (cpu,cpuacct)', () => {
    const h = chooseHierarchy(
      [line(30, '/', '/sys/fs/cgroup/unified', 'cgroup2', 'rw'), line(32, '/', '/sys/fs/cgroup/cpu,cpuacct', 'cgroup', 'rw,cpu,cpuacct')].join('\n'),
    )!;
    assert.equal(h.mountpoint, '/sys/fs/cgroup/cpu,cpuacct');
    assert.equal(ownProcsFile(h, SELF), '/sys/fs/cgroup/cpu,cpuacct/system.slice/berth.service/cgroup.procs');
  });

  it('uses the v2 hierarchy on a v2-only host, and the root of a mount made inside a cgroup namespace', () => {
    const v2 = chooseHierarchy(line(30, '/', '/sys/fs/cgroup', 'cgroup2', 'rw,nsdelegate'))!;
    assert.equal(ownProcsFile(v2, '0::/system.slice/berth.service\n'), '/sys/fs/cgroup/system.slice/berth.service/cgroup.procs');
    const bound = chooseHierarchy(line(30, '/kubepods/pod1', '/sys/fs/cgroup', 'cgroup2', 'rw'))!;
    assert.equal(ownProcsFile(bound, '0::/kubepods/pod1/berth\n'), '/sys/fs/cgroup/berth/cgroup.procs');
    assert.equal(ownProcsFile(bound, '0::/elsewhere\n'), undefined, 'a cgroup outside the mount');
  });

  it('writes nowhere without cgroupfs, or for a path that is not absolute or climbs out', () => {
    assert.equal(chooseHierarchy(line(20, '/', '/', 'ext4', 'rw')), undefined);
    const h = chooseHierarchy(HYBRID)!;
    assert.equal(ownProcsFile(h, '12:pids:relative\n'), undefined);
    assert.equal(ownProcsFile(h, '12:pids:/a/../../etc\n'), undefined);
    assert.equal(ownProcsFile(h, '0::/only-v2\n'), undefined, 'no line for the hierarchy');
  });
});

describe('oci: cgroup join warm-up on this host', () => {
  it('moves the process into the cgroups it is in: nothing changes, the warm-up stays on', async function () {
    if (process.getuid?.() !== 0) this.skip();
    const before = readFileSync('/proc/self/cgroup', 'utf8');
    const w = new CgroupJoinWarmup();
    w.warm();
    w.warm(); // one write in flight at most
    await w.idle();
    assert.equal(w.enabled, true, 'the write was refused');
    assert.equal(readFileSync('/proc/self/cgroup', 'utf8'), before);
  });

  it('turns itself off for good when the write is refused, or there is no hierarchy to write in', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-warmup-'));
    try {
      // A "hierarchy" whose cgroup.procs cannot be written: a directory.
      mkdirSync(join(dir, 'cg', 'cgroup.procs'), { recursive: true });
      writeFileSync(join(dir, 'mountinfo'), line(40, '/', join(dir, 'cg'), 'cgroup', 'rw,pids'));
      writeFileSync(join(dir, 'cgroup'), '3:pids:/\n');
      const refused = new CgroupJoinWarmup(undefined, { mountinfo: join(dir, 'mountinfo'), cgroup: join(dir, 'cgroup') });
      refused.warm();
      await refused.idle();
      assert.equal(refused.enabled, false);
      refused.warm(); // nothing more is tried
      await refused.idle();
      writeFileSync(join(dir, 'none'), line(20, '/', '/', 'ext4', 'rw'));
      const none = new CgroupJoinWarmup(undefined, { mountinfo: join(dir, 'none'), cgroup: join(dir, 'cgroup') });
      none.warm();
      assert.equal(none.enabled, false);
      const unreadable = new CgroupJoinWarmup(undefined, { mountinfo: join(dir, 'missing'), cgroup: join(dir, 'cgroup') });
      unreadable.warm();
      assert.equal(unreadable.enabled, false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
