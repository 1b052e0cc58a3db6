/**
 * The cgroup join warm-up (src/oci/cgroup-warmup.ts): which hierarchy and which
 * cgroup.procs it writes in (pure, from mountinfo and /proc/self/cgroup texts), and on
 * this host a real warm-up write, which must leave the process in the cgroups it was in.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CgroupJoinWarmup, chooseHierarchy, HOLD_INTERVAL_MS, ownProcsFile } from '../../../src/oci/cgroup-warmup.js';

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

  it("a hold writes again and again (on the addon's helper thread) until it is let go, then writes no more; holds overlap", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-warmup-'));
    // cgroup.procs stands in as a fifo, so that every write can be counted by its byte.
    mkdirSync(join(dir, 'cg'));
    execFileSync('mkfifo', [join(dir, 'cg', 'cgroup.procs')]);
    const reader = openSync(join(dir, 'cg', 'cgroup.procs'), constants.O_RDONLY | constants.O_NONBLOCK);
    const drain = (): string => {
      const buf = Buffer.alloc(4096);
      let text = '';
      for (;;) {
        try {
          const n = readSync(reader, buf);
          if (n === 0) return text;
          text += buf.subarray(0, n).toString();
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return text;
          throw err;
        }
      }
    };
    try {
      writeFileSync(join(dir, 'mountinfo'), line(40, '/', join(dir, 'cg'), 'cgroup', 'rw,pids'));
      writeFileSync(join(dir, 'cgroup'), '3:pids:/\n');
      const w = new CgroupJoinWarmup(undefined, { mountinfo: join(dir, 'mountinfo'), cgroup: join(dir, 'cgroup') });
      const first = w.hold();
      const second = w.hold();
      await sleep(HOLD_INTERVAL_MS * 10);
      first();
      first(); // letting go twice is letting go once: the second hold keeps it going
      await sleep(HOLD_INTERVAL_MS * 10);
      const held = drain();
      assert.match(held, /^0+$/, 'only "0" is written: the writer moves into the cgroup it is in');
      assert.ok(held.length >= 4, `${held.length} writes while held for ${HOLD_INTERVAL_MS * 20} ms`);
      second();
      // A write the helper thread had begun before it was let go may still land.
      await sleep(HOLD_INTERVAL_MS * 2);
      drain();
      await sleep(HOLD_INTERVAL_MS * 5);
      assert.equal(drain(), '', 'a write after every hold was let go');
      assert.equal(w.enabled, true);
    } finally {
      closeSync(reader);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a hold on this host leaves the process in the cgroups it was in', async function () {
    if (process.getuid?.() !== 0) this.skip();
    const before = readFileSync('/proc/self/cgroup', 'utf8');
    const w = new CgroupJoinWarmup();
    const letGo = w.hold();
    await sleep(HOLD_INTERVAL_MS * 5);
    letGo();
    await w.idle();
    assert.equal(w.enabled, true, 'the write was refused');
    assert.equal(readFileSync('/proc/self/cgroup', 'utf8'), before);
  });

  it('a hold never moves the process back into a cgroup it was moved out of while held', async function () {
    if (process.getuid?.() !== 0) this.skip();
    const hierarchy = chooseHierarchy(readFileSync('/proc/self/mountinfo', 'utf8'));
    if (!hierarchy) this.skip();
    const procs = ownProcsFile(hierarchy!, readFileSync('/proc/self/cgroup', 'utf8'));
    if (!procs) this.skip();
    const home = dirname(procs!);
    const elsewhere = join(home, `berth-warmup-test-${process.pid}`);
    mkdirSync(elsewhere);
    const w = new CgroupJoinWarmup();
    const letGo = w.hold();
    try {
      await sleep(HOLD_INTERVAL_MS * 5);
      // Someone (systemd, an admin) moves the process while the create is held.
      writeFileSync(join(elsewhere, 'cgroup.procs'), String(process.pid));
      const moved = readFileSync('/proc/self/cgroup', 'utf8');
      await sleep(HOLD_INTERVAL_MS * 10);
      assert.equal(readFileSync('/proc/self/cgroup', 'utf8'), moved, 'the held warm-up moved the process back');
      assert.equal(w.enabled, true);
    } finally {
      letGo();
      await w.idle();
      writeFileSync(procs!, String(process.pid));
      rmdirSync(elsewhere);
    }
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
      // A hold on a warm-up turned off writes nothing and lets go at once.
      refused.hold()();
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
