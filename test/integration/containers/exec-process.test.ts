/**
 * Killing an exec's processes by pid (src/containers/exec-process.ts) with real processes:
 * a pid that now names another process (pid reuse, made real through the kernel's
 * ns_last_pid as root) is never signalled, nor is a process the pid file names that is
 * not the exec's; the exec's own command and its descendants are.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExecProcess, identify, killIfSame, killTree } from '../../../src/containers/exec-process.js';

const NS_LAST_PID = '/proc/sys/kernel/ns_last_pid';

describe('containers: exec processes and pid reuse', () => {
  const started: ChildProcess[] = [];
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-exec-pid-'))));
  afterEach(async () => {
    for (const p of started.splice(0)) {
      if (p.exitCode === null && p.signalCode === null) {
        p.kill('SIGKILL');
        await once(p, 'exit');
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });

  const run = (file: string, ...args: string[]): ChildProcess => {
    const p = spawn(file, args, { stdio: 'ignore' });
    started.push(p);
    return p;
  };
  const alive = (p: ChildProcess): boolean => p.exitCode === null && p.signalCode === null;
  const killAndReap = async (p: ChildProcess): Promise<void> => {
    p.kill('SIGKILL');
    await once(p, 'exit');
  };

  it('a pid reused by a new process is not signalled: its start time differs from the one recorded', async function () {
    const first = run('sleep', '1000');
    const recorded = identify(first.pid!);
    assert.ok(recorded, 'the first process is identified');
    await killAndReap(first);
    // A new process on the same pid: the kernel gives the next fork ns_last_pid + 1.
    // Other processes on the machine may take it first, hence the retries; ticks are 10 ms.
    await sleep(30);
    let second: ChildProcess | undefined;
    for (let i = 0; i < 200 && !second; i++) {
      writeFileSync(NS_LAST_PID, String(recorded.pid - 1));
      const p = run('sleep', '1000');
      if (p.pid === recorded.pid) second = p;
      else await killAndReap(p);
    }
    if (!second) this.skip();
    const now = identify(second.pid!);
    assert.ok(now && now.startTicks !== recorded.startTicks, 'the new process has another start time');
    assert.equal(killIfSame(recorded), false);
    assert.equal(killTree(recorded), 0);
    await sleep(100);
    assert.ok(alive(second), 'the process now on the pid was not killed');
    assert.equal(killIfSame(now), true, 'the process it is now is killed under its own identity');
    await once(second, 'exit');
    assert.equal(second.signalCode, 'SIGKILL');
  });

  it('a recorded identity whose start time no longer matches (an earlier process on the pid) kills nothing', async () => {
    const p = run('sleep', '1000');
    const id = identify(p.pid!)!;
    assert.equal(killIfSame({ pid: id.pid, startTicks: id.startTicks - 1n }), false);
    assert.equal(killTree({ pid: id.pid, startTicks: id.startTicks - 1n }), 0);
    await sleep(100);
    assert.ok(alive(p));
    assert.equal(killTree(id), 1);
    await once(p, 'exit');
  });

  it("an exec's command and all it started are killed, found through the pid file and the runtime's child", async () => {
    const pidFile = join(dir, 'pid');
    // The shell stands in for `runc exec`: it starts the command (a shell with two children
    // of its own), writes its pid to the pid file and waits for it, as runc does.
    const runtime = run('sh', '-c', `sh -c 'sleep 1000 & sleep 1000 & wait' & echo $! > ${pidFile}; wait`);
    const exited = once(runtime, 'exit');
    const cmd = new ExecProcess(pidFile, runtime.pid!, exited);
    const recorded = await waitFor(() => cmd.process);
    assert.ok(identify(recorded.pid, runtime.pid), 'the command is the runtime client’s child');
    assert.equal(cmd.kill(), 3, 'the command and its two children');
    await exited;
  });

  it('a pid file naming a process that is not the runtime client’s child kills nothing', async () => {
    const pidFile = join(dir, 'pid');
    const bystander = run('sleep', '1000');
    writeFileSync(pidFile, `${bystander.pid}\n`);
    const runtime = run('sleep', '1000');
    const cmd = new ExecProcess(pidFile, runtime.pid!, once(runtime, 'exit'));
    await sleep(50);
    assert.equal(cmd.process, undefined, 'not recorded');
    assert.equal(cmd.kill(), 0);
    await sleep(100);
    assert.ok(alive(bystander), 'the bystander lives');
  });
});

async function waitFor<T>(f: () => T | undefined, ms = 5000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error('timed out');
    await sleep(10);
  }
}
