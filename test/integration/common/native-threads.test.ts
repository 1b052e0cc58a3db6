/**
 * The native addon when the node has no thread to give: a child Node process that loaded
 * the addon is put in a pids cgroup of the test's own whose pids.max equals its thread
 * count, so its next pthread_create fails for real (EAGAIN). The addon calls that make a
 * thread (socketInNetns; attachConmon, whose bridge thread every attach adds; spawnAsync,
 * whose thread spawns the child and waits for it) must throw
 * and leak no fd, and the process must live on (an abort() would kill it, and with it
 * berthd) and work again once threads are free. Root; cgroup v1 pids or v2; python3 makes
 * the SOCK_SEQPACKET listener conmon's attach socket would be.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const NATIVE = fileURLToPath(new URL('../../../src/common/native.js', import.meta.url));

/** Where a pids cgroup can be made: the v1 pids hierarchy, or the v2 one with the pids controller on. */
function pidsRoot(): string | undefined {
  if (existsSync('/sys/fs/cgroup/pids/cgroup.procs')) return '/sys/fs/cgroup/pids';
  for (const d of ['/sys/fs/cgroup/unified', '/sys/fs/cgroup']) {
    try {
      if (readFileSync(join(d, 'cgroup.subtree_control'), 'utf8').split(' ').includes('pids')) return d;
    } catch {
      // not a v2 hierarchy
    }
  }
  return undefined;
}

/** The child: loads the addon, fills libuv's pool, then runs each command line it is sent and answers in JSON. */
const CHILD = `
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
const { loadNative, native } = await import(${JSON.stringify(NATIVE)});
loadNative();
// Every pool thread exists before the limit: libuv starts them all at its first use.
await Promise.all(Array.from({ length: 8 }, () => readFile('/proc/self/stat')));
const { closeSync, readdirSync } = await import('node:fs');
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
say({ ready: true });
for await (const line of createInterface({ input: process.stdin })) {
  if (line === 'socketInNetns') {
    try {
      const fd = native().socketInNetns('/proc/self/ns/net', 4);
      closeSync(fd);
      say({ ok: true });
    } catch (err) {
      say({ ok: false, code: err.code, message: err.message });
    }
  } else if (line.startsWith('attachConmon ')) {
    try {
      const fd = native().attachConmon(line.slice('attachConmon '.length));
      closeSync(fd);
      say({ ok: true });
    } catch (err) {
      say({ ok: false, code: err.code, message: err.message });
    }
  } else if (line === 'spawnAsync') {
    try {
      const [r, w] = native().pipe();
      let started;
      try {
        started = native().spawnAsync('/bin/true', ['true'], [], null, [-1, w, w], false);
      } finally {
        closeSync(r);
        closeSync(w);
      }
      const child = await started;
      const [code] = await child.exited;
      say({ ok: code === 0 });
    } catch (err) {
      say({ ok: false, code: err.code, message: err.message });
    }
  } else if (line === 'fds') {
    say({ fds: readdirSync('/proc/self/fd').length });
  } else if (line === 'exit') {
    process.exit(0);
  }
}
`;

describe('common/sys: the native addon without threads to spare', function () {
  this.timeout(30_000);
  let child: ChildProcess | undefined;
  let listener: ChildProcess | undefined;
  let cgroup: string | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    if (listener && listener.exitCode === null && listener.signalCode === null) {
      listener.kill('SIGKILL');
      await once(listener, 'exit');
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
    if (cgroup && existsSync(cgroup)) rmdirSync(cgroup);
    child = listener = cgroup = dir = undefined;
  });

  it('a failed pthread_create makes socketInNetns, attachConmon and spawnAsync throw EAGAIN; the process lives and works once threads are free', async function () {
    const root = pidsRoot();
    if (process.getuid?.() !== 0 || !root) this.skip();
    dir = mkdtempSync(join(tmpdir(), 'berth-threads-'));
    const LISTEN =
      'import socket,sys,time\ns=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\ns.bind(sys.argv[1])\ns.listen(64)\nprint("ok",flush=True)\ntime.sleep(120)';
    listener = spawn('python3', ['-c', LISTEN, join(dir, 'attach')], { stdio: ['ignore', 'pipe', 'inherit'] });
    await once(listener.stdout!, 'data');
    cgroup = join(root, `berth-test-threads-${randomBytes(4).toString('hex')}`);
    mkdirSync(cgroup);
    child = spawn(process.execPath, ['--input-type=module', '-e', CHILD], { stdio: ['pipe', 'pipe', 'inherit'] });
    const answers = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    const next = async (): Promise<Record<string, unknown>> => {
      const r = await answers.next();
      assert.ok(!r.done, 'the child answers');
      return JSON.parse(r.value as string) as Record<string, unknown>;
    };
    const ask = async (cmd: string): Promise<Record<string, unknown>> => {
      child!.stdin!.write(`${cmd}\n`);
      return next();
    };
    assert.deepEqual(await next(), { ready: true });
    assert.deepEqual(await ask('socketInNetns'), { ok: true }, 'it works with threads to spare');
    assert.deepEqual(await ask('spawnAsync'), { ok: true }, 'a spawn on a helper thread works with threads to spare');
    // (Not attachConmon yet: its bridge thread lives on a while and would skew the count below.)
    const fds = (await ask('fds')).fds;

    writeFileSync(join(cgroup, 'cgroup.procs'), String(child.pid));
    const threads = Number(readFileSync(join(cgroup, 'pids.current'), 'utf8'));
    assert.ok(threads > 1, `the child's threads are counted (${threads})`);
    writeFileSync(join(cgroup, 'pids.max'), String(threads));

    for (let i = 0; i < 3; i++) {
      const failed = await ask('socketInNetns');
      assert.equal(failed.ok, false, `call ${i + 1} without a thread to spare fails`);
      assert.equal(failed.code, 'EAGAIN', String(failed.message));
      assert.match(String(failed.message), /pthread_create/);
      const attach = await ask(`attachConmon ${dir}`);
      assert.equal(attach.ok, false, `attach ${i + 1} without a thread to spare fails`);
      assert.equal(attach.code, 'EAGAIN', String(attach.message));
      assert.match(String(attach.message), /pthread_create/);
      const spawned = await ask('spawnAsync');
      assert.equal(spawned.ok, false, `spawn ${i + 1} without a thread to spare fails`);
      assert.equal(spawned.code, 'EAGAIN', String(spawned.message));
      assert.match(String(spawned.message), /pthread_create/);
    }
    assert.equal((await ask('fds')).fds, fds, 'no fd is left by the failed calls');
    assert.equal(child.exitCode, null, 'the process lives');
    assert.equal(child.signalCode, null);
    const events = readFileSync(join(cgroup, existsSync(join(cgroup, 'pids.events')) ? 'pids.events' : 'pids.max'), 'utf8');
    if (/^max \d+/m.test(events)) assert.ok(Number(/^max (\d+)/m.exec(events)![1]) >= 3, `the kernel refused the threads: ${events}`);

    writeFileSync(join(cgroup, 'pids.max'), 'max');
    assert.deepEqual(await ask('socketInNetns'), { ok: true }, 'it works again once threads are free');
    assert.deepEqual(await ask(`attachConmon ${dir}`), { ok: true }, 'attach works again once threads are free');
    assert.deepEqual(await ask('spawnAsync'), { ok: true }, 'a spawn works again once threads are free');
    child.stdin!.write('exit\n');
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 0);
  });
});
