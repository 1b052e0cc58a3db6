/**
 * startThroughExecFifo against a state dir laid out as runc lays it out (state.json and
 * exec.fifo), with real processes standing in for the container's init: one that opens
 * the fifo and writes its byte as runc's init does, one that never does and dies, one that
 * never does and lives. The real runc cases are in oci-runtime.test.ts.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../../../src/common/errors.js';
import { processStartTicks } from '../../../src/common/proc-stat.js';
import { startThroughExecFifo } from '../../../src/oci/exec-fifo.js';

describe('startThroughExecFifo (a runc-shaped state dir, real processes)', function () {
  this.timeout(20_000);
  let dir: string;
  let fifo: string;
  const children: ChildProcess[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-exec-fifo-'));
    fifo = join(dir, 'exec.fifo');
    assert.equal(spawnSync('mkfifo', ['-m', '0622', fifo]).status, 0);
  });
  afterEach(async () => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  /** A process standing in for the init; state.json names it (with `hooks` as runc writes them). */
  async function init(script: string, hooks: unknown = { prestart: null, poststart: null, poststop: null }): Promise<ChildProcess> {
    const c = spawn('sh', ['-c', script, 'sh', fifo], { stdio: 'ignore' });
    children.push(c);
    await new Promise((resolve, reject) => c.once('spawn', resolve).once('error', reject));
    const start = processStartTicks(c.pid!);
    assert.ok(start !== undefined);
    writeFileSync(join(dir, 'state.json'), JSON.stringify({ id: 'c1', init_process_pid: c.pid, init_process_start: Number(start), config: { Hooks: hooks } }));
    return c;
  }

  const fds = (): string[] =>
    readdirSync('/proc/self/fd').flatMap((fd) => {
      try {
        return [`${fd} -> ${readlinkSync(`/proc/self/fd/${fd}`)}`];
      } catch {
        return [];
      }
    });

  it('an init that writes its byte and closes the fifo is started: the fifo removed, the init let go, no descriptor kept', async () => {
    const before = fds();
    // As runc's init: open for writing (blocks until a reader), write one byte, close, go on.
    const c = await init('exec 3>"$1"; printf 0 >&3; exec 3>&-; exec sleep 30');
    assert.deepEqual(await startThroughExecFifo(dir, { timeoutMs: 10_000 }), { started: true });
    assert.ok(!existsSync(fifo));
    assert.equal(c.exitCode, null, 'the init goes on');
    assert.deepEqual(fds(), before);
  });

  it('an init that dies without writing: not started, `runc start` is left to answer; the fifo stays', async () => {
    const before = fds();
    const c = await init('exec sleep 30');
    setTimeout(() => c.kill('SIGKILL'), 200);
    const r = await startThroughExecFifo(dir, { timeoutMs: 10_000, pollMs: 20 });
    assert.equal(r.started, false);
    assert.match((r as { reason: string }).reason, /ended without writing/);
    assert.ok(existsSync(fifo));
    assert.deepEqual(fds(), before);
  });

  it('an init that never writes: DeadlineExceeded after the timeout, the descriptor closed', async () => {
    const before = fds();
    await init('exec sleep 30');
    await assert.rejects(startThroughExecFifo(dir, { timeoutMs: 300, pollMs: 20 }), (err: unknown) => {
      assert.ok(err instanceof BerthError);
      assert.equal(err.kind, 'DeadlineExceeded');
      assert.match(err.message, /did not answer/);
      return true;
    });
    assert.deepEqual(fds(), before);
  });

  it('is not tried (nothing opened, the init still blocked) with hooks, a dead or different init, no fifo, or no state', async () => {
    const c = await init('exec 3>"$1"; printf 0 >&3; exec 3>&-; exec sleep 30', { prestart: null, poststart: [{ path: '/bin/true' }] });
    let r = await startThroughExecFifo(dir, { timeoutMs: 1000 });
    assert.deepEqual(r, { started: false, reason: 'the container has poststart hooks' });
    // Another process's start time under the init's pid: a pid reused.
    writeFileSync(join(dir, 'state.json'), JSON.stringify({ init_process_pid: c.pid, init_process_start: Number(processStartTicks(c.pid!)) + 1, config: {} }));
    r = await startThroughExecFifo(dir, { timeoutMs: 1000 });
    assert.match((r as { reason: string }).reason, /is not alive/);
    writeFileSync(join(dir, 'state.json'), '{"init_process_pid": "x"}');
    r = await startThroughExecFifo(dir, { timeoutMs: 1000 });
    assert.match((r as { reason: string }).reason, /names no init pid/);
    await rm(join(dir, 'state.json'));
    r = await startThroughExecFifo(dir, { timeoutMs: 1000 });
    assert.match((r as { reason: string }).reason, /ENOENT/);
    // The init was never let go: it still waits for a reader.
    assert.equal(c.exitCode, null);
    assert.ok(existsSync(fifo));
    await rm(fifo);
    writeFileSync(fifo, '0');
    await init('exec sleep 30');
    r = await startThroughExecFifo(dir, { timeoutMs: 1000 });
    assert.match((r as { reason: string }).reason, /is not a fifo/);
  });
});
