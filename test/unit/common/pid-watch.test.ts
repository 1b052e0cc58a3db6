/**
 * Exit watches of processes that are not berthd's children (common/pid-watch.ts, the
 * addon's watchExit): the exit of a SIGKILLed process is told once, a watch closed first
 * tells nothing, a pid with no process is 'gone', and no descriptor is left behind.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { watchExit, type ExitWatch } from '../../../src/common/pid-watch.js';
import { assertNoNewFds, openFdTargets } from '../../helpers/fds.js';

/** A `sleep` whose parent (a shell) has exited: not this process's child, as a shim is not berthd's. */
function orphanSleeper(): number {
  const pid = Number(execFileSync('sh', ['-c', 'sleep 60 >/dev/null 2>&1 </dev/null & echo $!'], { encoding: 'utf8' }).trim());
  assert.ok(pid > 0);
  return pid;
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('common/pid-watch: exit watches through pidfds', () => {
  const left: number[] = [];
  afterEach(() => {
    for (const pid of left.splice(0)) if (alive(pid)) process.kill(pid, 'SIGKILL');
  });

  it('tells the exit of a process killed with SIGKILL, once, and closes its descriptor', async () => {
    const before = openFdTargets();
    const pid = orphanSleeper();
    left.push(pid);
    let told = 0;
    // The watch is kept referenced until the exit is told: a collected handle closes it.
    let w: ReturnType<typeof watchExit> | undefined;
    const exited = new Promise<void>((resolve) => {
      w = watchExit(pid, () => {
        told++;
        resolve();
      });
      assert.ok(w !== undefined && w !== 'gone', 'this kernel has pidfds');
    });
    assert.ok(
      openFdTargets().some((fd) => fd.endsWith('anon_inode:[pidfd]')),
      'the watch holds a pidfd while the process runs',
    );
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(told, 0, 'nothing is told while it runs');
    process.kill(pid, 'SIGKILL');
    await exited;
    assert.ok(w !== undefined, 'the watch was held to the end');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(told, 1);
    await assertNoNewFds(before);
  });

  it('a watch closed before the exit tells nothing, and closing twice is harmless', async () => {
    const before = openFdTargets();
    const pid = orphanSleeper();
    left.push(pid);
    let told = 0;
    const w = watchExit(pid, () => told++) as ExitWatch;
    w.close();
    w.close();
    process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(told, 0);
    await assertNoNewFds(before);
  });

  it("answers 'gone' for a pid with no process, and undefined for a pid that names none", () => {
    const pid = orphanSleeper();
    process.kill(pid, 'SIGKILL');
    // Reaped by whoever adopted it; until then it is a zombie, whose pidfd is readable at once.
    const w = watchExit(pid, () => undefined);
    if (w !== 'gone') (w as ExitWatch).close();
    assert.equal(
      watchExit(2 ** 22 + 1, () => undefined),
      'gone',
      'above the largest pid the kernel hands out',
    );
    assert.equal(
      watchExit(0, () => undefined),
      undefined,
    );
    assert.equal(
      watchExit(-1, () => undefined),
      undefined,
    );
  });

  it('leaves no descriptor after many watches, told or closed', async () => {
    const before = openFdTargets();
    const pids = Array.from({ length: 20 }, orphanSleeper);
    left.push(...pids);
    let told = 0;
    const watches = pids.map((pid) => watchExit(pid, () => told++) as ExitWatch);
    for (const w of watches.slice(10)) w.close();
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 250 && told < 10; i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(told, 10, 'each open watch told its exit once; the closed ones nothing');
    await assertNoNewFds(before);
  });
});
