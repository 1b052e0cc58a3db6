/**
 * systemd's notify protocol (common/sd-notify.ts) spoken to a real unix datagram socket,
 * by path and abstract name, and its silence without $NOTIFY_SOCKET.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../../src/common/logger.js';
import { SystemdNotifier } from '../../../src/common/sd-notify.js';
import { fields, NotifyListener } from '../../helpers/notify-socket.js';

describe('common/sd-notify', () => {
  let dir: string;
  const lines: string[] = [];
  const log = createLogger('debug', (l) => void lines.push(l));
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-notify-'));
    lines.length = 0;
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  for (const kind of ['path', 'abstract'] as const) {
    it(`sends READY, RELOADING with MONOTONIC_USEC, and STOPPING to a ${kind} socket`, async () => {
      const where = kind === 'path' ? join(dir, 'notify.sock') : `@berth-test-notify-${process.pid}`;
      const listener = NotifyListener.open(where);
      try {
        const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: where, OTHER: 'x' };
        const n = SystemdNotifier.fromEnvironment(log, env);
        assert.deepEqual(env, { OTHER: 'x' }, 'children do not inherit NOTIFY_SOCKET');
        n.ready('serving on /x.sock');
        n.reloading();
        n.stopping('stopping\non SIGTERM');
        await listener.waitFor(/STOPPING/);
        const [ready, reloading, stopping] = listener.messages.map(fields);
        assert.deepEqual(ready, { READY: '1', STATUS: 'serving on /x.sock' });
        assert.equal(reloading!.RELOADING, '1');
        assert.ok(Number(reloading!.MONOTONIC_USEC) > 0);
        assert.deepEqual(stopping, { STOPPING: '1', STATUS: 'stopping on SIGTERM' }, 'a value stays on one line');
        assert.deepEqual(lines, []);
      } finally {
        listener.close();
      }
    });
  }

  it('does nothing without NOTIFY_SOCKET, and warns once when the socket is gone', () => {
    SystemdNotifier.fromEnvironment(log, {}).ready('x');
    assert.deepEqual(lines, []);
    const n = SystemdNotifier.fromEnvironment(log, { NOTIFY_SOCKET: join(dir, 'gone.sock') });
    n.ready('x');
    n.stopping('y');
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /cannot notify systemd.*ENOENT|cannot notify systemd.*no such file/i);
  });
});
