/**
 * The native addon (native/berth_sys.c through src/common): mount(2)/umount2(2), user
 * namespaces, idmapped and recursive read-only binds, connecting inside a netns. Real
 * mounts and namespaces; root.
 */
import assert from 'node:assert/strict';
import { readlinkSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, stat, statfs, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cloneMount, MNT, MS, mount, umount } from '../../../src/common/mount.js';
import { native } from '../../../src/common/native.js';
import { execProcess } from '../../../src/common/process.js';
import { removeTree } from '../../../src/common/remove-tree.js';
import { BerthError } from '../../../src/common/errors.js';
import { connectInNetns } from '../../../src/common/sys.js';
import { pinUserns } from '../../../src/common/userns.js';
import { until } from '../../helpers/berthd.js';

async function isMountPoint(dir: string): Promise<boolean> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8');
  return mounts.split('\n').some((l) => l.split(' ')[4] === dir);
}

function readlinkOr(path: string): string {
  try {
    return readlinkSync(path);
  } catch {
    return '';
  }
}

describe('common/sys: the native addon', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-sys-'));
  });
  afterEach(async () => {
    await umount(dir, MNT.DETACH).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  describe('mount / umount', () => {
    before(function () {
      if (process.getuid?.() !== 0) this.skip();
    });

    it('mounts and unmounts a tmpfs', async () => {
      await mount('tmpfs', dir, 'tmpfs', MS.NOSUID | MS.NODEV, 'size=1m,mode=0700');
      assert.ok(await isMountPoint(dir));
      await writeFile(join(dir, 'f'), 'x');
      assert.equal((await stat(dir)).mode & 0o777, 0o700);
      await umount(dir);
      assert.ok(!(await isMountPoint(dir)));
      await assert.rejects(stat(join(dir, 'f')), { code: 'ENOENT' });
    });

    it('fails with the errno: EINVAL for bad options or a non-mount point, ENOENT for a missing target', async () => {
      await assert.rejects(mount('tmpfs', dir, 'tmpfs', 0, 'size=nonsense'), { code: 'EINVAL', syscall: 'mount' });
      await assert.rejects(mount('tmpfs', join(dir, 'missing'), 'tmpfs', 0), (err: NodeJS.ErrnoException) => {
        assert.equal(err.code, 'ENOENT');
        assert.match(err.message, /missing/);
        return true;
      });
      await assert.rejects(umount(dir), { code: 'EINVAL', syscall: 'umount2' });
      assert.ok(!(await isMountPoint(dir)));
    });
  });

  describe('removeTree', () => {
    it('removes a tree of files, dirs, symlinks, a FIFO and unreadable dirs, never through a symlink; a missing path is fine', async () => {
      const outside = await mkdtemp(join(tmpdir(), 'berth-sys-outside-'));
      try {
        await writeFile(join(outside, 'keep'), 'x');
        const t = join(dir, 'tree');
        await mkdir(join(t, 'a', 'b', 'c'), { recursive: true });
        await mkdir(join(t, 'work', 'work'), { recursive: true });
        await chmod(join(t, 'work', 'work'), 0o000);
        for (let i = 0; i < 40; i++) await writeFile(join(t, 'a', `f${i}`), 'x');
        await writeFile(join(t, 'a', 'b', 'c', 'deep'), 'x');
        await symlink(outside, join(t, 'a', 'link-to-dir'));
        await symlink(join(outside, 'keep'), join(t, 'link-to-file'));
        execFileSync('mkfifo', [join(t, 'fifo')]);
        await removeTree(t);
        await assert.rejects(stat(t), { code: 'ENOENT' });
        // What the symlinks pointed at is untouched.
        assert.deepEqual(await readdir(outside), ['keep']);
        await removeTree(t);
        await removeTree(join(dir, 'no', 'such', 'path'));
        // A lone file or symlink goes as such.
        await writeFile(join(dir, 'file'), 'x');
        await symlink(outside, join(dir, 'link'));
        await removeTree(join(dir, 'file'));
        await removeTree(join(dir, 'link'));
        assert.deepEqual(await readdir(dir), []);
        assert.deepEqual(await readdir(outside), ['keep']);
      } finally {
        await rm(outside, { recursive: true, force: true });
      }
    });

    it('the addon never enters another filesystem (EXDEV), leaving the mount and what is in it', async function () {
      if (process.getuid?.() !== 0) this.skip();
      const t = join(dir, 'tree');
      await mkdir(join(t, 'm'), { recursive: true });
      await writeFile(join(t, 'before'), 'x');
      await mount('tmpfs', join(t, 'm'), 'tmpfs', MS.NOSUID | MS.NODEV, 'size=1m');
      try {
        await writeFile(join(t, 'm', 'inside'), 'x');
        await assert.rejects(native().removeTree(t), { code: 'EXDEV', syscall: 'removeTree' });
        assert.deepEqual(await readdir(join(t, 'm')), ['inside']);
        assert.throws(() => native().removeTree('relative/path'), /must be absolute/);
      } finally {
        await umount(join(t, 'm'), MNT.DETACH);
      }
      await removeTree(t);
      await assert.rejects(stat(t), { code: 'ENOENT' });
    });

    it('nor a bind mount of the same filesystem, nor a tree that is a mount point; removeTree then refuses (FailedPrecondition) and removes nothing through it', async function () {
      if (process.getuid?.() !== 0) this.skip();
      const source = join(dir, 'source');
      const t = join(dir, 'tree');
      await mkdir(source);
      await writeFile(join(source, 'precious'), 'x');
      await mkdir(join(t, 'm'), { recursive: true });
      await mount(source, join(t, 'm'), '', MS.BIND, '');
      try {
        await assert.rejects(native().removeTree(t), { code: 'EXDEV' });
        await assert.rejects(removeTree(t), (err: unknown) => err instanceof BerthError && err.kind === 'FailedPrecondition' && /mount/.test(err.message));
        assert.deepEqual(await readdir(source), ['precious']);
        // The mount point itself as the tree's top.
        await assert.rejects(removeTree(join(t, 'm')), (err: unknown) => err instanceof BerthError && err.kind === 'FailedPrecondition');
        assert.deepEqual(await readdir(source), ['precious']);
      } finally {
        await umount(join(t, 'm'), MNT.DETACH);
      }
      await removeTree(t);
      await assert.rejects(stat(t), { code: 'ENOENT' });
      assert.deepEqual(await readdir(source), ['precious']);
    });
  });

  describe('pinUserns / cloneMount', () => {
    const NSFS_MAGIC = 0x6e736673;
    const MAP = [{ containerId: 0, hostId: 100000, size: 65536 }];
    /** Mount points made by a test, unmounted (newest first) whatever happens. */
    let made: string[];
    before(function () {
      if (process.getuid?.() !== 0) this.skip();
    });
    beforeEach(() => {
      made = [];
    });
    afterEach(async () => {
      for (const p of made.reverse()) await umount(p, MNT.DETACH).catch(() => undefined);
      const left = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.split(' ')[4]?.startsWith(dir + '/'));
      assert.deepEqual(left, [], 'a test left mounts behind');
    });

    async function pinned(name = 'userns'): Promise<string> {
      const pin = join(dir, name);
      await writeFile(pin, '');
      await pinUserns(pin, MAP, MAP);
      made.push(pin);
      return pin;
    }

    it('makes a user namespace with the given maps and pins it; no process is left in it', async () => {
      const pin = await pinned();
      assert.equal((await statfs(pin)).type, NSFS_MAGIC);
      const r = await execProcess('nsenter', [`--user=${pin}`, 'cat', '/proc/self/uid_map', '/proc/self/gid_map', '/proc/self/setgroups']);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(
        r.stdout
          .trim()
          .split('\n')
          .map((l) => l.trim().split(/\s+/).join(' ')),
        ['0 100000 65536', '0 100000 65536', 'allow'],
      );
      // The helper was killed and reaped: no process lives in the namespace, and no zombie is left.
      const ns = `user:[${(await stat(pin)).ino}]`;
      const inside = (await readdir('/proc')).filter((p) => /^\d+$/.test(p) && readlinkOr(`/proc/${p}/ns/user`) === ns);
      assert.deepEqual(inside, []);
      const ps = await execProcess('ps', ['-o', 'stat=', '--ppid', String(process.pid)]);
      assert.ok(!/Z/.test(ps.stdout), `a zombie was left: ${ps.stdout}`);
    });

    it('makes network, IPC and UTS namespaces owned by the new user namespace, with a hostname', async () => {
      const pins = { net: join(dir, 'net'), ipc: join(dir, 'ipc'), uts: join(dir, 'uts') };
      for (const p of Object.values(pins)) await writeFile(p, '');
      const user = join(dir, 'user');
      await writeFile(user, '');
      await pinUserns(user, MAP, MAP, { ...pins, hostname: 'pod-in-userns' });
      made.push(user, ...Object.values(pins));
      for (const p of Object.values(pins)) assert.equal((await statfs(p)).type, NSFS_MAGIC);
      const host = await execProcess('nsenter', [`--uts=${pins.uts}`, 'hostname']);
      assert.equal(host.stdout.trim(), 'pod-in-userns');
      // Root of the user namespace may configure the network namespace: it owns it.
      const r = await execProcess('nsenter', [`--user=${user}`, `--net=${pins.net}`, 'ip', 'link', 'set', 'lo', 'up']);
      assert.equal(r.code, 0, r.stderr);
      const parent = await execProcess('nsenter', [`--user=${user}`, 'ip', 'link', 'set', 'lo', 'up']);
      assert.notEqual(parent.code, 0, 'root of the user namespace must not configure the host network');
    });

    it('refuses overlapping maps with the kernel error, and leaves nothing mounted', async () => {
      const pin = join(dir, 'bad');
      await writeFile(pin, '');
      const overlapping = [
        { containerId: 0, hostId: 100000, size: 65536 },
        { containerId: 100, hostId: 300000, size: 10 },
      ];
      await assert.rejects(pinUserns(pin, overlapping, MAP), { code: 'EINVAL', syscall: 'write uid_map' });
      assert.notEqual((await statfs(pin)).type, NSFS_MAGIC);
    });

    it('idmaps a bind mount: a file owned by 0 shows as the mapped host id, and a write through it lands as 0', async () => {
      const pin = await pinned();
      const src = join(dir, 'src');
      const dst = join(dir, 'dst');
      await chmod(dir, 0o711); // root of the namespace is no one to the temp dir's owner
      await mkdir(src);
      await mkdir(dst);
      await mount('tmpfs', src, 'tmpfs', 0, 'size=1m');
      made.push(src);
      await writeFile(join(src, 'f'), 'x');
      await chown(join(src, 'f'), 0, 0);
      await cloneMount(src, dst, { usernsPath: pin });
      made.push(dst);
      assert.equal((await stat(join(dst, 'f'))).uid, 100000);
      assert.equal((await stat(join(src, 'f'))).uid, 0);
      // Root of the namespace (host 100000) writes through the idmapped mount: on disk it is 0.
      const w = await execProcess('nsenter', [`--user=${pin}`, 'sh', '-c', `echo y > ${dst}/g && stat -c %u ${dst}/g`]);
      assert.equal(w.code, 0, w.stderr);
      assert.equal(w.stdout.trim(), '0');
      assert.equal((await stat(join(src, 'g'))).uid, 0);
      assert.equal((await stat(join(dst, 'g'))).uid, 100000);
    });

    it('makes a recursive read-only bind: submounts are read-only too, unlike a read-only bind', async () => {
      const src = join(dir, 'src');
      const sub = join(src, 'sub');
      await mkdir(sub, { recursive: true });
      await mount('tmpfs', sub, 'tmpfs', 0, 'size=1m');
      made.push(sub);
      const rro = join(dir, 'rro');
      const ro = join(dir, 'ro');
      await mkdir(rro);
      await mkdir(ro);
      await cloneMount(src, rro, { recursive: true, readonly: true });
      made.push(join(rro, 'sub'), rro);
      await assert.rejects(writeFile(join(rro, 'sub', 'f'), 'x'), { code: 'EROFS' });
      await assert.rejects(writeFile(join(rro, 'f'), 'x'), { code: 'EROFS' });
      // What runc 1.1 makes of "rbind,ro": only the top mount is read-only.
      await mount(src, ro, '', MS.BIND | MS.REC);
      made.push(join(ro, 'sub'), ro);
      await mount('', ro, '', MS.BIND | MS.REMOUNT | MS.RDONLY);
      await assert.rejects(writeFile(join(ro, 'f'), 'x'), { code: 'EROFS' });
      await writeFile(join(ro, 'sub', 'f'), 'x');
      assert.equal(await readFile(join(sub, 'f'), 'utf8'), 'x');
    });

    it('names the failing step: a missing source, a missing user namespace, a filesystem that cannot be idmapped', async () => {
      const dst = join(dir, 'dst');
      await mkdir(dst);
      await assert.rejects(cloneMount(join(dir, 'missing'), dst), { code: 'ENOENT', syscall: 'open_tree' });
      await assert.rejects(cloneMount(dir, dst, { usernsPath: join(dir, 'missing') }), { code: 'ENOENT', syscall: 'open' });
      const pin = await pinned();
      await assert.rejects(cloneMount('/proc', dst, { usernsPath: pin }), { code: 'EINVAL', syscall: 'mount_setattr' });
    });
  });

  describe('connectInNetns', () => {
    before(function () {
      if (process.getuid?.() !== 0) this.skip();
    });

    it('connects to a port on the loopback of another network namespace, and reports a closed one', async () => {
      const ns = `berth-sys-${randomBytes(3).toString('hex')}`;
      execFileSync('ip', ['netns', 'add', ns]);
      const server = spawn('ip', ['netns', 'exec', ns, 'sh', '-c', 'ip link set lo up && exec busybox nc -l -p 7777 -e echo from-inside'], { stdio: 'ignore' });
      try {
        const path = `/run/netns/${ns}`;
        // Connected once nc listens inside.
        const sock = await until(() => connectInNetns(path, 7777, 2000).catch(() => undefined), 6000, 100);
        const got = await new Promise<string>((resolve) => {
          let s = '';
          sock.on('data', (d: Buffer) => (s += d.toString()));
          sock.on('close', () => resolve(s));
        });
        assert.equal(got, 'from-inside\n');
        // The host's own loopback was not used: nothing listens on 7777 here.
        await assert.rejects(connectInNetns(path, 7778, 2000), { code: 'ECONNREFUSED' });
        await assert.rejects(connectInNetns('/nonexistent/netns', 7777, 2000), { code: 'ENOENT' });
      } finally {
        server.kill('SIGKILL');
        execFileSync('ip', ['netns', 'del', ns]);
      }
    });

    it('holds no thread while connects wait on a listener that never accepts: file reads stay fast, nothing is left open', async () => {
      const ns = `berth-sys-${randomBytes(3).toString('hex')}`;
      execFileSync('ip', ['netns', 'add', ns]);
      // listen(0) and never accept: once the queue holds one connection, SYNs go unanswered.
      const server = spawn(
        'ip',
        [
          'netns',
          'exec',
          ns,
          'sh',
          '-c',
          'ip link set lo up && exec perl -MSocket -e \'socket(S,PF_INET,SOCK_STREAM,0) or die; bind(S,sockaddr_in(7777,INADDR_LOOPBACK)) or die; listen(S,0) or die; print "up\\n"; $|=1; sleep 1000\'',
        ],
        { stdio: ['ignore', 'pipe', 'ignore'] },
      );
      const dir = await mkdtemp(join(tmpdir(), 'berth-sys-'));
      try {
        await new Promise<void>((resolve) => server.stdout!.once('data', () => resolve()));
        const path = `/run/netns/${ns}`;
        const file = join(dir, 'one-mib');
        await writeFile(file, randomBytes(1024 * 1024));
        const fds = async (): Promise<number> => (await readdir('/proc/self/fd')).length;
        const before = await fds();
        const ac = new AbortController();
        const attempts = Array.from({ length: 200 }, (_, i) => connectInNetns(path, 7777, 3000, i === 199 ? ac.signal : undefined));
        for (const a of attempts) a.catch(() => undefined); // settled below
        ac.abort();
        let slowest = 0;
        for (let i = 0; i < 10; i++) {
          const t0 = process.hrtime.bigint();
          assert.equal((await readFile(file)).length, 1024 * 1024);
          slowest = Math.max(slowest, Number(process.hrtime.bigint() - t0) / 1e6);
        }
        const results = await Promise.allSettled(attempts);
        for (const r of results) if (r.status === 'fulfilled') r.value.destroy();
        const codes = results.map((r) => (r.status === 'rejected' ? (r.reason as { code?: string }).code : 'connected'));
        assert.equal(codes[199], 'ABORT_ERR');
        assert.ok(codes.filter((c) => c === 'ETIMEDOUT').length >= 150, codes.join(' '));
        // The pool's threads were free: a read that waited for a connect would take seconds.
        assert.ok(slowest < 500, `a 1 MiB read took ${slowest} ms`);
        await until(async () => ((await fds()) <= before ? true : undefined));
      } finally {
        server.kill('SIGKILL');
        execFileSync('ip', ['netns', 'del', ns]);
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
});
