/**
 * The start-up mount probes (src/common/mount-probes.ts), as root on this host: each makes
 * its real mount in a scratch dir and leaves nothing; a crash's leftovers are cleaned.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanProbeScratch, probeIdmappedMounts, probeRecursiveReadOnly } from '../../../src/common/mount-probes.js';
import { mount, MS } from '../../../src/common/mount.js';
import { loadNative } from '../../../src/common/native.js';

const mountsUnder = (dir: string): string[] =>
  readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(`${dir}/`));

describe('common: mount probes', () => {
  let dir: string;
  before(() => loadNative());
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-probes-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('the idmapped and recursive read-only probes pass on this kernel and leave no mount or file', async () => {
    const scratch = join(dir, 'probe');
    assert.deepEqual(await probeIdmappedMounts(scratch), { ok: true });
    assert.deepEqual(await probeRecursiveReadOnly(scratch), { ok: true });
    assert.deepEqual(mountsUnder(dir), []);
    assert.equal(existsSync(scratch), false);
  });

  it('cleans what a probe cut short by a crash left: nested mounts, then the files', async () => {
    const scratch = join(dir, 'probe');
    mkdirSync(join(scratch, 'probe-x', 'src', 'sub'), { recursive: true });
    await mount('tmpfs', join(scratch, 'probe-x', 'src'), 'tmpfs', 0, 'size=64k');
    mkdirSync(join(scratch, 'probe-x', 'src', 'sub'));
    await mount(join(scratch, 'probe-x', 'src'), join(scratch, 'probe-x', 'src', 'sub'), '', MS.BIND);
    assert.equal(mountsUnder(dir).length, 2);
    await cleanProbeScratch(scratch);
    assert.deepEqual(mountsUnder(dir), []);
    assert.equal(existsSync(scratch), false);
    await cleanProbeScratch(scratch); // nothing there: fine
  });
});
