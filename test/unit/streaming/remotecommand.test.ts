/**
 * The remote command protocol's pure parts: version negotiation, the channels a client
 * must open, and the v4 status documents kubelet's client decodes.
 */
import assert from 'node:assert/strict';
import { errorStatusV4, expectedChannels, negotiate, statusV4 } from '../../../src/streaming/remotecommand.js';

describe('streaming: remote command protocol', () => {
  it('takes the first version of the client’s list that berth speaks', () => {
    assert.equal(negotiate(['v5.channel.k8s.io', 'v4.channel.k8s.io', 'v3.channel.k8s.io']), 'v4.channel.k8s.io');
    assert.equal(negotiate([' v3.channel.k8s.io', 'v4.channel.k8s.io']), 'v3.channel.k8s.io');
    assert.equal(negotiate(['channel.k8s.io']), undefined);
    assert.equal(negotiate([]), undefined);
  });

  it('expects error always, the asked-for stdio, no stderr with a terminal, resize from v3 on', () => {
    const set = (s: Set<string>): string[] => [...s].sort();
    assert.deepEqual(set(expectedChannels('v4.channel.k8s.io', { stdin: false, stdout: true, stderr: true, tty: false })), ['error', 'stderr', 'stdout']);
    assert.deepEqual(set(expectedChannels('v4.channel.k8s.io', { stdin: true, stdout: true, stderr: true, tty: true })), [
      'error',
      'resize',
      'stdin',
      'stdout',
    ]);
    assert.deepEqual(set(expectedChannels('v2.channel.k8s.io', { stdin: true, stdout: true, stderr: false, tty: true })), ['error', 'stdin', 'stdout']);
  });

  it('writes metav1.Status: Success, or NonZeroExitCode with the code as an ExitCode cause', () => {
    assert.deepEqual(JSON.parse(statusV4(0)), { metadata: {}, status: 'Success' });
    const f = JSON.parse(statusV4(3)) as { status: string; reason: string; details: { causes: Array<{ reason: string; message: string }> } };
    assert.equal(f.status, 'Failure');
    assert.equal(f.reason, 'NonZeroExitCode');
    assert.deepEqual(f.details.causes, [{ reason: 'ExitCode', message: '3' }]);
    const e = JSON.parse(errorStatusV4('runc exec failed')) as { status: string; message: string };
    assert.deepEqual([e.status, e.message], ['Failure', 'runc exec failed']);
  });
});
