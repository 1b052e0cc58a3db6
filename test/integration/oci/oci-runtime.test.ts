/**
 * OciRuntime's commands against the real runc of this machine (root only).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OciRuntime } from '../../../src/oci/oci-runtime.js';
import { OciRuntimeError } from '../../../src/oci/runtime-errors.js';

const RUNC = '/usr/sbin/runc';

(process.getuid?.() === 0 && existsSync(RUNC) ? describe : describe.skip)('OciRuntime against runc (root)', () => {
  let root: string;
  let rt: OciRuntime;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'berth-oci-'));
    rt = new OciRuntime({ handler: 'runc', path: RUNC, root });
  });
  afterEach(() => rm(root, { recursive: true, force: true }));

  it("reports an unknown container: state undefined, delete idempotent, kill, start and update NotFound with runc's words", async () => {
    assert.equal(await rt.state('nosuch'), undefined);
    await rt.delete('nosuch');
    await rt.delete('nosuch', true);
    for (const op of [() => rt.kill('nosuch', 'TERM'), () => rt.start('nosuch'), () => rt.update('nosuch', { memory: { limit: 1 << 26, swap: 1 << 26 } })]) {
      await assert.rejects(op(), (err: unknown) => {
        assert.ok(err instanceof OciRuntimeError, String(err));
        assert.equal(err.kind, 'NotFound');
        assert.match(err.message, /^\/usr\/sbin\/runc \w+ nosuch: /);
        assert.match(err.detail, /does not exist|not found/);
        assert.doesNotMatch(err.detail, /time=|level=/);
        return true;
      });
    }
  });

  it('says clearly when the binary is missing', async () => {
    const missing = new OciRuntime({ handler: 'x', path: '/nonexistent/runc', root });
    await assert.rejects(missing.state('c1'), { kind: 'Internal', message: /\/nonexistent\/runc state c1: .*(ENOENT|No such file)/ });
  });
});
