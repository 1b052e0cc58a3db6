/**
 * ConmonShim's pure parts: the conmon command line it builds and the sync-pipe messages
 * it parses. The shim against the real conmon and runc is in test/integration/shim.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { BerthError } from '../../../src/common/errors.js';
import { OciRuntime } from '../../../src/oci/oci-runtime.js';
import { ConmonShim } from '../../../src/shim/conmon.js';
import { parseSync, shimAlive } from '../../../src/shim/conmon-process.js';
import type { ShimCreateOptions } from '../../../src/shim/shim.js';

describe('ConmonShim command line and sync pipe (pure)', () => {
  it('builds the conmon command line', () => {
    const o: ShimCreateOptions = {
      id: 'c1',
      bundle: '/b',
      runtime: new OciRuntime({ handler: 'runc', path: '/usr/sbin/runc', root: '/s/runc' }),
      logPath: '/l/0.log',
      terminal: true,
      stdin: true,
      stdinOnce: false,
    };
    const dirs = { exitDir: '/r/exits', socketDir: '/r/attach', persistRoot: '/r/conmon' };
    const args = new ConmonShim({ noPivot: true, dirs }).conmonArgs(o);
    const pairs = { get: (flag: string): string | undefined => args[args.indexOf(flag) + 1] };
    assert.equal(pairs.get('--runtime-arg'), '--root=/s/runc');
    assert.equal(pairs.get('--log-path'), 'k8s-file:/l/0.log');
    assert.equal(pairs.get('--exit-dir'), '/r/exits');
    assert.equal(pairs.get('--conmon-pidfile'), '/r/conmon/c1/conmon.pid');
    for (const f of ['--terminal', '--stdin', '--leave-stdin-open', '--no-pivot']) assert.ok(args.includes(f), f);
    assert.equal(pairs.get('--runtime'), '/usr/sbin/runc');
    assert.equal(pairs.get('--persist-dir'), '/r/conmon/c1');
    assert.equal(pairs.get('--socket-dir-path'), '/r/attach');
    assert.ok(!new ConmonShim({ dirs }).conmonArgs({ ...o, stdinOnce: true }).includes('--leave-stdin-open'));
  });

  it('parses the legacy and API v1 sync messages', () => {
    assert.deepEqual(parseSync('{"pid": 42}'), { pid: 42 });
    assert.deepEqual(parseSync('{"data": 42}'), { pid: 42 });
    assert.deepEqual(parseSync('{"pid": -1, "message": "boom\\n"}'), { pid: -1, message: 'boom\n' });
    assert.equal(parseSync(undefined), undefined);
    assert.throws(() => parseSync('nope'), BerthError);
  });

  it('tells a live shim by pid and container id, again from its stat alone, and not once it is gone', async () => {
    const id = `shim-alive-${process.pid}`;
    const p = spawn('sh', ['-c', 'sleep 30; :', id], { stdio: 'ignore' });
    await once(p, 'spawn');
    try {
      assert.equal(shimAlive(p.pid!, id), true);
      assert.equal(shimAlive(p.pid!, id), true, 'the second check, its command line remembered');
      assert.equal(shimAlive(p.pid!, 'another-container'), false, 'another container is not named on its command line');
      assert.equal(shimAlive(p.pid!, id), true);
      assert.equal(shimAlive(null, id), false);
    } finally {
      p.kill('SIGKILL');
      await once(p, 'exit');
    }
    assert.equal(shimAlive(p.pid!, id), false);
  });
});
