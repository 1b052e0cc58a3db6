/**
 * The native addon (native/berth_sys.c through src/common/sys.ts): processes started with
 * posix_spawn, and mount(2)/umount2(2). Real processes and real mounts; root for the mounts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connectInNetns, execProcess, MNT, MS, mount, spawnProcess, umount } from '../../../src/common/sys.js';

async function isMountPoint(dir: string): Promise<boolean> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8');
  return mounts.split('\n').some((l) => l.split(' ')[4] === dir);
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

  describe('spawnProcess / execProcess', () => {
    it('runs a command with exactly the given environment, working directory and arguments', async () => {
      const r = await execProcess('/bin/sh', ['-c', 'echo "$0|$1|$FOO|$HOME|$(pwd)"', 'a b', 'c'], { env: { FOO: 'bar', PATH: '/usr/bin:/bin' }, cwd: dir });
      assert.equal(r.code, 0);
      assert.equal(r.signal, null);
      assert.equal(r.stdout, `a b|c|bar||${dir}\n`);
      assert.equal(r.stderr, '');
    });

    it('reports the exit code and stderr of a failing command', async () => {
      const r = await execProcess('/bin/sh', ['-c', 'echo oops >&2; exit 7']);
      assert.deepEqual([r.code, r.signal, r.stderr, r.timedOut], [7, null, 'oops\n', false]);
    });

    it('finds a command on PATH and throws ENOENT, naming it, for a missing one', async () => {
      assert.equal((await execProcess('true', [])).code, 0);
      assert.throws(
        () => spawnProcess('/nonexistent/berth-no-such-binary', []),
        (err: NodeJS.ErrnoException) => {
          assert.equal(err.code, 'ENOENT');
          assert.match(err.message, /berth-no-such-binary/);
          return true;
        },
      );
    });

    it('feeds input on stdin', async () => {
      const r = await execProcess('/bin/cat', [], { input: 'line one\nline two' });
      assert.equal(r.stdout, 'line one\nline two');
    });

    it('gives the child only the descriptors asked for, default signal handling and an empty mask', async () => {
      // Node ignores SIGPIPE and holds many descriptors of its own; none of that may leak.
      const r = await execProcess('/bin/sh', ['-c', 'ls /proc/self/fd; grep -E "^(SigIgn|SigBlk)" /proc/self/status']);
      const lines = r.stdout.trim().split('\n');
      const fds = lines.filter((l) => /^\d+$/.test(l)).map(Number);
      // 0, 1, 2, and the one `ls` opened to list the directory.
      assert.deepEqual(
        fds.filter((fd) => fd <= 2),
        [0, 1, 2],
      );
      assert.ok(fds.length <= 4, `descriptors in the child: ${fds.join(' ')}`);
      // The shell may ignore a few job-control signals itself, but never SIGPIPE (bit 13).
      const sigIgn = BigInt(`0x${lines.find((l) => l.startsWith('SigIgn'))!.split(/\s+/)[1]}`);
      assert.equal(sigIgn & (1n << 12n), 0n, `SIGPIPE is ignored in the child: SigIgn ${sigIgn.toString(16)}`);
      assert.match(
        lines.find((l) => l.startsWith('SigBlk'))!,
        /SigBlk:\s+0+$/,
      );
    });

    it('maps extra descriptors (3, 4…) in both directions, as conmon sync and start pipes', async () => {
      const child = spawnProcess('/bin/sh', ['-c', 'read x <&4; echo "got $x" >&3'], { stdio: ['ignore', 'ignore', 'ignore', 'out', 'in'] });
      let got = '';
      child.stdio[3]!.on('data', (d: Buffer) => (got += d.toString()));
      const closed = new Promise((resolve) => child.stdio[3]!.on('close', resolve));
      child.stdio[4]!.end('go\n');
      assert.deepEqual(await child.exited, { code: 0, signal: null });
      await closed;
      assert.equal(got, 'got go\n');
    });

    it('starts a new session when asked', async () => {
      const child = spawnProcess('/bin/sh', ['-c', 'cut -d" " -f6 /proc/self/stat'], { setsid: true, stdio: ['ignore', 'out', 'ignore'] });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      await child.exited;
      await new Promise((r) => setImmediate(r));
      // The session id of `cut` is its parent shell's pid: the shell leads a new session.
      assert.equal(Number(out.trim()), child.pid);
    });

    it('kills on a timeout, and reports the signal; a reaped child is never signalled', async () => {
      const r = await execProcess('/bin/sleep', ['30'], { timeoutMs: 50 });
      assert.deepEqual([r.code, r.signal, r.timedOut], [null, 'SIGKILL', true]);
      const child = spawnProcess('/bin/true', []);
      assert.deepEqual(await child.exited, { code: 0, signal: null });
      assert.equal(child.kill('SIGKILL'), false);
    });

    it('returns when the command exits even if a grandchild keeps its output open', async () => {
      const t0 = Date.now();
      const r = await execProcess('/bin/sh', ['-c', 'echo early; sleep 3 & exit 0']);
      assert.equal(r.code, 0);
      assert.equal(r.stdout, 'early\n');
      assert.ok(Date.now() - t0 < 2000, 'waited for the grandchild');
    });

    it('reaps every child: no zombie is left behind', async () => {
      const children = Array.from({ length: 20 }, () => spawnProcess('/bin/true', []));
      await Promise.all(children.map((c) => c.exited));
      for (const c of children) await assert.rejects(stat(`/proc/${c.pid}`), { code: 'ENOENT' });
    });
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
        const sock = await (async () => {
          for (let i = 0; ; i++) {
            try {
              return await connectInNetns(path, 7777, 2000);
            } catch (err) {
              if (i > 50) throw err;
              await new Promise((r) => setTimeout(r, 100));
            }
          }
        })();
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
  });
});
