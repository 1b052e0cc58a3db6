/**
 * The container's CRI log file stays inside its pod's log directory (found by the gRPC
 * fuzz test: a log_path with ".." made conmon write wherever it pointed).
 */
import assert from 'node:assert/strict';
import { containerLogPath } from '../../../src/containers/log-path.js';

describe('containerLogPath', () => {
  it('joins the log path to the pod log directory', () => {
    assert.equal(containerLogPath('/var/log/pods/ns_p_u', 'c/0.log'), '/var/log/pods/ns_p_u/c/0.log');
    assert.equal(containerLogPath('/var/log/pods/ns_p_u', '/c/0.log'), '/var/log/pods/ns_p_u/c/0.log');
    assert.equal(containerLogPath('/logs', 'a/../b.log'), '/logs/b.log');
    assert.equal(containerLogPath('/logs', '..x.log'), '/logs/..x.log');
  });

  it('is undefined when either is empty (the log stays in the bundle)', () => {
    assert.equal(containerLogPath('', 'c.log'), undefined);
    assert.equal(containerLogPath('/logs', ''), undefined);
  });

  it('refuses a path out of the directory, the directory itself, and a relative directory', () => {
    for (const p of ['../x.log', 'a/../../x.log', '../../../../etc/cron.d/x', '.', 'a/..', '..']) {
      assert.throws(() => containerLogPath('/logs/pod', p), { kind: 'InvalidArgument', message: /config\.log_path .* inside the pod's log_directory/ }, p);
    }
    assert.throws(() => containerLogPath('logs', 'c.log'), { kind: 'InvalidArgument', message: /log_directory "logs" is not an absolute path/ });
  });
});
