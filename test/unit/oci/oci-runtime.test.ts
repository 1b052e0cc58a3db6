/**
 * OciRuntime: the parsing of a runtime's error output and its command lines (pure).
 */
import assert from 'node:assert/strict';
import { BerthError } from '../../../src/common/errors.js';
import { OciRuntime, OciRuntimes } from '../../../src/oci/oci-runtime.js';
import { OciRuntimeError, runtimeErrorKind, runtimeFailure, runtimeMessage } from '../../../src/oci/runtime-errors.js';

describe('OciRuntime error output (pure)', () => {
  it('keeps the msg of runc logrus lines, unescaped, and plain lines as they are', () => {
    assert.equal(runtimeMessage('time="2024-01-01T00:00:00Z" level=error msg="container does not exist"\n'), 'container does not exist');
    assert.equal(runtimeMessage('time="x" level=error msg="exec: \\"/x\\": stat /x: no such file"\n'), 'exec: "/x": stat /x: no such file');
    assert.equal(runtimeMessage('plain text\n'), 'plain text');
    assert.equal(runtimeMessage('time="a" level=warning msg="one"\ntime="b" level=error msg="two"\n'), 'one; two');
    assert.equal(runtimeMessage(''), '');
  });

  it('gives each failure a kind from its message', () => {
    assert.equal(runtimeErrorKind('container does not exist'), 'NotFound');
    assert.equal(runtimeErrorKind('container "x" not found'), 'NotFound');
    assert.equal(runtimeErrorKind('exec: "sh": executable file not found in $PATH'), 'Internal');
    assert.equal(runtimeErrorKind('cannot delete container that is not stopped: running'), 'FailedPrecondition');
    assert.equal(runtimeErrorKind('container is paused'), 'FailedPrecondition');
    assert.equal(runtimeErrorKind('something else broke'), 'Internal');
  });

  it("builds one error: the command in the message, the runtime's words as detail, the exit when it said nothing", () => {
    const e = runtimeFailure('/usr/sbin/runc kill c1', 'time="x" level=error msg="container does not exist"\n', { code: 1, signal: null });
    assert.ok(e instanceof OciRuntimeError && e instanceof BerthError);
    assert.equal(e.kind, 'NotFound');
    assert.equal(e.message, '/usr/sbin/runc kill c1: container does not exist');
    assert.equal(e.detail, 'container does not exist');
    const silent = runtimeFailure('/usr/sbin/runc start c1', ' \n', { code: null, signal: 'SIGKILL' });
    assert.equal(silent.detail, 'exited with SIGKILL');
    assert.equal(silent.kind, 'Internal');
  });
});

describe('OciRuntime command lines and registry (pure)', () => {
  const rt = new OciRuntime({ handler: 'runc', path: '/usr/sbin/runc', root: '/run/berth/runtime/runc' });

  it('gives the exec argv for ExecSync and streaming exec', () => {
    assert.deepEqual(rt.execArgv('c1', ['sh', '-c', 'echo'], { pidFile: '/p/x.pid', tty: false }), {
      file: '/usr/sbin/runc',
      args: ['--root', '/run/berth/runtime/runc', 'exec', '--pid-file', '/p/x.pid', 'c1', 'sh', '-c', 'echo'],
    });
    assert.deepEqual(rt.execArgv('c1', ['sh'], { pidFile: '/p/x.pid', tty: true }).args.slice(2), ['exec', '--pid-file', '/p/x.pid', '--tty', 'c1', 'sh']);
    assert.deepEqual(rt.shimArgs(), { path: '/usr/sbin/runc', args: ['--root=/run/berth/runtime/runc'] });
  });

  it('refuses a bad signal before running anything', async () => {
    await assert.rejects(rt.kill('c1', 'TERM; rm'), { kind: 'InvalidArgument' });
  });

  it('finds handlers by name and refuses unknown ones', () => {
    const reg = new OciRuntimes([rt, new OciRuntime({ handler: 'crun', path: '/usr/bin/crun', root: '/r/crun' })], 'runc');
    assert.equal(reg.get('crun').path, '/usr/bin/crun');
    assert.deepEqual(reg.handlers(), ['runc', 'crun']);
    assert.ok(reg.has('runc') && !reg.has('kata'));
    assert.equal(reg.defaultHandler, 'runc');
    assert.throws(() => reg.get('kata'), { kind: 'FailedPrecondition', message: 'runtime handler "kata" is not configured' });
  });
});
