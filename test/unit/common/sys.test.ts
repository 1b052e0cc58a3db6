/**
 * The native addon's process runner (native/berth_sys.c through src/common/process.ts):
 * real processes started with posix_spawn, as any user, and its refusal of bad arguments.
 * Mounts and namespaces are in test/integration/common/sys.test.ts.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readdirSync, readFileSync, statSync, writeSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { limitMallocArenas } from '../../../src/common/malloc-trim.js';
import { MNT } from '../../../src/common/mount.js';
import { execProcess, resolveExecutable, spawnProcess, startProcess, type ChildProcess } from '../../../src/common/process.js';
import { native } from '../../../src/common/native.js';
import { until } from '../../helpers/berthd.js';

async function isMountPoint(dir: string): Promise<boolean> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8');
  return mounts.split('\n').some((l) => l.split(' ')[4] === dir);
}

/** Writes `input` to the child's fd 4, then gathers what it writes to fd 3 until it exits (0) and fd 3 closes. */
async function converse(child: ChildProcess, input: string): Promise<string> {
  let got = '';
  child.stdio[3]!.on('data', (d: Buffer) => (got += d.toString()));
  const closed = new Promise((resolve) => child.stdio[3]!.on('close', resolve));
  child.stdio[4]!.end(input);
  assert.deepEqual(await child.exited, { code: 0, signal: null });
  await closed;
  return got;
}

describe('common/sys: the native addon', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-sys-'));
  });
  afterEach(async () => {
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
      assert.equal(await converse(child, 'go\n'), 'got go\n');
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

    it('waits for its children with no thread each, and keeps no descriptor once they are reaped', async () => {
      const tasks = async (): Promise<number> => (await readdir('/proc/self/task')).length;
      const fds = async (): Promise<number> => (await readdir('/proc/self/fd')).length;
      // libuv's pool and the addon are up (through spawnProcess: execProcess's spawn thread,
      // short-lived, could still be counted); its pidfd watch is gone on the loop's next turn.
      await Promise.all([tasks(), spawnProcess('/bin/true', []).exited]);
      await new Promise((r) => setImmediate(r));
      const [t0, f0] = [await tasks(), await fds()];
      const children = Array.from({ length: 8 }, () => spawnProcess('/bin/sleep', ['0.5']));
      assert.equal(await tasks(), t0, 'a thread per child');
      // A child's exit is seen through a pidfd each (one descriptor per child while it runs).
      assert.equal(await fds(), f0 + children.length);
      const statuses = await Promise.all(children.map((c) => c.exited));
      assert.deepEqual(statuses[0], { code: 0, signal: null });
      // The watch of each is closed on the loop's next turn (a descriptor of an earlier test's
      // child, started off the loop by startProcess, may close a little later: bounded wait).
      await new Promise((r) => setImmediate(r));
      for (let i = 0; i < 100 && (await fds()) > f0; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(await fds(), f0, 'descriptors left behind');
      for (const c of children) await assert.rejects(stat(`/proc/${c.pid}`), { code: 'ENOENT' });
    });

    it('a worker that ends while its child runs takes its watch with it: the process lives on and spawns again', async () => {
      // In a Node of its own: a watch left open would crash it as the worker's loop closes.
      const processJs = new URL('../../../src/common/process.js', import.meta.url).href;
      const script = `
        import { Worker } from 'node:worker_threads';
        const w = new Worker(\`Promise.all([import(\${JSON.stringify(${JSON.stringify(processJs)})}), import('node:worker_threads')]).then(([{ spawnProcess }, { parentPort }]) => parentPort.postMessage(spawnProcess('/bin/sleep', ['1']).pid))\`, { eval: true });
        await new Promise((r) => w.once('message', r));
        await w.terminate();
        const { spawnProcess } = await import(${JSON.stringify(processJs)});
        console.log(JSON.stringify(await spawnProcess('/bin/true', []).exited));`;
      const r = await execProcess(process.execPath, ['--input-type=module', '-e', script], { timeoutMs: 20_000 });
      assert.deepEqual([r.code, r.signal, r.stdout.trim()], [0, null, '{"code":0,"signal":null}'], r.stderr);
    });

    it('settles the exit promise in the turn the exit is seen: its reactions run with no other event to wake them', async () => {
      // Nothing else is pending here: reactions left in the microtask queue would wait for
      // the next unrelated event (mocha's timeout timer, seconds away).
      const t0 = Date.now();
      assert.deepEqual(await spawnProcess('/bin/true', []).exited, { code: 0, signal: null });
      assert.ok(Date.now() - t0 < 1000, `took ${Date.now() - t0} ms`);
    });
  });

  describe('startProcess: the spawn made on a helper thread', () => {
    it('maps extra descriptors both ways, with only those in the child and an empty signal mask', async () => {
      const child = await startProcess('/bin/sh', ['-c', 'read x <&4; echo "got $x" >&3; ls /proc/self/fd >&3; grep SigBlk /proc/self/status >&3'], {
        stdio: ['ignore', 'ignore', 'ignore', 'out', 'in'],
      });
      const lines = (await converse(child, 'go\n')).trim().split('\n');
      assert.equal(lines[0], 'got go');
      // 0-4, and the one `ls` opened to list the directory.
      const fds = lines.filter((l) => /^\d+$/.test(l)).map(Number);
      assert.deepEqual(
        fds.filter((fd) => fd <= 4),
        [0, 1, 2, 3, 4],
      );
      assert.ok(fds.length <= 6, `descriptors in the child: ${fds.join(' ')}`);
      assert.match(
        lines.find((l) => l.startsWith('SigBlk'))!,
        /SigBlk:\s+0+$/,
      );
    });

    it('starts a new session when asked, with the argv[0] it was given', async () => {
      const child = await startProcess('sh', ['-c', 'echo "$0 $(cut -d" " -f6 /proc/self/stat)"'], { setsid: true, stdio: ['ignore', 'out', 'ignore'] });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      await child.exited;
      await new Promise((r) => setImmediate(r));
      assert.equal(out.trim(), `sh ${child.pid}`);
    });

    it('rejects ENOENT, naming the file, for a missing binary (by path or on PATH) and leaves no descriptor', async () => {
      const before = readdirSync('/proc/self/fd').length;
      for (const file of ['/nonexistent/berth-no-such-binary', 'berth-no-such-binary']) {
        await assert.rejects(startProcess(file, [], { stdio: ['in', 'out', 'out', 'out'] }), (err: NodeJS.ErrnoException) => {
          assert.equal(err.code, 'ENOENT');
          assert.match(err.message, /berth-no-such-binary/);
          return true;
        });
      }
      assert.throws(() => resolveExecutable('berth-no-such-binary'), { code: 'ENOENT' });
      assert.equal(resolveExecutable('/x/y'), '/x/y');
      assert.equal(readdirSync('/proc/self/fd').length, before);
    });

    it('reaps every child, however many start at once: no zombie and no descriptor left', async () => {
      const before = readdirSync('/proc/self/fd').length;
      const children = await Promise.all(Array.from({ length: 20 }, () => startProcess('/bin/sh', ['-c', 'echo x'], { stdio: ['ignore', 'out', 'ignore'] })));
      const outs = children.map((c) => new Promise((resolve) => c.stdout!.on('close', resolve).resume()));
      assert.deepEqual(
        (await Promise.all(children.map((c) => c.exited))).map((s) => s.code),
        children.map(() => 0),
      );
      await Promise.all(outs);
      for (const c of children) await assert.rejects(stat(`/proc/${c.pid}`), { code: 'ENOENT' });
      assert.equal(readdirSync('/proc/self/fd').length, before);
    });

    it('the addon refuses a file that is not a path, starting nothing', () => {
      assert.throws(() => native().spawnAsync('true', ['true'], [], null, [], false), TypeError);
    });
  });

  describe('limitMallocArenas: the cap on glibc malloc arenas', () => {
    /**
     * Runs a Node of its own that caps its arenas at `cap` (or not), starts six worker
     * threads that malloc, and answers how many new glibc heaps (those of its non-main
     * arenas: 64 MiB reserved at a 64 MiB boundary) appeared.
     */
    async function newArenas(cap: number | null, env: Record<string, string> = {}): Promise<{ newArenas: number; set: boolean | null }> {
      const trimJs = new URL('../../../src/common/malloc-trim.js', import.meta.url).href;
      const script = `
        import { Worker } from 'node:worker_threads';
        import { readFileSync } from 'node:fs';
        const { limitMallocArenas } = await import(${JSON.stringify(trimJs)});
        // A glibc heap: an anonymous read-write mapping at a 64 MiB boundary, reserved up to
        // the next one (the part not yet used is a PROT_NONE mapping right after it). Other
        // anonymous mappings (V8's pages, thread stacks) may start at such a boundary by chance.
        const HEAP = 64n << 20n;
        const heaps = () => {
          const maps = readFileSync('/proc/self/maps', 'utf8').split('\\n').map((l) => {
            const m = /^([0-9a-f]+)-([0-9a-f]+) (\\S{4}) 00000000 00:00 0\\s*$/.exec(l);
            return m ? { start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]), perms: m[3] } : undefined;
          });
          return maps.filter((x, i) => {
            if (!x || x.perms !== 'rw-p' || x.start % HEAP !== 0n) return false;
            if (x.end - x.start === HEAP) return true;
            const next = maps[i + 1];
            return next !== undefined && next.perms === '---p' && next.start === x.end && next.end === x.start + HEAP;
          }).length;
        };
        const set = ${cap === null ? 'null' : `limitMallocArenas(${cap})`};
        const before = heaps();
        const code = "const { parentPort } = require('node:worker_threads'); const keep = []; for (let i = 0; i < 64; i++) keep.push(Buffer.alloc(256 << 10, 1)); parentPort.postMessage(keep.length);";
        const workers = Array.from({ length: 6 }, () => new Worker(code, { eval: true, execArgv: [] }));
        await Promise.all(workers.map((w) => new Promise((r) => w.once('message', r))));
        console.log(JSON.stringify({ newArenas: heaps() - before, set }));
        process.exit(0);`;
      const r = await execProcess(process.execPath, ['--input-type=module', '-e', script], { timeoutMs: 30_000, env: { ...process.env, ...env } });
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as { newArenas: number; set: boolean | null };
    }

    it('keeps threads that start after it to the arenas there are; without it each worker thread gets its own', async () => {
      const free = await newArenas(null, { MALLOC_ARENA_MAX: '' });
      const capped = await newArenas(2, { MALLOC_ARENA_MAX: '' });
      assert.equal(capped.set, true);
      assert.ok(free.newArenas >= 4, `without a cap, 6 worker threads made ${free.newArenas} arenas`);
      assert.ok(capped.newArenas <= 1, `with 2 arenas at most, 6 worker threads made ${capped.newArenas} new arenas`);
    });

    it('leaves the count to MALLOC_ARENA_MAX when the environment sets it', async () => {
      assert.equal(limitMallocArenas(2, { MALLOC_ARENA_MAX: '4' }), false);
      assert.equal((await newArenas(2, { MALLOC_ARENA_MAX: '8' })).set, false);
    });
  });

  describe('startWriteback: sync_file_range(SYNC_FILE_RANGE_WRITE)', () => {
    /** Sectors written to the block device of `path`'s filesystem, if it has one. */
    function sectorsWritten(path: string): number | undefined {
      const dev = statSync(path).dev;
      const major = (dev >> 8) & 0xfff;
      const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
      try {
        return Number(readFileSync(`/sys/dev/block/${major}:${minor}/stat`, 'utf8').trim().split(/\s+/)[6]);
      } catch {
        return undefined;
      }
    }

    it('sends a file range to the disk without a sync, and answers an errno for what takes none', async () => {
      const dir = await mkdtemp(join(tmpdir(), 'berth-writeback-'));
      try {
        const path = join(dir, 'blob');
        const fd = openSync(path, 'w');
        try {
          const before = sectorsWritten(dir);
          writeSync(fd, Buffer.alloc(16 << 20, 1));
          assert.equal(native().startWriteback(fd, 0, 16 << 20), 0);
          // The kernel keeps dirty pages for 30 s unless told; started, they reach the disk at once.
          if (before !== undefined) {
            await until(async () => (sectorsWritten(dir)! - before >= (16 << 20) / 512 ? true : undefined), 10_000);
          }
        } finally {
          closeSync(fd);
        }
        const [r, w] = native().pipe();
        try {
          assert.equal(native().startWriteback(r, 0, 1), constants.errno.ESPIPE);
        } finally {
          closeSync(r);
          closeSync(w);
        }
        assert.throws(() => (native() as unknown as { startWriteback(...a: unknown[]): number }).startWriteback(-1, 0, 1), TypeError);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });

  describe('argument errors: thrown, never a silent undefined, never an abort', () => {
    type Loose = Record<'mount' | 'umount' | 'socketInNetns' | 'spawn' | 'spawnAsync' | 'pinNamespaces', (...a: unknown[]) => unknown>;
    const sys = () => native() as unknown as Loose;

    it('mount and umount refuse flags that are not numbers, and out-of-range flags', async () => {
      assert.throws(() => sys().mount('tmpfs', dir, 'tmpfs', '0', ''), TypeError);
      assert.throws(() => sys().mount('tmpfs', dir, 'tmpfs', undefined, ''), TypeError);
      assert.throws(() => sys().mount('tmpfs', dir, 'tmpfs', -1, ''), RangeError);
      assert.throws(() => sys().mount('tmpfs', dir, 'tmpfs', 2 ** 32, ''), RangeError);
      assert.throws(() => sys().mount('tmpfs', dir, 'tmpfs', 1.5, ''), RangeError);
      assert.throws(() => sys().umount(dir, 'x'), TypeError);
      assert.throws(() => sys().umount(dir, null), TypeError);
      // 2^32 + MNT_DETACH used to reach umount2 as MNT_DETACH.
      assert.throws(() => sys().umount(dir, 2 ** 32 + MNT.DETACH), RangeError);
      assert.throws(() => sys().umount(dir, -1), RangeError);
      assert.ok(!(await isMountPoint(dir)));
    });

    it('pinNamespaces refuses no namespace at all, a hostname without a UTS namespace and lo without a network namespace, pinning nothing', () => {
      assert.throws(() => native().pinNamespaces(null, null, null, null, false), /no namespace to pin/);
      assert.throws(() => native().pinNamespaces(join(dir, 'net'), null, null, 'pod', false), /needs a new UTS namespace/);
      assert.throws(() => native().pinNamespaces(null, join(dir, 'ipc'), null, null, true), /loopbackUp needs a new network namespace/);
      assert.throws(() => sys().pinNamespaces(join(dir, 'net'), null, null, null, 'yes'), /loopbackUp must be a boolean/);
      assert.throws(() => sys().pinNamespaces(42, null, null, null, false), TypeError);
    });

    it('socketInNetns refuses a family other than 4 or 6, and a path that is not a string', () => {
      assert.throws(() => sys().socketInNetns('/proc/self/ns/net', 5), TypeError);
      assert.throws(() => sys().socketInNetns('/proc/self/ns/net', '4'), TypeError);
      assert.throws(() => sys().socketInNetns(42, 4), TypeError);
    });

    it('spawn refuses descriptors that are not integers and a setsid that is not a boolean, starting nothing', () => {
      assert.throws(() => sys().spawn('true', ['true'], [], null, ['0'], false), TypeError);
      assert.throws(() => sys().spawn('true', ['true'], [], null, [1.5], false), RangeError);
      assert.throws(() => sys().spawn('true', ['true'], [], null, [-2], false), RangeError);
      assert.throws(() => sys().spawn('true', ['true'], [], null, [], 'yes'), TypeError);
      assert.throws(() => sys().spawnAsync('/bin/true', ['true'], [], null, ['0'], false), TypeError);
      assert.throws(() => sys().spawnAsync('/bin/true', ['true'], [], null, [1.5], false), RangeError);
      assert.throws(() => sys().spawnAsync('/bin/true', ['true'], [], null, [], 'yes'), TypeError);
      assert.throws(() => sys().spawnAsync('/bin/true', 'true', [], null, [], false), TypeError);
    });
  });
});
