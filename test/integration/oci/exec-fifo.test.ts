/**
 * startThroughExecFifo against a state dir laid out as runc lays it out (state.json and
 * exec.fifo), with real processes standing in for the container's init. Each holds the
 * fifo open by an O_PATH descriptor, as runc's init does until it execs, and then: opens it
 * for writing and writes its byte (runc's init), or never does and dies, or never does and
 * lives. The real runc cases are in oci-runtime.test.ts.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../../../src/common/errors.js';
import { processStartTicks } from '../../../src/common/proc-stat.js';
import { startThroughExecFifo } from '../../../src/oci/exec-fifo.js';
import { until } from '../../helpers/berthd.js';
import { assertNoNewFds, openFdTargets } from '../../helpers/fds.js';

/** O_PATH (x86_64, aarch64): a descriptor that names a file without opening it. */
const O_PATH = 0o10000000;

/** The stand-in inits: `hold` keeps the O_PATH descriptor, then `write` opens for writing (blocking until a reader), writes "0", and lets go of both. */
const INIT = `
const fs = require('node:fs');
const [fifo, mode] = process.argv.slice(1);
const held = fs.openSync(fifo, ${O_PATH});
if (mode === 'write') {
  const w = fs.openSync(fifo, fs.constants.O_WRONLY);
  fs.writeSync(w, '0');
  fs.closeSync(w);
  fs.closeSync(held);
}
if (mode === 'none') fs.closeSync(held);
setInterval(() => undefined, 1000);
`;

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

  /** Whether process `pid` holds the fifo. */
  function holdsFifo(pid: number): boolean {
    const { dev, ino } = statSync(fifo);
    return readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        const s = statSync(`/proc/${pid}/fd/${fd}`);
        return s.dev === dev && s.ino === ino;
      } catch {
        return false;
      }
    });
  }

  /** A stand-in init (`mode`: write, hold or none); state.json names it, with `hooks` as runc writes them. */
  async function init(mode: 'write' | 'hold' | 'none', hooks: unknown = { prestart: null, poststart: null, poststop: null }): Promise<ChildProcess> {
    const c = spawn(process.execPath, ['-e', INIT, fifo, mode], { stdio: 'ignore' });
    children.push(c);
    await new Promise((resolve, reject) => c.once('spawn', resolve).once('error', reject));
    await until(async () => ((mode === 'none' ? existsSync(`/proc/${c.pid}`) : holdsFifo(c.pid!)) ? true : undefined));
    const start = processStartTicks(c.pid!);
    assert.ok(start !== undefined);
    writeFileSync(join(dir, 'state.json'), JSON.stringify({ id: 'c1', init_process_pid: c.pid, init_process_start: Number(start), config: { Hooks: hooks } }));
    return c;
  }

  it('an init that writes its byte and closes the fifo is started: the fifo removed, the init let go, no descriptor kept', async () => {
    const before = openFdTargets();
    const c = await init('write');
    assert.deepEqual(await startThroughExecFifo(dir, { timeoutMs: 10_000 }), { started: true });
    assert.ok(!existsSync(fifo));
    assert.equal(c.exitCode, null, 'the init goes on');
    await assertNoNewFds(before);
  });

  it('an init that dies without writing: not started, `runc start` is left to answer; the fifo stays', async () => {
    const before = openFdTargets();
    const c = await init('hold');
    setTimeout(() => c.kill('SIGKILL'), 200);
    const r = await startThroughExecFifo(dir, { timeoutMs: 10_000, pollMs: 20 });
    assert.equal(r.started, false);
    assert.match((r as { reason: string }).reason, /ended without writing/);
    assert.ok(existsSync(fifo));
    await assertNoNewFds(before);
  });

  it('an init that never writes: DeadlineExceeded after the timeout, the descriptor closed', async () => {
    const before = openFdTargets();
    await init('hold');
    await assert.rejects(startThroughExecFifo(dir, { timeoutMs: 300, pollMs: 20 }), (err: unknown) => {
      assert.ok(err instanceof BerthError);
      assert.equal(err.kind, 'DeadlineExceeded');
      assert.match(err.message, /did not answer/);
      return true;
    });
    await assertNoNewFds(before);
  });

  it('an init no longer holding its fifo (an earlier start cut off before removing it): the start is finished, the fifo removed', async () => {
    await init('none');
    assert.deepEqual(await startThroughExecFifo(dir, { timeoutMs: 1000 }), { started: true });
    assert.ok(!existsSync(fifo));
  });

  it('is not tried (nothing opened, the init still waiting) with hooks, a dead or different init, no fifo, or no state', async () => {
    const c = await init('write', { prestart: null, poststart: [{ path: '/bin/true' }] });
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
    // The init was never let go: it still holds the fifo, waiting for a reader.
    assert.ok(holdsFifo(c.pid!));
    await rm(fifo);
    writeFileSync(fifo, '0');
    await init('none');
    r = await startThroughExecFifo(dir, { timeoutMs: 1000 });
    assert.match((r as { reason: string }).reason, /is not a fifo/);
  });
});
